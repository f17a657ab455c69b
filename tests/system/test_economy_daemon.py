"""The agents' economy on a live daemon with real agents (issue 18, items 5 and 7).

* a manager's handler subcontracts through the market (``task.subcontract``): it pays the
  worker's contract price from its own balance, gets the rest of its budget back and the
  child's result, and the child ran in the manager's trace;
* three buyers bid for the one unit of a resource (Vickrey, reserve 1): the highest
  valuer wins and pays the runner-up's limit, then each release sells the unit on to the
  next (second price again, then the reserve); each buyer's balance fell by its price;
* the same with resources made by ``resource_create`` in English and Dutch: each round is
  asked of the agents' ``sale_bid`` hooks, and the prices are the clocks' textbook ones;
* two coordinator SIGKILLs (the second at a seeded gap of 0.05-0.5 s) change nothing: the
  held unit stays held with its token, no credit is paid, minted or lost (the only
  movements are the market's refunds of the contracts open at the kill), the next sale's
  token is the next one, and a subcontract whose coordinator died mid-child still returns
  its result to the handler, with one child task and its budget settled once.

Waits are bounded polls of real state (the control socket, files the agents touch).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from click.testing import CliRunner

import agora
from runtime.cli.main import cli
from runtime.wire.client import Client
from tests.support.daemons import config, coordinator_pid, running_daemon, serves
from tests.support.helpers import eventually

pytestmark = pytest.mark.timeout(240)

POOLS = """
[resources.gpu]
quantity = 1
auction = "vickrey"
reserve = 1
gather_ms = 100
"""
for pool, cls, cap, cost in (("workers", "Worker", "double", 2.0), ("managers", "Manager", "manage", 1.0),
                             ("occupiers", "Occupier", "occupy", 1.0), ("buyers_a", "BuyerA", "buy_a", 1.0),
                             ("buyers_b", "BuyerB", "buy_b", 1.0), ("buyers_c", "BuyerC", "buy_c", 1.0)):
    POOLS += f"""
[pools.{pool}]
agent = "tests.support.agents_economy:{cls}"
size = 1
max = 1
[pools.{pool}.capabilities.{cap}]
cost = {cost}
[pools.{pool}.scaling]
autoscale = false
"""
DAEMON = 'drain_s = 3.0\nallocation = "market"'
LIMITS = {"buy_a": 3, "buy_b": 5, "buy_c": 4}
SERVICE_S = 7.0


def _ask(home, cmd: str, **args):
    with Client(str(home), timeout=30) as c:
        return c.call(cmd, **args)


def _up(c) -> None:
    eventually(lambda: len([a for a in c.call("agents") if a["pool"] != "echo"]) >= 6, "the six agents", 30)


def _gpu(home) -> dict:
    return next(r for r in _ask(home, "resources") if r["name"] == "gpu")


def _balances(home) -> dict[str, int]:
    return {a["name"]: a["balance_mc"] for a in _ask(home, "ledger")["accounts"]}


def _entries(home, account: str) -> list[dict]:
    return _ask(home, "ledger", agent=account, limit=10_000)["entries"]


def _changes_since(home, balances: dict[str, int], last: int) -> dict[str, list[dict]]:
    """Each user account's ledger entries after transfer ``last``, checked against its balance."""
    out = {}
    for name, before in balances.items():
        if name == "mint" or name.startswith("escrow:"):
            continue
        new = [e for e in _entries(home, name) if e["transfer_id"] > last]
        assert _ask(home, "ledger", agent=name)["balance_mc"] == before + sum(e["amount"] for e in new), name
        out[name] = new
    return out


def _subcontract(c, home, **sub):
    tid = c.call("submit", task={"capability": "manage", "input": {"sub": {"x": 21, **sub}, "budget": 3}})
    return tid


def test_a_handler_subcontracts_and_pays_from_its_own_balance(agora_env):
    with running_daemon(agora_env, config(size=1, daemon=DAEMON, extra=POOLS)) as (c, _):
        _up(c)
        tid = _subcontract(c, agora_env)
        rec = c.call("result", id=tid, wait=True, timeout_s=60)
        assert rec["state"] == "succeeded", rec
        out = rec["result"]
        assert out["sub"]["y"] == 42
        assert out["sub"]["trace_id"] == out["trace_id"] == rec["trace_id"]  # one trace
        [row] = c.call("subcontracts")
        assert row["state"] == "settled" and 0 < row["paid_mc"] <= 3000
        assert round((out["before"] - out["after"]) * 1000) == row["paid_mc"]  # paid from its balance
        worker = c.call("ledger", agent=out["sub"]["agent"])
        assert any(e["kind"] == "release" and e["counterparty"].startswith("escrow:" + row["child"])
                   for e in worker["entries"])
        assert c.call("ledger")["conserved"]
        # the child's life is in the parent's trace: its submission, award, result, settlement
        def in_trace():
            got = {(e["type"], e.get("task_id") or e.get("child"))
                   for e in c.call("events", trace_id=rec["trace_id"], limit=500)}
            want = {("task.submitted", row["child"]), ("market.award", row["child"]),
                    ("task.succeeded", row["child"]), ("economy.settled", row["child"]),
                    ("task.succeeded", tid)}
            return want <= got
        eventually(in_trace, "the child's events in the parent's trace", 30)


