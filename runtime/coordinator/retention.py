"""Retention: the journal's finished work is compacted on a timer, so the file stops
growing (``Journal.compact``: tasks, attempts, pipelines) at a size set by the retained
work, not by the daemon's age.

Every ``EVERY_S`` (30 s) the coordinator deletes, in batches of ``BATCH`` tasks per turn
(a turn stays short: about 15 ms per batch here), the finished tasks and pipelines older
than ``[daemon] retention_age_s`` (default 7 days: a week of history for `agora task`)
or beyond the ``retention_tasks`` newest finished ones (default 1,000,000: about 0.5 GB
of 1 KiB pages at ~500 bytes a task; 0 = no count limit).  While a batch comes back full
it runs again on the next turn.  Ledger entries are folded by the market service
(``Ledger.fold``) on the same age.  ``agora journal stats`` shows the last report.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["Retention", "install", "EVERY_S", "BATCH"]

EVERY_S = 30.0
BATCH = 5000


class Retention:
    """Periodic compaction of the coordinator's journal."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.age_s = float(getattr(coord.cfg, "retention_age_s", 7 * 86400.0))
        keep = int(getattr(coord.cfg, "retention_tasks", 1_000_000))
        self.keep = keep or None
        self.totals = {"tasks": 0, "pipelines": 0, "runs": 0}

    def start(self) -> None:
        self.coord.call_later(EVERY_S, self.tick)

    def tick(self) -> None:
        if self.coord.stopping:
            return
        out = self.coord.journal.compact(max_age_s=self.age_s, keep=self.keep, now=time.time(), batch=BATCH)
        self.totals["tasks"] += out["tasks"]
        self.totals["pipelines"] += out["pipelines"]
        self.totals["runs"] += 1
        self.coord.retention_report = {"age_s": self.age_s, "keep": self.keep, **self.totals}
        if out["tasks"] or out["pipelines"]:
            self.coord.emit("journal.compacted", None, **out)
        self.coord.call_later(0.0 if out["tasks"] >= BATCH else EVERY_S, self.tick)


def install(coord: Any) -> Retention:
    retention = Retention(coord)
    retention.start()
    return retention
