#!/usr/bin/env python3
"""Hardening: the coordinator loop's latency under hostile load, and what a coordinator
crash costs.

    python perf/hardening.py [--quick] [--seed N] [--json]

* ``loop_p50_ms`` / ``loop_p99_ms``: round trips of ``ping`` from one client while, in
  other processes, a client submits tasks without pause, a client that never reads has
  large replies pending (``events --limit 10000``, ~2 MB each), and a client runs
  ``trace`` and an unfiltered ``events`` scan over a large event log (filler written before
  the daemon starts: 32 MiB with --quick, 128 MiB without) one after the other.  A ping
  waits for whatever turn the loop is in, so this is the loop's latency as a client sees
  it.  Baseline in the same run: ping p50/p99 on the same daemon before the load starts
  (``quiet_p50_ms`` / ``quiet_p99_ms``); ``coordinator_turn_p99_ms`` is the loop's own
  figure (``agora metrics``: busy time of each turn over its recent turns).
* ``coordinator_recovery_ms``: SIGKILL of the coordinator -> the first task submitted
  after it has completed (a new connection, ``submit`` with ``result=True``, retried until
  the new coordinator answers): median over the trials (``coordinator_recovery_max_ms``
  the worst).  Trials are 3 s apart to stay inside the core supervisor's intensity.
* ``agent_restarts_per_coordinator_restart``: agents whose pid changed across one
  coordinator restart (from the supervision tree, before the kill and after recovery),
  averaged over the trials; the pool has ``AGENTS`` agents.  Today the core supervisor
  is rest_for_one, so every agent restarts with the coordinator (issue 15, item 6 makes
  it 0).

Targets (issue 15): loop p99 <= 20 ms; recovery <= 500 ms; agent restarts per coordinator
restart: 0.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import statistics
import tempfile
import time
from pathlib import Path

import multiprocess
import orjson
from _common import REPO, emit_json, parse_args, pct, private_runtime_dir

from runtime.config import RunPaths
from runtime.daemon.launch import spawn, stop, wait_up
from runtime.observability.telemetry import LOG_NAME
from runtime.wire.client import Client
from runtime.wire.protocol import encode_frame, make_request

AGENTS = 4
CONFIG = f"""
[daemon]
drain_s = 1.0
[pools.w]
agent = "perf._agents:Echo"
size = {AGENTS}
max = {AGENTS}
mailbox_messages = 100000
[pools.w.scaling]
autoscale = false
[pools.w.capabilities.add]
cost = 1.0
"""
TRACE = "5e" * 16  # the filler's own trace: one line in TRACE_EVERY belongs to it
TRACE_EVERY = 200


# ---------------------------------------------------------------- the daemon


class Home:
    """A daemon in a temporary home whose event log already holds ``filler_mib``."""

    def __init__(self, filler_mib: int, rng: random.Random) -> None:
        private_runtime_dir()
        self.home = Path(tempfile.mkdtemp(prefix="agora-perf-hardening-"))
        write_filler(self.home, filler_mib, rng)
        self.proc = spawn(self.home, CONFIG, path=[str(REPO)])
        wait_up(self.home, self.proc)
        self.client = Client(str(self.home), timeout=60.0)

    def close(self) -> None:
        self.client.close()
        stop(self.home, self.proc)
        shutil.rmtree(self.home, ignore_errors=True)


def write_filler(home: Path, mib: int, rng: random.Random) -> None:
    with open(home / LOG_NAME, "wb") as f:
        size, i = 0, 0
        while size < mib << 20:
            ev = {"ts": 1_000_000.0 + i * 1e-3, "type": "filler.tick", "source": "agent:old.1",
                  "trace_id": TRACE if i % TRACE_EVERY == 0 else f"{rng.getrandbits(128):032x}",
                  "span_id": f"{i % 11:016x}", "n": i, "pad": "x" * 96}
            line = orjson.dumps(ev) + b"\n"
            f.write(line)
            size, i = size + len(line), i + 1


# ---------------------------------------------------------------- load, in other processes


def submitter(home: str, stop_ev) -> None:
    with Client(home, timeout=60.0) as c:
        n = 0
        while not stop_ev.is_set():
            ids = c.call("submit_many", tasks=[{"capability": "add", "input": {"a": n, "b": i}}
                                              for i in range(50)], wait_s=30)
            c.call("wait_all", ids=ids, timeout_s=60)
            n += 1


def scanner(home: str, stop_ev) -> None:
    with Client(home, timeout=120.0) as c:
        while not stop_ev.is_set():
            c.call("trace", id=TRACE)
            c.call("events", limit=10_000)


def slow_reader(home: str, stop_ev) -> None:
    """Three large replies asked for and never read (6 MB: under the 8 MiB drop bound)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(RunPaths.for_home(home).control)
    for rid in (1, 2, 3):
        s.sendall(encode_frame(make_request(rid, "events", {"limit": 10_000})))
    stop_ev.wait(300)
    s.close()


