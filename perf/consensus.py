"""How fast agents decide together, and how fast a dead lock holder's lock moves on.

    python perf/consensus.py [--quick] [--seed N] [--json]

Against a real daemon (one per configuration, started and stopped here):

* vote: ``vote`` among 4, 16 and 64 ``Guesser`` agents (real processes answering through
  their ``vote()`` hook); the time from opening the vote to its outcome as the
  coordinator measures it (``elapsed_ms``), and the client's round trip around it.
  Baseline in the same daemon: the client's ``ping`` round trip.
* lock failover: ``Locker`` agents queue for one lock; the holder is SIGKILLed; the time
  from the kill to the next holder's first write (both on CLOCK_MONOTONIC, shared by all
  processes).  Baseline: the raw round trip of a pipe between two processes measured here.

Targets (issue "Consensus"): vote p50 <= 5 ms with 16 agents; lock failover p50 <= 50 ms.
The last line with --json: {"vote_p50_ms": {"4":..,"16":..,"64":..}, "lock_failover_p50_ms": ..,
"ping_p50_ms": .., "pipe_rtt_p50_ms": .., "vote_client_p50_ms": {...}, "seed": ..}.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import floor_cpus, parse_args, pin_echo, pinned_parent  # noqa: E402

from runtime.daemon.launch import running_daemon  # noqa: E402

POOL = """
[daemon]
drain_s = 2.0
[pools.{name}]
agent = "perf._agents_consensus:{cls}"
size = {size}
min = {size}
max = {max}
[pools.{name}.capabilities.{cap}]
cost = 1.0
"""


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


def wait_agents(c, n: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(c.call("agents")) < n:
        if time.monotonic() > deadline:
            joined = len(c.call("agents"))
            raise SystemExit(f"only {joined} of {n} agents joined within {timeout} s")
        time.sleep(0.05)


def pipe_rtt(reps: int) -> list[float]:
    """Round trip of one byte between two processes over a pair of pipes."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    cpus = floor_cpus()  # across two cores (perf/_common.py, "the pipe floor")
    pid = os.fork()
    if pid == 0:
        try:
            pin_echo(cpus)
            while os.read(a_r, 1) == b"x":
                os.write(b_w, b"y")
        finally:
            os._exit(0)
    out = []
    with pinned_parent(cpus):
        for _ in range(reps):
            t = time.perf_counter()
            os.write(a_w, b"x")
            os.read(b_r, 1)
            out.append((time.perf_counter() - t) * 1000)
    os.write(a_w, b"q")
    os.waitpid(pid, 0)
    for fd in (a_r, a_w, b_r, b_w):
        os.close(fd)
    return out


def measure_votes(home: Path, n: int, reps: int, rng: random.Random) -> dict[str, list[float]]:
    cfg = POOL.format(name="voters", cls="Guesser", size=n, max=n, cap="guess")
    with running_daemon(home, cfg, path=[str(REPO)]) as (c, _):
        wait_agents(c, n)
        for _ in range(3):  # warm-up
            c.call("ping")
            c.call("vote", question="warm", options=["1", "2"], pool="voters", deadline_s=10)
        elapsed, client, ping = [], [], []
        for i in range(reps):
            options = [str(rng.randint(0, 30)) for _ in range(4)]
            options = list(dict.fromkeys(options)) or ["1"]
            t = time.perf_counter()
            got = c.call("vote", question=f"q{i}", options=options, method="schulze",
                         pool="voters", deadline_s=10)
            client.append((time.perf_counter() - t) * 1000)
            elapsed.append(got["elapsed_ms"])
            assert got["missing"] == [] and len(got["ballots"]) == n, got
            t = time.perf_counter()
            c.call("ping")
            ping.append((time.perf_counter() - t) * 1000)
    return {"elapsed": elapsed, "client": client, "ping": ping}


def _holder(path: Path, seen: set[int]) -> tuple[int, int] | None:
    if not path.exists():
        return None
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if rows and rows[-1][2] == "start" and int(rows[-1][0]) not in seen:
        return int(rows[-1][0]), int(rows[-1][1])
    return None


