"""What a sale auction costs the coordinator: CPU per sold unit (bid with its escrow,
auction, award with its payment, release) for each format, against a durable lock grant
and release (a unit is a priced lock) measured in the same run, in one process.

    python perf/sales.py [--quick] [--seed N] [--json]

The coordinator's drivers (``coordination.services.sales.Sales``,
``coordination.services.primitives.Primitives``) over the real journal database and
ledger; each turn is one ``journal.transaction()`` (one COMMIT), timers fire between turns
on a manual clock, and clock rounds are answered at once by the default ``sale_bid`` rule.
Per round three agents bid at one instant (within ``gather_ms``, 1 ms) for the one unit,
with limits drawn with the seed, so all three compete; each winner releases at once and
the unit is sold on until all three hold it once (three sales).
CPU time (``time.process_time``: SQLite runs here) per sale and the ratio to the lock.
The last line with --json: {"ms_per_sale": {kind: ..}, "ms_per_lock": .., "ratio": {kind: ..},
"sales": N, "seed": S}.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import parse_args  # noqa: E402

from coordination.ledger import Ledger  # noqa: E402
from coordination.services.primitives import Primitives  # noqa: E402
from coordination.services.sales import Sales  # noqa: E402
from coordination.services.store import Store  # noqa: E402
from runtime.agents.economy import default_sale_bid  # noqa: E402
from runtime.tasks.journal import Journal  # noqa: E402

KINDS = ("sealed-first", "vickrey", "english", "dutch")
AGENTS = ("a", "b", "c")


class _Host:
    """The part of the ServiceHost that Sales uses, with a manual clock."""

    def __init__(self, home: Path, kind: str) -> None:
        self.journal = Journal(home, durability="normal")
        self.t, self.timers, self.asks = 0.0, [], []
        self.scheduler = SimpleNamespace(agents={a: SimpleNamespace(id=a, inflight={}, pid=1) for a in AGENTS})
        self.cfg = SimpleNamespace(resources={"gpu": {"quantity": 1, "auction": kind, "gather_ms": 1}})
        ledger = Ledger(self.journal.conn)
        for a in (*AGENTS, "client"):
            ledger.grant(f"agent:{a}" if a != "client" else a, 10**9, "perf")

    def clock(self) -> float:
        return self.t

    def emit(self, *a: Any, **k: Any) -> None:
        pass

    def call_later(self, delay: float, fn: Any) -> None:
        self.timers.append((self.t + delay, fn))

    def ask(self, agent: str, kind: str, request: dict[str, Any], on_answer: Any) -> bool:
        self.asks.append((agent, request, on_answer))
        return True

    def turn(self, fn: Any = None) -> Any:
        with self.journal.transaction():
            out = fn() if fn else None
            due = [t for t in self.timers if t[0] <= self.t]
            self.timers = [t for t in self.timers if t[0] > self.t]
            for _, f in due:
                f()
            asks, self.asks = self.asks, []
            for agent, request, cb in asks:  # answered within the turn: the round's cost, no wait
                cb(agent, {"answer": default_sale_bid(request)})
        return out


def _sales(kind: str, rounds: int, rng: random.Random, home: Path) -> tuple[float, int]:
    host = _Host(home, kind)
    sales = Sales(host)
    host.turn(lambda: sales.restore(host.cfg.resources))
    sold, t0 = 0, time.process_time()
    for _ in range(rounds):
        won: list[dict[str, Any]] = []
        for agent, limit in zip(AGENTS, rng.sample(range(1, 50), 3)):
            d = host.turn(lambda a=agent, lim=limit: sales.bid(a, {"resource": "gpu", "limit": lim}, None))
            d.bind(lambda msg, a=agent, won=won: won.append({**msg["ok"], "agent": a}))
        while sum(bool(w.get("released")) for w in won) < 3:
            host.t += 0.001
            host.turn()
            for w in list(won):
                if not w.get("released"):
                    w["released"] = True
                    host.turn(lambda w=w: sales.release(w["agent"], {"resource": "gpu", "unit": w["unit"],
                                                                     "token": w["token"]}, None))
        sold += 3
    cpu = time.process_time() - t0
    assert Ledger(host.journal.conn).check_conservation().ok
    host.journal.close()
    return cpu / sold * 1000, sold


def _locks(ops: int, home: Path) -> float:
    journal = Journal(home, durability="normal")
    prims = Primitives(time.monotonic, lambda *a, **k: None, lambda d, fn: None, store=Store(journal.conn))
    t0 = time.process_time()
    for i in range(ops):
        agent = AGENTS[i % 3]
        with journal.transaction():
            got = prims.lock_acquire(agent, {"name": "gpu", "ttl": 30, "timeout": 0}, None)
        with journal.transaction():
            prims.lock_release(agent, {"name": "gpu", "token": got["token"]}, None)
    cpu = time.process_time() - t0
    journal.close()
    return cpu / ops * 1000


def main() -> None:
    args = parse_args(__doc__)
    rounds = 30 if args.quick else 150
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="agora-perf-sales-") as root:
        per_lock = _locks(rounds * 3, Path(root) / "locks")
        per_sale, sold = {}, 0
        for kind in KINDS:
            per_sale[kind], n = _sales(kind, rounds, rng, Path(root) / kind)
            sold += n
    print(f"settings: {rounds} rounds x 3 sales per format, 3 agents, 1 unit, 50 clock steps, seed {args.seed}")
    print(f"{'format':<14} {'ms CPU/sale':>12} {'x lock':>8}")
    for kind in KINDS:
        print(f"{kind:<14} {per_sale[kind]:>12.3f} {per_sale[kind] / per_lock:>8.2f}")
    print(f"{'durable lock':<14} {per_lock:>12.3f} {1.0:>8.2f}")
    if args.json:
        print(json.dumps({"ms_per_sale": per_sale, "ms_per_lock": per_lock,
                          "ratio": {k: v / per_lock for k, v in per_sale.items()}, "sales": sold,
                          "seed": args.seed}))


if __name__ == "__main__":
    main()
