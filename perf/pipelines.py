"""The reference system's pipeline workload on agora, end to end, naive against agora.

The hang this script first met (naive's burst: one ``pipeline_result`` unanswered for 300 s)
was the coordinator's: a consensus step taken by a turn's dispatch was only started by a
later turn, and with every agent idle no later turn came (fixed in
coordination.services.decisions.ConsensusSteps.take, tests/coordination/test_consensus_steps.py).

    python perf/pipelines.py [--quick] [--seed N] [--json] [--plot FILE] [--ablate | --levers A,B]

One fake external API (runtime.demo.fake_api: 127.0.0.1, lognormal latency around 300 ms
with a heavy tail, a concurrency cap) serves both configurations, in this run, one after
the other.  A pipeline is 6 steps over a shared context (perf/_agents_pipeline.py)::

    retrieve -> embed -> llm -> check (consensus of 3 agents) -> summarize -> score

with a 10 KB request growing to ~35 KB; prompts repeat with a Zipf distribution (s = 1.1
over 1000 prompts); arrivals are open-loop (Poisson, seeded).

Configurations (the same number of agent processes):

- ``naive``: what the reference did: static allocation, sync handlers one at a time per
  process, direct calls without guards, one attempt per step;
- ``agora``: least-loaded allocation, ``async def`` handlers with ``concurrency = 32`` per
  agent, every call through ``ctx.service("api")`` (timeout 1 s: a call in the heavy tail
  is abandoned and retried; a hedge after 0.5 s: a second request for a slow answer, the
  first to come wins, for at most 10% of the calls (the default ``hedge_budget``); 3
  retries with full-jitter backoff, the machine-wide breaker, the machine-wide result cache
  with in-flight de-duplication, and micro-batching of embeddings), steps with the default
  3 attempts.

``--ablate`` adds, after those two, agora with one default switched off each (``-cache``,
``-batch``, ``-timeout``, ``-hedge``, ``-hedge-budget``, ``-retries``, ``-concurrency``,
``-least-loaded``, ``-machine-wide``: see ``LEVERS``) at the same offered load: which
default made which difference; ``--levers cache,machine-wide`` runs those only.  Their
columns join the table and the JSON's ``{"naive": ..., "agora": ..., "-cache": ...}``.
``-machine-wide`` keeps every guard but per agent process (perf/_agents_pipeline.py's
``ProcessGuardedPipe``): what a user would get from per-process libraries (a retry
decorator, ``functools.lru_cache``, a breaker and a limiter in each process).

Phases per configuration:

1. saturation: ``burst`` pipelines submitted at once; pipelines per minute = how many
   finished / the time from the first submission to the last end;
2. fixed offered load: Poisson arrivals at ``rate`` (70% of naive's saturation, the same
   for both) for ``seconds``: p95 latency, external calls per pipeline, the shares of
   pipeline time in external calls and in coordination (the pipeline's time minus the time
   inside its handlers on the critical path, the check step counting its slowest
   candidate), USS per agent (psutil, sampled mid-phase), and ``coordination_cpu_share``: the
   CPU seconds of the daemon's processes other than the agents (root, coordinator, registry,
   telemetry) during the phase over the pipeline-seconds of the phase (robust to a loaded
   machine, where wall-clock gaps are mostly waits for a core);
3. faults: the same arrivals with 2% injected 5xx and one 5 s outage a third of the way in:
   success rate.

Keys of the JSON line: ``pipelines_per_min``, ``p95_s``, ``success_rate``,
``calls_per_pipeline``, ``coordination_share``, ``coordination_cpu_share``, ``external_share``, ``uss_per_agent_mib``,
each ``{"naive": ..., "agora": ...}``, plus ``targets`` (ratios of this run: pipelines per
minute >= 4x naive, p95 <= 0.5x naive, success >= 0.995, coordination share <= 1%, USS per
agent <= 50 MiB) and ``met`` (which held).  ``--plot FILE`` writes a PNG of latency over time
for both (needs matplotlib; without it the script says so and goes on).
"""

from __future__ import annotations

import bisect
import hashlib
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import Daemon, emit_json, parse_args, pct  # noqa: E402

from runtime.demo.fake_api import FakeAPI  # noqa: E402

AGENTS = 6
PROMPTS = 1000
ZIPF_S = 1.1
API = {"median_s": 0.3, "sigma": 0.6, "tail_cap": 20.0, "concurrency": 32}  # the fake API both call

CONFIG = """
[daemon]
allocation = "{allocation}"
drain_s = 5.0
[context]
corpus = "{corpus}"
[pools.pipe]
agent = "perf._agents_pipeline:{cls}"
size = {agents}
min = {agents}
max = {agents}
concurrency = {concurrency}
mailbox_messages = 100000
mailbox_bytes = 1073741824
[pools.pipe.scaling]
autoscale = false
{services}
"""

