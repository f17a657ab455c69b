"""Sale auctions of resources (coordination.services.sales) over the real market, ledger,
journal and scheduler with a manual clock (tests/support/economy_host.py): the four
formats' winners and prices, escrowed limits, held units and their ends, restarts."""

from __future__ import annotations

import pytest

from coordination.services.sales import parse_resource
from runtime.errors import InvalidInput
from tests.support.economy_host import EconHost

LIMITS = {"a": 3, "b": 5, "c": 4}


def _host(tmp_path, **spec):
    h = EconHost(tmp_path, resources={"gpu": {"quantity": 1, **spec}})
    for agent in LIMITS:
        h.join(agent)
    return h


def _auction(h, hook=None):
    before = {a: h.balance(a) for a in LIMITS}
    calls = {a: h.bid(a, "gpu", limit) for a, limit in LIMITS.items()}
    h.run_sales(**({} if hook is None else {"hook": hook}), steps=60)
    won = [a for a, c in calls.items() if not c.pending]
    return before, calls, won


@pytest.mark.parametrize("kind, price", [("vickrey", 4.0), ("sealed-first", 5.0),
                                         ("english", None), ("dutch", None)])
def test_the_highest_valuer_wins_and_pays_the_formats_price(tmp_path, kind, price):
    spec = {"auction": kind, **({"start": 10} if kind == "dutch" else {})}
    h = _host(tmp_path, **spec)
    before, calls, won = _auction(h)
    assert won == ["b"], {a: c.msg for a, c in calls.items()}
    got = calls["b"].value
    assert got["unit"] == 0 and got["token"] == 1 and got["kind"] == kind
    paid = (before["b"] - h.balance("b")) / 1000
    assert paid == got["price"]
    if kind == "english":  # ascends past the runner-up's limit (4) by at most one increment
        assert 4.0 < paid <= 4.0 + 5.0 / 50 + 1e-9
    elif kind == "dutch":  # descends from 10 by 0.2: the first price within 5 is 5.0
        assert paid == pytest.approx(5.0)
    else:
        assert paid == price
    assert h.ledger.balance("client") > 0 and h.ledger.check_conservation().ok
    # the losers wait for the next unit, their limits in escrow; a release sells it on
    assert before["a"] - h.balance("a") == 3000 and before["c"] - h.balance("c") == 4000
    h.op("b", "sale.release", {"resource": "gpu", "unit": 0, "token": 1})
    h.run_sales(steps=60)
    assert not calls["c"].pending and calls["c"].value["token"] == 2
    assert calls["a"].pending and h.ledger.check_conservation().ok


def test_a_limit_beyond_the_balance_is_a_typed_error_and_moves_nothing(tmp_path):
    h = _host(tmp_path)
    before = h.balance("a")
    call = h.bid("a", "gpu", before / 1000 + 1)
    assert call.error == "INSUFFICIENT_CREDITS"
    assert h.balance("a") == before and h.ledger.check_conservation().ok
    # two bids cannot spend the same credits either: the first one's limit is committed
    first = h.bid("a", "gpu", before / 1000 - 1)
    assert first.pending and h.bid("a", "gpu", 2).error == "INSUFFICIENT_CREDITS"


@pytest.mark.parametrize("args, field", [({"limit": 0}, "limit"), ({"limit": 2, "price": 3}, "price"),
                                         ({"limit": "x"}, "limit"), ({"limit": 1, "timeout": -1}, "timeout")])
def test_bad_bids_are_typed_errors(tmp_path, args, field):
    h = _host(tmp_path)
    assert h.op("a", "sale.bid", {"resource": "gpu", **args}).error in ("INVALID_INPUT",)
    assert h.op("a", "sale.bid", {"resource": "nope", "limit": 1}).error == "NOT_FOUND"


def test_resource_specs_are_checked():
    with pytest.raises(InvalidInput):
        parse_resource("gpu", {"quantity": 0})
    with pytest.raises(InvalidInput):
        parse_resource("gpu", {"auction": "lottery"})
    with pytest.raises(InvalidInput):
        parse_resource("gpu", {"colour": "red"})
    with pytest.raises(InvalidInput):
        parse_resource("gpu", {"reserve": float("inf")})
    with pytest.raises(InvalidInput):
        parse_resource("gpu", {"gather_ms": float("nan")})
    assert parse_resource("gpu", {"auction": "sealed-second"}).auction == "vickrey"


