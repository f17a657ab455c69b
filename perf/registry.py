#!/usr/bin/env python3
"""Registry throughput and latency, against the baselines measured in the same run.

    perf/registry.py [--quick] [--seed N] [--json]

With 1, 2, 4 and 8 client processes and 10,000 keys it measures:

* registrations/s for N=1 and N=4 partitions.  A "registration" here is one item of a
  ``register_many`` batch of 64: one batch costs one round trip to each partition it
  touches, sent to all of them before any reply is read (so ~1/64 round trip per
  registration, spread over the partitions).  Each figure is the median of 11 runs (1
  with ``--quick``) in which N=1 and N=4 take turns: a run takes about 0.1 s, and with 5
  runs the N=4/N=1 ratio at 2 clients moved by +-6% from one invocation to the next.
  ``register_p50_us`` is a single blocking ``register``: exactly one round trip.
* lookups/s for N=1 and N=4 by round trip (``fast_reads=False``: one round trip each),
  and from the shared-memory tables (``fastpath``: no round trip);
* a ``multiprocess.Manager().dict()`` lookup baseline;
* the raw round trip of a small message over a pipe between two processes;
* the partitions' CPU time per registration (psutil), its removal included: after each
  run the benchmark's clients exit and their entries are removed before the next run
  starts (it used to happen in the background of the next run, taking CPU from it).

The last line with ``--json`` is one JSON object; see the keys in ``main``.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocess  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402
from _common import floor_cpus, parse_args, pin_echo, pinned_parent  # noqa: E402

from runtime.registry import PartitionedBackend, partition_main  # noqa: E402
from runtime.registry.table import make_tables  # noqa: E402

FORK = multiprocess.get_context("fork")
CLIENTS = (1, 2, 4, 8)
NKEYS = 10_000
BATCH = 64
KEYS = [f"agent-{i}" for i in range(NKEYS)]


def entry(i: int) -> dict:
    return {"capabilities": ["summarize"],
            "metadata": {"pool": "summarize", "load": (i % 100) / 100, "health": "ok",
                         "reputation": 0.5}}


# ---------------------------------------------------------------------------- processes

class Partitions:
    def __init__(self, n: int, run_dir: str) -> None:
        self.tables = make_tables(n, NKEYS)
        self.paths = [os.path.join(run_dir, f"n{n}.{i}.sock") for i in range(n)]
        self.procs = []
        for i in range(n):
            r, w = os.pipe()
            p = FORK.Process(target=partition_main, args=(i, n, self.paths[i], self.tables[i]),
                             kwargs={"ready": lambda w=w: os.write(w, b"R")}, daemon=True)
            p.start()
            os.close(w)
            if not select.select([r], [], [], 30)[0]:
                raise RuntimeError(f"partition {i} of {n} did not start within 30 s")
            os.close(r)
            self.procs.append(p)

    def cpu_seconds(self) -> float:
        return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()
        for p in self.procs:
            p.join(10)
            if p.exitcode is None:
                p.kill()
                p.join(10)


def run_clients(n: int, work, *args) -> list[dict]:
    """Fork ``n`` clients running ``work(index, *args) -> dict``; start them together."""
    go_r, go_w = os.pipe()
    outs, procs = [], []
    for c in range(n):
        r, w = os.pipe()
        procs.append(FORK.Process(target=_client, args=(work, c, args, go_r, w), daemon=True))
        procs[-1].start()
        os.close(w)
        outs.append(r)
    for r in outs:  # every client is set up (connected, warmed) before the start signal
        if os.read(r, 1) != b"R":
            raise RuntimeError("a benchmark client died during set-up")
    os.write(go_w, b"G" * n)
    results = [orjson.loads(_read_all(r)) for r in outs]
    for p in procs:
        p.join(30)
    for fd in (go_r, go_w, *outs):
        os.close(fd)
    return results


def _client(work, index: int, args: tuple, go_r: int, out_w: int) -> None:
    code = 1
    try:
        run = work(index, *args)
        os.write(out_w, b"R")
        os.read(go_r, 1)
        os.write(out_w, orjson.dumps(run()))
        code = 0
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 1 << 20):
        data += chunk
    return data


# ---------------------------------------------------------------------------- workloads

def register_work(index: int, parts: Partitions, clients: int):
    b = PartitionedBackend(parts.paths, parts.tables, timeout=30)
    b.ping(0)
    mine = list(range(index, NKEYS, clients))

    def run() -> dict:
        me, t0 = os.getpid(), time.perf_counter()
        for s in range(0, len(mine), BATCH):
            res = b.register_many([(KEYS[i], entry(i), me) for i in mine[s:s + BATCH]])
            assert not any(isinstance(x, Exception) for x in res), res
        return {"n": len(mine), "t0": t0, "t1": time.perf_counter()}
    return run


def single_register_work(index: int, parts: Partitions, count: int):
    b = PartitionedBackend(parts.paths, parts.tables, timeout=30)
    for i in range(len(parts.paths)):
        b.ping(i)

    def run() -> dict:
        me, lat = os.getpid(), []
        for i in range(count):
            t = time.perf_counter()
            b.register(f"single-{i}", entry(i), me)
            lat.append(time.perf_counter() - t)
        return {"lat": lat}
    return run


def lookup_work(index: int, make_lookup, seed: int, duration: float):
    lookup = make_lookup()
    rng = random.Random(seed + index)
    keys = [KEYS[rng.randrange(NKEYS)] for _ in range(4096)]
    lookup(keys[0])

    def run() -> dict:
        n, lat, t0 = 0, [], time.perf_counter()
        end = t0 + duration
        pc = time.perf_counter
        while True:
            for k in keys[:256] if n % 4096 else keys:
                t = pc()
                lookup(k)
                if len(lat) < 20000:
                    lat.append(pc() - t)
            n += 256 if n % 4096 else 4096
            if pc() > end:
                break
        return {"n": n, "t0": t0, "t1": pc(), "lat": lat}
    return run


def plain_lookup_work(index: int, make_lookup, seed: int, duration: float):
    """Like lookup_work without per-call timing (the fast path is ~2 us: timing would show)."""
    lookup = make_lookup()
    rng = random.Random(seed + index)
    keys = [KEYS[rng.randrange(NKEYS)] for _ in range(4096)]

    def run() -> dict:
        n, t0 = 0, time.perf_counter()
        end = t0 + duration
        while time.perf_counter() < end:
            for k in keys:
                lookup(k)
            n += len(keys)
        return {"n": n, "t0": t0, "t1": time.perf_counter()}
    return run


def rate(results: list[dict]) -> float:
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return sum(r["n"] for r in results) / wall


def pcts(results: list[dict]) -> tuple[float, float]:
    lat = sorted(x for r in results for x in r["lat"])
    return lat[len(lat) // 2] * 1e6, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6


def pipe_rtt_us(count: int) -> float:
    """Median round trip of a 32-byte message to another process and back, over pipes."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    cpus = floor_cpus()  # across two cores (perf/_common.py, "the pipe floor")
    pid = os.fork()
    if pid == 0:
        try:
            pin_echo(cpus)
            os.close(a_w)  # or the echo never sees EOF
            while msg := os.read(a_r, 64):
                os.write(b_w, msg)
        finally:
            os._exit(0)
    msg, lat = b"x" * 32, []
    with pinned_parent(cpus):
        for _ in range(count):
            t = time.perf_counter()
            os.write(a_w, msg)
            os.read(b_r, 64)
            lat.append(time.perf_counter() - t)
    os.close(a_w)
    os.waitpid(pid, 0)
    for fd in (a_r, b_r, b_w):
        os.close(fd)
    return statistics.median(lat) * 1e6


