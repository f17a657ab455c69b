"""How low perf/pipelines.py's p95 can go by hedging: a bound, computed, not run.

    python perf/hedge_bound.py [--quick] [--seed N] [--json] [--n N] [--uncached F,F,...]

perf/pipelines.py's p95 target (<= 0.5x naive) is set by its uncached pipelines: each makes
three API calls in a row (embed, llm, the check's de-duplicated call), and the cached ones
(~10 ms) are below any p95.  With a share ``f`` of the pipelines uncached, the p95 of all
is the ``1 - 0.05 / f`` quantile of the uncached ones' latency.  This script draws the
fake API's latency (runtime.demo.fake_api: lognormal, median 0.3 s, sigma 0.6, capped at
20 medians; the same parameters perf/pipelines.py gives it) for three calls in a row,
each guarded as agora's ``[services.api]`` in perf/pipelines.py guards it (a timeout of
1 s: the call is abandoned and made again), and hedged after ``d`` seconds for a share of
the slow calls (the hedge budget), for several ``d``: the p95 each would give, and the
extra calls it costs.  No queueing, no coordination, no batching window: about the least
that hedging can reach on this workload (the call made again after a timeout is not
hedged here, a rare case), to set beside half of naive's p95 in a full run
(1.18-1.44 s in session 13's three runs).

Keys of the JSON line: ``rows``, a list of ``{"hedge_after_s", "budget", "uncached",
"quantile", "p95_s", "extra_calls"}``, and ``seed``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import emit_json, parse_args  # noqa: E402
from pipelines import API, SERVICE  # noqa: E402

from runtime.guards.service import ServiceConfig  # noqa: E402

TIMEOUT_S = float(SERVICE["timeout_s"])
HEDGE_AFTER_S = float(SERVICE["hedge_after_s"])
CALLS = 3  # embed, llm, the check's one de-duplicated call
# (hedge after s, hedge budget: None = every slow call): none, pipelines.py's (its hedge
# after the default budget), then every slow call after shorter and shorter delays
SETTINGS = [(0.0, None), (HEDGE_AFTER_S, ServiceConfig.hedge_budget), (0.5, None), (0.4, None),
            (0.3, None), (0.25, None)]


def draw(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` latencies as FakeAPI.latency draws them (time_scale 1)."""
    return np.minimum(API["tail_cap"], np.exp(API["sigma"] * rng.standard_normal(n))) * API["median_s"]


def one_call(rng: np.random.Generator, n: int, after_s: float,
             budget: float | None) -> tuple[np.ndarray, float]:
    """Latency of one guarded call, and the share of calls that sent a twin: with a
    ``budget``, a slow call is hedged while the twins stay under ``budget`` of the calls."""
    first = draw(rng, n)
    hedged = np.zeros(n, dtype=bool)
    if after_s > 0:
        slow = first > after_s
        share = 1.0 if budget is None else min(1.0, budget / max(float(slow.mean()), 1e-9))
        hedged = slow & (rng.random(n) < share)
        first = np.where(hedged, np.minimum(first, after_s + draw(rng, n)), first)
    retried = TIMEOUT_S + draw(rng, n)  # abandoned at the timeout, made again
    return np.where(first > TIMEOUT_S, retried, first), float(hedged.mean())


def main() -> None:
    args = parse_args(__doc__, **{"--n": {"type": int, "default": 400_000},
                                  "--uncached": {"default": "0.3,0.35,0.4",
                                                 "help": "shares of uncached pipelines"}})
    rng = np.random.default_rng(args.seed)
    n = 40_000 if args.quick else args.n
    try:
        shares = [float(x) for x in args.uncached.split(",")]
    except ValueError:
        sys.exit(f"--uncached: comma-separated numbers, got {args.uncached!r}")
    if n < 1000 or not all(0.05 < f <= 1 for f in shares):
        sys.exit("--n: at least 1000; --uncached: shares above 0.05 (a p95 needs 5% of them) and at most 1")
    rows = []
    print(f"{'hedge after s':>13} {'budget':>6} {'uncached':>8} {'quantile':>8} {'p95 s':>7} "
          f"{'extra calls':>11}")
    for after_s, budget in SETTINGS:
        total, extra = np.zeros(n), 0.0
        for _ in range(CALLS):
            lat, twins = one_call(rng, n, after_s, budget)
            total, extra = total + lat, extra + twins / CALLS
        for f in shares:
            q = 100 * (1 - 0.05 / f)
            p95 = float(np.percentile(total, q))
            rows.append({"hedge_after_s": after_s, "budget": budget, "uncached": f, "quantile": q,
                         "p95_s": p95, "extra_calls": extra})
            print(f"{after_s:>13.2f} {'-' if budget is None else budget:>6} {f:>8.2f} {q:>8.1f} {p95:>7.3f} {extra:>11.2f}")
    emit_json(args, {"rows": rows, "seed": args.seed})


if __name__ == "__main__":
    main()
