"""Every auction kind driven live by the market: sealed-first, sealed-second (Vickrey),
reverse English and a live Dutch clock (rising payment), in procurement.

Three layers:
* the pure pieces the drivers lean on (payment down a ranking, the Dutch clock's tick for a
  limit price, English stay answers, the clock terms);
* MarketPolicy turn by turn with the real Scheduler, Journal and Ledger and a manual clock
  (tests.test_market_daemon.Loop): each kind's textbook winner and price, the ledger paying
  that price, silent agents, deaths, breach and re-auction under a clock auction;
* one real daemon whose kind is switched with ``market_config``: three agents with declared
  costs 1, 2 and 3 credits and default ``bid()`` hooks; every kind awards the cheapest at its
  textbook price and the agent's ledger account receives exactly that; ``agora
  market-config`` and ``agora market`` show and switch the kind.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from coordination.auction import Bid, Direction, DutchAuction, SecondPriceAuction
from coordination.services.market import (
    AUCTION_KINDS,
    PAYER,
    MarketConfig,
    agent_account,
    clock_terms,
    parse_stay,
)
from coordination.services._auction_drivers import (
    parse_take,
)
from runtime.errors import InvalidInput
from tests.support.daemons import config, running_daemon
from tests.support.fake_host import Loop, bid, conserved, wait_for_event

COSTS = {"a": 1.0, "b": 2.0, "c": 3.0}


@pytest.fixture
def loop(tmp_path):
    lp = Loop(tmp_path / "state")
    yield lp
    lp.journal.close()


# -- pure pieces ------------------------------------------------------------------------------

def test_vickrey_payment_down_the_ranking_is_the_next_price_or_the_reserve():
    auction = SecondPriceAuction("x", Direction.PROCUREMENT, window=1.0, reserve=4000)
    ranked = [Bid("a", 1000, 0.0), Bid("b", 2000, 0.0), Bid("c", 3000, 0.0)]
    assert [auction.payment(ranked[i:]) for i in range(3)] == [2000, 3000, 4000]
    with pytest.raises(InvalidInput):
        auction.payment([])


def test_dutch_tick_for_a_limit_is_the_first_tick_paying_at_least_it():
    clock = DutchAuction("d", Direction.PROCUREMENT, start=0, step=80, tick=0.001, reserve=4000)
    assert [clock.tick_for(p) for p in (0, 1, 80, 81, 1000, 4000, 4001)] == [0, 1, 1, 2, 13, 50, None]
    assert clock.price_at(clock.tick_for(1000)) == 1040
    sale = DutchAuction("s", Direction.SALE, start=1000, step=100, tick=0.001)
    assert [sale.tick_for(p) for p in (1000, 950, 0)] == [0, 1, 10]
    clock.open(5.0)
    assert clock.tick_start(0) == 5.0 and clock.tick_start(13) == pytest.approx(5.013)


def test_english_answers_stay_by_flag_or_by_reservation_price():
    assert parse_stay({"stay": True}, 100) and not parse_stay({"stay": False}, 100)
    assert parse_stay({"price": 1.0}, 1000) and not parse_stay({"price": 1.001}, 1000)
    assert not parse_stay(None, 1000)
    for junk in ({"stay": "yes"}, {"price": -1}, "stay"):
        with pytest.raises(InvalidInput):
            parse_stay(junk, 1000)


def test_dutch_answers_take_by_flag_or_by_reservation_price():
    assert parse_take(100, {"take": True}) and not parse_take(100, {"take": False})
    assert parse_take(1000, {"price": 1.0}) and not parse_take(1000, {"price": 1.001})
    assert not parse_take(1000, None)
    for junk in ({"take": 1}, {"price": "x"}, "take"):
        with pytest.raises(InvalidInput):
            parse_take(1000, junk)


def test_clock_terms_bound_the_moves_and_respect_the_minimum_decrement():
    cfg = MarketConfig()
    assert clock_terms(4000, cfg) == (80, 80)
    assert clock_terms(100, cfg) == (cfg.min_decrement_mc, 2)
    assert clock_terms(0, cfg) == (cfg.min_decrement_mc, 1)
    with pytest.raises(InvalidInput):
        MarketConfig(auction="japanese")


# -- turn by turn -----------------------------------------------------------------------------

def setup_kind(loop: Loop, kind: str, costs: dict[str, float] = COSTS, **knobs: Any) -> None:
    loop.table["market_config"]({"auction": kind, **knobs}, None)
    for agent, cost in costs.items():
        loop.join(agent, cost=cost)


def drive(loop: Loop, answer_of: Any, limit: int = 1000) -> None:
    """Answer every pending ask, new rounds' included, until none is left."""
    for _ in range(limit):
        if not loop.asks:
            return
        agent, request, _ = loop.asks[0]
        loop.answer(agent, answer_of(agent, request))
    raise AssertionError(f"still asking after {limit} answers")