SERVICE = {"timeout_s": "1.0", "retries": "3", "backoff": "{base_s = 0.05, cap_s = 1.0}",
           "breaker": "{failure_rate = 0.5, window_calls = 20, min_calls = 10, open_s = 1.0}",
           "cache_ttl_s": "600", "cache_size": "4096", "batch_window_ms": "10", "batch_max": "16",
           "hedge_after_s": "0.5"}


def services(overrides: dict[str, str]) -> str:
    """agora's ``[services.api]`` table, with ``overrides`` (one lever switched off)."""
    return "[services.api]\n" + "".join(f"{k} = {v}\n" for k, v in {**SERVICE, **overrides}.items())


CONFIGS = {
    "naive": {"allocation": "static", "cls": "NaivePipe", "concurrency": 1, "services": "", "attempts": 1},
    "agora": {"allocation": "least-loaded", "cls": "GuardedPipe", "concurrency": 32, "services": services({}),
              "attempts": 3},
}
# --ablate: agora with one of its defaults switched off each, at the same offered load, to say
# which default made which difference: (lever, [services.api] overrides, config overrides)
LEVERS = {
    "cache": ({"cache_ttl_s": "0"}, {}),  # no result cache, no in-flight de-duplication
    "batch": ({"batch_max": "1"}, {}),  # every embedding its own request
    "timeout": ({"timeout_s": "30.0"}, {}),  # the heavy tail is waited out, not cut and retried
    "hedge": ({"hedge_after_s": "0"}, {}),  # no second request for a slow answer
    "hedge-budget": ({"hedge_budget": "1.0"}, {}),  # every slow call hedged (no budget)
    "retries": ({"retries": "0"}, {"attempts": 1}),  # neither call retries nor step attempts
    "concurrency": ({}, {"concurrency": 1}),  # async handlers, one at a time per agent
    "least-loaded": ({}, {"allocation": "static"}),  # round-robin placement
    # the same guards per agent process (what per-process libraries give): no answers or
    # in-flight calls shared between agents, a breaker, limiter and budgets in each
    "machine-wide": ({}, {"cls": "ProcessGuardedPipe"}),
}
for _lever, (_svc, _cfg) in LEVERS.items():
    CONFIGS[f"-{_lever}"] = {**CONFIGS["agora"], "services": services(_svc), **_cfg}
STEPS = ("retrieve", "embed", "llm", "check", "summarize", "score")


class Zipf:
    """Prompt ids 0..n-1 with P(i) ~ 1/(i+1)^s, from a seeded rng."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        weights = [1.0 / (i + 1) ** s for i in range(n)]
        total, acc = sum(weights), 0.0
        self.cum = []
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.rng = rng

    def draw(self) -> int:
        return min(bisect.bisect_left(self.cum, self.rng.random()), len(self.cum) - 1)


def spec(prompt_id: int, url: str, attempts: int) -> dict[str, Any]:
    prompt = f"prompt {prompt_id}: " + hashlib.blake2b(str(prompt_id).encode()).hexdigest()
    request = (prompt * (10_000 // len(prompt) + 1))[:10_000]  # the 10 KB request
    opts = {"max_attempts": attempts}
    ref = {"retrieve": None, "embed": "retrieve", "llm": "embed", "check": "llm", "summarize": "check.output",
           "score": "summarize"}
    steps = []
    for step in STEPS:
        inp: Any = {"prompt": prompt, "url": url, "request": request} if ref[step] is None else {"$ref": ref[step]}
        s: dict[str, Any] = {"id": step, "capability": step, "input": inp, "options": opts}
        if step == "check":
            s["consensus"] = {"k": 3, "method": "plurality"}
        steps.append(s)
    return {"name": "reference", "steps": steps}


def corpus_file(home: Path, seed: int) -> Path:
    rng = random.Random(seed)
    path = home / "corpus.txt"
    words = "agent market auction vote memory shared process registry latency pipeline".split()
    path.write_text(" ".join(rng.choice(words) for _ in range(200_000)))
    return path


# ------------------------------------------------------------------------- one configuration
class Run:
    def __init__(self, name: str, api: FakeAPI, corpus: Path, args: Any) -> None:
        cfg = CONFIGS[name]
        self.name, self.api, self.args, self.attempts = name, api, args, cfg["attempts"]
        text = CONFIG.format(corpus=corpus, agents=AGENTS, **{k: v for k, v in cfg.items() if k != "attempts"})
        self.daemon = Daemon(text, timeout=300)
        self.c = self.daemon.client
        self.zipf = Zipf(PROMPTS, ZIPF_S, random.Random(args.seed))

    def close(self) -> None:
        self.daemon.close()

    def submit(self, n: int = 1) -> list[tuple[float, str]]:
        out = []
        for _ in range(n):
            got = self.c.call("pipeline", spec=spec(self.zipf.draw(), self.api.url, self.attempts))
            out.append((time.time(), got["id"]))
        return out

    def results(self, ids: list[tuple[float, str]]) -> list[dict[str, Any]]:
        return [dict(self.c.call("pipeline_result", id=pid, wait=True, timeout_s=300), sent=t) for t, pid in ids]

    def open_loop(self, rate: float, seconds: float, on_mid: Any = None) -> list[tuple[float, str]]:
        """Poisson arrivals at ``rate`` per second for ``seconds`` (the submitter never waits for
        an answer: open loop); ``on_mid`` runs once a third of the way in."""
        rng = random.Random(self.args.seed + 1)
        sent: list[tuple[float, str]] = []
        t0 = time.monotonic()
        nxt, mid_done = t0, on_mid is None
        while nxt < t0 + seconds:
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if not mid_done and time.monotonic() >= t0 + seconds / 3:
                on_mid()
                mid_done = True
            sent += self.submit()
            nxt += rng.expovariate(rate)
        return sent

    def coordination_cpu(self) -> float:
        """CPU seconds so far of the daemon's processes that are not agents."""
        import psutil
        agents = {a["pid"] for a in self.c.call("agents")}
        root = psutil.Process(self.daemon.proc.pid)
        total = 0.0
        for p in [root, *root.children(recursive=True)]:
            if p.pid not in agents:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass  # ended meanwhile
        return total

    def uss_mib(self) -> float:
        import psutil
        pids = [a["pid"] for a in self.c.call("agents")]
        sizes = []
        for pid in pids:
            try:
                sizes.append(psutil.Process(pid).memory_full_info().uss / (1 << 20))
            except psutil.Error:
                pass
        return sum(sizes) / max(1, len(sizes))


