#!/usr/bin/env python3
"""Autoscaling against a pool fixed at the peak size, on the same load, in the same run.

    python perf/scaling.py [--quick] [--seed N] [--json] [--plot FILE.png]

Two real daemons run one after the other with the same seeded load: Poisson arrivals of
tasks that each hold an agent for ``SERVICE_S`` (a sleep: the agents wait, as agents that
call a model or a service do, so the figures do not depend on how busy the shared cores
are).  The rate profile: idle, a *step* to 60 % of the peak (held), a ramp up to the peak,
a plateau, a ramp down to zero, idle (the offered load's mean is about half its peak:
``offered_mean_over_peak`` in the output; a pool sized for the peak idles the rest).

* ``fixed``: ``PEAK_AGENTS`` agents all the time (the baseline).
* ``autoscaled``: the same pool with ``min = 1``, ``size = 1``, ``max = PEAK_AGENTS`` and the
  scaler on (knobs in ``SCALING`` below).  The hysteresis band is symmetric around the
  target (0.6 < 0.75 < 0.9).  With ``scale_down_at = 0.5`` a pool of 6 held at a demand of
  3, which 4 agents serve at the target: that band cost about 3 % of the fixed pool's
  agent-seconds, for p95 about 1.08x instead of 1.16-1.19x (docs/DECISIONS.md, "Scaling").

The pair of runs is repeated ``ROUNDS`` times (once with ``--quick``), fixed and
autoscaled taking turns; ``p95_ratio`` and ``agent_seconds_ratio`` are the medians over the
rounds (each round's pair is in ``ratios_by_round``: one run moves them by about 0.01,
as much as the target's margin), the other figures those of the median round.

Figures: ``p95_ms_*`` is the end-to-end latency (journal ``updated - created``) of every
task of the run; ``agent_seconds_*`` integrates the pool's agents (serving, starting and
retiring) over the load, polled every 100 ms with ``agora pools``;
``scale_up_reaction_ms`` is the time from the start of the step to the first new agent
joining (``agent.joined`` event) in the autoscaled run, and ``scale_up_decision_ms`` to the
first ``scale_up`` decision.  Targets (issue "Dynamic resource management"): autoscaled p95
within 1.2x the fixed pool's, <= 60 % of its agent-seconds, reaction <= 500 ms.

``--plot`` draws agents over time for both runs and the offered load (in agents: rate x
service time) into a PNG written with numpy + zlib (no plotting library): blue =
autoscaled agents, grey = fixed agents, red = offered load; x = time, y = agents.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402

from runtime.agents.agent import Agent, capability  # noqa: E402
from runtime.daemon.root import wait_until_up  # noqa: E402
from runtime.errors import AgoraError  # noqa: E402
from runtime.wire.client import Client  # noqa: E402

SERVICE_S = 0.1
PEAK_AGENTS = 6
PEAK_UTILISATION = 0.65  # the peak rate keeps a fixed pool of PEAK_AGENTS 65 % busy
STEP_FRACTION = 0.6
ROUNDS = 3  # fixed and autoscaled runs, taking turns; ratios are the median over rounds
SCALING = {
    "autoscale": True, "target_utilisation": 0.75, "scale_up_at": 0.9, "scale_down_at": 0.6,
    "sustain_up": 0.0, "sustain_down": 0.5, "cooldown_up": 0.2, "cooldown_down": 0.5,
    "max_step_up": 3, "max_step_down": 1, "retire_timeout_s": 5.0,
}


class Worker(Agent):
    """The perf pool's agent: holds itself for ``s`` seconds per task."""

    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        time.sleep(float(input["s"]))
        return None


# ---------------------------------------------------------------- the load


def phases(quick: bool) -> list[tuple[float, float, float]]:
    """(duration s, rate at start, rate at end) in fractions of the peak rate."""
    k = 0.5 if quick else 1.0
    return [(1.0, 0.0, 0.0), (2.0 * k, STEP_FRACTION, STEP_FRACTION),
            (6.0 * k, STEP_FRACTION, 1.0), (5.0 * k, 1.0, 1.0), (6.0 * k, 1.0, 0.0),
            (10.0 * k, 0.0, 0.0)]


def mean_over_peak(profile: list[tuple[float, float, float]]) -> float:
    """The offered load's mean over its peak: what a perfect scaler would use of the fixed pool."""
    return sum(d * (a + b) / 2 for d, a, b in profile) / sum(d for d, _, _ in profile)


def rate_at(t: float, profile: list[tuple[float, float, float]], peak: float) -> float:
    for duration, a, b in profile:
        if t < duration:
            return peak * (a + (b - a) * t / duration)
        t -= duration
    return 0.0


def arrivals(seed: int, profile: list[tuple[float, float, float]], peak: float) -> list[float]:
    """Poisson arrival times by thinning a rate-``peak`` process (seeded)."""
    rng, t, out = random.Random(seed), 0.0, []
    total = sum(d for d, _, _ in profile)
    while True:
        t += rng.expovariate(peak)
        if t >= total:
            return out
        if rng.random() < rate_at(t, profile, peak) / peak:
            out.append(t)


