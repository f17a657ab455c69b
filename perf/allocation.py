#!/usr/bin/env python3
"""Allocation policies on heterogeneous and homogeneous pools, and market auction latency.

    python perf/allocation.py [--quick] [--seed N] [--json] [--pool P]... [--settings S]...
                              [--policy P]... [--concurrency N]

Part 1 -- every policy (``static``, ``least-loaded``, ``p2c``, ``market``), each in a daemon
of its own started in this run, under two settings (``SETTINGS``, printed at the top):

    defaults   what the daemon does with nothing in agora.toml but the allocation:
               agent_inflight = 1 (no prefetch), the market's MarketConfig defaults
    tuned      agent_inflight = 4 (up to 4 tasks sent ahead: a policy can prefer a fast
               agent's queue over an idle slow agent)

on three pools of one capability ``work`` (perf/_agents_market.py), every agent declaring
the same cost (1 credit) and quality (0.8) so that nothing but behaviour tells them apart:

    hetero fast-last    unreliable x1, slow x2, fast x2, in registry order (what static follows)
    hetero fast-first   fast x2, slow x2, unreliable x1
    homogeneous         fast x4

(fast: 10 ms a task; slow: 100 ms; unreliable: 10 ms, fails half of the tasks by a stable
hash of the task id salted with ``--seed``).  A closed-loop driver keeps ``--concurrency``
tasks (8) outstanding, each with ``max_attempts = 1``, so success means first-try success.
Each run first does the same warm-up (``--warmup`` tasks, not measured: the market learns
reputations and service times there), then the measured tasks.  Figures per run:
``tasks/s`` (measured tasks that *succeeded*, per second of wall time), ``p95 ms`` (submit
-> result seen by the client, every task), ``success``, and CPU ms per task of the
coordinator and of the whole daemon tree (psutil; robust against a loaded machine, unlike
wall time), and which agents did the work.  The closing lines give market / best other
policy's tasks/s per (settings, pool).

Part 2 -- auction latency (cfp sent -> award decided, on the coordinator's monotonic clock,
``auction_ms`` in ``agora market``) against 4, 16 and 64 idle bidders, tasks one at a time.

Targets (issue 18): market >= 1.3x the best other policy on the heterogeneous pool under
the defaults, >= 0.95x on the homogeneous pool; auction p50 <= 2 ms with 16 bidders.  The
registry is ``local`` (in the coordinator) so the partitioned backend's costs stay out.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, REPO)

import orjson  # noqa: E402
import psutil  # noqa: E402
from _common import parse_args  # noqa: E402

from runtime.daemon.launch import spawn, stop, wait_up  # noqa: E402
from runtime.wire.client import Client  # noqa: E402

POLICIES = ("static", "least-loaded", "p2c", "market")
#: The settings a run is measured under.  ``defaults``: what a daemon does with nothing in
#: agora.toml but the allocation (agent_inflight = 1: no prefetch, and the market's own
#: MarketConfig defaults).  ``tuned``: up to 4 tasks sent to an agent ahead (with room at
#: busy agents a policy can prefer a fast agent's queue over an idle slow one).
SETTINGS = {"defaults": {"agent_inflight": 1}, "tuned": {"agent_inflight": 4}}

POOL = """
[pools.{name}]
agent = "perf._agents_market:{cls}"
size = {size}
max = {size}
[pools.{name}.capabilities.work]
cost = 1.0
quality = 0.8
"""


def config(allocation: str, pools: list[tuple[str, str, int]], settings: dict | None = None) -> str:
    inflight = (settings or SETTINGS["tuned"])["agent_inflight"]
    head = (f'[daemon]\nallocation = "{allocation}"\nregistry = "local"\ndrain_s = 3.0\n'
            f'agent_inflight = {inflight}\n')
    return head + "".join(POOL.format(name=n, cls=c, size=s) for n, c, s in pools)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


class daemon:
    """One daemon in a fresh home, stopped (and the home removed) on exit."""

    def __init__(self, cfg: str) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="agora-perf-"))
        self.cfg = cfg

    def __enter__(self) -> daemon:
        self.proc = spawn(self.home, self.cfg, path=[REPO])
        wait_up(self.home, self.proc, timeout=120)
        return self

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far: the coordinator's and the whole tree's
        (load-robust, unlike wall time on a shared machine)."""
        out = {"coordinator": 0.0, "tree": 0.0}
        root = psutil.Process(self.proc.pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t, name = p.cpu_times(), p.name()
            except psutil.Error:
                continue
            out["tree"] += t.user + t.system
            if "coord" in name:
                out["coordinator"] += t.user + t.system
        return out

    def __exit__(self, *exc: object) -> None:
        stop(self.home, self.proc)
        shutil.rmtree(self.home, ignore_errors=True)


def wait_agents(home: Path, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with Client(str(home), timeout=10) as c:
        while len(c.call("agents")) < n:
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(c.call('agents'))} of {n} agents joined in {timeout} s")
            time.sleep(0.05)


def drive(home: Path, total: int, concurrency: int, salt: int) -> tuple[list[dict], float]:
    """Closed loop: ``concurrency`` clients, each submit -> wait -> next, ``total`` tasks."""
    lock, counter, rows = threading.Lock(), iter(range(total)), []
    errors: list[BaseException] = []

    def client_loop() -> None:
        try:
            with Client(str(home), timeout=60) as c:
                while True:
                    with lock:
                        n = next(counter, None)
                    if n is None:
                        return
                    t0 = time.perf_counter()
                    work = {"n": n, "salt": salt, "fast_ms": FAST_MS, "slow_ms": SLOW_MS}
                    tid = c.call("submit", task={"capability": "work", "input": work,
                                                 "options": {"max_attempts": 1}})
                    rec = c.call("result", id=tid, wait=True, timeout_s=60)
                    rows.append({"ms": (time.perf_counter() - t0) * 1000, "state": rec["state"],
                                 "by": (rec.get("result") or {}).get("by", "failed")})
        except BaseException as e:  # surfaced below: a perf run must not hide a driver error
            errors.append(e)

    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return rows, time.perf_counter() - t0


#: The pools, each in registry order (what ``static`` follows: the agents' ids sorted).
POOLS = {"hetero fast-last": [("a-unreliable", "Unreliable", 1), ("b-slow", "Slow", 2), ("c-fast", "Fast", 2)],
         "hetero fast-first": [("a-fast", "Fast", 2), ("b-slow", "Slow", 2), ("c-unreliable", "Unreliable", 1)],
         "homogeneous": [("a-fast", "Fast", 4)]}
FAST_MS, SLOW_MS = 10, 100


def run_policy(policy: str, pool: str, settings: str, args: argparse.Namespace) -> dict:
    agents = POOLS[pool]
    with daemon(config(policy, agents, SETTINGS[settings])) as d:
        wait_agents(d.home, sum(n for _, _, n in agents))
        drive(d.home, args.warmup, args.concurrency, args.seed)
        before = d.cpu()
        rows, wall = drive(d.home, args.tasks, args.concurrency, args.seed)
        after = d.cpu()
    ok = [r for r in rows if r["state"] == "succeeded"]
    return {"tasks_per_s": len(ok) / wall, "p95_ms": pct([r["ms"] for r in rows], 95),
            "coord_cpu_ms": (after["coordinator"] - before["coordinator"]) * 1000 / len(rows),
            "tree_cpu_ms": (after["tree"] - before["tree"]) * 1000 / len(rows),
            "success_rate": len(ok) / len(rows), "work_by": dict(Counter(r["by"] for r in rows))}


def auction_latency(bidders: int, tasks: int) -> float:
    with daemon(config("market", [("bidder", "Fast", bidders)])) as d:
        wait_agents(d.home, bidders)
        with Client(str(d.home), timeout=60) as c:
            c.call("market_config", window_ms=20)  # generous: rounds close when all answered
            for n in range(tasks):
                tid = c.call("submit", task={"capability": "work", "input": {"n": n, "fast_ms": 0}})
                c.call("result", id=tid, wait=True, timeout_s=60)
            auctions = c.call("market", limit=tasks)["auctions"]
    full = [a["auction_ms"] for a in auctions if len(a["bids"]) == bidders]
    return statistics.median(full) if full else float("nan")


def ratios(results: dict) -> dict:
    """Per (settings, pool): market tasks/s over the best other policy's."""
    out = {}
    for (settings, pool), by_policy in results.items():
        best = max(r["tasks_per_s"] for p, r in by_policy.items() if p != "market")
        out[f"{settings} / {pool}"] = by_policy["market"]["tasks_per_s"] / best if best else float("nan")
    return out


def report(results: dict, latency: dict, args: argparse.Namespace) -> None:
    print(f"{args.tasks} tasks (+{args.warmup} warm-up) per run, {args.concurrency} outstanding, "
          f"max_attempts=1, fast {FAST_MS} ms / slow {SLOW_MS} ms / unreliable {FAST_MS} ms 50% fail, "
          f"seed {args.seed}, registry local; tasks/s counts succeeded tasks only")
    for name, s in SETTINGS.items():
        print(f"settings {name}: {s}, market knobs: MarketConfig defaults")
    print(f"{'settings':<9} {'pool':<18} {'policy':<13} {'tasks/s':>8} {'p95 ms':>8} {'success':>8} "
          f"{'coord cpu':>9} {'tree cpu':>8}  work done by (cpu: ms per task)")
    for (settings, pool), by_policy in results.items():
        for p, r in by_policy.items():
            print(f"{settings:<9} {pool:<18} {p:<13} {r['tasks_per_s']:>8.1f} {r['p95_ms']:>8.1f} "
                  f"{r['success_rate']:>8.1%} {r['coord_cpu_ms']:>9.2f} {r['tree_cpu_ms']:>8.2f}  {r['work_by']}")
    for key, v in ratios(results).items():
        target = ">= 0.95x" if "homogeneous" in key else ">= 1.3x"
        print(f"market / best other, {key}: {v:.2f}x (target {target})")
    print("auction latency, cfp -> award (p50 ms): "
          + "  ".join(f"{n} bidders {v:.3f}" for n, v in latency.items()) + "  (target <= 2 ms at 16)")


def main() -> int:
    args = parse_args(__doc__, seed=0, quick="fewer tasks (a smoke run)",
                      **{"--pool": {"choices": sorted(POOLS), "action": "append",
                                    "help": "only these pools (repeatable; default all)"},
                         "--settings": {"choices": sorted(SETTINGS), "action": "append",
                                        "help": "only these settings (repeatable; default both)"},
                         "--policy": {"choices": POLICIES, "action": "append",
                                      "help": "only these policies (market always runs)"},
                         "--concurrency": {"type": int, "default": 8}})
    args.tasks, args.warmup = (300, 60) if args.quick else (1500, 100)
    policies = [p for p in POLICIES if p == "market" or not args.policy or p in args.policy]
    results = {(s, pool): {p: run_policy(p, pool, s, args) for p in policies}
               for s in (args.settings or SETTINGS) for pool in (args.pool or POOLS)}
    latency = {str(n): auction_latency(n, 40 if args.quick else 150) for n in (4, 16, 64)}
    report(results, latency, args)
    if args.json:
        print(orjson.dumps({
            "runs": [{"settings": s, "pool": pool, "policy": p, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                                   for k, v in r.items()}}
                     for (s, pool), by in results.items() for p, r in by.items()],
            "market_vs_best_other": {k: round(v, 3) for k, v in ratios(results).items()},
            "auction_p50_ms": {n: round(v, 4) for n, v in latency.items()},
            "settings": SETTINGS, "seed": args.seed, "tasks": args.tasks, "warmup": args.warmup}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
