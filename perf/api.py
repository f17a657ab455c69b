#!/usr/bin/env python3
"""The Python API against the raw client and against concurrent.futures, in one run.

    python perf/api.py [--quick] [--seed N] [--json]

One embedded daemon (``agora.start``, daemon defaults: journal on, ``agent_inflight`` 1)
with a pool of 2 agents running a trivial task (``add``), and a
``ProcessPoolExecutor(2)`` running the same function:

* ``raw_rtt_p50_us``: ``Client.call("submit", task=..., result=True)``, sequential: the
  raw client's round trip (one request).
* ``api_rtt_p50_us``: ``rt.submit(...).result()``, sequential, on the same daemon; the
  raw, API and executor calls take turns one by one, so load drifts hit all alike.
  ``api_overhead``: ``api / raw - 1`` (target <= 0.10).
* ``ppe_rtt_p50_us``: ``executor.submit(add, ...).result()``.
* ``raw_client_cpu_us`` / ``api_client_cpu_us``: this process's CPU time per round trip,
  neither spinning for its reply: the API's own cost, which no load on the machine moves.
* ``map_per_s``: ``list(rt.map("add", inputs))`` over ``N`` inputs (10,000; 3,000 with
  ``--quick``), results in input order; ``ppe_map_per_s``: ``list(executor.map(add,
  inputs))`` (chunksize 1, the default), same inputs.  ``map_vs_ppe`` is their ratio
  (target >= 1.5).  Each is the best of ``reps`` rounds, interleaved.
* ``cpu_s_per_1k``: CPU seconds (user + system, psutil) per 1,000 tasks of ``rt.map``
  over the whole daemon tree and this process, and of ``executor.map`` over its
  workers and this process: the load-proof view of the same comparison.
"""

from __future__ import annotations

import concurrent.futures as cf
import statistics
import time
from typing import Any

import psutil
from _common import emit_json, parse_args, private_runtime_dir

import agora


def add(x: dict[str, int]) -> int:
    return x["a"] + x["b"]


def p50_us(fn: Any, n: int) -> float:
    xs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs) * 1e6


def alternating(calls: dict[str, Any], n: int) -> dict[str, float]:
    """p50 (us) of each call, the calls taking turns one by one: a load that drifts (this
    machine is shared) lands on all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(n):
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e6 for k, v in times.items()}


def client_cpu_us(raw: Any, rt: Any, task: dict[str, Any], n: int) -> dict[str, float]:
    """This process's CPU time per round trip, raw client against the API, neither
    spinning for its reply: what the API itself costs, whatever the load."""
    from runtime.api import connection
    spin, connection.SPIN_S, raw.spin_s = connection.SPIN_S, 0.0, 0.0
    me = psutil.Process()
    try:
        out = {}
        for name, fn in (("raw", lambda: raw.call("submit", task=task, result=True)),
                         ("api", lambda: rt.submit("add", {"a": 1, "b": 2}).result(30))):
            c0 = cpu_of([me])
            for _ in range(n):
                fn()
            out[f"{name}_client_cpu_us"] = round((cpu_of([me]) - c0) / n * 1e6, 1)
        return out
    finally:
        connection.SPIN_S = spin


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def measured(fn: Any, procs: list[psutil.Process]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of ``procs`` and this process) of ``fn()``."""
    me = psutil.Process()
    c0, t0 = cpu_of(procs) + cpu_of([me]), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_of(procs) + cpu_of([me]) - c0


def main() -> None:
    args = parse_args(__doc__, **{"--reps": {"type": int, "default": 3, "help": "map rounds (best kept)"}})
    private_runtime_dir()
    n_map = 3000 if args.quick else 10_000
    n_rtt = 300 if args.quick else 2000
    inputs = [{"a": i, "b": args.seed} for i in range(n_map)]
    expected = [add(x) for x in inputs]
    out: dict[str, Any] = {"n_map": n_map, "n_rtt": n_rtt, "agents": 2, "ppe_workers": 2}
    task = {"capability": "add", "input": {"a": 1, "b": 2}}
    with agora.start(pools={"w": agora.Pool("perf._agents:Echo", size=2, max=2)}) as rt, \
            agora.Client(rt.home) as raw, cf.ProcessPoolExecutor(2) as ex:
        daemon_procs = tree(rt._proc.pid)
        ex.submit(add, {"a": 0, "b": 0}).result()  # the workers exist once one answered
        ex_procs = [psutil.Process(p.pid) for p in ex._processes.values()]
        list(rt.map("add", inputs[:500]))  # warm: every agent connected, caches filled
        calls = {"raw": lambda: raw.call("submit", task=task, result=True),
                 "api": lambda: rt.submit("add", {"a": 1, "b": 2}).result(30),
                 "ppe": lambda: ex.submit(add, {"a": 1, "b": 2}).result(30)}
        rtt = alternating(calls, n_rtt)
        out.update({f"{k}_rtt_p50_us": round(v, 1) for k, v in rtt.items()})
        out["api_overhead"] = round(out["api_rtt_p50_us"] / out["raw_rtt_p50_us"] - 1, 3)
        out.update(client_cpu_us(raw, rt, task, n_rtt))
        maps, ppe_maps = [], []
        for _ in range(args.reps):
            got: list[Any] = []
            maps.append(measured(lambda: got.extend(rt.map("add", inputs)), daemon_procs))
            assert got == expected, "rt.map returned wrong results or order"
            got = []
            ppe_maps.append(measured(lambda: got.extend(ex.map(add, inputs)), ex_procs))
            assert got == expected
    best, best_ppe = min(maps), min(ppe_maps)
    out.update(map_per_s=round(n_map / best[0]), ppe_map_per_s=round(n_map / best_ppe[0]))
    out["map_vs_ppe"] = round(out["map_per_s"] / out["ppe_map_per_s"], 2)
    out["cpu_s_per_1k"] = {"map": round(min(c for _, c in maps) / n_map * 1000, 3),
                           "ppe_map": round(min(c for _, c in ppe_maps) / n_map * 1000, 3)}
    out["targets"] = {"api_overhead_le_10pct": out["api_overhead"] <= 0.10,
                      "map_ge_1_5x_ppe": out["map_vs_ppe"] >= 1.5}
    for k, v in out.items():
        print(f"{k:>16}: {v}")
    emit_json(args, out)


if __name__ == "__main__":
    main()