def at_cost(agent: str, request: dict[str, Any]) -> dict[str, Any]:
    return bid(COSTS[agent])  # what the default Agent.bid() answers for an idle agent


def paid(loop: Loop, agent: str) -> int:
    """What the agent earned: its balance above its start-up grant."""
    return loop.market.ledger.balance(agent_account(agent)) - loop.market.config.agent_grant_mc


def finish(loop: Loop, agent: str, tid: str) -> None:
    assert [t["id"] for t in loop.sent[agent]] == [tid]
    loop.result(agent)
    assert loop.state(tid) == "succeeded" and conserved(loop)


def fields(loop: Loop, type_: str) -> list[dict[str, Any]]:
    return [e[2] for e in loop.events if e[0] == type_]


@pytest.mark.parametrize("kind, price", [("sealed-first", 1000), ("sealed-second", 2000),
                                         ("english", 1920), ("dutch", 1040)])
def test_each_kind_awards_the_textbook_winner_at_the_textbook_price(loop, kind, price):
    # budget 4 credits: English starts there and falls 80 mc a round (4000 / 50 steps): "b"
    # (2 credits) still stays at 2000 and drops at 1920, leaving "a".  Dutch rises from 0 by
    # 80 mc a round, asked every round: "a" (1 credit) takes the first offer >= 1000, 1040.
    setup_kind(loop, kind)
    tid = loop.submit(budget=4)
    drive(loop, at_cost)
    award = fields(loop, "market.award")[0]
    assert (award["agent"], award["price_mc"], award["kind"]) == ("a", price, kind)
    finish(loop, "a", tid)
    assert paid(loop, "a") == price and paid(loop, "b") == paid(loop, "c") == 0
    assert loop.market.ledger.balance(PAYER) == loop.market.config.client_grant_mc - price
    assert len({e[1].trace_id for e in loop.events if e[0].startswith("market.")}) == 1
    assert loop.market.recent_auctions[-1]["kind"] == kind


def test_vickrey_alone_is_paid_the_budget_or_without_one_its_own_price(loop):
    setup_kind(loop, "sealed-second", {"a": 1.0})
    first = loop.submit(budget=4)
    drive(loop, at_cost)
    finish(loop, "a", first)
    second = loop.submit()
    drive(loop, at_cost)
    finish(loop, "a", second)
    assert [c["price"] for c in loop.market.recent_contracts.values()] == [4000, 1000]


def test_english_rounds_are_told_and_cheaper_agents_stay_longer(loop):
    setup_kind(loop, "english")
    loop.submit(budget=4)
    asked = []
    drive(loop, lambda agent, req: asked.append((req["round"], req["price"], agent)) or at_cost(agent, req))
    rounds = fields(loop, "market.round")
    assert [r["round"] for r in rounds] == list(range(27)) and rounds[0]["price_mc"] == 4000
    assert rounds[0]["stayed"] == ["a", "b", "c"]
    assert next(r for r in rounds if "c" in r["dropped"])["price_mc"] == 2960  # below 3 credits
    assert rounds[-1]["stayed"] == ["a"] and rounds[-1]["dropped"] == ["b"]
    assert max(rnd for rnd, _, agent in asked if agent == "c") == 13  # no asks after dropping
    assert fields(loop, "market.cfp")[0]["decrement_mc"] == 80


def test_english_explicit_stay_and_a_silent_agent_that_drops_at_the_round_window(loop):
    setup_kind(loop, "english", {"a": 1.0, "mute": 1.0}, round_ms=20)
    tid = loop.submit(budget=4)
    loop.answer("a", {"stay": True})  # "mute" never answers: the round ends at its window
    assert loop.state(tid) == "queued"
    loop.later(0.02)
    assert fields(loop, "market.round")[0]["dropped"] == ["mute"]
    assert paid(loop, "a") == -400  # its bond (10% of 4000 mc) is in escrow until it delivers
    finish(loop, "a", tid)
    assert paid(loop, "a") == 4000  # alone at the start price: the budget


def test_english_when_the_last_two_drop_together_the_earlier_stayer_wins_the_last_price(loop):
    setup_kind(loop, "english", {"x": 2.0, "y": 2.0})
    tid = loop.submit(budget=4)
    drive(loop, lambda agent, req: bid(2.0))
    award = fields(loop, "market.award")[0]
    assert award["price_mc"] == 2000 and award["agent"] in ("x", "y")
    finish(loop, award["agent"], tid)


