"""Market rules: bid evaluation, contract transitions and reputation, all pure."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.auction import Direction, SecondPriceAuction
from coordination.contracts import (
    BreachReason,
    ContractState,
    IllegalTransition,
    PenaltyPolicy,
    QualityTerms,
    award,
    breach,
    complete,
    excluded_agents,
    expire,
    start,
)
from coordination.evaluation import Offer, Scoring, Weights, evaluate, scores
from coordination.reputation import (
    Observation,
    Reputation,
    ReputationConfig,
    observation_from_contract,
)
from runtime.errors import InvalidInput

# -- evaluation -----------------------------------------------------------------------------

OFFERS = [
    Offer("cheap", price=100, quality=0.5, load=0.9, reputation=0.4),
    Offer("good", price=200, quality=1.0, load=0.1, reputation=0.9),
]


def winner(weights, offers=OFFERS, direction=Direction.PROCUREMENT):
    s = scores(offers, weights, direction)
    return max(s, key=lambda b: (s[b], b))


def test_weights_change_the_winner():
    assert winner(Weights(price=1, quality=0, load=0, reputation=0)) == "cheap"
    assert winner(Weights(price=0, quality=1, load=0, reputation=0)) == "good"
    assert winner(Weights(price=0, quality=0, load=1, reputation=0)) == "good"
    assert winner(Weights(price=0.8, quality=0.1, load=0.05, reputation=0.05)) == "cheap"
    assert winner(Weights(price=0.2, quality=0.4, load=0.2, reputation=0.2)) == "good"


def test_parts_are_relative_to_the_best_offer_of_the_round():
    by = {e.bidder: e for e in evaluate(OFFERS, Weights())}
    assert by["cheap"].parts["price"] == 1.0 and by["good"].parts["price"] == 0.5
    assert by["good"].parts["quality"] == 1.0 and by["cheap"].parts["quality"] == 0.5
    assert by["cheap"].parts["load"] == pytest.approx(0.1 / 0.9)
    sale = {e.bidder: e for e in evaluate(OFFERS, Weights(), Direction.SALE)}
    assert sale["good"].parts["price"] == 1.0 and sale["cheap"].parts["price"] == 0.5
    assert orjson.loads(orjson.dumps(by["good"].to_json()))["bidder"] == "good"


def test_criteria_that_do_not_discriminate_give_everyone_one():
    same = [Offer("a", 0, quality=0.0, load=1.0, reputation=0.0), Offer("b", 0, 0.0, 1.0, 0.0)]
    assert all(e.score == 1.0 for e in evaluate(same))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), *[st.floats(0, 1)] * 3), min_size=1, max_size=6))
def test_scores_lie_in_unit_interval(rows):
    offers = [Offer(f"b{i}", p, q, load, r) for i, (p, q, load, r) in enumerate(rows)]
    assert all(0.0 <= e.score <= 1.0 + 1e-12 for e in evaluate(offers))


def test_evaluation_scores_pick_the_auction_winner():
    auction = SecondPriceAuction("t1", Direction.PROCUREMENT, window=1.0)
    auction.open(0.0)
    for i, o in enumerate(OFFERS):
        auction.submit(o.bidder, o.price, 0.1 * (i + 1))
    quality_first = Scoring(tuple(OFFERS), Weights(price=0.2, quality=0.4, load=0.2, reputation=0.2))
    assert auction.close(1.0, scores=quality_first).winner == "good"


@pytest.mark.parametrize("kwargs", [
    dict(price=-1), dict(quality=float("nan")), dict(load=float("inf")),
    dict(price=0, quality=0, load=0, reputation=0), dict(price=True),
])
def test_invalid_weights_are_refused(kwargs):
    with pytest.raises(InvalidInput):
        Weights(**kwargs)


def test_invalid_offers_are_refused():
    with pytest.raises(InvalidInput):
        Offer("x", price=1.5)
    with pytest.raises(InvalidInput):
        Offer("x", price=1, quality=1.2)
    with pytest.raises(InvalidInput, match="duplicates"):
        evaluate([Offer("x", 1), Offer("x", 2)])


# -- contracts ------------------------------------------------------------------------------

def new_contract(min_quality=0.0):
    return award("c1", "task1", "agent1", price=1000, deadline=10.0, now=0.0,
                 quality=QualityTerms(min_quality))


def test_completion_on_time_pays_the_price():
    c = start(new_contract(), 1.0)
    assert c.state is ContractState.RUNNING and c.started_at == 1.0
    done, s = complete(c, 5.0, delivered_quality=0.8)
    assert done.state is ContractState.COMPLETED and done.ended_at == 5.0
    assert (s.action, s.amount, s.exclude, s.agent) == ("pay", 1000, False, "agent1")


@pytest.mark.parametrize("when, quality, reason", [
    (10.0, 1.0, BreachReason.TIMEOUT),     # the deadline is exclusive
    (5.0, 0.5, BreachReason.QUALITY),      # below the quality terms
])
def test_late_or_poor_completion_is_a_breach(when, quality, reason):
    c = start(new_contract(min_quality=0.7), 1.0)
    ended, s = complete(c, when, delivered_quality=quality, policy=PenaltyPolicy(0.25))
    assert ended.state is ContractState.BREACHED and ended.breach is reason
    assert (s.action, s.amount, s.exclude) == ("penalty", 250, True)


def test_failure_breaches_and_excludes_from_the_reauction():
    ended, s = breach(start(new_contract(), 1.0), BreachReason.FAILED, 2.0)
    assert ended.breach is BreachReason.FAILED and s.amount == 100  # default 10%
    other = complete(start(award("c2", "task1", "agent2", 500, 10.0, 0.0), 1.0), 3.0)[0]
    elsewhere = breach(award("c3", "task2", "agent3", 500, 10.0, 0.0), BreachReason.FAILED, 1.0)[0]
    assert excluded_agents([ended, other, elsewhere], "task1") == {"agent1"}


def test_expire_only_fires_at_or_after_the_deadline_of_an_open_contract():
    c = new_contract()
    assert expire(c, 9.99) is None
    ended, s = expire(c, 10.0)
    assert ended.breach is BreachReason.TIMEOUT and s.action == "penalty"
    assert expire(ended, 20.0) is None


@pytest.mark.parametrize("step", [
    lambda c: complete(c, 1.0),                                   # awarded: not started
    lambda c: start(start(c, 1.0), 2.0),                          # started twice
    lambda c: breach(complete(start(c, 1.0), 2.0)[0], BreachReason.FAILED, 3.0),
    lambda c: complete(breach(c, BreachReason.FAILED, 1.0)[0], 2.0),
    lambda c: start(breach(c, BreachReason.TIMEOUT, 1.0)[0], 2.0),
])
def test_illegal_transitions_are_refused(step):
    with pytest.raises(IllegalTransition, match="cannot"):
        step(new_contract())


def test_contract_inputs_are_validated_and_json_able():
    with pytest.raises(InvalidInput, match="deadline"):
        award("c", "t", "a", 10, deadline=1.0, now=1.0)
    with pytest.raises(InvalidInput):
        award("c", "t", "a", -10, deadline=5.0, now=1.0)
    with pytest.raises(InvalidInput):
        PenaltyPolicy(1.5)
    done = complete(start(new_contract(), 1.0), 2.0, 0.9)[0]
    assert orjson.loads(orjson.dumps(done.to_json()))["state"] == "completed"


# -- reputation -----------------------------------------------------------------------------

CFG = ReputationConfig(half_life=100.0, window=20, prior=0.5, prior_weight=1.0)


def test_new_agents_start_at_the_prior():
    assert Reputation(CFG).score("new", "summarize", now=0.0) == pytest.approx(0.5)


def test_reliable_agents_rank_above_unreliable_ones():
    rep = Reputation(CFG)
    for i in range(10):
        rep.record("steady", "sum", Observation(float(i), True, True, 0.9))
        rep.record("flaky", "sum", Observation(float(i), i % 2 == 0, i % 3 == 0, 0.4))
    ranked = rep.ranked("sum", ["flaky", "newcomer", "steady"], now=10.0)
    assert [a for a, _ in ranked] == ["steady", "newcomer", "flaky"]
    assert rep.score("steady", "other", now=10.0) == pytest.approx(0.5)  # per capability


def test_reputation_decays_back_towards_the_prior():
    rep = Reputation(CFG)
    for _ in range(5):
        rep.record("a", "sum", Observation(0.0, False, False, 0.0))
    fresh, later, much_later = (rep.score("a", "sum", t) for t in (0.0, 100.0, 2000.0))
    assert fresh < later < much_later < 0.5
    assert much_later == pytest.approx(0.5, abs=1e-3)
    s_fresh = rep.signals("a", "sum", 0.0)[0]
    assert s_fresh == pytest.approx(0.5 / 6)  # prior 0.5 weighted 1 against 5 failures


def test_recent_observations_outweigh_old_ones():
    rep = Reputation(CFG)
    rep.record("a", "sum", Observation(0.0, False, False, 0.0))
    rep.record("a", "sum", Observation(300.0, True, True, 1.0))
    rep.record("b", "sum", Observation(0.0, True, True, 1.0))
    rep.record("b", "sum", Observation(300.0, False, False, 0.0))
    assert rep.score("a", "sum", 300.0) > rep.score("b", "sum", 300.0)


def test_history_window_is_bounded():
    rep = Reputation(ReputationConfig(window=3))
    for i in range(10):
        rep.record("a", "sum", Observation(float(i), i < 7, True, 1.0))
    entry = rep.snapshot(10.0)["entries"][0]
    assert [o[0] for o in entry["observations"]] == [7.0, 8.0, 9.0]
    assert rep.signals("a", "sum", 9.0)[0] < 0.5  # only the 3 failures and the prior remain


def test_snapshot_round_trips_through_json():
    rep = Reputation(CFG)
    rep.record("a", "sum", Observation(1.0, True, False, 0.7))
    rep.record("b", "embed", Observation(2.0, False, True, 0.0))
    snap = orjson.loads(orjson.dumps(rep.snapshot(5.0)))
    again = Reputation.from_snapshot(snap)
    assert again.snapshot(5.0) == rep.snapshot(5.0)


def test_contract_outcomes_feed_reputation():
    done = complete(start(new_contract(), 1.0), 2.0, 0.9)[0]
    late = expire(new_contract(), 10.0)[0]
    assert observation_from_contract(done) == Observation(2.0, True, True, 0.9)
    # nothing delivered, nothing graded: the failure weighs on success, its quality is unknown
    assert observation_from_contract(late) == Observation(10.0, False, False, None)
    ungraded = complete(start(new_contract(), 1.0), 2.0)[0]  # issue 18: no longer quality 1.0
    assert ungraded.delivered_quality is None and ungraded.state.value == "completed"
    assert observation_from_contract(ungraded) == Observation(2.0, True, True, None)
    with pytest.raises(InvalidInput, match="not settled"):
        observation_from_contract(new_contract())


def test_invalid_reputation_config_and_observations_are_refused():
    with pytest.raises(InvalidInput):
        ReputationConfig(half_life=0)
    with pytest.raises(InvalidInput):
        ReputationConfig(window=0)
    with pytest.raises(InvalidInput):
        Observation(0.0, True, True, 1.5)
