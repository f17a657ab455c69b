"""Negotiation: rounds with compromises, the round limit, and alternating-offers bargaining."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from coordination.negotiation import (
    AlternatingOffers,
    Negotiation,
    PriceStrategy,
    bargain,
    boulware,
    conceder,
    linear,
    offer_at,
    step,
    time_dependent,
)
from runtime.errors import ClosedError, Conflict, DeadlineExceeded, InvalidInput, PermissionDenied
from tests.support.helpers import FakeClock

PROPS = settings(max_examples=80, deadline=None)
PARTIES = ["ann", "bob", "cat", "dan"]


def vote_all(neg, ballots):
    for voter, ballot in ballots.items():
        neg.cast(voter, ballot)
    return neg.end_round()


# ---------------------------------------------------------------- multi-round

def test_a_failed_round_then_agreement_on_a_compromise():
    neg = Negotiation("temperature", ["low", "high"], "plurality", threshold=0.75, max_rounds=3,
                      electorate=PARTIES)
    out = vote_all(neg, {"ann": "low", "bob": "low", "cat": "high", "dan": "high"})
    assert out.winner == "high" and out.support == 0.5 and neg.state == "proposing"
    neg.propose("ann", "medium", ["low", "high"], note="split the difference")
    neg.propose_from("cat", [{"name": "medium", "combines": ["high", "low"]}])
    neg.next_round()
    assert neg.options == ("low", "high", "medium") and neg.parts_of("medium") == ("low", "high")
    out = vote_all(neg, {"ann": "medium", "bob": "medium", "cat": "medium", "dan": "high"})
    assert neg.state == "agreed" and neg.agreed_option == "medium" and out.support == 0.75
    history = neg.to_json()
    orjson.dumps(history)
    first, second = history["rounds"]
    assert first["options"] == ["low", "high"] and not first["agreed"]
    assert first["proposals"] == [{"name": "medium", "combines": ["low", "high"],
                                   "proposers": ["ann", "cat"], "note": "split the difference"}]
    assert first["outcome"]["tally"]["counts"] == {"low": 2, "high": 2}
    assert second["ballots"]["dan"] == "high" and second["agreed"]
    with pytest.raises(ClosedError, match="already agreed"):
        neg.cast("ann", "low")


def test_round_limit_ends_failed():
    neg = Negotiation("colour", "RGB", "approval", threshold=1.0, max_rounds=2)
    vote_all(neg, {"ann": ["R"], "bob": ["G"]})
    neg.next_round()                                    # nobody proposed: vote again
    out = vote_all(neg, {"ann": ["R", "G"], "bob": ["G", "B"]})
    assert out.winner == "G" and out.support == 1.0 and neg.state == "agreed"
    neg = Negotiation("colour", "RGB", "approval", threshold=1.0, max_rounds=2)
    for _ in range(2):
        if neg.state == "proposing":
            neg.next_round()
        vote_all(neg, {"ann": ["R"], "bob": ["G"]})
    assert neg.state == "failed" and neg.agreed_option is None and neg.round_number == 2
    with pytest.raises(ClosedError, match="already failed"):
        neg.next_round()


def test_ranked_negotiation_and_abstention_counts_against():
    neg = Negotiation("plan", "XYZ", "irv", threshold=0.6, max_rounds=2)
    out = vote_all(neg, {"a": ["X", "Y"], "b": ["Y", "X"], "c": ["Z", "Y"], "d": []})
    assert out.winner == "Y" and out.support == 0.5 and neg.state == "proposing"   # 2 of 4


def test_proposal_rules():
    neg = Negotiation("q", ["a", "b", "c"], "plurality", threshold=1.0, electorate=["p", "q"])
    with pytest.raises(InvalidInput, match="is voting, not proposing"):
        neg.propose("p", "ab", ["a", "b"])
    vote_all(neg, {"p": "a", "q": "b"})
    with pytest.raises(InvalidInput, match="already an option"):
        neg.propose("p", "a", ["b", "c"])
    with pytest.raises(InvalidInput, match="at least two distinct"):
        neg.propose("p", "aa", ["a", "a"])
    with pytest.raises(InvalidInput, match="at least two distinct"):
        neg.propose("p", "az", ["a", "z"])
    with pytest.raises(PermissionDenied, match="'x' is not a party"):
        neg.propose("x", "ab", ["a", "b"])
    neg.propose("p", "ab", ["a", "b"])
    with pytest.raises(Conflict, match="already proposed it"):
        neg.propose("q", "ab", ["b", "c"])
    with pytest.raises(InvalidInput, match="answered propose"):
        neg.propose_from("q", {"name": "bc"})
    with pytest.raises(InvalidInput, match="is proposing, not voting"):
        neg.cast("p", "a")
    neg.next_round()
    request = neg.request()
    assert request["options"] == ["a", "b", "c", "ab"] and request["round"] == 2
    assert request["compromises"] == {"ab": ["a", "b"]} and request["shape"] == "single"


def test_round_deadline_uses_the_clock():
    clock = FakeClock(10.0)
    neg = Negotiation("q", "AB", "plurality", threshold=0.5, round_seconds=5.0, clock=clock)
    neg.cast("x", "A")
    clock.now = 15.0
    with pytest.raises(DeadlineExceeded):
        neg.cast("y", "B")
    assert neg.end_round().winner == "A" and neg.state == "agreed"


def test_bad_negotiation_parameters():
    with pytest.raises(InvalidInput, match="threshold"):
        Negotiation("q", "AB", "plurality", threshold=0)
    with pytest.raises(InvalidInput, match="max_rounds"):
        Negotiation("q", "AB", "plurality", max_rounds=0)
    with pytest.raises(InvalidInput, match="unknown voting method"):
        Negotiation("q", "AB", "coin")


# ---------------------------------------------------------------- tactics

def test_tactics_shape():
    b, c, lin = boulware(0.2), conceder(5.0), linear()
    assert b(0) == c(0) == lin(0) == 0.0 and b(1) == c(1) == lin(1) == 1.0
    assert b(0.5) < lin(0.5) == 0.5 < c(0.5)
    assert time_dependent(1.0, k=0.2)(0) == pytest.approx(0.2)
    assert offer_at(0.5, 10.0, 20.0, lin) == 15.0 and offer_at(1.0, 0.1, 0.7, lin) == 0.7
    with pytest.raises(InvalidInput):
        boulware(2.0)
    with pytest.raises(InvalidInput):
        conceder(0.5)
    with pytest.raises(InvalidInput, match="wrong way"):
        PriceStrategy("buyer", initial=50, reservation=10)


# ---------------------------------------------------------------- alternating offers

TACTICS = st.sampled_from([boulware(0.2), boulware(0.5), linear(), conceder(3.0), conceder(8.0)])
PRICE = st.floats(0, 1000, allow_nan=False)


@st.composite
def two_parties(draw):
    buyer_res, seller_res = draw(PRICE), draw(PRICE)
    buyer = PriceStrategy("buyer", draw(st.floats(0, buyer_res)), buyer_res, draw(TACTICS))
    seller = PriceStrategy("seller", draw(st.floats(seller_res, 2000)), seller_res, draw(TACTICS))
    return buyer, seller


@PROPS
@given(two_parties(), st.integers(1, 12), st.sampled_from(["buyer", "seller"]))
def test_deal_inside_the_zone_of_agreement_and_none_outside(parties, rounds, first):
    buyer, seller = parties
    session = bargain(AlternatingOffers(first=first, max_rounds=rounds), buyer, seller)
    note(repr(session.to_json()))
    assert len(session.offers) <= rounds
    if buyer.reservation >= seller.reservation:
        assert session.state == "deal"
        assert seller.reservation <= session.price <= buyer.reservation
    else:
        assert session.state == "no_deal" and session.price is None


def test_bargaining_trail_and_turns():
    clock = FakeClock()
    session = AlternatingOffers(first="seller", max_rounds=4, clock=clock, subject="task 7")
    seller = PriceStrategy("seller", 100, 60)
    buyer = PriceStrategy("buyer", 20, 80)
    with pytest.raises(InvalidInput, match="seller's move"):
        session.offer("buyer", 10)
    with pytest.raises(InvalidInput, match="no offer"):
        session.accept("seller")
    moves = []
    while session.state == "open":
        moves.append(step(session, seller if session.turn == "seller" else buyer))
    # t = k/3 for the k-th move: seller offers 100 (t=0); buyer would offer 40 at t=1/3,
    # so counters 40; seller would offer 73.3 at t=2/3 > 40, counters 73.3; buyer's next
    # offer (t=1) is its limit 80 >= 73.3: it accepts.
    assert moves == ["offer", "offer", "offer", "accept"]
    assert [o.role for o in session.offers] == ["seller", "buyer", "seller"]
    assert session.price == pytest.approx(100 - 40 * 2 / 3)
    assert session.reason == "buyer accepted offer 3"
    orjson.dumps(session.to_json())
    with pytest.raises(ClosedError, match="already ended"):
        session.offer("seller", 1)


def test_round_limit_leaves_only_accept_or_walk_away():
    session = AlternatingOffers(max_rounds=1)
    session.offer("buyer", 10)
    with pytest.raises(InvalidInput, match="may only accept or walk away"):
        session.offer("seller", 50)
    assert step(session, PriceStrategy("seller", 50, 40)) == "walk_away"
    assert session.state == "no_deal" and "round limit" in session.reason


def test_deadline_ends_bargaining_with_no_deal():
    clock = FakeClock(0.0)
    session = AlternatingOffers(max_rounds=100, deadline=10.0, clock=clock)
    session.offer("buyer", 10)
    clock.now = 5.0
    assert session.progress() == pytest.approx(0.5)      # time used beats rounds used
    clock.now = 10.0
    with pytest.raises(DeadlineExceeded):
        session.offer("seller", 50)
    assert session.state == "no_deal" and session.reason.startswith("deadline")
    with pytest.raises(InvalidInput, match="not after the start"):
        AlternatingOffers(deadline=0.0, clock=clock)
    with pytest.raises(InvalidInput, match="finite number"):
        AlternatingOffers().offer("buyer", float("nan"))
