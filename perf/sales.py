"""What a sale auction costs the coordinator: CPU per sold unit (bid, auction, award,
payment, release) for each format, against one market procurement round (submit, bid,
award, completion, payment) measured in the same run, in one process.

    python perf/sales.py [--quick] [--seed N] [--json]

The real market, sales and economy services over the real journal and ledger
(tests/support/economy_host.py: each operation is one coordinator turn, one COMMIT; the
clock is manual).  Per round three agents bid for the one unit with limits drawn with the
seed; the winner releases at once and the unit is sold on until all three hold it once, so
one round is three sales.  Clocks: 50 steps over their range (English rounds to the top
limit, Dutch ticks from it).  CPU time (``time.process_time``: SQLite runs here) per sale,
and the ratio to the procurement round.
The last line with --json: {"ms_per_sale": {kind: ..}, "ms_per_task": .., "ratio": {kind: ..},
"sales": N, "seed": S}.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import parse_args  # noqa: E402

from tests.support.economy_host import EconHost  # noqa: E402

KINDS = ("sealed-first", "vickrey", "english", "dutch")
AGENTS = ("a", "b", "c")


def _sales(kind: str, rounds: int, rng: random.Random) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as d:
        h = EconHost(Path(d), resources={"gpu": {"quantity": 1, "auction": kind, "gather_ms": 0}})
        for a in AGENTS:
            h.join(a)
        sold, t0 = 0, time.process_time()
        for _ in range(rounds):
            limits = rng.sample(range(1, 50), 3)
            calls = {a: h.bid(a, "gpu", limit) for a, limit in zip(AGENTS, limits)}
            done: set[str] = set()
            for _ in range(2000):
                h.answer_sales()
                h.later(0.001)
                for a, c in calls.items():
                    if a not in done and not c.pending:
                        done.add(a)
                        won = c.value
                        h.op(a, "sale.release", {"resource": "gpu", "unit": won["unit"], "token": won["token"]})
                if len(done) == 3:
                    break
            sold += len(done)
        cpu = time.process_time() - t0
        assert h.ledger.check_conservation().ok
        h.journal.close()
    return cpu / sold * 1000, sold


def _tasks(rounds: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        h = EconHost(Path(d))
        for a in AGENTS:
            h.join(a)
        t0 = time.process_time()
        for _ in range(rounds):
            h.submit()
            for agent, _req, cb in list(h.asks):
                h.asks.remove((agent, _req, cb))
                h.turn(lambda cb=cb, agent=agent: cb(agent, {"answer": {"price": 1 + AGENTS.index(agent)}}))
            runner = next(a for a in AGENTS if h.sent.get(a))
            h.result(runner, ok=True)
        cpu = time.process_time() - t0
        h.journal.close()
    return cpu / rounds * 1000


def main() -> None:
    args = parse_args(__doc__)
    rounds = 20 if args.quick else 100
    rng = random.Random(args.seed)
    per_task = _tasks(rounds * 3)
    per_sale, sold = {}, 0
    for kind in KINDS:
        per_sale[kind], n = _sales(kind, rounds, rng)
        sold += n
    print(f"settings: {rounds} rounds x 3 sales per format, 3 agents, 1 unit, seed {args.seed}")
    print(f"{'format':<14} {'ms CPU/sale':>12} {'x market task':>14}")
    for kind in KINDS:
        print(f"{kind:<14} {per_sale[kind]:>12.3f} {per_sale[kind] / per_task:>14.2f}")
    print(f"{'market task':<14} {per_task:>12.3f} {1.0:>14.2f}")
    if args.json:
        print(json.dumps({"ms_per_sale": per_sale, "ms_per_task": per_task,
                          "ratio": {k: v / per_task for k, v in per_sale.items()}, "sales": sold,
                          "seed": args.seed}))


if __name__ == "__main__":
    main()