def latency(p: dict[str, Any]) -> float:
    return float(p["updated"]) - float(p["created"])


def why_failed(p: dict[str, Any]) -> str:
    """The first failed step of a failed pipeline and its error, shortened: what to look at."""
    for s in p["steps"]:
        if s["state"] != "succeeded":
            return f"{s['step_id']} {s['state']} after {s['attempts']}: {str(s.get('error'))[:160]}"
    return f"pipeline {p['state']}"


def split(p: dict[str, Any]) -> tuple[float, float] | None:
    """(seconds in handlers on the critical path, seconds of it in external calls)."""
    by_step = {s["step_id"]: s.get("result") for s in p["steps"]}
    last = by_step.get("score")
    if not isinstance(last, dict):
        return None
    t, x = dict(last["t"]), dict(last["x"])
    check = by_step.get("check") or {}
    cands = [c["output"] for c in check.get("candidates", []) if isinstance(c.get("output"), dict)]
    if cands:
        slowest = max(cands, key=lambda o: o["t"]["check"])
        t["check"], x["check"] = slowest["t"]["check"], slowest["x"]["check"]
    return sum(t.values()), sum(x.values())


def measure(name: str, api: FakeAPI, corpus: Path, args: Any, rate: float | None) -> dict[str, Any]:
    q = args.quick
    burst, seconds = (40, 20.0) if q else (150, 60.0)
    run = Run(name, api, corpus, args)
    try:
        run.results(run.submit(6))  # warm-up: connections, imports, first calls
        # 1. saturation
        ids = run.submit(burst)
        done = run.results(ids)
        ok = [p for p in done if p["state"] == "succeeded"]
        span = max(float(p["updated"]) for p in done) - ids[0][0]
        ppm = len(ok) / span * 60
        rate = rate or 0.7 * len(ok) / span
        # 2. fixed offered load
        calls0, cpu0 = api.requests, run.coordination_cpu()
        sampled: list[float] = []
        timer = threading.Timer(seconds / 2, lambda: sampled.append(run.uss_mib()))
        timer.start()
        steady = run.results(run.open_loop(rate, seconds))
        timer.join()
        calls, coord_cpu = api.requests - calls0, run.coordination_cpu() - cpu0
        good = [p for p in steady if p["state"] == "succeeded"]
        lat = [latency(p) for p in good]
        splits = [(latency(p), *s) for p in good if (s := split(p)) is not None]
        coord = sum(max(0.0, L - h) for L, h, _ in splits) / sum(L for L, _, _ in splits)
        ext = sum(x for _, _, x in splits) / sum(L for L, _, _ in splits)
        # 3. faults: 2% errors and a 5 s outage a third of the way in
        api.error_rate = 0.02
        faulty = run.results(run.open_loop(rate, seconds, on_mid=lambda: api.outage(5.0)))
        api.error_rate = 0.0
        success = sum(p["state"] == "succeeded" for p in faulty) / len(faulty)
        return {"pipelines_per_min": ppm, "p95_s": pct(lat, 95), "p50_s": pct(lat, 50),
                "success_rate": success, "calls_per_pipeline": calls / max(1, len(steady)),
                "coordination_share": coord, "external_share": ext,
                "coordination_cpu_share": coord_cpu / sum(latency(p) for p in steady),
                "uss_per_agent_mib": sampled[0] if sampled else None, "rate": rate,
                "timeline": [(p["sent"], latency(p)) for p in steady + faulty if p["state"] == "succeeded"],
                "failed": len(faulty) - sum(p["state"] == "succeeded" for p in faulty),
                "why_failed": [why_failed(p) for p in faulty if p["state"] != "succeeded"][:5]}
    finally:
        run.close()