def test_dutch_asks_every_round_and_the_first_taker_wins_at_that_rounds_price(loop):
    setup_kind(loop, "dutch")
    tid = loop.submit(budget=4)
    asked = []
    drive(loop, lambda agent, req: asked.append((req["round"], req["price"], agent)) or at_cost(agent, req))
    # every round asked every agent: 0, 0.08, ... 1.04 credits; "a" (1 credit) took at 13
    assert sorted({rnd for rnd, _, _ in asked}) == list(range(14))
    assert {agent for rnd, _, agent in asked if rnd == 13} == {"a", "b", "c"}
    assert [p for rnd, p, agent in asked if agent == "a"][-1] == pytest.approx(1.04)
    rounds = fields(loop, "market.round")
    assert rounds[-1]["took"] == ["a"] and rounds[0]["passed"] == ["a", "b", "c"]
    finish(loop, "a", tid)
    assert paid(loop, "a") == 1040


def test_dutch_clock_runs_in_real_time_while_an_agent_is_silent(loop):
    setup_kind(loop, "dutch", {"a": 1.0, "mute": 3.0}, tick_ms=10)
    tid = loop.submit(budget=4)
    for rnd in range(13):  # "a" passes below 1 credit; "mute" never answers: each round
        assert loop.asks[-1][1]["round"] == rnd  # ends at its tick
        loop.answer("a", bid(1.0))
        assert loop.state(tid) == "queued"
        loop.later(0.01)
    loop.answer("a", bid(1.0))  # round 13 offers 1.04: "a" takes, the auction closes at once
    award = fields(loop, "market.award")[0]
    assert (award["agent"], award["price_mc"]) == ("a", 1040)
    finish(loop, "a", tid)


def test_dutch_explicit_take_and_a_late_answer(loop):
    setup_kind(loop, "dutch", {"a": 1.0, "b": 1.0}, tick_ms=10)
    tid = loop.submit(budget=4)
    loop.answer("a", {"take": False})
    loop.later(0.01)  # "b" silent: round 0 ends; round 1 asks both
    loop.answer("b", {"take": False})  # b's answer to round 0 comes now: late
    assert fields(loop, "market.bid")[-1]["reason"].startswith("late")
    loop.answer("a", {"take": True})  # round 1: 80 mc
    award = fields(loop, "market.award")[0]
    assert (award["agent"], award["price_mc"]) == ("a", 80)
    finish(loop, "a", tid)


def test_dutch_floor_is_the_first_offer(loop):
    setup_kind(loop, "dutch", {"a": 1.0}, floor=1.5)
    tid = loop.submit(budget=4)
    assert loop.asks[-1][1]["price"] == 1.5  # above a's price: it takes at once
    drive(loop, at_cost)
    assert fields(loop, "market.award")[0]["price_mc"] == 1500
    finish(loop, "a", tid)


def test_dutch_nobody_takes_before_the_ceiling_and_the_task_waits(loop):
    setup_kind(loop, "dutch", {"dear": 9.0})
    tid = loop.submit(budget=4)
    drive(loop, lambda agent, req: bid(9.0))  # above the ceiling: it never takes
    assert len(fields(loop, "market.round")) == 51  # rounds 0..50, 0 to 4 credits
    assert fields(loop, "market.no_award")[0]["reason"].startswith("nobody took")
    assert loop.state(tid) == "queued" and paid(loop, "dear") == 0


def test_a_clock_auction_winner_that_breaches_is_penalised_and_the_task_reauctioned(loop):
    setup_kind(loop, "dutch")
    tid = loop.submit(budget=4, max_attempts=2)
    drive(loop, at_cost)
    loop.result("a", ok=False)
    assert paid(loop, "a") == -104  # 10% of its 1040 mc contract, from its bond
    assert fields(loop, "market.breach")[0]["agent"] == "a"
    drive(loop, at_cost)  # re-auctioned without "a": "b" takes at 2000 (tick 25)
    assert fields(loop, "market.award")[-1]["agent"] == "b"
    finish(loop, "b", tid)
    assert paid(loop, "b") == 2000


def test_a_death_mid_english_round_is_a_drop(loop):
    setup_kind(loop, "english", {"a": 1.0, "b": 2.0})
    tid = loop.submit(budget=4)
    loop.answer("a", bid(1.0))
    loop.die("b")
    assert fields(loop, "market.round")[0]["dropped"] == ["b"]
    finish(loop, "a", tid)
    assert paid(loop, "a") == 4000


