"""Pool health as the coordinator sees it: which pools the root reports ``failed``, and what
that means for the capabilities they serve.

::

    root (runtime.pools.recovery)            coordinator (this module, owned by the Scaler)
    pools_state: [{pool, state, failures,  <-- PoolHealth.refresh (RootLink.request, every
                   retry_in_s, last_exits}]      POLL_S, asynchronous: the loop never waits)
                                             --> scheduler.down[capability] = {pools, reason,
                                                 refuse} for a capability none of whose pools
                                                 is live: new submissions are refused
                                                 UNAVAILABLE (when_down = "refuse") or accepted
                                                 and parked ("park"); queued ones wait, shown
                                                 with ``waiting_for`` in tasks/result/status

The root is the truth (it restarts failed pools on its own backoff); this is a view at most
``POLL_S`` old, refreshed at once for ``agora pools``, ``agora scale`` and after
``agora pools restart``.  A submission in that window is accepted and waits like the
tasks already queued: nothing accepted is lost either way.  Polling the root (a reply from
memory, twice a second) was chosen over a push from the root: the root has no line to the
coordinator of its own, and a held request would make the root keep per-request state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["PoolHealth", "POLL_S", "down_capabilities"]

POLL_S = 0.5
ROOT_ASK_S = 10.0


def down_capabilities(serving: dict[str, list[str]], failed: dict[str, str],
                      park: set[str]) -> dict[str, dict[str, Any]]:
    """Capabilities none of whose pools is live (pure).  ``serving``: capability -> pools;
    ``failed``: pool -> why; ``park``: pools whose ``when_down`` is ``park`` (one is enough
    to accept and keep the work: that pool will run it when it is back)."""
    out = {}
    for cap, pools in serving.items():
        down = [p for p in pools if p in failed]
        if pools and len(down) == len(pools):
            out[cap] = {"pools": down, "reason": "; ".join(failed[p] for p in down),
                        "refuse": not park.intersection(down)}
    return out


class PoolHealth:
    """The coordinator's view of the root's pool recovery rows."""

    def __init__(self, coord: Any, capabilities: Callable[[str], set[str]]) -> None:
        self.coord = coord
        self.capabilities = capabilities  # pool name -> the capabilities it serves
        self.rows: dict[str, dict[str, Any]] = {}
        self.at: float | None = None  # when the rows were read (coordinator clock)
        self.asking = False
        self.waiters: list[Callable[[Any], None]] = []

    def tick(self, now: float) -> None:
        if self.at is None or now - self.at >= POLL_S:
            self.refresh()

    def refresh(self, then: Callable[[Any], None] | None = None) -> None:
        """Ask the root now; ``then(error)`` runs once the view is updated (error or None)."""
        if then is not None:
            self.waiters.append(then)
        if not self.asking:
            self.asking = True
            self.coord.root.request("pools_state", {}, self._got, timeout=ROOT_ASK_S)

    def _got(self, rows: Any, error: Any) -> None:
        self.asking, self.at = False, self.coord.clock()
        if error is None:
            self.update(rows)
        waiters, self.waiters = self.waiters, []
        for then in waiters:
            then(error)

    def update(self, rows: list[dict[str, Any]]) -> None:
        before = set(self.failed_pools())
        self.rows = {r["pool"]: r for r in rows}
        now_failed = self.failed_pools()
        for name in now_failed.keys() - before:
            self.coord.emit("pool.down", None, pool=name, reason=now_failed[name])
        for name in before - now_failed.keys():
            self.coord.emit("pool.up", None, pool=name)
        self.publish()

    def failed(self, pool: str) -> dict[str, Any] | None:
        row = self.rows.get(pool)
        return row if row is not None and row["state"] == "failed" else None

    def failed_pools(self) -> dict[str, str]:
        return {name: self.describe(row) for name, row in self.rows.items() if row["state"] == "failed"}

    def retry_in(self, row: dict[str, Any]) -> float | None:
        """Seconds until the root's next retry, counted from when the row was read."""
        if row.get("retry_in_s") is None or self.at is None:
            return None
        return max(0.0, row["retry_in_s"] - (self.coord.clock() - self.at))

    def describe(self, row: dict[str, Any]) -> str:
        exits = row.get("last_exits") or []
        last = f"; last exit: {exits[-1]['child']}: {exits[-1]['reason']}" if exits else ""
        wait = self.retry_in(row)
        when = f"retry in {wait:.1f} s" if wait is not None else "restart pending"
        return f"pool {row['pool']!r} failed ({when}, failure {row.get('failures')}){last}"

    def publish(self) -> None:
        """The scheduler's ``down`` map, from the failed pools and what each serves."""
        serving: dict[str, list[str]] = {}
        for p in self.coord.cfg.pools:
            for cap in self.capabilities(p.name):
                serving.setdefault(cap, []).append(p.name)
        park = {p.name for p in self.coord.cfg.pools if p.when_down == "park"}
        self.coord.scheduler.down = down_capabilities(serving, self.failed_pools(), park)
