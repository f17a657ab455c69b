"""Balancing policies: tie-breaks, baselines, and load distributions with seeded RNGs."""

from __future__ import annotations

import random

import pytest

from runtime.errors import InvalidInput, NotFound
from runtime.tasks.balancing import (
    SELECTORS,
    choose,
    least_loaded,
    power_of_two,
    random_choice,
    rank,
    static,
)


def entries(*loads, reputations=None):
    reputations = reputations or [None] * len(loads)
    out = []
    for i, (load, rep) in enumerate(zip(loads, reputations, strict=True)):
        e = {"key": f"agent.{i}", "load": load}
        if rep is not None:
            e["reputation"] = rep
        out.append(e)
    return out


def place(policy, bins: int, balls: int, seed: int) -> list[int]:
    """Balls into bins: each ball goes where the policy says, given current loads."""
    rng = random.Random(seed)
    loads = [0] * bins
    cands = [{"key": f"a{i:03d}", "load": 0} for i in range(bins)]
    for _ in range(balls):
        pick = policy(cands, rng)
        i = int(pick["key"][1:])
        loads[i] += 1
        cands[i] = {"key": pick["key"], "load": loads[i]}
    return loads


def test_static_picks_registry_order():
    assert static(entries(9, 0, 0))["key"] == "agent.0"


def test_least_loaded_picks_the_minimum():
    assert least_loaded(entries(3, 1, 2))["key"] == "agent.1"


def test_least_loaded_tie_break_reputation_then_key():
    cands = entries(1, 1, 1, reputations=[0.2, 0.9, 0.9])
    assert least_loaded(cands)["key"] == "agent.1"  # higher reputation, then smaller key
    assert least_loaded(list(reversed(cands)))["key"] == "agent.1"  # order does not matter
    assert least_loaded([{"key": "b", "load": 0}, {"key": "a", "load": 0}])["key"] == "a"


def test_missing_metadata_defaults():
    assert rank({"key": "x"}) == (0.0, -0.5, "x")


@pytest.mark.parametrize(
    "bad", [{"load": 1}, {"key": "x", "load": "heavy"}, {"key": "x", "reputation": None}]
)
def test_malformed_entries_are_named(bad):
    with pytest.raises(InvalidInput, match="candidate entry"):
        least_loaded([bad])


@pytest.mark.parametrize("policy", sorted(SELECTORS))
def test_empty_candidates(policy):
    with pytest.raises(NotFound, match="no candidate"):
        choose(policy, [], random.Random(0))


def test_unknown_selector():
    with pytest.raises(InvalidInput, match="expected a selector"):
        choose("round_robin", entries(1), random.Random(0))


def test_power_of_two_returns_the_better_of_two_distinct():
    rng = random.Random(7)
    cands = entries(5, 0)
    assert all(
        power_of_two(cands, rng)["key"] == "agent.1" for _ in range(20)
    )  # two distinct: always both
    assert power_of_two(entries(4), rng)["key"] == "agent.0"


def test_power_of_two_is_reproducible_from_the_seed():
    cands = entries(*range(50))
    a = [power_of_two(cands, random.Random(s))["key"] for s in range(20)]
    b = [power_of_two(cands, random.Random(s))["key"] for s in range(20)]
    assert a == b


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_power_of_two_beats_random_on_max_load(seed):
    bins, balls = 100, 1000
    p2c = place(power_of_two, bins, balls, seed)
    rnd = place(random_choice, bins, balls, seed)
    assert sum(p2c) == sum(rnd) == balls
    assert max(p2c) < max(rnd), f"seed={seed}: p2c max {max(p2c)} vs random max {max(rnd)}"
    assert max(p2c) <= balls // bins + 3, f"seed={seed}: p2c max {max(p2c)}"


def test_least_loaded_is_perfectly_even_and_static_is_not():
    ll = place(lambda c, rng: least_loaded(c), 10, 100, 0)
    st = place(lambda c, rng: static(c), 10, 100, 0)
    assert ll == [10] * 10
    assert st == [100] + [0] * 9