def test_the_richest_valuer_wins_the_sale_and_each_pays_its_vickrey_price(agora_env):
    release = agora_env / "release"
    with running_daemon(agora_env, config(size=1, daemon=DAEMON, extra=POOLS)) as (c, _):
        _up(c)
        occ = c.call("submit", task={"capability": "occupy",
                                     "input": {"resource": "gpu", "release_file": str(release)}})
        eventually(lambda: _gpu(agora_env)["held"], "the occupier's unit", 30)
        buys = {cap: c.call("submit", task={"capability": cap, "input": {"resource": "gpu", "limit": limit}})
                for cap, limit in LIMITS.items()}
        eventually(lambda: len(_gpu(agora_env)["waiting"]) == 3, "three waiting bids", 30)
        release.touch()
        got = {cap: c.call("result", id=tid, wait=True, timeout_s=90) for cap, tid in buys.items()}
        assert all(r["state"] == "succeeded" for r in got.values()), got
        assert c.call("result", id=occ, wait=True, timeout_s=30)["result"]["token"] == 1
        res = {cap: r["result"] for cap, r in got.items()}
        # b (5) beats c (4) and a (3), paying 4; then c beats a, paying 3; a alone pays the reserve
        assert [res[k]["token"] for k in ("buy_b", "buy_c", "buy_a")] == [2, 3, 4]
        assert [res[k]["price"] for k in ("buy_b", "buy_c", "buy_a")] == [4.0, 3.0, 1.0]
        for r in res.values():
            assert r["before"] - r["after"] == pytest.approx(r["price"])
        sales = _gpu(agora_env)["sales"]
        first = next(s for s in sales if s["winner"] and s["winner"]["agent"] == res["buy_b"]["agent"])
        assert len(first["bids"]) == 3  # all three competed in the first auction
        assert c.call("ledger")["conserved"]
        runner, home = CliRunner(), ["--home", str(agora_env)]
        shown = runner.invoke(cli, [*home, "resources"])
        assert shown.exit_code == 0 and "gpu: 0/1 held  auction vickrey" in shown.output, shown.output
        made = runner.invoke(cli, [*home, "resource-create", "tpu", "--quantity", "2", "--auction", "english"])
        assert made.exit_code == 0 and "created tpu: 2 units, english" in made.output, made.output
        assert runner.invoke(cli, [*home, "resource-create", "tpu"]).exit_code != 0  # exists: an error
        assert runner.invoke(cli, [*home, "resource-create", "x", "--quantity", "0"]).exit_code != 0


def _sell(c, home, resource: str, release) -> dict[str, dict]:
    """The occupier holds the one unit until the three buyers' bids wait; then they compete."""
    occ = c.call("submit", task={"capability": "occupy", "input": {"resource": resource,
                                                                   "release_file": str(release)}})
    res = lambda: next(r for r in _ask(home, "resources") if r["name"] == resource)  # noqa: E731
    eventually(lambda: res()["held"], f"the occupier's unit of {resource}", 30)
    buys = {cap: c.call("submit", task={"capability": cap, "input": {"resource": resource, "limit": limit}})
            for cap, limit in LIMITS.items()}
    eventually(lambda: len(res()["waiting"]) == 3, "three waiting bids", 30)
    release.touch()
    got = {cap: c.call("result", id=tid, wait=True, timeout_s=90) for cap, tid in buys.items()}
    assert all(r["state"] == "succeeded" for r in got.values()), got
    assert c.call("result", id=occ, wait=True, timeout_s=30)["state"] == "succeeded"
    return {cap: r["result"] for cap, r in got.items()}, res()["sales"]