# ---------------------------------------------------------------- one daemon run


def config_text(autoscaled: bool) -> str:
    pool = (f'[pools.work]\nagent = "perf.scaling:Worker"\nmax = {PEAK_AGENTS}\n'
            f'size = {1 if autoscaled else PEAK_AGENTS}\nmin = {1 if autoscaled else PEAK_AGENTS}\n'
            '[pools.work.capabilities.work]\ncost = 1.0\n')
    if autoscaled:
        pool += "[pools.work.scaling]\n" + "".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in SCALING.items())
    return '[daemon]\nregistry = "local"\ndrain_s = 5.0\n' + pool


def start_daemon(home: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(home / "agora.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "--home", str(home), "up",
                                 "--foreground"], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env, cwd=str(REPO))
    wait_until_up(lambda: Client(str(home), timeout=2.0), time.monotonic() + 30, proc)
    return proc


def stop_daemon(home: Path, proc: subprocess.Popen) -> None:
    try:
        with Client(str(home), timeout=10.0) as c:
            c.call("down")
        proc.wait(30)
    except (AgoraError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_agents(c: Client, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for a in c.call("agents") if a["pool"] == "work") < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not reach {n} agents within {timeout} s")
        time.sleep(0.05)


def drive(c: Client, times: list[float], end: float) -> tuple[float, list[tuple[float, int]]]:
    """Submit at the arrival times (batched every 20 ms); poll the pool every 100 ms.

    Returns the wall-clock start and [(t, agents)]."""
    start, i, series, next_poll = time.time(), 0, [], 0.0
    task = {"capability": "work", "input": {"s": SERVICE_S}}
    while (now := time.time() - start) < end:
        due = []
        while i < len(times) and times[i] <= now:
            due.append(task)
            i += 1
        if due:
            c.call("submit_many", tasks=due, wait_s=30.0)
        if now >= next_poll:
            row = c.call("pools")[0]
            series.append((now, row["size"] + row["starting"] + row["retiring"]))
            next_poll += 0.1
        time.sleep(0.02)
    return start, series


def latencies(c: Client, n: int, timeout: float = 60.0) -> list[float]:
    deadline = time.monotonic() + timeout
    while True:
        rows = c.call("tasks", limit=n + 10)
        open_ = [r for r in rows if r["state"] in ("queued", "running", "retry_wait")]
        if not open_ or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    done = [r for r in rows if r["state"] == "succeeded"]
    if len(done) != n:
        raise SystemExit(f"expected {n} succeeded tasks, found {len(done)} (lost or failed)")
    return [(r["updated"] - r["created"]) * 1e3 for r in done]


def first_event_after(c: Client, type_: str, t0: float, **match: Any) -> float | None:
    for e in c.call("events", type=type_, limit=10000):
        if e["ts"] >= t0 and all(e.get(k) == v for k, v in match.items()):
            return (e["ts"] - t0) * 1e3
    return None


def run(autoscaled: bool, times: list[float], profile: list[tuple[float, float, float]]
        ) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="agora-perf-scaling-"))
    (home / "agora.toml").write_text(config_text(autoscaled))
    proc = start_daemon(home)
    try:
        with Client(str(home), timeout=30.0) as c:
            wait_agents(c, 1 if autoscaled else PEAK_AGENTS)
            start, series = drive(c, times, sum(d for d, _, _ in profile))
            lat = latencies(c, len(times))
            step_at = start + profile[0][0]
            out = {"series": series, "p95_ms": pct(lat, 95), "p50_ms": pct(lat, 50),
                   "tasks": len(lat), "agent_seconds": integrate(series),
                   "reaction_ms": first_event_after(c, "agent.joined", step_at),
                   "decision_ms": first_event_after(c, "scaling.decision", step_at,
                                                    reason="scale_up")}
    finally:
        stop_daemon(home, proc)
        shutil.rmtree(home, ignore_errors=True)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def integrate(series: list[tuple[float, int]]) -> float:
    return sum((t1 - t0) * n for (t0, n), (t1, _) in zip(series, series[1:]))


# ---------------------------------------------------------------- the PNG


