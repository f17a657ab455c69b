#!/usr/bin/env python3
"""agora against what users would pick instead, in one run on this machine: the standard
library's ``concurrent.futures.ProcessPoolExecutor`` (and Ray, when it is importable and
this script runs inside a loopback-only network namespace).

    python perf/peers.py [--quick] [--seed N] [--json]

Figures (keys of the closing JSON line, each ``{"agora": .., "ppe": .., ...}``):

* ``rtt_p50_us``: a trivial task (``add``), sequential, submit to result: agora's
  ``Client.call("submit", task=..., result=True)`` (journal on, default durability) against
  ``ProcessPoolExecutor(2).submit(add, ...).result()``.
* ``tasks_per_s``: 10,000 trivial tasks all in flight with 2 workers: agora's
  ``submit_many`` in batches then ``wait_all``; the pool's ``submit`` of every task then
  waiting for all.
* ``ctx_pss_mib``: total PSS of every process (the daemon's whole tree; the pool's parent
  and workers) once 4 workers have each read a float32 context of 256 MiB (64 MiB with
  --quick): agora's shared-memory context (``ctx.array``); the pool loading the file in
  each worker with ``np.load`` (``ppe``) and with ``np.load(mmap_mode="r")`` (``ppe_mmap``).
* ``ctx_ready_s``: from start to all 4 workers done with it: agora from ``agora up``
  (the context published at start) and, separately, on a daemon already up
  (``agora_up_already``); the pool from its creation.

agora runs with the daemon's defaults (the pool sections below set only what a pool
must: its agent class and size).  Ray is measured only inside a namespace whose only
interface is ``lo`` (``unshare --net`` with ``lo`` up): elsewhere it is skipped and the
script says why (it probes cloud metadata addresses and the external interface).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import psutil
from _common import Daemon, emit_json, parse_args, pct
from _ray import in_netns_or_reexec, ray_bare

ECHO_POOL = """
[pools.w]
agent = "perf._agents:Echo"
size = {size}
max = {size}
mailbox_messages = 100000
"""

CTX_POOL = """
[context]
vec = "{path}"
[pools.v]
agent = "perf._agents:Vectors"
size = 4
max = 4
"""


def add(a: int, b: int) -> int:
    return a + b


# ---------------------------------------------------------------- round trip and throughput

def agora_rtt(n: int, rng: random.Random) -> list[float]:
    with Daemon(ECHO_POOL.format(size=2)) as d:
        out = []
        for i in range(n + 20):
            task = {"capability": "add", "input": {"a": rng.randrange(1000), "b": i}}
            t0 = time.perf_counter()
            rec = d.client.call("submit", task=task, result=True)
            dt = (time.perf_counter() - t0) * 1e6
            assert rec["state"] == "succeeded", rec
            if i >= 20:
                out.append(dt)
        return out


def ppe_rtt(n: int, rng: random.Random) -> list[float]:
    with ProcessPoolExecutor(2) as ex:
        out = []
        for i in range(n + 20):
            t0 = time.perf_counter()
            ex.submit(add, rng.randrange(1000), i).result()
            if i >= 20:
                out.append((time.perf_counter() - t0) * 1e6)
        return out


def agora_throughput(total: int, rng: random.Random) -> float:
    with Daemon(ECHO_POOL.format(size=2)) as d:
        tasks = [{"capability": "add", "input": {"a": rng.randrange(1000), "b": i}} for i in range(total)]
        d.wait_agents(2)  # the agents are up and have run a task, as the pool's workers have
        d.client.call("submit", task={"capability": "add", "input": {"a": 0, "b": 0}}, result=True)
        t0 = time.perf_counter()
        ids: list[str] = []
        for i in range(0, total, 1000):
            ids += d.client.call("submit_many", tasks=tasks[i:i + 1000], wait_s=60)
        counts = d.client.call("wait_all", ids=ids, timeout_s=300)
        dt = time.perf_counter() - t0
        assert counts == {"succeeded": total}, counts
        return total / dt


def ppe_throughput(total: int, rng: random.Random) -> float:
    with ProcessPoolExecutor(2) as ex:
        ex.submit(add, 0, 0).result()  # the workers are up, as agora's are
        args = [(rng.randrange(1000), i) for i in range(total)]
        t0 = time.perf_counter()
        futures = [ex.submit(add, a, b) for a, b in args]
        wait(futures)
        dt = time.perf_counter() - t0
        assert all(f.exception() is None for f in futures)
        return total / dt


# ---------------------------------------------------------------- shared context

_HELD: list[np.ndarray] = []  # a pool worker keeps what it loaded, as an agent keeps its view


def _colsum(path: str, mmap: bool, barrier_path: str) -> float:
    arr = np.load(path, mmap_mode="r" if mmap else None)
    _HELD.append(arr)
    s = float(arr.sum())
    # hold until all four have read it, so each task lands on its own worker
    Path(barrier_path, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(barrier_path)) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    return s


def tree_pss_mib(root_pid: int) -> float:
    procs = [psutil.Process(root_pid)]
    procs += procs[0].children(recursive=True)
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except psutil.Error:
            pass
    return total / 2**20


def ppe_context(path: str, mmap: bool) -> tuple[float, float]:
    """(seconds from pool creation to 4 workers done, total PSS MiB)."""
    barrier = tempfile.mkdtemp(prefix="agora-peers-")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(4) as ex:
        futures = [ex.submit(_colsum, path, mmap, barrier) for _ in range(4)]
        wait(futures)
        ready = time.perf_counter() - t0
        for f in futures:
            f.result()
        pss = tree_pss_mib(os.getpid())
    for name in os.listdir(barrier):
        os.unlink(os.path.join(barrier, name))
    os.rmdir(barrier)
    return ready, pss


def agora_context(path: str) -> tuple[float, float, float]:
    """(seconds from `agora up` to 4 agents done, the same on a daemon already up, PSS MiB)."""
    t0 = time.perf_counter()
    with Daemon(CTX_POOL.format(path=path)) as d:
        run = {"capability": "colsum", "input": {"name": "vec"}}
        ids = d.client.call("submit_many", tasks=[run] * 4, wait_s=60)
        counts = d.client.call("wait_all", ids=ids, timeout_s=120)
        ready = time.perf_counter() - t0
        assert counts == {"succeeded": 4}, counts
        pss = tree_pss_mib(d.proc.pid)
        t1 = time.perf_counter()
        ids = d.client.call("submit_many", tasks=[run] * 4, wait_s=60)
        d.client.call("wait_all", ids=ids, timeout_s=120)
        again = time.perf_counter() - t1
    return ready, again, pss


def context_figures(mib: int, seed: int) -> dict[str, dict[str, float]]:
    rows = mib * 2**20 // (4 * 1024)
    arr = np.random.default_rng(seed).random((rows, 1024), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="agora-peers-") as tmp:
        path = os.path.join(tmp, "vec.npy")
        np.save(path, arr)
        del arr
        ready, again, pss = agora_context(path)
        ppe_ready, ppe_pss = ppe_context(path, mmap=False)
        mm_ready, mm_pss = ppe_context(path, mmap=True)
    return {"ctx_pss_mib": {"agora": round(pss, 1), "ppe": round(ppe_pss, 1), "ppe_mmap": round(mm_pss, 1)},
            "ctx_ready_s": {"agora": round(ready, 3), "agora_up_already": round(again, 3),
                            "ppe": round(ppe_ready, 3), "ppe_mmap": round(mm_ready, 3)}}


# ---------------------------------------------------------------- Ray (only in a loopback-only namespace)

def main() -> None:
    a = parse_args(__doc__)
    skip = in_netns_or_reexec()  # Ray only in a loopback-only namespace: re-runs this script there
    rng = random.Random(a.seed)
    n_rtt = 300 if a.quick else 2000
    total = 10_000
    res: dict = {"seed": a.seed, "settings": "daemon defaults; pools of 2 (4 for the context)"}
    rtt = {"agora": agora_rtt(n_rtt, rng), "ppe": ppe_rtt(n_rtt, rng)}
    res["rtt_p50_us"] = {k: round(statistics.median(v), 1) for k, v in rtt.items()}
    res["rtt_p99_us"] = {k: round(pct(v, 99), 1) for k, v in rtt.items()}
    res["tasks_per_s"] = {"agora": round(agora_throughput(total, rng)), "ppe": round(ppe_throughput(total, rng))}
    mib = 64 if a.quick else 256
    res.update(context_figures(mib, a.seed))
    res["context_mib"] = mib
    res["ray"] = {"skipped": skip} if skip else {"namespace": "loopback only", "cpus": 2}
    if skip is None:
        for name, (rtt_us, per_s) in ray_bare(n_rtt, total).items():
            res["rtt_p50_us"][name] = round(rtt_us, 1)
            res["tasks_per_s"][name] = round(per_s)
    _print(res)
    emit_json(a, res)


def _print(res: dict) -> None:
    r, t, m, s = res["rtt_p50_us"], res["tasks_per_s"], res["ctx_pss_mib"], res["ctx_ready_s"]
    print(f"{'figure':44} {'agora':>10} {'ppe':>10} {'ppe_mmap':>10}  agora/ppe  target")
    rows = [
        ("round trip p50 (us)", r["agora"], r["ppe"], None, r["agora"] / r["ppe"], "<= 1.2"),
        ("round trip p99 (us)", res["rtt_p99_us"]["agora"], res["rtt_p99_us"]["ppe"], None, None, ""),
        ("10,000 tasks in flight (tasks/s)", t["agora"], t["ppe"], None, t["agora"] / t["ppe"], ">= 1.5"),
        (f"total PSS, 4 workers + {res['context_mib']} MiB (MiB)", m["agora"], m["ppe"], m["ppe_mmap"],
         m["agora"] / m["ppe_mmap"], "<= 1.0 of mmap"),
        ("start to 4 workers done (s)", s["agora"], s["ppe"], s["ppe_mmap"], None, "<= 0.5 s"),
        ("  on a daemon already up (s)", s["agora_up_already"], None, s["ppe_mmap"],
         s["agora_up_already"] / s["ppe_mmap"], "<= 1.0 of mmap"),
    ]
    for name, ag, pp, mm, ratio, target in rows:
        fmt = "{:>10,.3f}" if name.endswith("(s)") else "{:>10,.1f}"
        cells = [fmt.format(v) if v is not None else f"{'':>10}" for v in (ag, pp, mm)]
        print(f"{name:44} {' '.join(cells)}  {f'{ratio:.2f}x' if ratio else '':>9}  {target}")
    if "skipped" in res["ray"]:
        print(f"ray: skipped ({res['ray']['skipped']})")
        return
    for name in ("ray_bare", "ray_actor"):
        print(f"{name}: round trip p50 {r[name]:,.1f} us, {t[name]:,} tasks/s (10,000 in flight, 2 CPUs)")


if __name__ == "__main__":
    threading.current_thread().name = "peers"
    main()
