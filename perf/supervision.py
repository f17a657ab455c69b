#!/usr/bin/env python3
"""Supervision latency: restart after SIGKILL, a 20-child tree ready, and the fork floor.

    python perf/supervision.py [--quick] [--seed N] [--json]

* ``fork_floor_ms``: a bare ``os.fork()`` + ``os._exit(0)`` + ``waitpid`` in this process,
  measured in the same run: the least any restart can cost here.
* ``restart_p50_ms`` / ``restart_p99_ms``: SIGKILL of a supervised child -> its
  replacement has called ``ctx.ready()`` (death seen through the sentinel, reaped,
  restart budget checked, forked through multiprocess, child tied to the root, ready
  byte read back).  Over >= 200 kills (50 with --quick); each kill picks one of 4
  children at random (seeded).
* ``tree_ready_ms``: ``Tree.start()`` of 20 children, each started in order and waited
  for, median of several starts.

Targets (issue 2): restart p50 <= 5 ms and p99 <= 20 ms; tree ready <= 250 ms.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time

from _common import emit_json, parse_args, pct

from runtime.supervision.child_spec import ChildSpec, SupervisorSpec
from runtime.supervision.supervisor import Tree


def idle(ctx):
    ctx.ready()
    while True:
        signal.pause()


def fork_floor(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def restart_latencies(kills: int, rng: random.Random) -> list[float]:
    spec = SupervisorSpec("root", tuple(ChildSpec(f"c{i}", idle, shutdown=1.0) for i in range(4)),
                          intensity=kills + 10, period=3600)
    tree = Tree(spec)
    tree.start()
    out = []
    try:
        for _ in range(kills):
            child = tree.root.children[rng.randrange(4)]
            t0 = time.perf_counter()
            os.kill(child.pid, signal.SIGKILL)
            if not tree.wait_and_handle(timeout=10):
                raise RuntimeError("death not seen within 10 s")
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        tree.stop()
    return out


def tree_ready(n_children: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        spec = SupervisorSpec("root", tuple(ChildSpec(f"c{i}", idle, shutdown=1.0)
                                            for i in range(n_children)))
        tree = Tree(spec)
        t0 = time.perf_counter()
        tree.start()
        out.append((time.perf_counter() - t0) * 1e3)
        tree.stop()
    return out


def main() -> None:
    a = parse_args(__doc__)
    rng = random.Random(a.seed)
    kills = 50 if a.quick else 300
    floor = fork_floor(50 if a.quick else 200)
    restarts = restart_latencies(kills, rng)
    ready = tree_ready(20, 3 if a.quick else 7)
    res = {
        "fork_floor_ms": round(statistics.median(floor), 3),
        "restart_p50_ms": round(pct(restarts, 50), 3),
        "restart_p99_ms": round(pct(restarts, 99), 3),
        "tree_ready_ms": round(statistics.median(ready), 2),
        "kills": kills, "seed": a.seed,
    }
    rows = [
        ("fork+exit+wait floor", res["fork_floor_ms"], "-", "baseline"),
        ("restart p50 (SIGKILL -> ready)", res["restart_p50_ms"], "<= 5",
         "pass" if res["restart_p50_ms"] <= 5 else "FAIL"),
        ("restart p99", res["restart_p99_ms"], "<= 20", "pass" if res["restart_p99_ms"] <= 20 else "FAIL"),
        ("tree of 20 ready", res["tree_ready_ms"], "<= 250", "pass" if res["tree_ready_ms"] <= 250 else "FAIL"),
    ]
    print(f"{'measure':34} {'ms':>9} {'target':>8}  verdict")
    for name, v, target, verdict in rows:
        print(f"{name:34} {v:9.3f} {target:>8}  {verdict}")
    print(f"restart p50 / fork floor = {res['restart_p50_ms'] / res['fork_floor_ms']:.1f}x "
          f"({kills} kills, seed {a.seed})")
    emit_json(a, res)


if __name__ == "__main__":
    main()