# ---------------------------------------------------------------------------- the run

def measure_registrations(sets: dict[int, Partitions], rounds: int, out: dict) -> None:
    """registrations/s per N and client count: the median of ``rounds`` runs, N=1 and
    N=4 taking turns, so that a noisy moment of the machine hits both alike."""
    runs: dict[tuple[int, int], list[float]] = {}
    for _ in range(rounds):
        for c in CLIENTS:
            for n, parts in sets.items():
                before = parts.cpu_seconds()
                runs.setdefault((n, c), []).append(rate(run_clients(c, register_work, parts, c)))
                # The clients have exited: their entries go now, before the next run starts
                # (a partition removing 10,000 entries in the background took CPU from it).
                with PartitionedBackend(parts.paths, parts.tables, timeout=30) as admin:
                    admin.clear()
                out["_cpu"].append((parts.cpu_seconds() - before, NKEYS))
    for (n, c), rates in runs.items():
        out["reg_per_s"][f"N{n}"][str(c)] = statistics.median(rates)
        out["reg_runs"][f"N{n}"][str(c)] = rates


def measure_partitioned(n: int, parts: Partitions, seed: int, duration: float, out: dict) -> None:
    admin = PartitionedBackend(parts.paths, parts.tables, timeout=30)
    try:
        admin.clear()
        lat = run_clients(1, single_register_work, parts, 300 if duration < 1 else 2000)
        out["register_p50_by_n"][f"N{n}"] = pcts(lat)[0]
        admin.clear()
        admin.register_many([(k, entry(i), os.getpid()) for i, k in enumerate(KEYS)])
        make = lambda: PartitionedBackend(parts.paths, None, timeout=30).lookup  # noqa: E731
        for c in CLIENTS:
            res = run_clients(c, lookup_work, make, seed, duration)
            out["lookup_per_s"][f"N{n}"][str(c)] = rate(res)
            out["lookup_latency_us"][f"N{n}"][str(c)] = pcts(res)
        if n == 4:
            fast = lambda: PartitionedBackend(parts.paths, parts.tables).lookup  # noqa: E731
            for c in CLIENTS:
                res = run_clients(c, plain_lookup_work, fast, seed, duration)
                out["fastpath_lookup_per_s"][str(c)] = rate(res)
    finally:
        admin.close()


