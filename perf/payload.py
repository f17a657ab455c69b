"""Moving a large task result from an agent to its consumer: arena handle vs. pickled pipe.

    perf/payload.py [--quick] [--seed N] [--json]

A forked child (the producer) holds a float64 payload of 1 MiB or 64 MiB and sends it to
the parent (the consumer), over and over:

- arena: the child ``put``s it into its slot of an ``shm.arena.Arena`` (one copy) and sends
  the handle (JSON, ~100 bytes) through a pipe; the parent ``get_array``s it in place.
- pipe:  the child ``Connection.send``s the array through a multiprocess Pipe (dill pickling,
  the default path a naive runtime takes); the parent ``recv``s it.

"Arrived" means the same for both: the consumer holds an ndarray of the payload and has read
every element once (``arr.sum()``); for the arena it then releases the block.  A round is
timed from the producer's first step (``perf_counter`` before put/send, CLOCK_MONOTONIC,
shared by both processes) to the consumer's last; the first round of each size is a warm-up
(page faults of fresh memory) and is not counted; the figure is the median round.
The memcpy baseline, in the same run, is ``np.copyto`` of the same number of bytes between
two warm arrays in the parent.  GB/s = payload bytes / seconds / 1e9.

Targets (from the issue): arena >= 5x pipe at 64 MiB, and arena >= 0.3x memcpy.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocess  # noqa: E402
import numpy as np  # noqa: E402
from _common import parse_args  # noqa: E402

from shm.arena import Arena, Handle  # noqa: E402

MiB = 1 << 20
SIZES = {"1MiB": 1 * MiB, "64MiB": 64 * MiB}
WAIT = 120.0


def producer(method: str, arena: Arena | None, seed: int, conn) -> None:
    """Child: on each request (a size key) send that payload the method's way; b"" ends."""
    rng = np.random.default_rng(seed)
    payloads = {k: rng.standard_normal(n // 8) for k, n in SIZES.items()}
    writer = arena.slot(0) if arena is not None else None
    while (key := conn.recv_bytes().decode()):
        t0 = time.perf_counter()
        if writer is not None:
            conn.send_bytes(json.dumps([t0, writer.put(payloads[key]).to_json()]).encode())
        else:
            conn.send((t0, payloads[key]))
    conn.close()


def consume(method: str, arena: Arena | None, conn) -> tuple[float, float]:
    """Parent: receive one payload, read all of it; (seconds since the child's t0, sum)."""
    if arena is not None:
        t0, wire = json.loads(conn.recv_bytes())
        handle = Handle.from_json(wire)
        arr = arena.get_array(handle)
        total = float(arr.sum())
        del arr
        arena.release(handle)
    else:
        t0, arr = conn.recv()
        total = float(arr.sum())
    return time.perf_counter() - t0, total


def measure(method: str, rounds: dict[str, int], seed: int) -> dict[str, float]:
    arena = Arena.create(2 * (max(SIZES.values()) + MiB), 1) if method == "arena" else None
    ctx = multiprocess.get_context("fork")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=producer, args=(method, arena, seed, theirs), daemon=True)
    child.start()
    theirs.close()
    try:
        return {key: SIZES[key] / 1e9 / statistics.median(timed_rounds(method, arena, ours, key, n))
                for key, n in rounds.items()}
    finally:
        stop(child, ours)
        if arena is not None:
            arena.close()


def timed_rounds(method: str, arena: Arena | None, conn, key: str, n: int) -> list[float]:
    times = []
    for i in range(n + 1):
        conn.send_bytes(key.encode())
        if not conn.poll(WAIT):
            raise RuntimeError(f"{method} producer sent nothing for {key} within {WAIT}s")
        seconds, _ = consume(method, arena, conn)
        if i:  # round 0 warms up the pages
            times.append(seconds)
    return times


def stop(child, conn) -> None:
    try:
        conn.send_bytes(b"")
    except OSError:
        pass  # the child died already; join reaps it
    conn.close()
    child.join(WAIT)
    if child.exitcode is None:
        child.kill()
        child.join()


def memcpy(rounds: dict[str, int]) -> dict[str, float]:
    out = {}
    for key, n in rounds.items():
        src, dst = np.ones(SIZES[key] // 8), np.zeros(SIZES[key] // 8)
        np.copyto(dst, src)  # warm both
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            np.copyto(dst, src)
            times.append(time.perf_counter() - t0)
        out[key] = SIZES[key] / 1e9 / statistics.median(times)
    return out


def main() -> int:
    args = parse_args(__doc__, seed=0, quick="fewer rounds")
    rounds = {"1MiB": 10, "64MiB": 3} if args.quick else {"1MiB": 50, "64MiB": 9}
    results = {"arena": measure("arena", rounds, args.seed), "pipe": measure("pipe", rounds, args.seed),
               "memcpy": memcpy(rounds)}
    return 0 if report(results, rounds, args) else 1


def report(results: dict[str, dict[str, float]], rounds: dict[str, int], args) -> bool:
    print(f"payload transfer child -> parent, median of {rounds} rounds, seed {args.seed}")
    print(f"{'size':<6} {'arena GB/s':>11} {'pipe GB/s':>10} {'memcpy GB/s':>12} "
          f"{'arena/pipe':>11} {'arena/memcpy':>13}")
    for key in SIZES:
        a, p, m = (results[k][key] for k in ("arena", "pipe", "memcpy"))
        print(f"{key:<6} {a:>11.2f} {p:>10.2f} {m:>12.2f} {a / p:>10.1f}x {a / m:>12.2f}x")
    a64 = results["arena"]["64MiB"]
    pipe_ok = a64 >= 5 * results["pipe"]["64MiB"]
    memcpy_ok = a64 >= 0.3 * results["memcpy"]["64MiB"]
    print(f"target arena >= 5x pipe at 64 MiB: {'PASS' if pipe_ok else 'FAIL'}")
    print(f"target arena >= 0.3x memcpy at 64 MiB: {'PASS' if memcpy_ok else 'FAIL'}")
    if args.json:
        print(json.dumps({"arena_gbps": _r(results["arena"]), "pipe_gbps": _r(results["pipe"]),
                          "memcpy_gbps": _r(results["memcpy"]), "rounds": rounds, "seed": args.seed,
                          "pass": {"arena_vs_pipe": pipe_ok, "arena_vs_memcpy": memcpy_ok}}))
    return pipe_ok and memcpy_ok


def _r(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(main())
