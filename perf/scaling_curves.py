#!/usr/bin/env python3
"""How agora's costs grow: one curve per resource, each measured in this run.

    python perf/scaling_curves.py [--quick] [--seed N] [--json] [--plot DIR]

Curves (keys of the closing JSON line):

* ``agents``: trivial tasks (``perf._agents:Echo``, ``add``) against the pool's size
  1, 2, 4, 8, 16, 32, 64 (``--quick``: up to 16): ``tasks_per_s`` (batches of 1,000 in
  flight, ``submit_many`` + ``wait_all``; the best of 3 rounds on one daemon, since a load
  from elsewhere only ever lowers it) and ``rtt_p50_us`` (one at a time); beside them
  ``ppe_tasks_per_s``, ``ProcessPoolExecutor`` with as many workers on the same task.
* ``clients``: 1, 2, 4, 8, 16 client processes (``--quick``: up to 8), each submitting one
  task at a time, 2 agents: total ``tasks_per_s`` and ``rtt_p50_us`` across the clients.
* ``memory``: pools of 1, 4, 16, 32, 64 agents (``--quick``: 1, 4, 16) that each read a
  float32 context of 256 MiB (``--quick``: 64 MiB) through ``ctx.array``: ``uss_mib_per_agent``
  (median over the agents) and ``total_pss_mib`` of the daemon's whole tree.
* ``registry``: a shared-memory registry table (runtime.registry.table, what every
  process reads without a round trip) holding 1k, 10k, 100k, 1M entries (``--quick``: up to
  100k), each entry offering one of 100 capabilities: ``lookups_per_s`` (random keys) and
  ``select_ms`` (every entry of one capability: 1 % of the table); the in-process
  ``LocalBackend`` (``registry = "local"``) alongside: ``local_lookups_per_s``, ``local_select_ms``.
* ``journal``: the journal alone (runtime.tasks.journal, durability "normal" as the
  daemon's default, a background checkpointer as the coordinator runs it) over a run of
  1,000,000 tasks (``--quick``: 50,000), each submitted, started and finished in turns of 64
  as the coordinator groups them: ``tasks_per_s`` (wall) and ``tasks_per_cpu_s`` (per
  second of this process's CPU, the checkpointer thread's included) per tenth of the run.

``--plot DIR`` writes one PNG per curve into DIR (matplotlib, optional).  Wall-clock
figures on a shared machine are noisy: compare shapes, not single points.
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import psutil
from _common import REPO, Daemon, emit_json, parse_args

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
size = {size}
max = {size}
"""


def _rtt(client: object, n: int, rng: random.Random) -> list[float]:
    out = []
    for i in range(n):
        task = {"capability": "add", "input": {"a": rng.randrange(1000), "b": i}}
        t0 = time.perf_counter()
        rec = client.call("submit", task=task, result=True)
        out.append((time.perf_counter() - t0) * 1e6)
        assert rec["state"] == "succeeded", rec
    return out


def _throughput(client: object, total: int) -> float:
    tasks = [{"capability": "add", "input": {"a": i, "b": i}} for i in range(total)]
    t0 = time.perf_counter()
    ids: list[str] = []
    for i in range(0, total, 1000):
        ids += client.call("submit_many", tasks=tasks[i:i + 1000], wait_s=60)
    assert client.call("wait_all", ids=ids, timeout_s=600) == {"succeeded": total}
    return total / (time.perf_counter() - t0)


def agents_curve(sizes: list[int], n_rtt: int, total: int, rng: random.Random) -> list[dict]:
    rows = []
    for size in sizes:
        with Daemon(ECHO_POOL.format(size=size)) as d:
            d.wait_agents(size)
            _rtt(d.client, 20, rng)  # warm up
            rtt = _rtt(d.client, n_rtt, rng)
            rate = max(_throughput(d.client, total) for _ in range(3))  # best of 3: a shared machine
            rows.append({"agents": size, "tasks_per_s": round(rate),
                         "rtt_p50_us": round(statistics.median(rtt), 1)})
        rows[-1]["ppe_tasks_per_s"] = round(_ppe_throughput(size, total))
        print(f"  agents {size:3}: {rows[-1]}", flush=True)
    return rows


def _add(a: int, b: int) -> int:
    return a + b


def _ppe_throughput(workers: int, total: int) -> float:
    """``ProcessPoolExecutor(workers)`` on the same trivial task, all in flight, best of 3:
    how the standard library's pool itself fares with that many processes on this machine."""
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_add, range(4 * workers), range(4 * workers)))  # every worker up
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            futures = [ex.submit(_add, i, i) for i in range(total)]
            assert [f.result() for f in futures] == [2 * i for i in range(total)]
            best = max(best, total / (time.perf_counter() - t0))
        return best


def _client_proc(home: str, n: int, seed: int) -> tuple[float, list[float]]:
    from runtime.wire.client import Client
    with Client(home, timeout=120) as c:
        t0 = time.perf_counter()
        rtt = _rtt(c, n, random.Random(seed))
        return time.perf_counter() - t0, rtt