TARGETS = {"pipelines_per_min": ">= 4x naive", "p95_s": "<= 0.5x naive", "success_rate": ">= 0.995",
           "coordination_share": "<= 0.01", "uss_per_agent_mib": "<= 50"}


def met(r: dict[str, dict[str, Any]]) -> dict[str, bool]:
    n, a = r["naive"], r["agora"]
    return {"pipelines_per_min": a["pipelines_per_min"] >= 4 * n["pipelines_per_min"],
            "p95_s": a["p95_s"] <= 0.5 * n["p95_s"], "success_rate": a["success_rate"] >= 0.995,
            "coordination_share": a["coordination_share"] <= 0.01,
            "uss_per_agent_mib": (a["uss_per_agent_mib"] or 1e9) <= 50}


def plot(path: str, r: dict[str, dict[str, Any]]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot {path}: matplotlib is not installed; no plot written")
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, res in r.items():
        tl = sorted(res["timeline"])
        if tl:
            t0 = tl[0][0]
            ax.plot([t - t0 for t, _ in tl], [v for _, v in tl], ".", label=name, markersize=3)
    ax.set_xlabel("seconds since the first arrival (fixed load, then faults)")
    ax.set_ylabel("pipeline latency (s)")
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"plot written to {path}")


KEYS = ("pipelines_per_min", "p95_s", "success_rate", "calls_per_pipeline", "coordination_share",
        "coordination_cpu_share", "external_share", "uss_per_agent_mib")


def main() -> None:
    args = parse_args(__doc__, **{"--plot": {"metavar": "FILE", "help": "PNG of latency over time"},
                                  "--ablate": {"action": "store_true",
                                               "help": "also agora without each of its defaults in turn"},
                                  "--levers": {"metavar": "A,B", "help": "like --ablate, these levers only"}})
    if args.ablate and args.levers:
        sys.exit("--ablate runs every lever; --levers names some: one or the other")
    levers = list(LEVERS) if args.ablate else [] if args.levers is None else args.levers.split(",")
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        sys.exit(f"--levers: unknown {unknown}; the levers are {', '.join(LEVERS)}")
    home = Path(tempfile.mkdtemp(prefix="agora-perf-pipelines-"))
    try:
        corpus = corpus_file(home, args.seed)
        with FakeAPI(seed=args.seed, **API) as api:
            results: dict[str, dict[str, Any]] = {}
            results["naive"] = measure("naive", api, corpus, args, None)
            results["agora"] = measure("agora", api, corpus, args, results["naive"]["rate"])
            for lever in levers:
                results[f"-{lever}"] = measure(f"-{lever}", api, corpus, args, results["naive"]["rate"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    names = list(results)
    w = 2 + max(11, *map(len, names))  # a column per configuration
    print(f"{'':22}" + "".join(f"{n:>{w}}" for n in names) + "   target")
    for k in KEYS:
        print(f"{k:22}" + "".join(f"{results[n][k]:>{w}.4g}" for n in names) + f"   {TARGETS.get(k, '')}")
    print(f"offered load {results['naive']['rate']:.2f} pipelines/s; failed under faults: "
          f"naive {results['naive']['failed']}, agora {results['agora']['failed']}")
    for n in ("agora", *(f"-{lever}" for lever in LEVERS)):
        for why in results.get(n, {}).get("why_failed", []):
            print(f"  {n} failed: {why}")
    verdict = met(results)
    if levers:
        print("(-lever: agora with that default switched off, the same offered load; see LEVERS)")
    print("met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in verdict.items()))
    if args.plot:
        plot(args.plot, results)
    out = {k: {n: results[n][k] for n in results} for k in KEYS + ("p50_s", "rate", "why_failed")}
    emit_json(args, {**out, "targets": TARGETS, "met": verdict, "seed": args.seed, "quick": args.quick})


if __name__ == "__main__":
    main()
