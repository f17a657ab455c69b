"""Market allocation wired into the coordinator.

Two layers:
* MarketPolicy driven turn by turn with the real Scheduler, Journal and Ledger and a
  stand-in for the coordinator's loop services (asks, timers, events) with a manual clock:
  every path of the contract net (award, early close, window close, breach, exclusion,
  death, budget, gate, cancel, contract timeout) deterministically, no processes.
* One real daemon with ``allocation = "market"`` and agent processes of different
  reliability, driven through the Client and the CLI.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from coordination.ledger import InsufficientCredits, Ledger
from coordination.services.market import PAYER, agent_account, parse_bid
from runtime.errors import InvalidInput
from runtime.tasks.journal import Journal
from tests.support.fake_host import Loop, bid, conserved, wait_for_event


@pytest.fixture
def loop(tmp_path):
    lp = Loop(tmp_path / "state")
    yield lp
    lp.journal.close()



# -- the contract net, turn by turn ------------------------------------------------------------

def test_award_goes_to_the_best_offer_and_completion_pays(loop):
    loop.join("a", cost=1.0)
    loop.join("b", cost=2.0)
    tid = loop.submit()
    assert sorted(a for a, _, _ in loop.asks) == ["a", "b"]
    assert all(req["capability"] == "work" and req["task_id"] == tid for _, req, _ in loop.asks)
    loop.answer("b", bid(2.0))
    assert loop.state(tid) == "queued" and not loop.sent
    loop.answer("a", bid(1.0))  # every invited agent answered: closes at once, no timer
    assert [t["id"] for t in loop.sent["a"]] == [tid] and loop.state(tid) == "running"
    loop.result("a")
    assert loop.state(tid) == "succeeded"
    led = loop.market.ledger
    assert led.balance(agent_account("a")) == loop.market.config.agent_grant_mc + 1000
    assert led.balance(PAYER) == loop.market.config.client_grant_mc - 1000
    assert conserved(loop)
    assert loop.types() == ["market.cfp", "market.bid", "market.bid", "market.award", "market.contract",
                            "market.transfer", "market.completion", "market.transfer",
                            "market.reputation"]
    trace_ids = {e[1].trace_id for e in loop.events if e[0].startswith("market.")}
    assert len(trace_ids) == 1  # every step in the task's trace
    assert loop.market.reputation.score("a", "work", loop.clock()) > 0.5


def test_a_round_closes_at_the_window_without_the_silent_agent(loop):
    loop.join("a")
    loop.join("mute")
    tid = loop.submit()
    loop.answer("a", bid(1.0))
    assert loop.state(tid) == "queued"  # still waiting for "mute"
    loop.later(loop.market.config.window_s)
    assert loop.state(tid) == "running" and [t["id"] for t in loop.sent["a"]] == [tid]
    loop.answer("mute", bid(0.1))  # late: not in the round, nothing happens
    assert "mute" not in loop.sent


def test_breach_penalises_and_the_task_is_reauctioned_without_the_breacher(loop):
    loop.join("bad", cost=1.0)
    loop.join("good", cost=3.0)
    tid = loop.submit(max_attempts=2)
    loop.answer("bad", bid(1.0))
    loop.answer("good", bid(3.0))
    loop.result("bad", ok=False)  # the (tiny) retry backoff passes in the same turn
    grant = loop.market.config.agent_grant_mc
    assert loop.market.ledger.balance(agent_account("bad")) == grant - 100  # 10% of 1000 mc
    assert loop.journal.attempts(tid)[0].outcome == "failed"
    assert [a for a, _, _ in loop.asks] == ["good"]  # the breacher is not invited
    loop.answer("good", bid(3.0))
    loop.result("good")
    assert loop.state(tid) == "succeeded"
    assert loop.market.ledger.balance(agent_account("good")) == grant + 3000
    assert conserved(loop)
    breach = [e[2] for e in loop.events if e[0] == "market.breach"][0]
    assert breach["agent"] == "bad" and breach["breach"] == "failed"
    rep = loop.market.reputation
    assert rep.score("bad", "work", loop.clock()) < 0.5 < rep.score("good", "work", loop.clock())


def test_an_agent_that_dies_under_contract_is_breached_and_the_task_rerouted(loop):
    loop.join("a")
    loop.join("b")
    tid = loop.submit()
    loop.answer("a", bid(1.0))
    loop.answer("b", bid(5.0))
    loop.die("a")
    assert "market.breach" in loop.types()
    assert [a for a, _, _ in loop.asks] == ["b"]  # re-auction at once, without "a"
    loop.answer("b", bid(5.0))
    loop.result("b")
    assert loop.state(tid) == "succeeded" and conserved(loop)


def test_a_death_during_the_round_closes_it_early(loop):
    loop.join("a")
    loop.join("b")
    tid = loop.submit()
    loop.answer("a", bid(1.0))
    loop.die("b")
    assert loop.state(tid) == "running" and loop.sent["a"][0]["id"] == tid


def test_many_auctions_run_at_once_no_head_of_line_blocking(loop):
    loop.join("a")
    ids = [loop.submit() for _ in range(3)]
    assert len(loop.market.rounds) == 3 and len(loop.asks) == 3
    for _ in ids:
        loop.answer("a", bid(1.0))
    assert sorted(t["id"] for t in loop.sent["a"]) == sorted(ids)


def test_bids_above_the_budget_are_rejected_and_the_task_waits(loop):
    loop.join("a")
    tid = loop.submit(budget=2)
    loop.answer("a", bid(5.0))
    assert loop.state(tid) == "queued" and "market.no_award" in loop.types()
    loop.later(loop.market.config.backoff_s[0])  # back to the market after the backoff
    assert len(loop.asks) == 1 and loop.asks[0][1]["budget"] == 2
    loop.answer("a", bid(2.0))
    assert loop.state(tid) == "running"


def test_declines_invalid_bids_and_hook_errors_are_not_offers(loop):
    for a in ("none", "junk", "raises"):
        loop.join(a)
    tid = loop.submit()
    loop.answer("none", None)
    loop.answer("junk", {"price": "cheap"})
    loop.answer("raises", None, error="ValueError: no")
    assert loop.state(tid) == "queued" and "market.bid_invalid" in loop.types()
    assert loop.market.recent_auctions[-1]["winner"] is None


def test_known_unreliable_agents_are_not_invited_while_others_live(loop):
    loop.join("flaky", cost=0.5)
    loop.join("steady", cost=2.0)
    for _ in range(loop.market.config.min_observations):
        tid = loop.submit(max_attempts=1)
        loop.answer("flaky", bid(0.5))
        loop.answer("steady", bid(2.0))
        assert loop.sent["flaky"][0]["id"] == tid
        loop.result("flaky", ok=False)
    loop.submit(max_attempts=1)
    assert [a for a, _, _ in loop.asks] == ["steady"]
    loop.die("steady")
    loop.submit(max_attempts=1)  # the only one left is invited again
    assert "flaky" in [a for a, _, _ in loop.asks]


def test_cancel_under_contract_refunds_without_penalty(loop):
    loop.join("a")
    tid = loop.submit()
    loop.answer("a", bid(1.0))
    loop.turn(lambda: loop.scheduler.cancel(tid))
    assert loop.market.ledger.balance(agent_account("a")) == loop.market.config.agent_grant_mc
    assert loop.market.ledger.balance(PAYER) == loop.market.config.client_grant_mc
    assert "market.cancel" in loop.types() and conserved(loop)


def test_a_contract_past_its_deadline_is_breached_and_the_attempt_given_up(loop):
    loop.join("slow")
    loop.join("other")
    tid = loop.submit(max_attempts=3)
    loop.answer("slow", bid(1.0))
    loop.answer("other", bid(9.0))
    loop.later(loop.market.config.contract_timeout_s + 1)
    breach = [e[2] for e in loop.events if e[0] == "market.breach"][0]
    assert breach["breach"] == "timeout" and breach["agent"] == "slow"
    assert [a for a, _, _ in loop.asks] == ["other"]
    assert loop.journal.attempts(tid)[0].outcome == "crashed"


def test_escrows_left_held_by_a_stopped_coordinator_are_refunded_at_start(loop, tmp_path):
    loop.join("a")
    loop.submit()
    loop.answer("a", bid(1.0))
    assert loop.market.ledger.held()
    again = Loop(tmp_path / "state")  # a new coordinator on the same journal database
    try:
        assert not again.market.ledger.held() and conserved(again)
        assert again.market.ledger.balance(PAYER) == again.market.config.client_grant_mc
    finally:
        again.journal.close()


def test_ledger_commands_report_balances_and_conservation(loop):
    loop.join("a")
    loop.submit()
    loop.answer("a", bid(1.0))
    loop.result("a")
    out = loop.turn(lambda: loop.table["ledger"]({}, None))
    assert out["conserved"] and {a["name"] for a in out["accounts"]} >= {PAYER, "agent:a", "mint"}
    mine = loop.turn(lambda: loop.table["ledger"]({"agent": "a"}, None))
    assert [e["kind"] for e in mine["entries"]] == ["grant", "bond", "release"]
    assert all(e["contract_id"] for e in mine["entries"][1:]) and mine["entries"][2]["trace_id"]
    rep = loop.turn(lambda: loop.table["reputation"]({"capability": "work"}, None))
    assert rep[0]["agent"] == "a" and rep[0]["observations"] == 1
    with pytest.raises(InvalidInput):
        loop.table["market_config"]({"weights": {"speed": 1}}, None)
    assert loop.table["market_config"]({"window_ms": 2}, None)["window_ms"] == 2


def test_parse_bid_converts_credits_and_refuses_junk():
    assert parse_bid({"price": 1.2345, "quality": 0.5}) == (1234, 0.5)
    assert parse_bid(None) is None
    for junk in ({"price": -1}, {"price": float("nan")}, {"price": True}, [1], {"price": 1, "quality": 2}):
        with pytest.raises(InvalidInput):
            parse_bid(junk)


def test_ledger_inside_an_outer_transaction_uses_a_savepoint(tmp_path):
    with Journal(tmp_path) as j:
        led = Ledger(j.conn, nested=True)
        led.grant("a", 100, "test")
        with j.transaction():
            led.grant("b", 50, "inside the turn")
            with pytest.raises(InsufficientCredits):
                led.transfer("a", "b", 1000, "c1", "t1")  # undone alone
            led.transfer("a", "b", 10, "c2", "t2")
        assert (led.balance("a"), led.balance("b")) == (90, 60)
        assert led.check_conservation().ok


# -- one real daemon -------------------------------------------------------------------------

MARKET_POOLS = """
[pools.fast]
agent = "tests.support.agents_market:Fast"
size = 2
[pools.fast.capabilities.work]
cost = 1.0
quality = 0.9
[pools.flaky]
agent = "tests.support.agents_market:Failing"
size = 1
[pools.flaky.capabilities.work]
cost = 0.5
quality = 0.9
[pools.mute]
agent = "tests.support.agents_market:Mute"
size = 1
[pools.mute.capabilities.work]
cost = 0.1
"""


def test_daemon_allocates_by_market_and_the_cli_shows_it(agora_env):
    from runtime.cli import market  # noqa: F401  (registers the commands)
    from runtime.cli.main import cli
    from tests.support.daemons import config, running_daemon
    cfg = config(size=1, daemon='allocation = "market"\nregistry = "local"\ndrain_s = 3.0', extra=MARKET_POOLS)
    with running_daemon(agora_env, cfg) as (c, _):
        c.call("market_config", window_ms=200)  # a loaded machine still answers in time; Mute never
        ids = c.call("submit_many", tasks=[{"capability": "work", "input": {"n": i},
                                            "options": {"max_attempts": 3}} for i in range(12)])
        recs = [c.call("result", id=i, wait=True, timeout_s=20) for i in ids]
        assert [r["state"] for r in recs] == ["succeeded"] * 12
        assert {r["result"]["by"] for r in recs} == {"fast"}
        market = c.call("market", limit=100)
        assert market["allocation"] == "market" and market["auctions"]
        assert all("mute.0" not in [b["bidder"] for b in a["bids"]] for a in market["auctions"])
        ledger = c.call("ledger")
        assert ledger["conserved"]
        flaky = c.call("ledger", agent="flaky.0")
        breaches = [e for e in flaky["entries"] if e["kind"] == "bond"]
        assert breaches and all(e["contract_id"] and e["trace_id"] for e in breaches)
        rep = {r["agent"]: r["score"] for r in c.call("reputation", capability="work")}
        assert rep["flaky.0"] < 0.5 < max(rep.get("fast.0", 0), rep.get("fast.1", 0))
        breach = wait_for_event(c, "market.breach")
        assert breach["agent"] == "flaky.0" and breach["trace_id"] in {r["trace_id"] for r in recs}
        runner = CliRunner()
        home = ["--home", str(agora_env)]
        res = runner.invoke(cli, [*home, "market"])
        assert res.exit_code == 0, res.output
        assert "auction" in res.output.lower()
        res = runner.invoke(cli, [*home, "ledger", "fast.0", "--json"])
        assert res.exit_code == 0 and '"account": "agent:fast.0"' in res.output
        res = runner.invoke(cli, [*home, "reputation", "--capability", "work"])
        assert res.exit_code == 0 and "flaky.0" in res.output