def test_english_and_dutch_sales_ask_the_agents_each_round(agora_env):
    with running_daemon(agora_env, config(size=1, daemon=DAEMON, extra=POOLS)) as (c, _):
        _up(c)
        with agora.connect(str(agora_env)) as s:  # the typed API over the same commands
            s.resource_create("eng", auction="english", reserve=1, gather_ms=100, round_ms=2000)
            s.resource_create("dut", auction="dutch", reserve=1, start=10, gather_ms=100, tick_ms=2000)
            assert {r["name"] for r in s.resources()} >= {"eng", "dut", "gpu"}
        eng, eng_sales = _sell(c, agora_env, "eng", agora_env / "release-eng")
        # ascending from the reserve 1 by ceil((top - 1) / 50) per round, the agents' sale_bid
        # hooks staying while the price is within their limit: b beats c just past 4, c beats a
        # just past 3, a alone pays the start (the reserve)
        assert [eng[k]["token"] for k in ("buy_b", "buy_c", "buy_a")] == [2, 3, 4]  # (1: the occupier)
        assert 4.0 < eng["buy_b"]["price"] <= 4.08 and 3.0 < eng["buy_c"]["price"] <= 3.06
        assert eng["buy_a"]["price"] == 1.0
        dut, dut_sales = _sell(c, agora_env, "dut", agora_env / "release-dut")
        # descending from 10 by 0.18 (to the reserve in 50 ticks): the first price within each
        # remaining top limit takes it: 10 - 28 x 0.18, 10 - 34 x 0.18, 10 - 39 x 0.18
        assert [dut[k]["token"] for k in ("buy_b", "buy_c", "buy_a")] == [2, 3, 4]
        assert [dut[k]["price"] for k in ("buy_b", "buy_c", "buy_a")] == pytest.approx([4.96, 3.88, 2.98])
        for sales in (eng_sales, dut_sales):
            first = next(s for s in sales if len(s["bids"]) == 3)
            assert first["rounds"] > 1  # a live clock: several rounds asked of the agents
        for r in (*eng.values(), *dut.values()):
            assert r["before"] - r["after"] == pytest.approx(r["price"])
        assert c.call("ledger")["conserved"]


def test_units_balances_and_a_subcontract_survive_a_coordinator_kill(agora_env):
    release, started, finish = agora_env / "release", agora_env / "started", agora_env / "finish"
    with running_daemon(agora_env, config(size=1, daemon=DAEMON, extra=POOLS)) as (c, proc):
        _up(c)
        occ = c.call("submit", task={"capability": "occupy",
                                     "input": {"resource": "gpu", "release_file": str(release)}})
        eventually(lambda: _gpu(agora_env)["held"], "the occupier's unit", 30)
        tid = _subcontract(c, agora_env, wait_file=str(finish), started_file=str(started))
        eventually(started.exists, "the subcontracted child running", 30)
        held, balances = _gpu(agora_env)["held"], _balances(agora_env)
        last = max(e["transfer_id"] for name in balances if name != "mint" for e in _entries(agora_env, name))
        seed = random.randrange(1 << 30)
        print(f"seed {seed}")
        gap = random.Random(seed).uniform(0.05, 0.5)  # RELIABILITY: restarts at many gaps
        old = coordinator_pid(proc.pid)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        eventually(lambda: coordinator_pid(proc.pid) not in (old, None), "a new coordinator", SERVICE_S)
        time.sleep(gap)  # and its successor too, soon after (the gap is the test's input, not a wait)
        os.kill(coordinator_pid(proc.pid), signal.SIGKILL)
        eventually(lambda: serves(agora_env), "service after the kills", SERVICE_S)
        eventually(lambda: len([a for a in _ask(agora_env, "agents") if a["pool"] != "echo"]) >= 6,
                   "the agents back", 30)
        assert _gpu(agora_env)["held"] == held            # same holder, same unit, same token
        eventually(lambda: _ask(agora_env, "events", type="sale.reconciled", limit=5), "the holders' check", 30)
        assert _gpu(agora_env)["held"] == held            # its holder came back: still held
        # nothing paid or lost by the restart: the only movements since the kill are the
        # market's refunds of the contracts that were open (coordination.services.market)
        changes = _changes_since(agora_env, balances, last)
        assert {e["kind"] for new in changes.values() for e in new} <= {"refund", "bond_return"}
        assert _ask(agora_env, "ledger")["issued_mc"] == -balances["mint"]
        finish.touch()
        rec = _ask(agora_env, "result", id=tid, wait=True, timeout_s=90)
        assert rec["state"] == "succeeded", rec
        assert rec["result"]["sub"]["y"] == 42
        rows = _ask(agora_env, "subcontracts")
        assert len(rows) == 1 and rows[0]["state"] == "settled"   # one child, settled once
        # the child's contract was open at the kill: the market refunded it at start and the
        # attempt that finished the child ran under no contract, so the budget came back whole;
        # the manager's balance moved only by the refunds of the restart (its own bond)
        assert rows[0]["paid_mc"] == 0
        manager = "agent:" + rec["result"]["agent"]
        assert round((rec["result"]["after"] - rec["result"]["before"]) * 1000) == \
            sum(e["amount"] for e in changes[manager])
        release.touch()
        assert _ask(agora_env, "result", id=occ, wait=True, timeout_s=60)["state"] == "succeeded"  # released it
        buy = _ask(agora_env, "submit", task={"capability": "buy_b", "input": {"resource": "gpu", "limit": 2}})
        after = _ask(agora_env, "result", id=buy, wait=True, timeout_s=60)
        assert after["state"] == "succeeded" and after["result"]["token"] == 2  # never a token twice
        assert _ask(agora_env, "ledger")["conserved"]