def _next_start(path: Path, token: int, deadline: float) -> float:
    while time.monotonic() < deadline:
        for ln in path.read_text().splitlines():
            parts = ln.split()
            if parts and int(parts[0]) > token and parts[2] == "start":
                return float(parts[3])
        time.sleep(0.001)
    raise SystemExit(f"no new lock holder within the deadline after token {token}")


def measure_failover(home: Path, reps: int) -> list[float]:
    # max = 16: the pool's restart intensity (2 x max in 10 s) must allow one kill per rep
    cfg = POOL.format(name="lockers", cls="Locker", size=4, max=16, cap="locked_append")
    out = home / "sections.log"
    with running_daemon(home, cfg, path=[str(REPO)]) as (c, _):
        wait_agents(c, 4)
        task = {"capability": "locked_append", "options": {"max_attempts": 5},
                "input": {"file": str(out), "hold_s": 0.3}}
        c.call("submit_many", tasks=[task] * (reps * 4 + 4))
        seen: set[int] = set()
        times = []
        for _ in range(reps):
            deadline = time.monotonic() + 60
            got = None
            while got is None and time.monotonic() < deadline:
                got = _holder(out, seen)
                time.sleep(0.002)
            if got is None:
                raise SystemExit("no lock holder appeared within 60 s")
            token, pid = got
            seen.add(token)
            t_kill = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            times.append((_next_start(out, token, time.monotonic() + 30) - t_kill) * 1000)
            time.sleep(0.35)  # let the restarted agent rejoin the queue (not measured)
    return times


def main() -> int:
    a = parse_args(__doc__, quick="fewer repetitions (development)")
    rng = random.Random(a.seed)
    reps, fail_reps = (15, 3) if a.quick else (100, 10)
    tmp = Path(tempfile.mkdtemp(prefix="agora-perf-consensus-"))
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for n in (4, 16, 64):
            home = tmp / f"v{n}"
            home.mkdir()
            results[str(n)] = measure_votes(home, n, reps, rng)
        (tmp / "lock").mkdir()
        failover = measure_failover(tmp / "lock", fail_reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rtt = pipe_rtt(2000)
    ping = [x for r in results.values() for x in r["ping"]]
    report = {"vote_p50_ms": {n: p50(r["elapsed"]) for n, r in results.items()},
              "vote_client_p50_ms": {n: p50(r["client"]) for n, r in results.items()},
              "lock_failover_p50_ms": p50(failover), "ping_p50_ms": p50(ping),
              "pipe_rtt_p50_ms": p50(rtt), "seed": a.seed, "quick": a.quick}
    print(f"{'measure':<34}{'p50 ms':>10}{'x ping':>10}")
    for n, r in results.items():
        print(f"{'vote, ' + n + ' agents (open->outcome)':<34}{p50(r['elapsed']):>10.3f}"
              f"{p50(r['elapsed']) / report['ping_p50_ms']:>10.1f}")
        print(f"{'vote, ' + n + ' agents (client)':<34}{p50(r['client']):>10.3f}"
              f"{p50(r['client']) / report['ping_p50_ms']:>10.1f}")
    print(f"{'ping round trip (baseline)':<34}{report['ping_p50_ms']:>10.3f}{1.0:>10.1f}")
    print(f"{'pipe round trip (baseline)':<34}{report['pipe_rtt_p50_ms']:>10.3f}")
    failover = report["lock_failover_p50_ms"]
    print(f"{'lock failover after SIGKILL':<34}{failover:>10.3f}"
          f"{failover / report['ping_p50_ms']:>10.1f}"
          f"  ({failover / report['pipe_rtt_p50_ms']:.0f} x pipe rtt)")
    print(f"targets: vote p50 <= 5 ms with 16 agents: {report['vote_p50_ms']['16'] <= 5}; "
          f"lock failover p50 <= 50 ms: {report['lock_failover_p50_ms'] <= 50}")
    if a.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