def measure_manager(seed: int, duration: float, out: dict) -> None:
    manager = FORK.Manager()
    try:
        d = manager.dict()
        d.update({k: entry(i) for i, k in enumerate(KEYS)})
        for c in CLIENTS:
            res = run_clients(c, plain_lookup_work, lambda: d.get, seed, duration / 2)
            out["manager_lookup_per_s"][str(c)] = rate(res)
    finally:
        manager.shutdown()


def main() -> None:
    args = parse_args(__doc__, quick="short runs (development)")
    duration, rounds = (0.3, 1) if args.quick else (1.0, 11)
    out: dict = {"reg_per_s": {"N1": {}, "N4": {}}, "lookup_per_s": {"N1": {}, "N4": {}},
                 "lookup_latency_us": {"N1": {}, "N4": {}}, "fastpath_lookup_per_s": {},
                 "manager_lookup_per_s": {}, "register_p50_by_n": {}, "_cpu": [], "reg_runs": {"N1": {}, "N4": {}}}
    run_dir = tempfile.mkdtemp(prefix="agora-perf-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        out["pipe_rtt_us"] = pipe_rtt_us(2000 if args.quick else 10000)
        sets = {}
        try:
            for n in (1, 4):
                sets[n] = Partitions(n, run_dir)
            measure_registrations(sets, rounds, out)
            for n, parts in sets.items():
                measure_partitioned(n, parts, args.seed, duration, out)
        finally:
            for parts in sets.values():
                parts.stop()
        measure_manager(args.seed, duration, out)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    cpu, regs = map(sum, zip(*out.pop("_cpu")))
    out["server_cpu_us_per_reg"] = cpu / regs * 1e6
    out["register_p50_us"] = out["register_p50_by_n"]["N4"]
    out["targets"] = targets(out)
    out["seed"], out["quick"] = args.seed, args.quick
    print_table(out)
    if args.json:
        print(orjson.dumps(out).decode())


def targets(o: dict) -> dict[str, bool]:
    fp, mg = o["fastpath_lookup_per_s"], o["manager_lookup_per_s"]
    return {
        "fastpath_1_client_ge_300k": fp["1"] >= 300_000,
        "fastpath_4_clients_ge_20x_manager": fp["4"] >= 20 * mg["4"],
        "register_p50_le_1.5x_pipe_rtt": o["register_p50_us"] <= 1.5 * o["pipe_rtt_us"],
        "N4_registrations_never_slower_than_N1": all(
            o["reg_per_s"]["N4"][c] >= o["reg_per_s"]["N1"][c] for c in o["reg_per_s"]["N1"]),
    }


def print_table(o: dict) -> None:
    row = "{:<34}" + "{:>12}" * len(CLIENTS)
    print(row.format("clients", *CLIENTS))
    for n in ("N1", "N4"):
        print(row.format(f"registrations/s {n} (batch {BATCH})",
                         *(f"{o['reg_per_s'][n][str(c)]:,.0f}" for c in CLIENTS)))
    for n in ("N1", "N4"):
        print(row.format(f"lookups/s {n} (round trip)",
                         *(f"{o['lookup_per_s'][n][str(c)]:,.0f}" for c in CLIENTS)))
        print(row.format(f"  p50/p99 us {n}", *(
            "{:.0f}/{:.0f}".format(*o["lookup_latency_us"][n][str(c)]) for c in CLIENTS)))
    print(row.format("lookups/s shared memory", *(f"{o['fastpath_lookup_per_s'][str(c)]:,.0f}"
                                                  for c in CLIENTS)))
    print(row.format("lookups/s Manager().dict()", *(f"{o['manager_lookup_per_s'][str(c)]:,.0f}"
                                                     for c in CLIENTS)))
    print(row.format("  shared memory / Manager", *(
        f"{o['fastpath_lookup_per_s'][str(c)] / o['manager_lookup_per_s'][str(c)]:.0f}x"
        for c in CLIENTS)))
    print(row.format("  N4 / N1 registrations", *(
        f"{o['reg_per_s']['N4'][str(c)] / o['reg_per_s']['N1'][str(c)]:.2f}x" for c in CLIENTS)))
    p50 = o["register_p50_by_n"]
    print(f"single register p50: N1 {p50['N1']:.0f} us, N4 {p50['N4']:.0f} us "
          f"(one round trip); pipe round trip p50 {o['pipe_rtt_us']:.0f} us "
          f"-> ratio {o['register_p50_us'] / o['pipe_rtt_us']:.2f}")
    print(f"partition CPU per registration (and its removal): {o['server_cpu_us_per_reg']:.1f} us")
    for name, ok in o["targets"].items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")


if __name__ == "__main__":
    main()