def pings(c: Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.call("ping")
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def loop_latency(h: Home, n: int) -> dict[str, float]:
    quiet = pings(h.client, n // 2)
    ctx = multiprocess.get_context("fork")
    stop_ev = ctx.Event()
    procs = [ctx.Process(target=fn, args=(str(h.home), stop_ev), daemon=True)
             for fn in (submitter, scanner, slow_reader)]
    for p in procs:
        p.start()
    try:
        time.sleep(1.0)  # the scans and the submissions under way
        loaded = pings(h.client, n)
        loop = h.client.call("metrics")["loop"]
    finally:
        stop_ev.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
                p.join(5)
    return {"quiet_p50_ms": round(pct(quiet, 50), 3), "quiet_p99_ms": round(pct(quiet, 99), 3),
            "loop_p50_ms": round(pct(loaded, 50), 3), "loop_p99_ms": round(pct(loaded, 99), 3),
            "loop_max_ms": round(max(loaded), 3), "coordinator_turn_p99_ms": loop["turn_p99_ms"],
            "pings": len(loaded)}


# ---------------------------------------------------------------- coordinator crash


def walk(node: dict) -> list[dict]:
    return [node, *[n for c in node.get("children", []) for n in walk(c)]]


def tree_pids(c: Client) -> tuple[int, dict[str, int]]:
    nodes = walk(c.call("status")["tree"])
    coord = next(n["pid"] for n in nodes if n["id"] == "coordinator")
    agents = {n["id"]: n["pid"] for n in nodes if str(n["id"]).startswith("agent:") and n.get("pid")}
    return coord, agents


def first_task_after(home: Path, i: int, deadline: float) -> None:
    """A new connection and one task to completion, retried until the daemon answers."""
    delay = 0.002
    while True:
        try:
            with Client(str(home), timeout=5.0) as c:
                rec = c.call("submit", task={"capability": "add", "input": {"a": i, "b": 1}}, result=True)
            if rec["state"] == "succeeded":
                return
        except Exception:  # noqa: BLE001 -- not yet: the socket is gone or not yet listening
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("no task completed within 60 s of the coordinator's SIGKILL")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def all_agents_back(home: Path, deadline: float) -> dict[str, int]:
    while True:
        try:
            with Client(str(home), timeout=5.0) as c:
                _, agents = tree_pids(c)
                if len(agents) == AGENTS and len(c.call("agents")) == AGENTS:
                    return agents
        except Exception:  # noqa: BLE001 -- the coordinator is still coming back
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the pool did not come back within 60 s")
        time.sleep(0.05)


def coordinator_crashes(h: Home, trials: int, rng: random.Random) -> dict[str, float]:
    recoveries, restarted = [], []
    agents = all_agents_back(h.home, time.monotonic() + 60)
    for i in range(trials):
        with Client(str(h.home), timeout=10.0) as c:
            coord, agents = tree_pids(c)
        time.sleep(rng.uniform(0, 0.01))
        t0 = time.perf_counter()
        os.kill(coord, signal.SIGKILL)
        first_task_after(h.home, i, time.monotonic() + 60)
        recoveries.append((time.perf_counter() - t0) * 1e3)
        after = all_agents_back(h.home, time.monotonic() + 60)
        restarted.append(sum(after.get(k) != pid for k, pid in agents.items()))
        time.sleep(3.0)  # the core supervisor allows 5 restarts in 10 s
    return {"coordinator_recovery_ms": round(statistics.median(recoveries), 1),
            "coordinator_recovery_max_ms": round(max(recoveries), 1),
            "agent_restarts_per_coordinator_restart": round(statistics.mean(restarted), 2),
            "crash_trials": trials}


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def main() -> None:
    a = parse_args(__doc__)
    rng = random.Random(a.seed)
    h = Home(32 if a.quick else 128, rng)
    try:
        res = loop_latency(h, 400 if a.quick else 2000)
        h.client.close()
        res.update(coordinator_crashes(h, 3 if a.quick else 6, rng))
    finally:
        h.close()
    res.update(seed=a.seed, agents=AGENTS, filler_mib=32 if a.quick else 128)
    print(f"{'measure':44} {'value':>10}  target")
    print(f"{'ping p50 / p99, quiet (baseline)':44} {res['quiet_p50_ms']:>4.2f}/{res['quiet_p99_ms']:<5.2f}ms")
    print(f"{'ping p50 under load (loop_p50_ms)':44} {res['loop_p50_ms']:>8.2f}ms")
    print(f"{'ping p99 under load (loop_p99_ms)':44} {res['loop_p99_ms']:>8.2f}ms  <= 20 ms "
          f"{verdict(res['loop_p99_ms'] <= 20)} ({res['loop_p99_ms'] / max(res['quiet_p99_ms'], 1e-3):.1f}x quiet)")
    print(f"{'ping max under load':44} {res['loop_max_ms']:>8.2f}ms")
    print(f"{'coordinator turn p99 (agora metrics)':44} {res['coordinator_turn_p99_ms']:>8.2f}ms")
    print(f"{'coordinator SIGKILL -> next task done':44} {res['coordinator_recovery_ms']:>8.1f}ms  <= 500 ms "
          f"{verdict(res['coordinator_recovery_ms'] <= 500)} (max {res['coordinator_recovery_max_ms']} ms)")
    print(f"{'agent restarts per coordinator restart':44} {res['agent_restarts_per_coordinator_restart']:>10}  "
          f"0 {verdict(res['agent_restarts_per_coordinator_restart'] == 0)} (pool of {AGENTS})")
    print(f"{res['pings']} pings under load (a submitter, a slow reader, trace/events scans over "
          f"{res['filler_mib']} MiB of log); {res['crash_trials']} coordinator kills; seed {a.seed}")
    emit_json(a, res)


if __name__ == "__main__":
    main()
