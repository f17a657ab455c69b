"""What durable primitives cost: a lock grant and release with the store (written through to
the journal's SQLite file) against the same without it, in one process.

    python perf/primitives_store.py [--quick] [--seed N] [--json]

The coordinator's driver (``coordination.services.primitives.Primitives``) runs as in the
coordinator: each "turn" is one ``journal.transaction()`` (one COMMIT), with ``per_turn``
lock operations in it (acquire + release of one of 16 locks, by one of 8 agents, drawn with
the seed).  Two shapes:

* ``per_turn = 1``: a lone lock operation per turn, the worst case: without the store the
  turn writes nothing and commits nothing; with it, the turn's COMMIT is the store's;
* ``per_turn = 32``: a busy loop, the store's writes share the turn's COMMIT.

CPU time (``time.process_time``, this process: SQLite runs in it) per acquire + release,
with and without the store, interleaved run by run (the machine is shared and noisy) and the
ratio.  Durability is the daemon's default (``synchronous = NORMAL``).
The last line with --json: {"us_per_op": {"1": {"memory": .., "store": ..}, "32": {..}},
"ratio": {"1": .., "32": ..}, "ops": N, "seed": S}.
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _common import parse_args  # noqa: E402

from coordination.services.store import Store  # noqa: E402
from coordination.services.primitives import Primitives  # noqa: E402
from runtime.tasks.journal import Journal  # noqa: E402

AGENTS = [f"pool.{i}" for i in range(8)]
LOCKS = [f"L{i}" for i in range(16)]


def _run(store: bool, ops: int, per_turn: int, seed: int, home: Path) -> float:
    """CPU microseconds per acquire + release."""
    journal = Journal(home, durability="normal")
    rng = random.Random(seed)
    prims = Primitives(time.monotonic, lambda *a, **k: None, lambda d, fn: None,
                       store=Store(journal.conn) if store else None)
    try:
        t0 = time.process_time()
        for _ in range(ops // per_turn):
            with journal.transaction():
                for _ in range(per_turn):
                    agent, name = rng.choice(AGENTS), rng.choice(LOCKS)
                    got = prims.lock_acquire(agent, {"name": name, "ttl": 30, "timeout": 0}, None)
                    prims.lock_release(agent, {"name": name, "token": got["token"]}, None)
        return (time.process_time() - t0) / ops * 1e6
    finally:
        journal.close()


def main() -> None:
    args = parse_args(__doc__)
    ops, runs = (2_000, 3) if args.quick else (10_000, 5)
    figures: dict[str, dict[str, float]] = {}
    root = Path(tempfile.mkdtemp(prefix="agora-perf-store-"))
    try:
        for per_turn in (1, 32):
            samples: dict[str, list[float]] = {"memory": [], "store": []}
            for r in range(runs):
                for kind in ("memory", "store"):  # interleaved: both see the same noise
                    home = root / f"{per_turn}-{kind}-{r}"
                    home.mkdir()
                    samples[kind].append(_run(kind == "store", ops, per_turn, args.seed + r, home))
            figures[str(per_turn)] = {k: round(statistics.median(v), 2) for k, v in samples.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ratio = {k: round(v["store"] / v["memory"], 2) for k, v in figures.items()}
    print(f"lock acquire + release, CPU us per operation (median of {runs} runs of {ops} ops):")
    print(f"{'ops per turn':>14} {'in memory':>10} {'durable':>10} {'ratio':>7}")
    for k, v in figures.items():
        print(f"{k:>14} {v['memory']:>10.2f} {v['store']:>10.2f} {ratio[k]:>7.2f}")
    if args.json:
        print(json.dumps({"us_per_op": figures, "ratio": ratio, "ops": ops, "seed": args.seed}))


if __name__ == "__main__":
    main()