def clients_curve(counts: list[int], per_client: int, seed: int) -> list[dict]:
    rows = []
    with Daemon(ECHO_POOL.format(size=2)) as d:
        d.wait_agents(2)
        for n in counts:
            with ProcessPoolExecutor(n) as ex:
                list(ex.map(_client_proc, [str(d.home)] * n, [5] * n, range(n)))  # warm up
                t0 = time.perf_counter()
                got = list(ex.map(_client_proc, [str(d.home)] * n, [per_client] * n, range(seed, seed + n)))
                wall = time.perf_counter() - t0
            rtts = [x for _, r in got for x in r]
            rows.append({"clients": n, "tasks_per_s": round(n * per_client / wall),
                         "rtt_p50_us": round(statistics.median(rtts), 1)})
            print(f"  clients {n:3}: {rows[-1]}", flush=True)
    return rows


def _tree(root_pid: int) -> list[psutil.Process]:
    root = psutil.Process(root_pid)
    return [root, *root.children(recursive=True)]


def memory_curve(sizes: list[int], mib: int, seed: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="agora-curves-") as tmp:
        path = os.path.join(tmp, "vec.npy")
        arr = np.random.default_rng(seed).random((mib * 2**20 // 4096, 1024), dtype=np.float32)
        np.save(path, arr)
        del arr
        for size in sizes:
            with Daemon(CTX_POOL.format(path=path, size=size)) as d:
                d.wait_agents(size)
                run = {"capability": "colsum", "input": {"name": "vec"}}
                ids = d.client.call("submit_many", tasks=[run] * (2 * size), wait_s=60)
                assert d.client.call("wait_all", ids=ids, timeout_s=300) == {"succeeded": 2 * size}
                procs = _tree(d.proc.pid)
                infos = {p.pid: p.memory_full_info() for p in procs}
                agents = [infos[p.pid].uss for p in procs if p.name().startswith("agora:v.")]
                rows.append({"agents": size, "uss_mib_per_agent": round(statistics.median(agents) / 2**20, 2),
                             "total_pss_mib": round(sum(i.pss for i in infos.values()) / 2**20, 1)})
            print(f"  memory {size:3}: {rows[-1]}", flush=True)
    return rows


def _registry_point(n: int, rng: random.Random) -> dict:
    """The writer's and the local backend's entries live in this process; they are frozen
    out of the garbage collector (a reader in the daemon does not hold them: without the
    freeze, full collections walking n entries made a lookup at 100k look 5x slower)."""
    from runtime.registry import LocalBackend
    from runtime.registry.model import Entry, encode_entry
    from runtime.registry.table import TableReader, TableWriter, make_table
    mm = make_table(n)
    writer, local = TableWriter(mm), LocalBackend()
    me = os.getpid()
    for i in range(n):
        e = Entry(f"agent-{i}", [f"cap{i % 100}"], {"load": i % 7}, 1, me)
        writer.put(e, encode_entry(e))
        local.register(e.key, {"capabilities": e.capabilities, "metadata": e.metadata}, me)
    keys = [f"agent-{rng.randrange(n)}" for _ in range(20_000)]
    gc.collect()
    gc.freeze()
    try:
        out = {"entries": n, **_registry_rates(TableReader(mm), local, keys)}
    finally:
        gc.unfreeze()
    del writer, local
    gc.collect()  # the reader's views of the mapping are gone: it can close
    mm.close()
    return out


def _registry_rates(reader: object, local: object, keys: list[str]) -> dict:
    return {"lookups_per_s": round(_rate(reader.lookup, keys)),
            "local_lookups_per_s": round(_rate(local.lookup, keys)),
            "select_ms": round(_best_ms(lambda: reader.scan("cap7")), 3),
            "local_select_ms": round(_best_ms(lambda: local.select(capability="cap7")), 3),
            "select_matches": len(reader.scan("cap7"))}


def _rate(fn: object, keys: list[str], rounds: int = 3) -> float:
    """The best of ``rounds`` passes over ``keys`` (the first one warms the caches)."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for k in keys:
            assert fn(k) is not None
        best = min(best, time.perf_counter() - t0)
    return len(keys) / best


def _best_ms(fn: object, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def registry_curve(sizes: list[int], rng: random.Random) -> list[dict]:
    rows = []
    for n in sizes:
        rows.append(_registry_point(n, rng))
        print(f"  registry {n:>9,}: {rows[-1]}", flush=True)
    return rows


def journal_curve(total: int, turn: int = 64) -> list[dict]:
    from runtime.tasks.journal import Journal
    from runtime.tasks.task import parse_task
    rows = []
    with tempfile.TemporaryDirectory(prefix="agora-curves-") as tmp:
        j = Journal(tmp, durability="normal")
        j.checkpoint_in_background()
        spec = parse_task({"capability": "add", "input": {"a": 1, "b": 2}}, now=time.time())
        tenth, done, mark = max(turn, total // 10), 0, (0, time.perf_counter(), time.process_time())
        while done < total:
            with j.transaction():  # a turn: the results of the last dispatch and the next one
                ids = j.submit_many([spec] * turn)
                nums = j.start_attempts([(t, "w.0") for t in ids])
                for t, a in zip(ids, nums):
                    j.finish_attempt(t, a, "succeeded", result=3)
            done += turn
            if done - mark[0] >= tenth or done >= total:
                now = (done, time.perf_counter(), time.process_time())
                rows.append({"tasks": done, "tasks_per_s": round((done - mark[0]) / (now[1] - mark[1])),
                             "tasks_per_cpu_s": round((done - mark[0]) / max(1e-9, now[2] - mark[2]))})
                mark = now
                print(f"  journal {done:>9,}: {rows[-1]}", flush=True)
        rows[-1]["file_mib"] = round(os.path.getsize(j.path) / 2**20, 1)
        j.close()
    return rows


def plot(res: dict, out_dir: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return []
    os.makedirs(out_dir, exist_ok=True)
    specs = [("agents", "agents", ["tasks_per_s", "ppe_tasks_per_s", "rtt_p50_us"], "log"),
             ("clients", "clients", ["tasks_per_s", "rtt_p50_us"], "linear"),
             ("memory", "agents", ["uss_mib_per_agent", "total_pss_mib"], "log"),
             ("registry", "entries", ["lookups_per_s", "local_lookups_per_s", "select_ms", "local_select_ms"], "log"),
             ("journal", "tasks", ["tasks_per_s", "tasks_per_cpu_s"], "linear")]
    written = []
    for name, x, ys, xscale in specs:
        rows = res[name]
        fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.4), squeeze=False)
        for ax, y in zip(axes[0], ys):
            ax.plot([r[x] for r in rows], [r[y] for r in rows], marker="o")
            ax.set_xscale(xscale)
            ax.set_xlabel(x)
            ax.set_title(y)
            ax.set_ylim(bottom=0) if xscale == "linear" or "per_s" in y or "mib" in y else None
            ax.grid(alpha=0.3)
        fig.suptitle(f"agora: {name} ({res['settings']})", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"scaling_{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def targets(res: dict) -> dict[str, bool | None]:
    tput = [r["tasks_per_s"] for r in res["agents"]]
    mem = res["memory"][-1]
    reg = {r["entries"]: r for r in res["registry"]}
    at_1m = reg.get(1_000_000)
    return {"throughput_at_largest_pool_ge_0.8_peak": tput[-1] >= 0.8 * max(tput),
            "uss_per_agent_at_largest_le_10_mib": mem["uss_mib_per_agent"] <= 10,
            "lookups_at_1m_ge_0.5_of_1k": (None if at_1m is None else
                                           at_1m["lookups_per_s"] >= 0.5 * reg[1000]["lookups_per_s"]),
            "select_over_100k_le_5_ms": reg[100_000]["select_ms"] <= 5 if 100_000 in reg else None}


def main() -> None:
    a = parse_args(__doc__, **{"--plot": {"metavar": "DIR", "help": "write PNGs into DIR (e.g. docs/perf)"}})
    rng = random.Random(a.seed)
    q = a.quick
    agents = [1, 2, 4, 8, 16] if q else [1, 2, 4, 8, 16, 32, 64]
    clients = [1, 2, 4, 8] if q else [1, 2, 4, 8, 16]
    mem_sizes, mib = ([1, 4, 16], 64) if q else ([1, 4, 16, 32, 64], 256)
    reg_sizes = [1000, 10_000, 100_000] if q else [1000, 10_000, 100_000, 1_000_000]
    journal_total = 50_000 if q else 1_000_000
    res: dict = {"seed": a.seed, "quick": q, "settings": (
        f"{'--quick' if q else 'full'}: daemon defaults; context {mib} MiB; journal {journal_total:,} tasks")}
    print("agents (throughput, round trip):", flush=True)
    res["agents"] = agents_curve(agents, 100 if q else 500, 3000 if q else 10_000, rng)
    res["largest_vs_peak"] = {k: round(res["agents"][-1][k] / max(r[k] for r in res["agents"]), 2)
                              for k in ("tasks_per_s", "ppe_tasks_per_s")}
    print(f"  throughput at {res['agents'][-1]['agents']} agents / peak: {res['largest_vs_peak']}")
    print("clients:", flush=True)
    res["clients"] = clients_curve(clients, 50 if q else 200, a.seed)
    print("memory:", flush=True)
    res["memory"] = memory_curve(mem_sizes, mib, a.seed)
    print("registry:", flush=True)
    res["registry"] = registry_curve(reg_sizes, rng)
    print("journal:", flush=True)
    res["journal"] = journal_curve(journal_total)
    res["targets"] = targets(res)
    print("targets:", res["targets"])
    if a.plot:
        res["plots"] = [os.path.relpath(p, REPO) for p in plot(res, a.plot)]
        print("wrote", ", ".join(res["plots"]))
    emit_json(a, res)


if __name__ == "__main__":
    threading.current_thread().name = "curves"
    main()