def png(path: str, pixels: Any) -> None:
    """Write an RGB uint8 array (h, w, 3) as a PNG: signature, IHDR, one IDAT, IEND."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def line(img: Any, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int],
         width: int = 2) -> None:
    """A line by dense sampling (enough for a chart), ``width`` pixels thick."""
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    import numpy as np
    xs = np.linspace(x0, x1, n).round().astype(int)
    ys = np.linspace(y0, y1, n).round().astype(int)
    h, w, _ = img.shape
    for d in range(width):
        ok = (xs + d < w) & (ys < h) & (ys >= 0) & (xs >= 0)
        img[ys[ok], xs[ok] + d] = colour


def plot(path: str, runs: dict[str, dict[str, Any]], profile: list[tuple[float, float, float]]
         ) -> None:
    import numpy as np
    w, h, m = 800, 400, 40
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    total = sum(d for d, _, _ in profile)
    top = PEAK_AGENTS + 1

    def xy(t: float, v: float) -> tuple[float, float]:
        return m + t / total * (w - 2 * m), h - m - v / top * (h - 2 * m)

    line(img, *xy(0, 0), *xy(total, 0), (0, 0, 0))
    line(img, *xy(0, 0), *xy(0, top), (0, 0, 0))
    for agents in range(1, top + 1):  # a tick per agent on the y axis
        line(img, *xy(0, agents), xy(0, agents)[0] - 6, xy(0, agents)[1], (0, 0, 0), 1)
    for sec in range(int(total) + 1):  # a tick per second on the x axis
        line(img, *xy(sec, 0), xy(sec, 0)[0], xy(sec, 0)[1] + 5, (0, 0, 0), 1)
    peak = PEAK_AGENTS * PEAK_UTILISATION
    load = [(t, rate_at(t, profile, peak / SERVICE_S) * SERVICE_S)
            for t in np.linspace(0, total, 400)]
    for series, colour in ((load, (220, 40, 40)), (runs["fixed"]["series"], (150, 150, 150)),
                           (runs["autoscaled"]["series"], (30, 80, 220))):
        for (t0, v0), (t1, v1) in zip(series, series[1:]):
            line(img, *xy(t0, v0), *xy(t1, v0), colour)  # steps: the count holds until it changes
            line(img, *xy(t1, v0), *xy(t1, v1), colour)
    png(path, img)


# ---------------------------------------------------------------- main


def main() -> None:
    from _common import parse_args  # here: agents import this module as perf.scaling
    a = parse_args(__doc__, **{"--plot": {"metavar": "FILE.png"}})
    profile = phases(a.quick)
    peak_rate = PEAK_AGENTS * PEAK_UTILISATION / SERVICE_S
    times = arrivals(a.seed, profile, peak_rate)
    rounds = [{"fixed": run(False, times, profile), "autoscaled": run(True, times, profile)}
              for _ in range(1 if a.quick else ROUNDS)]
    ratios = [{"p95": r["autoscaled"]["p95_ms"] / r["fixed"]["p95_ms"],
               "agent_seconds": r["autoscaled"]["agent_seconds"] / r["fixed"]["agent_seconds"]}
              for r in rounds]
    med = {k: statistics.median(x[k] for x in ratios) for k in ("p95", "agent_seconds")}
    # the figures and the plot of the round whose agent-seconds ratio is the median one
    runs = rounds[sorted(range(len(rounds)), key=lambda i: ratios[i]["agent_seconds"])[len(rounds) // 2]]
    fixed, auto = runs["fixed"], runs["autoscaled"]
    reactions = [r["autoscaled"]["reaction_ms"] for r in rounds]
    result = {
        "seed": a.seed, "quick": a.quick, "tasks": len(times), "peak_rate": peak_rate,
        "service_ms": SERVICE_S * 1e3, "peak_agents": PEAK_AGENTS, "rounds": len(rounds),
        "offered_mean_over_peak": round(mean_over_peak(profile), 3),
        "p95_ms_autoscaled": round(auto["p95_ms"], 1), "p95_ms_fixed": round(fixed["p95_ms"], 1),
        "p50_ms_autoscaled": round(auto["p50_ms"], 1), "p50_ms_fixed": round(fixed["p50_ms"], 1),
        "agent_seconds_autoscaled": round(auto["agent_seconds"], 2),
        "agent_seconds_fixed": round(fixed["agent_seconds"], 2),
        "p95_ratio": round(med["p95"], 3), "agent_seconds_ratio": round(med["agent_seconds"], 3),
        "ratios_by_round": [{k: round(v, 3) for k, v in x.items()} for x in ratios],
        "scale_up_reaction_ms": None if None in reactions else round(statistics.median(reactions), 1),
        "scale_up_decision_ms": None if auto["decision_ms"] is None else round(auto["decision_ms"], 1),
    }
    print(f"{len(times)} tasks of {SERVICE_S * 1e3:.0f} ms, peak {peak_rate:.0f}/s, seed {a.seed}, "
          f"{len(rounds)} round(s); the table is the median round by agent-seconds")
    print(f"{'':12} {'p50 ms':>8} {'p95 ms':>8} {'agent-s':>9}")
    for name in ("fixed", "autoscaled"):
        r = runs[name]
        print(f"{name:12} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['agent_seconds']:9.2f}")
    print("ratios by round (p95, agent-seconds): " + ", ".join(
        f"({x['p95']:.3f}, {x['agent_seconds']:.3f})" for x in ratios))
    print(f"median ratios: p95 {result['p95_ratio']} (target <= 1.2), agent-seconds "
          f"{result['agent_seconds_ratio']} (target <= 0.6); step reaction: agent joined "
          f"{result['scale_up_reaction_ms']} ms (target <= 500), decision "
          f"{result['scale_up_decision_ms']} ms")
    if a.plot:
        plot(a.plot, runs, profile)
        print(f"plot written to {a.plot}")
    if a.json:
        print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