def test_market_config_checks_every_argument_before_applying_any(loop):
    before = loop.table["market_config"]({}, None)
    for bad in ({"auction": "japanese"}, {"auction": "dutch", "tick_ms": 0},
                {"auction": "english", "clock_steps": 0}, {"round_ms": "fast"}):
        with pytest.raises(InvalidInput):
            loop.table["market_config"](bad, None)
    assert loop.table["market_config"]({}, None) == before
    out = loop.table["market_config"]({"auction": "english", "min_decrement": 0.5, "round_ms": 7}, None)
    assert (out["auction"], out["min_decrement"], out["round_ms"]) == ("english", 0.5, 7)
    assert set(AUCTION_KINDS) == {"sealed-first", "sealed-second", "english", "dutch"}


# -- one real daemon --------------------------------------------------------------------------

# "mid" answers English rounds with {"stay": ...} from the announced price; the others with
# the default bid (their reservation price)
THREE_COSTS = "".join(f"""
[pools.{name}]
agent = "tests.support.agents_market:{cls}"
size = 1
[pools.{name}.capabilities.work]
cost = {cost}
quality = 0.8
""" for name, cls, cost in (("cheap", "Fast", 1.0), ("mid", "Haggler", 2.0), ("dear", "Fast", 3.0)))

# sealed-second first: it is second-*score*, so it pays the runner-up's raw price only while
# the agents are alike on everything but price (no reputation earned yet by the winner)
TEXTBOOK = {"sealed-second": 2000, "sealed-first": 1000, "english": 1920, "dutch": 1040}


def test_daemon_runs_every_auction_kind_and_pays_the_textbook_price(agora_env):
    from runtime.cli import market  # noqa: F401  (registers the commands)
    from runtime.cli.main import cli
    cfg = config(size=1, daemon='allocation = "market"\nregistry = "local"\ndrain_s = 3.0',
                 extra=THREE_COSTS)
    with running_daemon(agora_env, cfg) as (c, _):
        # generous windows: a loaded machine still answers in time; rounds close early
        # when every agent has answered, and the Dutch clock jumps once all answers are in
        c.call("market_config", window_ms=3000, round_ms=3000, tick_ms=100)
        for kind, price in TEXTBOOK.items():
            assert c.call("market_config", auction=kind)["auction"] == kind
            before = c.call("ledger", agent="cheap.0")["balance_mc"]
            tid = c.call("submit", task={"capability": "work", "input": {"fast_ms": 1},
                                         "options": {"budget": 4}})
            rec = c.call("result", id=tid, wait=True, timeout_s=30)
            assert rec["state"] == "succeeded", (kind, rec)
            auction = c.call("market", limit=1)["auctions"][-1]
            assert (auction["kind"], auction["task_id"]) == (kind, tid)
            assert (auction["winner"], auction["price_mc"]) == ("cheap.0", price), (kind, auction)
            account = c.call("ledger", agent="cheap.0")
            assert account["balance_mc"] - before == price, (kind, account["entries"][-3:])
        assert c.call("ledger")["conserved"]
        english_round = wait_for_event(c, "market.round")
        assert english_round["trace_id"] and english_round["round"] >= 0
        runner, home = CliRunner(), ["--home", str(agora_env)]
        res = runner.invoke(cli, [*home, "market-config", "--auction", "sealed-second"])
        assert res.exit_code == 0 and "sealed-second" in res.output, res.output
        res = runner.invoke(cli, [*home, "market"])
        assert res.exit_code == 0 and "auction sealed-second" in res.output and "dutch" in res.output
        assert runner.invoke(cli, [*home, "market-config", "--auction", "vickrey"]).exit_code != 0


def test_the_auction_kind_comes_from_the_config_file(agora_env):
    from runtime.config import parse_config
    from runtime.daemon.composition import check_config
    cfg = parse_config({"market": {"auction": "dutch", "tick_ms": 2}}, agora_env, agora_env)
    assert cfg.market == {"auction": "dutch", "tick_ms": 2}
    check_config(cfg)
    # the market's own check, made at load time by the composition root
    with pytest.raises(InvalidInput, match="argument 'auction'"):
        check_config(parse_config({"market": {"auction": 3}}, agora_env, agora_env))
    with pytest.raises(InvalidInput, match="unknown argument.*sealed"):
        check_config(parse_config({"market": {"sealed": True}}, agora_env, agora_env))
    extra = '\n[market]\nauction = "sealed-second"\n'
    with running_daemon(agora_env, config(size=1, daemon='allocation = "market"', extra=extra)) as (c, _):
        assert c.call("market_config")["auction"] == "sealed-second"
