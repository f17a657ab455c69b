"""Voting with weights, the majority runoff's second ballot, quorum spellings, re-votes
before the deadline and the one vocabulary of method names."""

from __future__ import annotations

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from coordination.voting import (
    METHOD_ALIASES,
    METHODS,
    BallotBox,
    Quorum,
    ballot_shape,
    borda,
    canonical_method,
    majority,
    runoff,
    tally,
)
from runtime.errors import Conflict, DeadlineExceeded, InvalidInput
from tests.support.helpers import FakeClock

PROPS = settings(max_examples=120, deadline=None)
OPTIONS = ("A", "B", "C", "D")


# ---------------------------------------------------------------- strategies

@st.composite
def weighted_profiles(draw, max_voters=7, max_weight=3):
    """{voter: ranking or []} and {voter: int weight}; sometimes bare names (single choice)."""
    n = draw(st.integers(1, max_voters))
    bare = draw(st.booleans())
    ballots, weights = {}, {}
    for i in range(n):
        ranking = list(draw(st.permutations(OPTIONS)))[: draw(st.integers(0, len(OPTIONS)))]
        ballots[f"v{i}"] = ranking[0] if bare and ranking else ranking
        weights[f"v{i}"] = draw(st.integers(0, max_weight))
    return ballots, weights


def shaped(method, ballots):
    """The same preferences in the shape ``method`` reads (approval: the ranked set)."""
    if ballot_shape(method) != "approval":
        return ballots
    return {v: {b} if isinstance(b, str) else set(b) for v, b in ballots.items()}


def repeated(ballots, weights):
    """The unweighted profile where each ballot appears ``weight`` times."""
    return {f"{v}#{k}": b for v, b in ballots.items() for k in range(weights[v])}


def comparable(outcome):
    """What must not change between a weighted profile and its repeated expansion:
    everything but the ballot counts (``ballots_counted`` and ``blank`` count ballots)."""
    rest = {k: v for k, v in outcome.tally.items() if k != "blank"}
    return outcome.winner, outcome.tie_broken_by, outcome.support, rest


# ---------------------------------------------------------------- weights = repetition

@PROPS
@given(weighted_profiles(), st.sampled_from(METHODS), st.sampled_from(["lexicographic", 7]))
def test_integer_weights_equal_repeated_ballots_for_every_method(profile, method, tie_break):
    ballots, weights = profile
    ballots = shaped(method, ballots)
    weighted_out = tally(method, OPTIONS, ballots, weights=weights, tie_break=tie_break)
    copies = repeated(ballots, weights)
    plain_weights = dict.fromkeys(copies, 1) if method == "weighted" else None
    plain_out = tally(method, OPTIONS, copies, weights=plain_weights, tie_break=tie_break)
    note(f"weighted {weighted_out.tally}\nrepeated {plain_out.tally}")
    assert comparable(weighted_out) == comparable(plain_out)
    assert weighted_out.ballots_counted == len(ballots)


@PROPS
@given(weighted_profiles(max_weight=2), st.sampled_from(METHODS),
       st.sampled_from([0.5, 0.25, 1.5]))
def test_scaling_every_weight_changes_no_winner(profile, method, factor):
    """Fractional weights are exact: w and factor * w elect the same and agree on support."""
    ballots, weights = profile
    ballots = shaped(method, ballots)
    a = tally(method, OPTIONS, ballots, weights=weights)
    b = tally(method, OPTIONS, ballots, weights={v: w * factor for v, w in weights.items()})
    assert (a.winner, a.tie_broken_by) == (b.winner, b.tie_broken_by)
    assert a.support == pytest.approx(b.support)


def test_weighted_borda_elects_the_weighted_winner():
    ballots = {"a": ["A", "C", "B"], "b": ["A", "C", "B"], "c": ["B", "C", "A"]}
    plain = borda("ABC", ballots)
    assert plain.winner == "A" and plain.tally["scores"] == {"A": 4, "B": 2, "C": 3}
    heavy = borda("ABC", ballots, weights={"a": 1, "b": 1, "c": 3})
    assert heavy.winner == "B" and heavy.tally["scores"] == {"A": 4, "B": 6, "C": 5}
    assert heavy.support == pytest.approx(6 / (2 * 5))
    half = borda("ABC", ballots, weights={"a": 0.5, "b": 0.5, "c": 1})
    assert half.winner == "A" and half.tally["scores"] == {"A": 2, "B": 2, "C": 2}
    assert half.tie_broken_by == "lexicographic"  # all three score 2: A by the order


