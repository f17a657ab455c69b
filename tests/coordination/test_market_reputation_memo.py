"""The market's memoised reputation reading (MarketPolicy._rep) carried forward in time
equals a fresh reading of coordination.reputation at every later time."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from coordination.reputation import Observation, Reputation
from coordination.services.market import MarketPolicy


@pytest.mark.parametrize("seed", range(5))
def test_carried_reading_equals_a_fresh_one(seed: int) -> None:
    rng, rep, t = random.Random(seed), Reputation(), 0.0
    market = SimpleNamespace(reputation=rep, _rep_memo={})
    for _ in range(120):  # more than the window: evictions included
        t += rng.random() * 600
        rep.record("a", "c", Observation(t, rng.random() < 0.7, rng.random() < 0.9, rng.random()))
        market._rep_memo.pop(("a", "c"), None)  # what MarketPolicy._learn does on a record
        MarketPolicy._rep(market, "a", "c", t)
        later = t + rng.random() * 8000
        score, signals, weight = MarketPolicy._rep(market, "a", "c", later)
        assert score == pytest.approx(rep.score("a", "c", later), abs=1e-9), f"seed {seed}"
        assert signals == pytest.approx(rep.signals("a", "c", later), abs=1e-9)
        assert weight == pytest.approx(rep.weight("a", "c", later), abs=1e-9)


def test_an_unseen_agent_reads_the_prior() -> None:
    market = SimpleNamespace(reputation=Reputation(), _rep_memo={})
    assert MarketPolicy._rep(market, "x", "c", 5.0) == (0.5, (0.5, 0.5, 0.5), 0.0)


def test_a_moment_earlier_reads_the_memo_and_a_record_refreshes_it() -> None:
    rep = Reputation()
    market = SimpleNamespace(reputation=rep, _rep_memo={})
    rep.record("a", "c", Observation(10.0, True, True, 1.0))
    first = MarketPolicy._rep(market, "a", "c", 10.0)
    assert MarketPolicy._rep(market, "a", "c", 9.5) == first  # a clock read a moment before
    assert MarketPolicy._rep(market, "a", "c", 5.0)[0] == pytest.approx(rep.score("a", "c", 5.0))