def test_a_timed_out_bid_is_refunded_and_told(tmp_path):
    h = _host(tmp_path)
    before = h.balance("a")
    held = h.bid("b", "gpu", 5)
    h.run_sales(steps=20)
    waiting = h.bid("a", "gpu", 3, timeout=0.5)
    h.later(1.0)
    assert waiting.error == "DEADLINE_EXCEEDED" and h.balance("a") == before
    assert held.value["unit"] == 0


def test_a_unit_ends_with_its_agent_and_with_its_attempt(tmp_path):
    h = _host(tmp_path)
    h.bid("b", "gpu", 5)
    h.run_sales(steps=20)
    c = h.bid("c", "gpu", 4)
    h.die("b")  # b's unit is freed at once and sold to the waiting bid
    h.run_sales(steps=20)
    assert c.value["token"] == 2
    # task-held: the attempt that bought it ends -> released
    tid = h.submit()
    for agent, _req, _cb in list(h.asks):
        h.answer(agent, {"price": 1})
    runner = next(a for a, sent in h.sent.items() if sent)
    h.op("c", "sale.release", {"resource": "gpu", "unit": 0, "token": 2})
    t = h.op(runner, "sale.bid", {"resource": "gpu", "limit": 2,
                                  "task": {"id": tid, "attempt": 1}})
    h.run_sales(steps=20)
    assert t.value["token"] == 3
    assert h.sales.units["gpu"][0].holder == f"task:{tid}:1"
    h.result(runner, ok=False)
    assert 0 not in h.sales.units.get("gpu", {})
    assert h.ledger.check_conservation().ok


def test_held_units_and_tokens_survive_a_restart_and_waiting_bids_are_refunded(tmp_path):
    h = _host(tmp_path)
    h.bid("b", "gpu", 5)
    h.run_sales(steps=20)
    h.bid("c", "gpu", 4)
    balances = {a: h.balance(a) for a in LIMITS}
    h.journal.close()
    h2 = EconHost(tmp_path, resources={"gpu": {"quantity": 1}})
    assert h2.sales.units["gpu"][0].agent == "b" and h2.sales.tokens["gpu"] == 1
    assert h2.balance("c") == balances["c"] + 4000  # its waiting bid's escrow came back
    for agent in LIMITS:
        h2.join(agent)
    h2.later(5.0)  # past RECONCILE_S: b said hello (same pid), its unit stays
    assert h2.sales.units["gpu"][0].agent == "b"
    h2.op("b", "sale.release", {"resource": "gpu", "unit": 0, "token": 1})
    again = h2.bid("a", "gpu", 1)
    h2.run_sales(steps=20)
    assert again.value["token"] == 2  # never a token twice
    assert h2.ledger.check_conservation().ok


def test_agora_toml_resources_are_read_and_checked_at_load(tmp_path):
    from runtime.config import parse_config
    from runtime.daemon.composition import check_config
    cfg = parse_config({"resources": {"gpu": {"quantity": 2, "auction": "english"}}}, tmp_path, tmp_path)
    assert cfg.resources == {"gpu": {"quantity": 2, "auction": "english"}}
    check_config(cfg)
    with pytest.raises(InvalidInput, match="quantity"):
        check_config(parse_config({"resources": {"gpu": {"quantity": -1}}}, tmp_path, tmp_path))
    with pytest.raises(InvalidInput):
        parse_config({"resources": {"gpu": 3}}, tmp_path, tmp_path)


def test_credits_earned_by_work_are_what_an_agent_spends(tmp_path):
    from dataclasses import replace
    h = EconHost(tmp_path, resources={"gpu": {"quantity": 1}}, market_cfg={"penalty_fraction": 0})
    h.market.config = replace(h.market.config, agent_grant_mc=1)  # (almost) nothing to start with
    h.join("poor")
    assert h.bid("poor", "gpu", 2).error == "INSUFFICIENT_CREDITS"
    h.submit()
    h.answer("poor", {"price": 3})
    h.result("poor", ok=True)  # the contract pays 3 credits into agent:poor
    assert h.balance("poor") == 3001
    won = h.bid("poor", "gpu", 2)
    h.run_sales(steps=20)
    assert won.value["price"] == 2.0 and h.balance("poor") == 1001  # alone: its own bid
    assert h.ledger.check_conservation().ok
