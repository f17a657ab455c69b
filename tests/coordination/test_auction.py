"""Auctions: textbook outcomes in both directions, the one tie-break rule, reserves,
clocks and rounds driven by explicit timestamps (no sleeps, no real clock)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.auction import (
    ActionKind,
    AuctionStateError,
    Bid,
    Direction,
    DutchAuction,
    EnglishAuction,
    FirstPriceAuction,
    SecondPriceAuction,
    rank,
)
from runtime.errors import InvalidInput

SALE, PROC = Direction.SALE, Direction.PROCUREMENT


def sealed(cls, direction, bids, *, reserve=None, window=10.0, scores=None):
    """Open at t=0, submit (bidder, price) in order at t=1, 2, ..., close at the deadline."""
    a = cls("a1", direction, window=window, reserve=reserve)
    a.open(0.0)
    for i, (bidder, price) in enumerate(bids, start=1):
        a.submit(bidder, price, float(i))
    return a.close(window, scores=scores)


# -- sealed bids ----------------------------------------------------------------------------

def test_first_price_sale_winner_pays_own_bid():
    r = sealed(FirstPriceAuction, SALE, [("a", 100), ("b", 300), ("c", 200)])
    assert (r.winner, r.price) == ("b", 300)


def test_first_price_procurement_lowest_offer_is_paid_its_own_price():
    r = sealed(FirstPriceAuction, PROC, [("a", 100), ("b", 300), ("c", 80)])
    assert (r.winner, r.price) == ("c", 80)


def test_vickrey_sale_winner_pays_second_highest():
    r = sealed(SecondPriceAuction, SALE, [("a", 100), ("b", 300), ("c", 200)])
    assert (r.winner, r.price) == ("b", 200)


def test_vickrey_procurement_winner_is_paid_second_lowest():
    r = sealed(SecondPriceAuction, PROC, [("a", 100), ("b", 300), ("c", 80)])
    assert (r.winner, r.price) == ("c", 100)


@pytest.mark.parametrize("direction, reserve, bid", [(SALE, 50, 120), (PROC, 500, 120)])
def test_vickrey_single_bid_pays_the_reserve(direction, reserve, bid):
    r = sealed(SecondPriceAuction, direction, [("a", bid)], reserve=reserve)
    assert (r.winner, r.price) == ("a", reserve)


def test_vickrey_single_bid_without_reserve_pays_own_bid():
    assert sealed(SecondPriceAuction, SALE, [("a", 120)]).price == 120


@pytest.mark.parametrize("direction, bids, winner", [
    (SALE, [("low", 40), ("ok", 60)], "ok"),      # below a sale reserve of 50: refused
    (PROC, [("high", 60), ("ok", 40)], "ok"),     # above a procurement reserve of 50
])
def test_reserve_refuses_bids_beyond_it(direction, bids, winner):
    r = sealed(FirstPriceAuction, direction, bids, reserve=50)
    assert r.winner == winner
    assert [(b, why) for b, _, why in r.rejected] == [(bids[0][0], "outside the reserve 50")]


def test_no_award_when_no_bid_meets_the_reserve():
    r = sealed(SecondPriceAuction, SALE, [("a", 10), ("b", 20)], reserve=50)
    assert r.winner is None and r.price is None and r.reason == "no eligible bids"


def test_ties_earlier_bid_wins_then_bidder_id():
    r = sealed(FirstPriceAuction, SALE, [("zed", 100), ("amy", 100)])
    assert r.winner == "zed"  # same price: zed bid at t=1, amy at t=2
    same_time = [Bid("zed", 100, 1.0), Bid("amy", 100, 1.0), Bid("bob", 90, 0.5)]
    assert [b.bidder for b in rank(same_time, SALE)] == ["amy", "zed", "bob"]
    assert [b.bidder for b in rank(same_time, PROC)] == ["bob", "amy", "zed"]


def test_evaluation_scores_beat_price_in_procurement_and_vickrey_needs_a_score_model():
    bids = [("cheap", 100), ("good", 150), ("mid", 200)]
    scores = {"cheap": 0.5, "good": 0.9, "mid": 0.6}
    first = sealed(FirstPriceAuction, PROC, bids, scores=scores)
    assert (first.winner, first.price) == ("good", 150)
    # second-score pricing inverts the scores; bare numbers cannot say what price ties
    # (tests/test_auction_vickrey_dutch.py covers evaluation.Scoring)
    with pytest.raises(InvalidInput, match="bare scores cannot tell"):
        sealed(SecondPriceAuction, PROC, bids, scores=scores)


def test_scores_must_cover_every_bid():
    a = FirstPriceAuction("a1", PROC, window=5.0)
    a.open(0.0)
    a.submit("x", 10, 1.0, score=0.4)
    a.submit("y", 20, 2.0)
    with pytest.raises(InvalidInput, match="some bids carry an evaluation score"):
        a.close(5.0)
    with pytest.raises(InvalidInput, match="no evaluation score"):
        a.close(5.0, scores={"x": 0.3})


def test_sealed_window_late_duplicate_uninvited_and_early_close():
    a = SecondPriceAuction("a1", SALE, window=5.0)
    a.open(0.0, invited=["x", "y"])
    assert a.next_action(0.0).kind is ActionKind.COLLECT and a.next_action(0.0).until == 5.0
    assert a.submit("x", 10, 1.0).accepted
    assert a.submit("x", 30, 1.5).reason == "already answered"
    assert a.submit("intruder", 99, 2.0).reason == "not invited"
    assert a.next_action(2.0).kind is ActionKind.COLLECT
    assert a.submit("y", None, 3.0).reason == "declined"
    assert a.next_action(3.0).kind is ActionKind.CLOSE  # every invited agent answered
    b = FirstPriceAuction("a2", SALE, window=5.0)
    b.open(0.0)
    assert b.submit("x", 10, 5.0).reason == "late: the window closed at 5.0"
    assert b.next_action(5.0).kind is ActionKind.CLOSE


def test_misuse_raises_typed_errors():
    a = FirstPriceAuction("a1", SALE, window=5.0)
    with pytest.raises(AuctionStateError):
        a.submit("x", 10, 1.0)
    a.open(0.0)
    with pytest.raises(AuctionStateError):
        a.open(1.0)
    a.submit("x", 10, 2.0)
    with pytest.raises(InvalidInput, match="time went backwards"):
        a.submit("y", 10, 1.0)
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(InvalidInput):
            a.submit("z", bad, 3.0)
    with pytest.raises(InvalidInput):
        FirstPriceAuction("a2", SALE, window=0)


def test_result_is_json_able_and_close_is_idempotent():
    a = SecondPriceAuction("a1", PROC, window=5.0, reserve=500)
    a.open(0.0)
    a.submit("x", 100, 1.0)
    a.submit("y", 900, 2.0)
    r = a.close(5.0)
    assert a.close(7.0) is r and a.next_action(7.0).kind is ActionKind.DONE
    assert a.submit("late", 1, 8.0).reason == "auction closed"
    back = orjson.loads(orjson.dumps(r.to_json()))
    assert back["winner"] == "x" and back["price"] == 500 and back["kind"] == "second_price"
    assert back["direction"] == "procurement" and back["rejected"][0]["bidder"] == "y"


# -- English --------------------------------------------------------------------------------

def run_english(auction, limits, direction):
    """Drive rounds: each bidder stays while the price is acceptable to it (sale: price <=
    valuation; procurement: price >= cost).  Answers in id order, 0.01 s apart."""
    t, active = 0.0, sorted(limits)
    auction.open(t, invited=limits)
    while (action := auction.next_action(t)).kind is ActionKind.ASK:
        for bidder in list(active):
            t += 0.01
            limit = limits[bidder]
            ok = action.price <= limit if direction is SALE else action.price >= limit
            assert auction.submit(bidder, ok, t).accepted
            if not ok:
                active.remove(bidder)
    assert auction.next_action(t).kind is ActionKind.CLOSE
    return auction.close(t)


def test_english_sale_ends_one_increment_above_the_second_valuation():
    a = EnglishAuction("e1", SALE, start=100, increment=10, round_window=1.0)
    r = run_english(a, {"a": 175, "b": 152, "c": 120}, SALE)
    assert (r.winner, r.price) == ("a", 160)
    assert [x.price for x in r.rounds] == [100, 110, 120, 130, 140, 150, 160]
    assert r.rounds[-1].stayed == ("a",) and r.rounds[-1].dropped == ("b",)


def test_english_procurement_is_a_descending_reverse_auction():
    a = EnglishAuction("e2", PROC, start=200, increment=10, round_window=1.0, reserve=200)
    r = run_english(a, {"a": 95, "b": 130, "c": 160}, PROC)
    assert (r.winner, r.price) == ("a", 120)  # first price below b's cost of 130


@settings(max_examples=60, deadline=None)
@given(vals=st.lists(st.integers(0, 400), min_size=2, max_size=5, unique=True),
       increment=st.integers(1, 40), sale=st.booleans())
def test_english_price_is_within_one_increment_of_the_second_best(vals, increment, sale):
    direction = SALE if sale else PROC
    limits = {f"agent{i}": v for i, v in enumerate(vals)}
    start = 0 if sale else 400
    a = EnglishAuction("e", direction, start=start, increment=increment, round_window=1.0)
    r = run_english(a, limits, direction)
    ordered = sorted(vals, reverse=sale)  # best first
    best, second = ordered[0], ordered[1]
    if sale:
        assert r.price <= second + increment and limits[r.winner] >= r.price
        if best >= second + increment:
            assert limits[r.winner] == best and r.price > second
    else:
        assert r.price >= second - increment and limits[r.winner] <= r.price
        if best <= second - increment and second - increment >= 0:
            assert limits[r.winner] == best and r.price < second


def test_english_silence_is_a_drop_and_rounds_advance_on_the_deadline():
    a = EnglishAuction("e3", SALE, start=10, increment=5, round_window=2.0)
    a.open(0.0, invited=["x", "y", "z"])
    action = a.next_action(0.0)
    assert (action.kind, action.price, action.round, action.until) == (ActionKind.ASK, 10, 0, 2.0)
    a.submit("x", True, 0.5)
    a.submit("y", True, 0.6)                        # z says nothing
    assert a.next_action(2.0).price == 15           # round 1 opened at the deadline
    assert a.submit("z", True, 2.1).reason == "dropped in an earlier round"
    a.submit("x", True, 2.2)
    assert a.submit("x", False, 2.3).reason == "already answered round 1"
    assert a.next_action(4.0).kind is ActionKind.CLOSE  # y silent in round 1
    r = a.close(4.0)
    assert (r.winner, r.price) == ("x", 15)
    assert r.rounds[0].dropped == ("z",) and r.rounds[1].dropped == ("y",)


def test_english_everyone_drops_together_best_of_last_round_wins_at_its_price():
    a = EnglishAuction("e4", SALE, start=10, increment=5, round_window=2.0)
    a.open(0.0, invited=["x", "y"])
    a.submit("y", True, 0.1)
    a.submit("x", True, 0.2)
    a.submit("x", False, 0.3)
    a.submit("y", False, 0.4)
    r = a.close(0.4)
    assert (r.winner, r.price) == ("y", 10)  # y stayed first in round 0


def test_english_no_award_when_nobody_stays_at_the_start_or_reserve():
    a = EnglishAuction("e5", SALE, start=50, increment=5, round_window=1.0, reserve=50)
    a.open(0.0, invited=["x"])
    a.submit("x", False, 0.5)
    r = a.close(0.5)
    assert r.winner is None and r.reason == "no bidder stayed at the start price"
    with pytest.raises(InvalidInput, match="outside the reserve"):
        EnglishAuction("e6", SALE, start=40, increment=5, round_window=1.0, reserve=50)


def test_english_procurement_clock_stops_at_zero_and_max_rounds_stops_either():
    a = EnglishAuction("e7", PROC, start=10, increment=5, round_window=1.0)
    r = run_english(a, {"x": 0, "y": 0}, PROC)
    assert r.price == 0 and r.winner == "x"   # both stay down to 0: earlier answer wins
    b = EnglishAuction("e8", SALE, start=10, increment=5, round_window=1.0, max_rounds=2)
    r2 = run_english(b, {"x": 100, "y": 100}, SALE)
    assert (r2.winner, r2.price, len(r2.rounds)) == ("x", 15, 2)


# -- Dutch ----------------------------------------------------------------------------------

def test_dutch_sale_first_taker_wins_and_later_takers_lose():
    a = DutchAuction("d1", SALE, start=100, step=10, tick=1.0, reserve=40)
    a.open(0.0)
    assert [a.next_action(t).price for t in (0.0, 1.0, 2.5)] == [100, 90, 80]
    assert a.submit("x", False, 2.7).reason == "passed"
    assert a.submit("x", True, 3.2).accepted           # price 70
    wait = a.next_action(3.3)
    assert (wait.kind, wait.until) == (ActionKind.WAIT, 4.0)
    assert a.submit("y", True, 3.9).accepted           # same tick, later: loses
    assert a.next_action(4.0).kind is ActionKind.CLOSE
    assert a.submit("z", True, 4.1).reason == "already taken at tick 3"
    r = a.close(4.1)
    assert (r.winner, r.price) == ("x", 70) and [b.bidder for b in r.bids] == ["x", "y"]


def test_dutch_simultaneous_takers_resolved_by_bidder_id():
    a = DutchAuction("d2", SALE, start=100, step=10, tick=1.0)
    a.open(0.0)
    a.submit("zed", True, 2.5)
    a.submit("amy", True, 2.5)
    assert (a.close(3.0).winner, a.close(3.0).price) == ("amy", 80)


def test_dutch_clock_never_passes_the_reserve():
    a = DutchAuction("d3", SALE, start=100, step=30, tick=1.0, reserve=40)
    a.open(0.0)
    assert [a.next_action(t).price for t in (0.0, 1.0, 2.0)] == [100, 70, 40]
    assert a.next_action(3.0).kind is ActionKind.CLOSE
    assert a.submit("x", True, 3.5).reason == "the clock ran out"
    r = a.close(3.5)
    assert r.winner is None and "clock ran out" in r.reason


def test_dutch_procurement_clock_ascends_to_the_reserve():
    with pytest.raises(InvalidInput, match="needs a reserve"):
        DutchAuction("d4", PROC, start=10, step=10, tick=1.0)
    a = DutchAuction("d5", PROC, start=10, step=10, tick=1.0, reserve=50)
    a.open(0.0, invited=["x", "y"])
    assert [a.next_action(t).price for t in (0.0, 1.0, 2.0)] == [10, 20, 30]
    assert a.submit("outsider", True, 2.1).reason == "not invited"
    a.submit("y", True, 2.2)
    r = a.close(3.0)
    assert (r.winner, r.price, r.direction) == ("y", 30, PROC)


def test_english_open_to_anyone_round_zero_lasts_its_window_and_close_forces_a_decision():
    a = EnglishAuction("e9", SALE, start=10, increment=5, round_window=1.0)
    a.open(0.0)                                     # no invitation list
    a.submit("y", True, 0.2)
    a.submit("x", True, 0.3)
    assert a.next_action(0.9).round == 0            # round 0 waits for its deadline
    assert a.next_action(1.0).round == 1
    assert a.submit("late", True, 1.1).reason == "dropped in an earlier round"
    a.submit("x", True, 1.2)
    a.submit("y", True, 1.3)
    r = a.close(1.5)                                # forced: both stay at 15, x was first
    assert (r.winner, r.price) == ("x", 15)
    assert orjson.loads(orjson.dumps(r.to_json()))["rounds"][1]["stayed"] == ["x", "y"]
