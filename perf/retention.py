#!/usr/bin/env python3
"""Retention soak: the journal's file size and throughput per 100k trivial tasks, with
compaction (``Journal.compact``, as the coordinator's retention service runs it) against
the same soak without it, in the same run.

    python perf/retention.py [--quick] [--seed N] [--json] [--tasks N] [--keep N] [--no-baseline]

Each turn does what the coordinator's turns do for ``TURN`` trivial tasks, in one
transaction (group commit, ``durability = "process"``, checkpoints on the background
thread as in the daemon): ``submit_many``, ``start_attempts``, one ``finish_attempt``
per task with a small result.  With retention, ``compact(keep=KEEP)`` runs every
``EVERY`` tasks in batches of 5,000 (``runtime.coordinator.retention.BATCH``) until a
batch comes back short, as the retention timer does.  It is the journal alone, no
processes: the part of agora that grows with the number of tasks.

Per 100k tasks it reports the file size (journal.db + its WAL) and tasks/s, wall-clock
and per CPU second (``time.process_time``: the machine is shared, CPU time is the steadier
figure).  The full run is 1,000,000 tasks keeping 100,000 (``--quick``: 200,000 keeping
20,000); the bound to check: with retention the file stops growing once ``keep + EVERY``
finished tasks fill it (SQLite reuses the freed pages; it never shrinks without VACUUM).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from _common import emit_json, parse_args

from runtime.coordinator.retention import BATCH
from runtime.tasks.journal import Journal
from runtime.tasks.task import parse_task

TURN = 500          # tasks per simulated loop turn
EVERY = 10_000      # tasks between compaction runs
CHUNK = 100_000     # a row of the table
_MiB = 1 << 20


def file_bytes(journal: Journal, suffix: str = "") -> int:
    path = journal.path + suffix
    return os.path.getsize(path) if os.path.exists(path) else 0


def one_turn(journal: Journal, specs: list[Any]) -> None:
    with journal.transaction():
        ids = journal.submit_many(specs)
        numbers = journal.start_attempts([(t, "echo.0") for t in ids])
        for tid, n in zip(ids, numbers):
            journal.finish_attempt(tid, n, "succeeded", result={"echo": 1})


def compact(journal: Journal, keep: int) -> int:
    removed = 0
    while True:
        got = journal.compact(keep=keep, batch=BATCH)["tasks"]
        removed += got
        if got < BATCH:
            return removed


def soak(total: int, keep: int | None, seed: int) -> list[dict[str, Any]]:
    home = tempfile.mkdtemp(prefix="agora-retention-")
    journal = Journal(home, durability="normal")
    journal.checkpoint_in_background()
    specs = [parse_task({"capability": "echo", "input": {"i": i, "seed": seed}}, now=time.time())
             for i in range(TURN)]
    rows, done = [], 0
    try:
        while done < total:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(CHUNK // TURN):
                one_turn(journal, specs)
                done += TURN
                if keep is not None and done % EVERY == 0:
                    compact(journal, keep)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            db, wal = file_bytes(journal), file_bytes(journal, "-wal")
            rows.append({"tasks": done, "file_mib": round((db + wal) / _MiB, 1),
                         "db_mib": round(db / _MiB, 1), "wal_mib": round(wal / _MiB, 1),
                         "tasks_per_s": round(CHUNK / wall), "tasks_per_cpu_s": round(CHUNK / max(cpu, 1e-9)),
                         "rows": journal.stats()["rows"]["tasks"]})
    finally:
        journal.close()
        shutil.rmtree(home, ignore_errors=True)
    return rows


def table(with_r: list[dict[str, Any]], without: list[dict[str, Any]] | None) -> None:
    head = f"{'tasks':>9} | {'retention: MiB (db+wal)':>23} {'tasks/s':>8} {'per cpu s':>9} {'rows':>7}"
    print(head + (f" | {'none: MiB (db+wal)':>18} {'tasks/s':>8} {'per cpu s':>9}" if without else ""))
    for i, a in enumerate(with_r):
        ra = f"{a['file_mib']} ({a['db_mib']}+{a['wal_mib']})"
        line = f"{a['tasks']:>9} | {ra:>23} {a['tasks_per_s']:>8} {a['tasks_per_cpu_s']:>9} {a['rows']:>7}"
        if without:
            b = without[i]
            rb = f"{b['file_mib']} ({b['db_mib']}+{b['wal_mib']})"
            line += f" | {rb:>18} {b['tasks_per_s']:>8} {b['tasks_per_cpu_s']:>9}"
        print(line)


def figures(with_r: list[dict[str, Any]], keep: int) -> dict[str, Any]:
    first, last = with_r[0]["tasks_per_cpu_s"], with_r[-1]["tasks_per_cpu_s"]
    return {"tasks": with_r[-1]["tasks"], "keep": keep, "every": EVERY, "turn": TURN,
            "max_file_mib": max(r["file_mib"] for r in with_r),
            "max_db_mib": max(r["db_mib"] for r in with_r),
            "db_mib_per_100k": [r["db_mib"] for r in with_r],
            "file_mib_per_100k": [r["file_mib"] for r in with_r],
            "tasks_per_s": [r["tasks_per_s"] for r in with_r],
            "tasks_per_cpu_s": [r["tasks_per_cpu_s"] for r in with_r],
            "last_over_first_cpu_rate": round(last / first, 3)}


def against(without: list[dict[str, Any]], with_r: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline's figures and the ratio of CPU throughput (retention / none)."""
    return {"baseline_db_mib_per_100k": [r["db_mib"] for r in without],
            "baseline_final_file_mib": without[-1]["file_mib"],
            "baseline_tasks_per_s": [r["tasks_per_s"] for r in without],
            "baseline_tasks_per_cpu_s": [r["tasks_per_cpu_s"] for r in without],
            "cpu_rate_vs_baseline": round(sum(r["tasks_per_cpu_s"] for r in with_r)
                                          / sum(r["tasks_per_cpu_s"] for r in without), 3)}


def main() -> None:
    args = parse_args(__doc__, **{"--tasks": {"type": int, "default": None},
                                  "--keep": {"type": int, "default": None},
                                  "--no-baseline": {"action": "store_true", "dest": "no_baseline",
                                                    "help": "skip the soak without retention "
                                                            "(its file grows to ~0.8 GB per 1M tasks)"}})
    total = args.tasks or (200_000 if args.quick else 1_000_000)
    keep = args.keep or (20_000 if args.quick else 100_000)
    with_r = soak(total, keep, args.seed)
    result = figures(with_r, keep)
    print(f"retention keeps the file at <= {result['max_file_mib']} MiB (db <= {result['max_db_mib']} MiB) "
          f"over {total:,} tasks; CPU throughput last/first chunk {result['last_over_first_cpu_rate']}")
    without = None
    if not args.no_baseline:  # the baseline, same run
        without = soak(total, None, args.seed)
        result.update(against(without, with_r))
        print(f"without retention: {result['baseline_final_file_mib']} MiB; CPU throughput against no "
              f"retention {result['cpu_rate_vs_baseline']}")
    table(with_r, without)
    emit_json(args, result)


if __name__ == "__main__":
    main()
