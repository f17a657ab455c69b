"""Memory per agent: one shared context (shm.context) vs. every agent loading its own copy.

    perf/memory.py [--quick] [--seed N] [--json]

The owner (this process) publishes one context of 256 MiB (64 MiB with --quick) of float32
through ``ContextStore``; then, for 1, 4 and 16 agents forked with multiprocess's fork
context after ``gc.freeze()``, each agent maps it with ``ContextReader.array`` and reads one
byte of every page (so every page is mapped).  The baseline, in the same run, forks the
same agents but each ``np.load``s the context from a .npy file into its own memory (and
reads every page too).  While all agents of a round wait, the owner measures each agent's
USS and PSS (psutil ``memory_full_info``) and its own PSS; "total PSS" is owner + agents.

Targets (from the issue): shared per-agent USS <= 10 MiB; total PSS with 16 agents
<= 256 MiB + 16 x 15 MiB (scaled to the context size with --quick).  The Elixir reference
spent 233 MB per agent on its context.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multiprocess  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from _common import parse_args  # noqa: E402

from shm.context import ContextReader, ContextStore  # noqa: E402
from shm.segment import RunId  # noqa: E402

MiB = 1 << 20
AGENTS = (1, 4, 16)
WAIT = 120.0


def touch_every_page(arr: np.ndarray) -> int:
    """Read one byte per page: every page gets mapped, nothing is written."""
    flat = arr.reshape(-1).view(np.uint8)
    return int(flat[::mmap_page()].sum(dtype=np.int64))


def mmap_page() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def agent(mode: str, where: str, conn) -> None:
    """One agent: get the context the mode's way, touch it, report, wait to be released."""
    arr = ContextReader(where).array("ctx") if mode == "shared" else np.load(where)
    touch_every_page(arr)
    conn.send_bytes(b"ready")
    conn.recv_bytes()  # the owner measured us: exit
    conn.close()


def fork_agents(mode: str, where: str, n: int) -> list[tuple[multiprocess.Process, object]]:
    ctx = multiprocess.get_context("fork")
    gc.collect()
    gc.freeze()  # keep the children's GC from dirtying copy-on-write pages
    agents = []
    for _ in range(n):
        ours, theirs = ctx.Pipe()
        p = ctx.Process(target=agent, args=(mode, where, theirs), daemon=True)
        p.start()
        theirs.close()
        agents.append((p, ours))
    gc.unfreeze()
    return agents


def measure_round(mode: str, where: str, n: int) -> dict[str, float]:
    agents = fork_agents(mode, where, n)
    try:
        for p, conn in agents:
            if not conn.poll(WAIT) or conn.recv_bytes() != b"ready":
                raise RuntimeError(f"{mode} agent {p.pid} did not get ready within {WAIT}s")
        infos = [psutil.Process(p.pid).memory_full_info() for p, _ in agents]
        owner_pss = psutil.Process().memory_full_info().pss
    finally:
        release(agents)
    uss = [i.uss / MiB for i in infos]
    return {"uss_mean": float(np.mean(uss)), "uss_max": float(np.max(uss)),
            "pss_agent_mean": float(np.mean([i.pss / MiB for i in infos])),
            "pss_total": (owner_pss + sum(i.pss for i in infos)) / MiB}


def release(agents) -> None:
    for _p, conn in agents:
        try:
            conn.send_bytes(b"go")
        except OSError:
            pass  # the agent already died; join below reaps it
        conn.close()
    for p, _ in agents:
        p.join(WAIT)
        if p.exitcode is None:
            p.kill()
            p.join()


def run(context_mib: int, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    rng = np.random.default_rng(seed)
    work = tempfile.mkdtemp(prefix="agora-perf-memory-")
    store = ContextStore(RunId.new(), os.path.join(work, "state"))
    try:
        data = rng.standard_normal(context_mib * MiB // 4, dtype=np.float32)
        np.save(os.path.join(work, "ctx.npy"), data)
        store.put_array("ctx", data)
        del data
        gc.collect()
        where = {"shared": os.path.join(work, "state"), "baseline": os.path.join(work, "ctx.npy")}
        return {mode: {str(n): measure_or_skip(mode, where[mode], n, context_mib) for n in AGENTS}
                for mode in ("shared", "baseline")}
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)


def measure_or_skip(mode: str, where: str, n: int, context_mib: int) -> dict[str, float]:
    need = n * context_mib * MiB * (1.5 if mode == "baseline" else 0.1)
    if need > psutil.virtual_memory().available * 0.6:
        print(f"skipping {mode} x{n}: needs ~{need / MiB:.0f} MiB, not enough memory free now", file=sys.stderr)
        return {"uss_mean": float("nan"), "uss_max": float("nan"), "pss_agent_mean": float("nan"),
                "pss_total": float("nan")}
    return measure_round(mode, where, n)


def report(results, context_mib: int, quick: bool, seed: int, as_json: bool) -> bool:
    uss_target, pss_target = 10.0, context_mib + 16 * 15.0
    print(f"context: {context_mib} MiB float32{' (--quick: 64 MiB instead of 256 MiB)' if quick else ''}, "
          f"seed {seed}, pid {os.getpid()}")
    print(f"{'mode':<9} {'agents':>6} {'USS/agent MiB':>14} {'max USS':>8} {'PSS/agent':>10} {'total PSS MiB':>14}")
    for mode, rows in results.items():
        for n, r in rows.items():
            print(f"{mode:<9} {n:>6} {r['uss_mean']:>14.1f} {r['uss_max']:>8.1f} "
                  f"{r['pss_agent_mean']:>10.1f} {r['pss_total']:>14.1f}")
    shared, base = results["shared"], results["baseline"]
    for n in map(str, AGENTS):
        print(f"ratio baseline/shared at {n:>2} agents: USS x{base[n]['uss_mean'] / shared[n]['uss_mean']:.1f}, "
              f"total PSS x{base[n]['pss_total'] / shared[n]['pss_total']:.1f}")
    uss_ok = all(r["uss_max"] <= uss_target for r in shared.values())
    pss_ok = shared["16"]["pss_total"] <= pss_target
    print(f"target shared USS/agent <= {uss_target:.0f} MiB (every agent): {'PASS' if uss_ok else 'FAIL'}")
    print(f"target total PSS at 16 agents <= {context_mib} + 16 x 15 = {pss_target:.0f} MiB "
          f"(got {shared['16']['pss_total']:.0f}): {'PASS' if pss_ok else 'FAIL'}")
    if as_json:
        print(json.dumps({
            "uss_per_agent_mib": {m: {n: round(r["uss_mean"], 2) for n, r in rows.items()}
                                  for m, rows in results.items()},
            "pss_total_mib": {m: {n: round(r["pss_total"], 2) for n, r in rows.items()}
                              for m, rows in results.items()},
            "context_mib": context_mib, "quick": quick, "seed": seed,
            "targets": {"uss_per_agent_mib": uss_target, "pss_total_16_mib": pss_target},
            "pass": {"uss": uss_ok, "pss": pss_ok}}))
    return uss_ok and pss_ok


def main() -> int:
    args = parse_args(__doc__, seed=0, quick="64 MiB context instead of 256 MiB")
    context_mib = 64 if args.quick else 256
    results = run(context_mib, args.seed)
    return 0 if report(results, context_mib, args.quick, args.seed, args.json) else 1


if __name__ == "__main__":
    sys.exit(main())
