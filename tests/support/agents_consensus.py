"""The workload agents of perf/_agents_consensus.py, under the name the tests' configs use."""

from perf._agents_consensus import (
    Abstainer,
    Guesser,
    Locker,
    ballot_for,
    estimate,
    number,
    rank_candidates,
    rank_options,
)

__all__ = ["estimate", "number", "rank_options", "rank_candidates", "ballot_for", "Guesser", "Abstainer", "Locker"]
