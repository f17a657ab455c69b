"""A retry storm against a saturated service, with and without the retry budget.

    python perf/retry_storm.py [--quick] [--seed N] [--json]

One fake external API (runtime.demo.fake_api: 127.0.0.1, lognormal latency around 300 ms,
``concurrency`` 16 workers, a queue in front of them) and one process of async callers
through ``Service("api")`` with perf/pipelines.py's guards (timeout 1 s, 3 retries with
full-jitter backoff, the breaker, no cache: every call is a new question).  Calls arrive
open-loop at 60 per second, 1.35x what the workers serve (~44 per second), for 6 s (3 s
with ``--quick``): the server's queue grows, and attempts that wait in it past their 1 s
timeout are abandoned.  A server does not see that its caller gave up: every abandoned
attempt still takes a worker for its whole latency, so every retry adds work to the queue
that made the attempt time out.

Four configurations in the same run, on one API (drained between them): ``budget``
(``retry_budget = 0.2``: retries at most a fifth of the calls plus 10, machine-wide),
``no-budget`` (the default: no limit), and both again without the breaker (``-nobrk``: a
service that fails slowly enough, or partly enough, to keep a breaker closed). Reported for
each: requests the server received per call (the amplification; below 1 when the breaker or
the client's timeout ended calls before their request reached the server), calls that
succeeded, the time until the last call ended, and ``drain_s``: the time from the first call
until the server has answered every request it received, abandoned ones included (how long
the storm outlives the overload), plus the retries made and refused.

Keys of the JSON line: ``requests_per_call``, ``succeeded``, ``calls_done_s``, ``drain_s``,
``retries``, ``retry_denied``, each ``{"budget": ..., "no-budget": ..., "budget-nobrk": ...,
"no-budget-nobrk": ...}``, plus ``calls``, ``seed``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import emit_json, parse_args  # noqa: E402

from runtime.demo.fake_api import FakeAPI  # noqa: E402

GUARDS = {"timeout_s": 1.0, "retries": 3, "backoff": {"base_s": 0.05, "cap_s": 1.0},
          "breaker": {"failure_rate": 0.5, "window_calls": 20, "min_calls": 10, "open_s": 1.0}}
RATE = 60.0  # calls per second: 1.35x what 16 workers at a mean 0.36 s serve (~44 per second)
CONFIGS = {"budget": {"retry_budget": 0.2}, "no-budget": {},
           "budget-nobrk": {"retry_budget": 0.2, "breaker": False}, "no-budget-nobrk": {"breaker": False}}


def backlog(api: FakeAPI) -> int:
    """Requests the server received and has not answered yet (queued or being served)."""
    return api.requests - sum(api.by_status.values())


async def overload(api: FakeAPI, overrides: dict[str, Any], calls: int, seed: int) -> dict[str, Any]:
    import httpx

    from runtime.guards.http import AsyncGuardedTransport
    from runtime.guards.service import Service
    svc = Service("api", {**GUARDS, **overrides}, rng=random.Random(seed))
    before = api.requests
    t0 = time.monotonic()
    async with httpx.AsyncClient(transport=AsyncGuardedTransport(svc, cache_methods=()), base_url=api.url, timeout=60,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=64)) as c:
        async def one(i: int) -> bool:
            await asyncio.sleep(i / RATE)  # open-loop arrivals, RATE per second
            try:
                r = await c.post("/v1/complete", json={"q": f"{seed}-{i}"})
                return r.status_code == 200
            except Exception:  # a timeout, the breaker, a 503: a failed call
                return False
        ok = await asyncio.gather(*(one(i) for i in range(calls)))
    done = time.monotonic() - t0
    while backlog(api) > 0:  # the abandoned attempts the server still works through
        await asyncio.sleep(0.05)
    return {"requests_per_call": (api.requests - before) / calls, "succeeded": sum(ok) / calls,
            "calls_done_s": done, "drain_s": time.monotonic() - t0, "retries": svc.counts["retry"],
            "retry_denied": svc.counts["retry_denied"]}


def main() -> None:
    args = parse_args(__doc__)
    calls = 180 if args.quick else 360
    results: dict[str, dict[str, Any]] = {}
    with FakeAPI(seed=args.seed, median_s=0.3, sigma=0.6, concurrency=16) as api:
        for name, overrides in CONFIGS.items():
            results[name] = asyncio.run(overload(api, overrides, calls, args.seed))
    keys = ("requests_per_call", "succeeded", "calls_done_s", "drain_s", "retries", "retry_denied")
    print(f"{calls} calls at {RATE:g}/s to a 16-worker API (~44/s; timeout 1 s, 3 retries)")
    print(f"{'':20}" + "".join(f"{n:>17}" for n in results))
    for k in keys:
        print(f"{k:20}" + "".join(f"{results[n][k]:>17.4g}" for n in results))
    emit_json(args, {**{k: {n: results[n][k] for n in results} for k in keys}, "calls": calls, "seed": args.seed})


if __name__ == "__main__":
    main()
