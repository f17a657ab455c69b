"""Second-score Vickrey (truthful bidding weakly dominant, textbook prices, the documented
critical-price formula) and the Dutch clock run round by round with bidders asked at
every price."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from coordination.auction import ActionKind, Direction, DutchAuction, SecondPriceAuction
from coordination.evaluation import Offer, Scoring, Weights

SALE, PROC = Direction.SALE, Direction.PROCUREMENT
WEIGHTS = Weights(price=0.4, quality=0.3, load=0.1, reputation=0.2)


def vickrey(direction, offers, *, reserve=None, weights=WEIGHTS):
    """Run a sealed second-score auction on ``offers`` (bid at t = 1, 2, ...)."""
    a = SecondPriceAuction("v", direction, window=100.0, reserve=reserve)
    a.open(0.0)
    for i, o in enumerate(offers, start=1):
        a.submit(o.bidder, o.price, float(i))
    return a.close(100.0, scores=Scoring(tuple(offers), weights, direction))


def utility(result, bidder, value, direction):
    if result.winner != bidder:
        return 0
    return result.price - value if direction is PROC else value - result.price


# ---------------------------------------------------------------- textbook second score

@pytest.mark.parametrize("direction, prices, winner, price", [
    (PROC, {"a": 100, "b": 300, "c": 80}, "c", 100),
    (SALE, {"a": 100, "b": 300, "c": 200}, "b", 200),
])
def test_equal_attributes_pay_the_classic_second_price(direction, prices, winner, price):
    r = vickrey(direction, [Offer(b, p, 0.8, 0.2, 0.5) for b, p in prices.items()])
    assert (r.winner, r.price) == (winner, price)


def test_a_better_agent_is_paid_the_price_that_ties_the_runner_up_score():
    # good: quality 1.0 vs 0.5; weights price 0.5, quality 0.5 (load, reputation equal)
    w = Weights(price=0.5, quality=0.5, load=0.0, reputation=0.0)
    offers = [Offer("good", 150, 1.0), Offer("cheap", 100, 0.5)]
    r = vickrey(PROC, offers, reserve=1000, weights=w)
    # Q_good = 0.5, Q_cheap = 0.25, W = 0.5, c = 100: a = 100 * (1 + 0.25/0.5) = 150 > c,
    # so the crossing is W*c / (W*c/p_j + Q_j - Q_i) = 50 / (0.5 - 0.25) = 200
    assert (r.winner, r.price) == ("good", 200)
    assert Scoring(tuple(offers), w, PROC).critical_price("good", ["cheap"]) == pytest.approx(200)
    at_200 = Scoring(tuple(offers), w, PROC).scores({"good": 200})
    assert at_200["good"] == pytest.approx(at_200["cheap"])
    # the old rule (runner-up's raw price, floored at the own bid) would pay 150


def test_sale_second_score_and_the_reserve_caps():
    w = Weights(price=0.5, quality=0.5, load=0.0, reputation=0.0)
    offers = [Offer("keen", 100, 1.0), Offer("rich", 120, 0.5)]
    r = vickrey(SALE, offers, weights=w)
    # keen wins on quality; it pays the lowest price at which it still ties rich:
    # a = p_j + c (Q_j - Q_i) / W = 120 + 120 * (0.25 - 0.5) / 0.5 = 60
    assert (r.winner, r.price) == ("keen", 60)
    assert vickrey(SALE, offers, weights=w, reserve=80).price == 80
    proc = [Offer("good", 150, 1.0), Offer("cheap", 100, 0.5)]
    assert vickrey(PROC, proc, reserve=180, weights=w).price == 180     # capped by the reserve


def test_no_price_makes_the_winner_lose_pays_the_reserve_or_its_own_price():
    w = Weights(price=0.1, quality=0.9, load=0.0, reputation=0.0)
    offers = [Offer("star", 500, 1.0), Offer("meh", 100, 0.1)]
    assert Scoring(tuple(offers), w, PROC).critical_price("star", ["meh"]) is None
    assert vickrey(PROC, offers, reserve=2000, weights=w).price == 2000
    assert vickrey(PROC, offers, weights=w).price == 500


offers_st = st.builds(
    Offer, bidder=st.just("x"), price=st.integers(0, 400),
    quality=st.sampled_from([0.2, 0.5, 0.8, 1.0]), load=st.sampled_from([0.0, 0.3, 0.9]),
    reputation=st.sampled_from([0.1, 0.5, 0.9]))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([PROC, SALE]), st.integers(0, 400), offers_st,
       st.lists(offers_st, min_size=0, max_size=3), st.lists(st.integers(0, 400), max_size=6),
       st.sampled_from([None, 450]),
       st.sampled_from([WEIGHTS, Weights(1, 0, 0, 0), Weights(0.2, 0.6, 0.1, 0.1)]))
def test_bidding_the_true_value_is_weakly_dominant(direction, value, me, rivals, deviations,
                                                   reserve, weights):
    """For any rival bids, truthful bidding is never worse than any deviation."""
    rivals = [Offer(f"r{i}", o.price, o.quality, o.load, o.reputation)
              for i, o in enumerate(rivals)]
    if reserve is None and direction is PROC:
        reserve = 450       # without a cap a lone winner is paid its own bid: first price
    if direction is SALE:  # a floor of 0 still prices a lone winner at 0, not its own bid
        reserve = 0 if reserve is None else 50

    def outcome(bid):
        offers = [Offer("me", bid, me.quality, me.load, me.reputation), *rivals]
        eligible = [o for o in offers if reserve is None
                    or (o.price <= reserve if direction is PROC else o.price >= reserve)]
        if not any(o.bidder == "me" for o in eligible):
            return 0
        r = vickrey(direction, eligible, reserve=reserve, weights=weights)
        return utility(r, "me", value, direction)

    if reserve is not None and (value > reserve if direction is PROC else value < reserve):
        return      # a truthful bid outside the reserve is refused: nothing to compare
    truthful = outcome(value)
    for bid in deviations + [max(0, value - 1), value + 1]:
        note(f"bid {bid}: {outcome(bid)} vs truthful {truthful}")
        assert outcome(bid) <= truthful + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([PROC, SALE]), offers_st, st.lists(offers_st, min_size=1, max_size=3))
def test_the_closed_form_is_where_the_scores_cross(direction, me, rivals):
    offers = (Offer("me", me.price, me.quality, me.load, me.reputation),
              *[Offer(f"r{i}", o.price, o.quality, o.load, o.reputation)
                for i, o in enumerate(rivals)])
    model = Scoring(offers, WEIGHTS, direction)
    t = model.critical_price("me", [o.bidder for o in offers[1:]])

    def level(p):
        s = model.scores({"me": p})
        return s["me"] >= max(s[o.bidder] for o in offers[1:]) - 1e-12

    if not level(me.price):
        return      # the critical price is the winner's: "me" does not lead at its bid
    if t is None:
        assert direction is PROC and level(10**6)
        return
    if t > 10**6:
        return      # a sale rival it cannot beat at any price: never its critical price
    # at the critical price (rounded toward the winning side) the scores tie or the bidder
    # leads; two milli-credits past it, it trails
    def flat_tie(p):  # its price no longer moves its score and it is level with a rival:
        s = model.scores({"me": p})  # the ranking's price tie-break decides, not the score
        return abs(s["me"] - model.scores({"me": me.price})["me"]) <= 1e-12 and any(
            abs(s["me"] - s[o.bidder]) <= 1e-12 for o in offers[1:])

    if direction is PROC:
        assert level(math.floor(t))
        assert flat_tie(math.floor(t) + 2) or not level(math.floor(t) + 2)
    else:
        assert level(math.ceil(t))
        assert math.ceil(t) < 2 or flat_tie(math.ceil(t) - 2) or not level(math.ceil(t) - 2)


# ---------------------------------------------------------------- the Dutch clock

def run_dutch(auction, limits, direction, *, invited=True, at=0.0, answer_s=0.001):
    """Ask every invited bidder at every round; each takes iff the price meets its limit."""
    auction.open(at, invited=sorted(limits) if invited else None)
    now, asked = at, []
    while (action := auction.next_action(now)).kind is not ActionKind.CLOSE:
        if action.kind is ActionKind.ASK and len(asked) <= action.round:  # a new round
            asked.extend([None] * (action.round - len(asked)) + [action.price])
            for bidder in sorted(limits):
                now += answer_s
                takes = (action.price >= limits[bidder] if direction is PROC
                         else action.price <= limits[bidder])
                auction.submit(bidder, takes, now)
        else:
            now = action.until
    return auction.close(now), asked


def test_a_sale_clock_descends_round_by_round_and_the_first_taker_wins():
    a = DutchAuction("d", SALE, start=100, step=10, tick=1.0, reserve=40)
    r, asked = run_dutch(a, {"x": 72, "y": 65, "z": 75}, SALE)
    assert asked == [100, 90, 80, 70]             # each round asks everyone at one price
    # x and z both take at 70 (round 3); the earliest answer wins, and x was asked first
    assert (r.winner, r.price) == ("x", 70)


def test_dutch_ties_within_a_round_go_to_the_earliest_answer_then_the_id():
    a = DutchAuction("d", SALE, start=100, step=10, tick=1.0)
    a.open(0.0, invited=["x", "y"])
    assert a.submit("y", True, 0.2).accepted
    assert a.submit("x", True, 0.3).accepted      # same round, later: competes, loses
    r = a.close(0.3)
    assert (r.winner, r.price) == ("y", 100)
    b = DutchAuction("d", SALE, start=100, step=10, tick=1.0)
    b.open(0.0, invited=["x", "y"])
    b.submit("y", True, 0.2)
    b.submit("x", True, 0.2)
    assert b.close(0.2).winner == "x"             # same receipt time: bidder id


def test_a_round_ends_early_once_everyone_answered_and_the_grid_restarts():
    a = DutchAuction("d", PROC, start=0, step=100, tick=1.0, reserve=500)
    a.open(10.0, invited=["x", "y"])
    a.submit("x", False, 10.1)
    assert a.next_action(10.2).round == 0
    a.submit("y", False, 10.3)                    # everyone passed: the clock moves now
    nxt = a.next_action(10.3)
    assert (nxt.kind, nxt.round, nxt.price, nxt.until) == (ActionKind.ASK, 1, 100, pytest.approx(11.3))
    assert a.tick_start(3) == pytest.approx(12.3)
    assert a.submit("x", True, 12.5).accepted     # silent rounds 1 and 2 went by: round 3
    assert a.next_action(12.5).kind is ActionKind.WAIT   # y may still take at 300
    assert a.submit("y", False, 12.6).reason == "passed"
    r = a.close(12.6)
    assert (r.winner, r.price) == ("x", 300)
    assert [(rec.round, rec.price, rec.stayed, rec.dropped) for rec in r.rounds] == [
        (0, 0, (), ("x", "y")), (3, 300, ("x",), ("y",))]


def test_nobody_takes_by_the_floor_means_no_award_and_answers_are_once_per_round():
    a = DutchAuction("d", SALE, start=100, step=30, tick=1.0, reserve=40)
    r, asked = run_dutch(a, {"x": 10, "y": 20}, SALE)
    assert asked == [100, 70, 40] and r.winner is None and "clock ran out" in r.reason
    b = DutchAuction("d", SALE, start=100, step=10, tick=1.0)
    b.open(0.0, invited=["x", "y"])
    b.submit("x", False, 0.1)
    assert b.submit("x", True, 0.2).reason == "already answered tick 0"
    assert b.submit("x", True, 1.0).accepted      # a pass binds one round only


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([PROC, SALE]),
       st.dictionaries(st.sampled_from("abcde"), st.integers(0, 1000), min_size=1),
       st.integers(1, 97), st.booleans())
def test_the_clock_awards_the_best_limit_at_the_first_grid_price_past_it(direction, limits,
                                                                      step, invited):
    start = 0 if direction is PROC else 1000
    a = DutchAuction("d", direction, start=start, step=step, tick=1.0, reserve=1000 if direction is PROC else 0)
    r, _ = run_dutch(a, limits, direction, invited=invited)
    best = min(limits.values()) if direction is PROC else max(limits.values())
    tick = a.tick_for(best)
    if tick is None:
        assert r.winner is None
        return
    first_takers = sorted(b for b, v in limits.items() if a.tick_for(v) == tick)
    assert (r.winner, r.price) == (first_takers[0], a.price_at(tick))