@pytest.mark.parametrize("method, ballots, weights, winner", [
    ("plurality", {"a": "A", "b": "A", "c": "B"}, {"a": 1, "b": 1, "c": 3}, "B"),
    ("approval", {"a": ["A"], "b": ["A", "C"], "c": ["B", "C"]}, {"a": 2, "b": 1, "c": 3}, "C"),
    ("irv", {"a": ["A", "B"], "b": ["B", "A"], "c": ["C", "B"]}, {"a": 2, "b": 1, "c": 1.5}, "A"),
    ("schulze", {"a": ["A", "B", "C"], "b": ["B", "C", "A"]}, {"a": 1, "b": 2}, "B"),
    ("majority", {"a": ["A", "B"], "b": ["B"], "c": ["C", "B"]}, {"a": 4, "b": 1, "c": 1}, "A"),
])
def test_weights_decide_every_method(method, ballots, weights, winner):
    assert tally(method, "ABC", ballots).winner != winner
    assert tally(method, "ABC", ballots, weights=weights).winner == winner


def test_weights_for_voters_who_are_not_voting_are_refused_by_name():
    with pytest.raises(InvalidInput, match=r"weights name \['ghost'\]") as err:
        tally("borda", "AB", {"a": ["A"]}, weights={"a": 1, "ghost": 2})
    assert err.value.details["voters"] == ["ghost"]
    # Named in the electorate, an abstainer may hold a weight.
    out = tally("borda", "AB", {"a": ["A"]}, weights={"a": 1, "ghost": 2}, electorate=["a", "ghost"])
    assert out.winner == "A"
    with pytest.raises(InvalidInput, match=r"not in the electorate"):
        tally("plurality", "AB", {"a": "A"}, weights={"a": 1, "z": 1}, electorate=["a"])
    with pytest.raises(InvalidInput, match=r"ballots from \['z'\]"):
        tally("plurality", "AB", {"a": "A", "z": "B"}, electorate=["a"])
    with pytest.raises(InvalidInput, match="'b' has no weight"):
        tally("irv", "AB", {"a": ["A"], "b": ["B"]}, weights={"a": 1})
    with pytest.raises(InvalidInput, match=r"weights name \['mallory'\]"):
        BallotBox("q", "AB", "schulze", electorate=["a"], weights={"a": 1, "mallory": 1})
    with pytest.raises(InvalidInput, match=r"electors \['b'\] have no weight"):
        BallotBox("q", "AB", "borda", electorate=["a", "b"], weights={"a": 1})


def test_a_ballot_box_applies_weights_to_a_ranked_method():
    box = BallotBox("q", "ABC", "borda", electorate="abcd", clock=FakeClock(),
                    weights={"a": 1, "b": 1, "c": 3, "d": 9})
    for voter, ranking in {"a": ["A", "C", "B"], "b": ["A", "C", "B"], "c": ["B", "C", "A"]}.items():
        box.cast(voter, ranking)
    out = box.close()          # d abstained: its weight counts for nothing
    assert out.winner == "B" and out.tally["scores"] == {"A": 4, "B": 6, "C": 5}


# ---------------------------------------------------------------- the runoff's second ballot

def test_runoff_tallies_the_second_ballot_over_the_finalists():
    first = majority("ABC", {"1": "A", "2": "B", "3": "C", "4": "A", "5": "B"})
    assert first.winner is None and first.runoff_finalists == ("A", "B")
    second = runoff(first, {"1": "A", "2": "B", "3": "B", "4": "A", "5": ["B", "A"]})
    assert (second.winner, second.method, second.support) == ("B", "majority", 3 / 5)
    assert second.tally["rounds"] == [{"counts": {"A": 2, "B": 2, "C": 1}},
                                      {"counts": {"A": 2, "B": 3}, "exhausted": 0}]
    assert second.tally["second_ballot"] and not second.tally["runoff_needed"]
    tied = runoff(first, {"1": "A", "2": "B", "3": []})
    assert tied.winner == "A" and tied.tie_broken_by == "lexicographic"
    assert tied.tally["ties"][-1]["at"] == "runoff winner"
    assert tied.tally["rounds"][1]["exhausted"] == 1
    with pytest.raises(InvalidInput, match="unknown option"):
        runoff(first, {"1": "C"})
    with pytest.raises(InvalidInput, match="needs one"):
        runoff(majority("AB", {"1": "A"}), {"1": "A"})


@PROPS
@given(weighted_profiles(), st.sampled_from(["lexicographic", 3]))
def test_a_second_ballot_by_preference_equals_the_computed_runoff(profile, tie_break):
    """Voters answering the second ballot with their preferred finalist give the same
    outcome as the runoff computed from their full rankings."""
    ballots, weights = profile
    # voters who rank nothing are left out: a blank first ballot is "blank", a second
    # ballot naming neither finalist is "exhausted", and only the second can be told apart
    ranked = {v: [b] if isinstance(b, str) else b for v, b in ballots.items() if b}
    weights = {v: weights[v] for v in ranked}
    computed = majority(OPTIONS, ranked, weights=weights, tie_break=tie_break)
    first = majority(OPTIONS, {v: r[0] if r else [] for v, r in ranked.items()},
                     weights=weights, tie_break=tie_break)
    if first.runoff_finalists is None:
        assert computed.winner == first.winner
        return
    second_ballots = {v: next(([o] for o in r if o in first.runoff_finalists), [])
                      for v, r in ranked.items()}
    second = runoff(first, second_ballots, weights=weights, tie_break=tie_break)
    note(f"computed {computed.tally}\nsecond {second.tally}")
    assert (second.winner, second.support) == (computed.winner, computed.support)
    assert second.tally["rounds"] == computed.tally["rounds"]
    assert second.tally["ties"] == computed.tally["ties"]


