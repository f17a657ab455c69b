"""Voting: textbook elections, validation, quorum, the ballot box, and properties."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from coordination.voting import (
    METHODS,
    BallotBox,
    Quorum,
    approval,
    ballot_shape,
    borda,
    irv,
    majority,
    plurality,
    priority_order,
    schulze,
    tally,
    weighted,
)
from runtime.errors import ClosedError, DeadlineExceeded, InvalidInput, PermissionDenied
from tests.support.helpers import FakeClock

PROPS = settings(max_examples=60, deadline=None)


def expand(groups):
    """[(ranking, count), ...] -> {voter: ranking} with stable voter ids."""
    ballots = {}
    for g, (ranking, count) in enumerate(groups):
        for i in range(count):
            ballots[f"v{g}.{i}"] = list(ranking)
    return ballots


# ---------------------------------------------------------------- textbook elections

TENNESSEE = expand([
    (["Memphis", "Nashville", "Chattanooga", "Knoxville"], 42),
    (["Nashville", "Chattanooga", "Knoxville", "Memphis"], 26),
    (["Chattanooga", "Knoxville", "Nashville", "Memphis"], 15),
    (["Knoxville", "Chattanooga", "Nashville", "Memphis"], 17),
])
CITIES = ["Memphis", "Nashville", "Chattanooga", "Knoxville"]


@pytest.mark.parametrize("method, winner", [
    ("plurality", "Memphis"), ("irv", "Knoxville"), ("schulze", "Nashville"),
    ("borda", "Nashville"), ("majority", "Nashville"),
])
def test_tennessee_capital(method, winner):
    out = tally(method, CITIES, TENNESSEE)
    assert (out.winner, out.tie_broken_by, out.ballots_counted) == (winner, None, 100)


def test_tennessee_tallies():
    assert borda(CITIES, TENNESSEE).tally["scores"] == {
        "Memphis": 126, "Nashville": 194, "Chattanooga": 173, "Knoxville": 107}
    rounds = irv(CITIES, TENNESSEE).tally["rounds"]
    assert [r["eliminated"] for r in rounds] == [["Chattanooga"], ["Nashville"], []]
    assert rounds[-1]["counts"] == {"Memphis": 42, "Knoxville": 58}
    s = schulze(CITIES, TENNESSEE).tally
    assert s["condorcet_winner"] == "Nashville"
    assert s["pairwise"]["Nashville"]["Memphis"] == 58
    m = majority(CITIES, TENNESSEE)
    assert m.tally["finalists"] == ["Memphis", "Nashville"]
    assert m.tally["rounds"][1]["counts"] == {"Memphis": 42, "Nashville": 58}
    assert m.support == pytest.approx(0.58)


# Wikipedia, "Schulze method": 45 voters, 5 candidates.
WIKI_SCHULZE = expand([("ACBED", 5), ("ADECB", 5), ("BEDAC", 8), ("CABED", 3),
                       ("CAEBD", 7), ("CBADE", 2), ("DCEBA", 7), ("EBADC", 8)])


def test_schulze_wikipedia_example():
    out = schulze("ABCDE", WIKI_SCHULZE)
    assert out.winner == "E" and out.tie_broken_by is None
    assert out.tally["pairwise"]["A"] == {"B": 20, "C": 26, "D": 30, "E": 22}
    assert out.tally["pairwise"]["E"] == {"A": 23, "B": 27, "C": 21, "D": 31}
    paths = out.tally["strongest_paths"]
    assert paths["E"] == {"A": 25, "B": 28, "C": 28, "D": 31}
    assert paths["A"] == {"B": 28, "C": 28, "D": 30, "E": 24}
    assert out.tally["schulze_winners"] == ["E"] and out.tally["condorcet_winner"] is None
    orjson.dumps(out.to_json())


def test_borda_textbook_and_partial_rankings():
    # Full rankings over 3 options, 2 points for first and 1 for second, by hand:
    # A = 3*2 = 6; B = 3*1 + 2*2 + 2*1 = 9; C = 2*1 + 2*2 = 6.
    ballots = expand([("ABC", 3), ("BCA", 2), ("CBA", 2)])
    out = borda("ABC", ballots)
    assert out.tally["scores"] == {"A": 6, "B": 9, "C": 6} and out.winner == "B"
    # Partial rankings: x = ["A"] gives A 2 and B, C share 1 + 0 (0.5 each);
    # y = ["C", "B"] gives C 2, B 1 and A the last position's 0.
    out = borda("ABC", {"x": ["A"], "y": ["C", "B"]})
    assert out.tally["scores"] == {"A": 2.0, "B": 1.5, "C": 2.5} and out.winner == "C"
    assert out.support == pytest.approx(2.5 / 4)


def test_plurality_approval_weighted_small():
    assert plurality("ABC", {"1": "A", "2": "B", "3": "B", "4": []}).tally["counts"] == \
        {"A": 1, "B": 2, "C": 0}
    out = approval("ABC", {"1": {"A", "B"}, "2": ["B"], "3": {"C", "A"}, "4": "A"})
    assert out.winner == "A" and out.tally["approvals"] == {"A": 3, "B": 2, "C": 1}
    out = weighted("AB", {"1": "A", "2": "B", "3": "B"}, weights={"1": 5, "2": 2, "3": 0})
    assert out.winner == "A" and out.tally["weights"] == {"A": 5.0, "B": 2.0}
    assert out.support == pytest.approx(5 / 7)


def test_majority_first_round_and_single_choice_runoff():
    out = majority("ABC", {"1": "A", "2": "A", "3": "B"})
    assert out.winner == "A" and len(out.tally["rounds"]) == 1
    out = majority("ABC", {"1": "A", "2": "B", "3": "C", "4": "A", "5": "B"})
    assert out.winner is None and out.runoff_finalists == ("A", "B")
    # The same voters with rankings: the runoff is computed; C's voter prefers B.
    out = majority("ABC", {"1": "A", "2": "B", "3": ["C", "B"], "4": "A", "5": "B"})
    assert out.winner == "B"
    assert out.tally["rounds"][1] == {"counts": {"A": 2, "B": 3}, "exhausted": 0}


def test_irv_exhausted_ballots_and_zero_vote_bulk_elimination():
    out = irv("ABCD", {"1": ["A"], "2": ["A"], "3": ["B", "C"], "4": ["C", "B"], "5": ["C"]})
    first = out.tally["rounds"][0]
    assert first["eliminated"] == ["D"] and first["counts"]["D"] == 0
    assert out.winner == "C" and out.tie_broken_by is None  # B out, its ballot goes to C: 3 of 5


# ---------------------------------------------------------------- ties

def test_ties_follow_the_documented_priority_order():
    out = plurality("BA", {"1": "A", "2": "B"})
    assert out.winner == "A" and out.tie_broken_by == "lexicographic"
    assert out.tally["ties"] == [{"at": "winner", "tied": ["A", "B"], "chosen": "A"}]
    order = priority_order("ABCDEF", 7)
    assert order == priority_order("FEDCBA", 7) and sorted(order) == list("ABCDEF")
    seeded = plurality("AB", {"1": "A", "2": "B"}, tie_break=7)
    assert seeded.winner == [o for o in order if o in "AB"][0] and seeded.tie_broken_by == "seed:7"


def test_irv_elimination_tie_eliminates_the_latest_in_order():
    out = irv("ABC", {"1": ["A"], "2": ["A"], "3": ["B"], "4": ["C", "B"]})
    assert out.tally["rounds"][0]["eliminated"] == ["C"]          # B and C tied at 1: C goes
    assert out.winner is not None and out.tie_broken_by == "lexicographic"


def test_no_winner_without_votes():
    for method in METHODS:
        out = tally(method, "AB", {"1": []}, weights={"1": 1})
        assert out.winner is None and out.quorum_met and out.ballots_counted == 1, method
    assert weighted("AB", {"1": "A"}, weights={"1": 0}).winner is None


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("method, ballot, words", [
    ("plurality", "Z", "unknown option"),
    ("irv", ["A", "B", "A"], "more than once"),
    ("approval", ["A", "A"], "more than once"),
    ("borda", {"A", "B"}, "set"),
    ("plurality", 3, "int"),
    ("schulze", ["A", "Q"], "unknown option"),
])
def test_bad_ballots_name_the_voter(method, ballot, words):
    with pytest.raises(InvalidInput) as err:
        tally(method, "AB", {"ok": "A", "mallory": ballot})
    assert "mallory" in str(err.value) and words in str(err.value)
    assert err.value.details["voter"] == "mallory"


def test_bad_weights_options_and_methods():
    with pytest.raises(InvalidInput, match="'m' has weight -1"):
        weighted("AB", {"m": "A"}, weights={"m": -1})
    with pytest.raises(InvalidInput, match="no weight"):
        weighted("AB", {"m": "A"}, weights={})
    with pytest.raises(InvalidInput, match="twice"):
        plurality(["A", "A"], {})
    with pytest.raises(InvalidInput, match="unknown voting method"):
        ballot_shape("dictator")
    with pytest.raises(InvalidInput, match="tie_break"):
        plurality("AB", {}, tie_break="random")


def test_quorum_not_met_has_no_winner():
    out = plurality("AB", {"1": "A"}, quorum=Quorum(min_ballots=2))
    assert (out.winner, out.quorum_met, out.tally["quorum_required"]) == (None, False, 2)
    out = plurality("AB", {"1": "A", "2": []}, quorum=Quorum(fraction=0.5), electorate_size=4)
    assert out.quorum_met and out.winner == "A"     # a blank ballot counts for the quorum
    out = plurality("AB", {"1": "A"}, quorum=Quorum(fraction=0.3), electorate_size=10)
    assert not out.quorum_met and out.tally["quorum_required"] == 3
    with pytest.raises(InvalidInput, match="needs an electorate"):
        plurality("AB", {"1": "A"}, quorum=Quorum(fraction=0.5))


# ---------------------------------------------------------------- ballot box

def test_ballot_box_replaces_revotes_and_logs_every_cast():
    clock = FakeClock(100.0)
    box = BallotBox("lunch?", ["pizza", "sushi"], "plurality", electorate=["a", "b", "c"],
                    clock=clock)
    box.cast("a", "pizza")
    clock.now += 1
    box.cast("b", "sushi")
    rec = box.cast("a", "sushi")
    assert rec.replaced and rec.at == 101.0
    assert [(r.voter, r.ballot, r.replaced) for r in box.log] == [
        ("a", "pizza", False), ("b", "sushi", False), ("a", "sushi", True)]
    out = box.close()
    assert out.winner == "sushi" and out.ballots_counted == 2 and out.tally["counts"]["sushi"] == 2
    assert box.close() is out
    with pytest.raises(ClosedError, match="'c' voted too late"):
        box.cast("c", "pizza")
    orjson.dumps(box.to_json())


def test_ballot_box_refusals():
    clock = FakeClock(100.0)
    box = BallotBox("q", "AB", "approval", electorate=["a"], deadline=105.0, clock=clock)
    with pytest.raises(PermissionDenied, match="'z' is not in the electorate"):
        box.cast("z", ["A"])
    with pytest.raises(InvalidInput, match="'a' voted for unknown"):
        box.cast("a", ["C"])
    box.cast("a", {"B", "A"})
    assert box.ballots == {"a": ["A", "B"]}
    clock.now = 105.0
    assert box.expired()
    with pytest.raises(DeadlineExceeded, match="deadline"):
        box.cast("a", ["A"])
    assert box.close().winner == "A" and box.close().tally["approvals"] == {"A": 1, "B": 1}
    with pytest.raises(InvalidInput, match="empty electorate"):
        BallotBox("q", "AB", "plurality", electorate=[])
    with pytest.raises(InvalidInput, match=r"electors \['b'\] have no weight"):
        BallotBox("q", "AB", "weighted", electorate=["a", "b"], weights={"a": 1})


def test_ballot_box_quorum_fraction_of_electorate():
    box = BallotBox("q", "AB", "plurality", electorate="abcd", quorum=Quorum(fraction=0.75))
    box.cast("a", "A")
    box.cast("b", "A")
    out = box.close()
    assert not out.quorum_met and out.winner is None


# ---------------------------------------------------------------- properties

OPTIONS = ("A", "B", "C", "D")


@st.composite
def rankings(draw, options=OPTIONS, min_voters=1, max_voters=9):
    n = draw(st.integers(min_voters, max_voters))
    perm = st.permutations(options)
    ballots = {}
    for i in range(n):
        full = draw(perm)
        ballots[f"v{i}"] = list(full[: draw(st.integers(1, len(options)))])
    return ballots


def approval_of(ranking):
    return set(ranking)


def ballots_for(method, ranked):
    return {v: approval_of(r) for v, r in ranked.items()} if method == "approval" else ranked


def beats(ballots, a, b):
    """Independent of the module: voters ranking a above b (unranked below ranked)."""
    def pos(r, o):
        return r.index(o) if o in r else len(r)
    return sum(1 for r in ballots.values() if a in r and pos(r, a) < pos(r, b))


@PROPS
@given(rankings())
def test_a_condorcet_winner_always_wins_schulze(ballots):
    cw = [a for a in OPTIONS
          if all(beats(ballots, a, b) > beats(ballots, b, a) for b in OPTIONS if b != a)]
    out = schulze(OPTIONS, ballots)
    note(repr(out.tally))
    if cw:
        assert out.winner == cw[0] and out.tie_broken_by is None
        assert out.tally["condorcet_winner"] == cw[0]


@PROPS
@given(rankings(), st.sampled_from(OPTIONS))
def test_unanimity_under_every_method(ballots, top):
    ranked = {v: [top] + [o for o in r if o != top] for v, r in ballots.items()}
    for method in METHODS:
        out = tally(method, OPTIONS, ballots_for(method, ranked),
                    weights={v: 1.0 for v in ranked})
        if method == "approval":   # others approved by every voter tie with top
            best = max(out.tally["approvals"].values())
            assert out.tally["approvals"][top] == best
            continue
        assert out.winner == top, (method, out.tally)
        assert out.tie_broken_by is None


@PROPS
@given(rankings(), st.randoms(use_true_random=False), st.sampled_from(METHODS))
def test_anonymity(ballots, rnd, method):
    weights = {v: float(rnd.randint(0, 3)) for v in ballots}
    pairs = [(ballots_for(method, {v: b})[v], weights[v]) for v, b in ballots.items()]
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    first = tally(method, OPTIONS, {f"x{i}": b for i, (b, _) in enumerate(pairs)},
                  weights={f"x{i}": w for i, (_, w) in enumerate(pairs)})
    again = tally(method, OPTIONS, {f"y{i}": b for i, (b, _) in enumerate(shuffled)},
                  weights={f"y{i}": w for i, (_, w) in enumerate(shuffled)})
    assert first.to_json() == again.to_json()


@PROPS
@given(rankings(), st.permutations(OPTIONS), st.sampled_from(METHODS))
def test_neutrality_modulo_documented_ties(ballots, image, method):
    rename = dict(zip(OPTIONS, image))
    renamed = {v: [rename[o] for o in r] for v, r in ballots.items()}
    weights = {v: 1.0 for v in ballots}
    before = tally(method, OPTIONS, ballots_for(method, ballots), weights=weights)
    after = tally(method, image, ballots_for(method, renamed), weights=weights)
    if before.tie_broken_by is None and after.tie_broken_by is None:
        assert after.winner == (before.winner and rename[before.winner])
        assert after.support == before.support


@PROPS
@given(rankings(max_voters=5), st.lists(st.permutations(OPTIONS), max_size=4),
       st.sampled_from(METHODS))
def test_revotes_do_not_double_count(ballots, earlier, method):
    weights = {v: 2.0 for v in ballots}

    def box():
        return BallotBox("q", OPTIONS, method, electorate=ballots, weights=weights)

    once, many = box(), box()
    for voter, ballot in ballots.items():
        final = ballots_for(method, {voter: ballot})[voter]
        once.cast(voter, final)
        for early in earlier:
            many.cast(voter, ballots_for(method, {voter: list(early)})[voter])
        many.cast(voter, final)
    assert once.close().to_json() == many.close().to_json()
    assert len(many.log) == len(ballots) * (len(earlier) + 1)


@PROPS
@given(rankings(), st.sampled_from([0.5, 1.0, 3.0]))
def test_weighted_with_equal_weights_equals_plurality(ballots, w):
    single = {v: r[0] for v, r in ballots.items()}
    p = plurality(OPTIONS, single)
    q = weighted(OPTIONS, single, weights={v: w for v in single})
    assert (q.winner, q.tie_broken_by) == (p.winner, p.tie_broken_by)
    assert q.support == pytest.approx(p.support)
    assert q.tally["weights"] == {o: w * c for o, c in p.tally["counts"].items()}


def test_seeded_random_elections_are_deterministic():
    seed = random.randrange(2**32)
    rnd = random.Random(seed)
    ballots = {f"v{i}": rnd.sample(OPTIONS, rnd.randint(1, 4)) for i in range(40)}
    for method in METHODS:
        a = tally(method, OPTIONS, ballots_for(method, ballots), weights=dict.fromkeys(ballots, 1),
                  tie_break=seed)
        b = tally(method, OPTIONS, ballots_for(method, ballots), weights=dict.fromkeys(ballots, 1),
                  tie_break=seed)
        assert a.to_json() == b.to_json(), f"seed {seed}, method {method}"
        orjson.dumps(a.to_json())