def test_a_live_runoff_box_asks_again_and_counts_the_second_round():
    clock = FakeClock(10.0)
    box = BallotBox("where?", "ABC", "majority", electorate="wxyz", clock=clock,
                    weights={"w": 1, "x": 1, "y": 1, "z": 1}, quorum=Quorum.of(0.5))
    with pytest.raises(Conflict, match="still open"):
        box.open_runoff()
    for voter, choice in {"w": "A", "x": "B", "y": "C", "z": "A"}.items():
        box.cast(voter, choice)
    first = box.close()
    assert first.runoff_finalists == ("A", "B") and first.winner is None  # A has 2 of 4
    second = box.open_runoff(deadline=20.0)
    assert second.request() == {"question": "where? (runoff)", "options": ["A", "B"],
                                "method": "majority", "shape": "single", "deadline": 20.0,
                                "round": 2}
    with pytest.raises(InvalidInput, match="unknown option"):
        second.cast("y", "C")
    second.cast("y", "B")
    second.cast("w", "B")
    second.cast("x", "B")
    out = second.close()
    assert (out.winner, out.ballots_counted) == ("B", 3)   # z abstained; quorum 2 of 4 met
    assert out.tally["rounds"][1]["counts"] == {"A": 0, "B": 3}
    with pytest.raises(Conflict, match="winner 'B'"):
        second.open_runoff()


# ---------------------------------------------------------------- re-votes and quorum

def test_a_revote_before_the_deadline_replaces_and_is_not_late():
    clock = FakeClock(100.0)
    box = BallotBox("q", "AB", "plurality", electorate="ab", deadline=105.0, clock=clock)
    box.cast("a", "A")
    box.cast("b", "A")
    clock.now = 104.999
    rec = box.cast("a", "B")
    assert rec.replaced and rec.at == 104.999 and not box.expired()
    clock.now = 105.0
    with pytest.raises(DeadlineExceeded):
        box.cast("b", "B")
    out = box.close()
    assert out.tally["counts"] == {"A": 1, "B": 1} and out.ballots_counted == 2


@pytest.mark.parametrize("spelling, required", [
    (None, 0), (3, 3), (0.5, 5), (1.0, 10), ("60%", 6), ({"min_ballots": 7, "fraction": 0.5}, 7),
    (Quorum(2, 0.1), 2),
])
def test_quorum_as_a_count_or_a_fraction_of_the_electorate(spelling, required):
    assert Quorum.of(spelling).required(10) == required


@pytest.mark.parametrize("bad", [True, -1, 0.0, 1.5, "many", "x%", {"n": 1}, float("nan")])
def test_quorum_spellings_that_are_refused(bad):
    with pytest.raises(InvalidInput, match="quorum"):
        Quorum.of(bad)


def test_a_fractional_quorum_reads_the_electorate_given_to_tally():
    out = tally("plurality", "AB", {"a": "A"}, quorum=Quorum.of(0.5), electorate="abc")
    assert not out.quorum_met and out.tally["quorum_required"] == 2
    assert tally("plurality", "AB", {"a": "A", "b": []}, quorum=Quorum.of(0.5),
                 electorate="abc").winner == "A"


# ---------------------------------------------------------------- one vocabulary

def test_method_names_have_one_source_and_aliases_map_in_one_place():
    from coordination.services.decisions import PIPELINE_METHODS
    from runtime.cli import consensus as cli_consensus

    # the CLI reads voting's vocabulary; the consensus service registers it (and the
    # aliases) as what pipeline steps may ask for: no list is retyped anywhere
    assert cli_consensus.METHODS is METHODS
    assert set(PIPELINE_METHODS) == set(METHODS) | set(METHOD_ALIASES)
    assert canonical_method("instant_runoff") == "irv" and ballot_shape("instant_runoff") == "ranked"
    ranked = {"1": ["A", "B"], "2": ["B", "A"], "3": ["C", "B"]}
    assert tally("instant_runoff", "ABC", ranked).to_json() == tally("irv", "ABC", ranked).to_json()
    assert BallotBox("q", "AB", "instant_runoff").request()["method"] == "irv"
    with pytest.raises(InvalidInput, match="unknown voting method 'runoff'"):
        canonical_method("runoff")
