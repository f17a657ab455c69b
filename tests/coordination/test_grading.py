"""Measured quality (issue 18 item 6): the pure parts (grader specs, scores, the cap,
reputation's graded record) and the market's grading hooks driven turn by turn over the
real Scheduler, Journal and Ledger (tests/support/fake_host.py), no processes.
"""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest

from coordination.contracts import BreachReason, QualityTerms, award, complete, start
from coordination.grading import MIN_MEASURED, capped, graders, parse_grader, parse_score
from coordination.reputation import Observation, Reputation, observation_from_contract
from coordination.services import grading as grading_service
from coordination.services.market import PAYER, agent_account, install
from runtime.config import parse_config
from runtime.daemon.composition import check_config
from runtime.errors import InvalidInput
from tests.support import graders as fns
from tests.support.fake_host import FakeHost, bid, conserved

# -- grader specs ---------------------------------------------------------------------------


def test_a_grader_is_a_capability_or_a_function_with_defaults():
    g = parse_grader("w", {"capability": "grade"})
    assert (g.capability, g.function, g.min_quality, g.timeout_s) == ("grade", None, 0.5, 10.0)
    f = parse_grader("w", {"function": "tests.support.graders:by_score_field", "min_quality": 0.7,
                           "timeout_s": 2})
    assert (f.capability, f.function, f.min_quality, f.timeout_s) == (
        None, "tests.support.graders:by_score_field", 0.7, 2.0)
    assert f.name == "function:tests.support.graders:by_score_field" and g.name == "capability:grade"


@pytest.mark.parametrize("table, match", [
    ({}, "exactly one of 'capability' and 'function', got neither"),
    ({"capability": "g", "function": "m:f"}, "got both"),
    ({"capability": "g", "min_qualty": 0.5}, "unknown key pools.w.grader.min_qualty"),
    ({"capability": ""}, "expected a capability name"),
    ({"capability": "write"}, "served by pool 'w' itself"),
    ({"function": "no_colon"}, "expected an import path 'module:func'"),
    ({"function": "m:1x"}, "expected an import path"),
    ({"capability": "g", "min_quality": 1.5}, r"min_quality: expected a number in \[0, 1\]"),
    ({"capability": "g", "min_quality": True}, "min_quality"),
    ({"capability": "g", "timeout_s": 0}, "timeout_s"),
    ("grade", "must be a table"),
])
def test_bad_grader_tables_are_refused_with_the_key_named(table, match):
    with pytest.raises(InvalidInput, match=match):
        parse_grader("w", table, own_capabilities=["write"])


def test_the_config_carries_graders_and_load_time_checks_them(tmp_path):
    raw = {"daemon": {"allocation": "market"},
           "pools": {"w": {"agent": "m:A", "capabilities": {"write": {"cost": 1.0}},
                           "grader": {"capability": "grade", "min_quality": 0.6}},
                     "j": {"agent": "m:J", "capabilities": {"grade": {"cost": 0.1}}}}}
    cfg = parse_config(raw, tmp_path, tmp_path)
    check_config(cfg)
    assert {n: g.min_quality for n, g in graders(cfg.pools).items()} == {"w": 0.6}
    raw["pools"]["w"]["grader"] = {"capability": "write"}  # its own: refused at load time
    with pytest.raises(InvalidInput, match="itself"):
        check_config(parse_config(raw, tmp_path, tmp_path))
    raw["pools"]["w"]["grader"] = "grade"
    with pytest.raises(InvalidInput, match="pools.w.grader"):
        parse_config(raw, tmp_path, tmp_path)


# -- scores and the cap ------------------------------------------------------------------------


@pytest.mark.parametrize("answer, score", [(0, 0.0), (1, 1.0), (0.25, 0.25), ({"score": 0.5, "why": "ok"}, 0.5)])
def test_a_score_is_a_number_in_the_unit_interval(answer, score):
    assert parse_score(answer) == score


@pytest.mark.parametrize("answer", [True, 1.01, -0.1, math.nan, math.inf, "0.5", None, {"grade": 1}, [0.5]])
def test_anything_else_is_not_a_score(answer):
    with pytest.raises(InvalidInput, match="score in"):
        parse_score(answer)


def test_a_claim_is_capped_by_the_measured_mean_once_there_are_enough_grades():
    assert MIN_MEASURED == 5
    assert capped(0.99, (MIN_MEASURED - 1, 0.1)) == 0.99   # too few grades: the claim stands
    assert capped(0.99, (MIN_MEASURED, 0.1)) == 0.1         # enough: the record caps it
    assert capped(0.3, (50, 0.8)) == 0.3                    # underselling is allowed
    assert capped(0.7, (0, None)) == 0.7


def test_reputation_quality_is_over_graded_deliveries_only():
    rep = Reputation()
    for i in range(4):  # delivered, not graded: no quality evidence at all
        rep.record("a", "w", Observation(float(i), True, True, None))
    s, _, q = rep.signals("a", "w", 4.0)
    assert q == pytest.approx(0.5) and s > 0.8      # the prior, not 1.0
    assert rep.graded("a", "w") == (0, None) and rep.quality_weight("a", "w", 4.0) == 0.0
    for i, x in enumerate((0.2, 0.4)):
        rep.record("a", "w", Observation(5.0 + i, True, True, x))
    assert rep.graded("a", "w") == (2, pytest.approx(0.3))
    assert rep.signals("a", "w", 6.0)[2] < 0.5      # graded poorly: the signal follows
    assert rep.quality_weight("a", "w", 6.0) == pytest.approx(2.0, rel=1e-3)


def test_an_ungraded_or_failed_contract_has_unknown_quality_and_a_poor_one_breaches():
    c = start(award("c1", "t1", "a", 1000, 10.0, 0.0, QualityTerms(0.5)), 1.0)
    done, s = complete(c, 2.0)
    assert done.delivered_quality is None and s.action == "pay"
    assert observation_from_contract(done).quality is None
    poor, s = complete(c, 2.0, 0.2)
    assert poor.breach is BreachReason.QUALITY and s.action == "penalty" and s.amount == 100
    assert observation_from_contract(poor) == Observation(2.0, False, True, 0.2)
    with pytest.raises(InvalidInput, match="or None"):
        complete(c, 2.0, True)


# -- the market's hooks, turn by turn --------------------------------------------------------------


def _pool(name, caps, grader=None):
    return SimpleNamespace(name=name, capabilities=caps, grader=grader or {})


class GradedLoop(FakeHost):
    """The market as policy over pools ``w`` (capability ``work``, graded by ``grader``) and
    ``j`` (capability ``grade``)."""

    def __init__(self, home, grader):
        pools = (_pool("w", {"work": {}}, grader), _pool("j", {"grade": {}}))
        super().__init__(home, services=(install,), policy=0,
                         cfg=SimpleNamespace(allocation="market", market={}, pools=pools, config_dir=None))
        self.market = self.services[0]

    def join_as(self, agent_id, pool, cap, cost=1.0, quality=0.8):
        self.known_capabilities.add(cap)  # as the coordinator learns them from hellos

        def hello():
            link = self.scheduler.agent_joined(agent_id, pool, 1, {cap: {"cost": cost, "quality": quality}},
                                               lambda m: None)
            for listener in self.agent_listeners:
                listener.agent_joined(link)
        self.turn(hello)

    def deliver(self, agent_id, value):
        task = self.sent[agent_id].pop(0)
        self.turn(lambda: self.scheduler.results(agent_id, [{"id": task["id"], "attempt": task["attempt"],
                                                              "ok": value}]))
        return task

    def fields(self, type_):
        return [f for t, _, f in self.events if t == type_]


@pytest.fixture
def graded(tmp_path):
    loops = []

    def make(grader):
        lp = GradedLoop(tmp_path / f"state{len(loops)}", grader)
        loops.append(lp)
        return lp
    yield make
    for lp in loops:
        lp.market.grading.functions.close(join_s=5.0)
        lp.journal.close()


def test_a_grader_pool_scores_the_result_and_a_poor_one_is_a_quality_breach(graded):
    loop = graded({"capability": "grade", "min_quality": 0.5})
    loop.join_as("w.0", "w", "work")
    loop.join_as("j.0", "j", "grade", cost=0.1)
    tid = loop.submit({"topic": "tides"})
    loop.answer("w.0", bid(2.0))
    loop.deliver("w.0", {"text": "poor"})
    assert loop.state(tid) == "succeeded"       # the result is the buyer's, graded or not
    assert not loop.fields("market.completion") and not loop.fields("market.breach")
    [started] = loop.fields("market.grading")
    gid = started["grading_task"]
    rec = loop.journal.get(gid)                 # a real task of the grader's capability
    assert rec.capability == "grade" and rec.input == {"input": {"topic": "tides"}, "output": {"text": "poor"},
                                                       "capability": "work", "task_id": tid}
    loop.answer("j.0", bid(0.1))                # auctioned to the grader pool like any task
    [sent] = loop.sent["j.0"]
    assert sent["id"] == gid
    loop.deliver("j.0", {"score": 0.2})
    [graded_ev] = loop.fields("market.graded")
    assert (graded_ev["quality"], graded_ev["min_quality"], graded_ev["agent"]) == (0.2, 0.5, "w.0")
    [breach] = loop.fields("market.breach")
    assert breach["breach"] == "quality" and breach["agent"] == "w.0" and breach["delivered_quality"] == 0.2
    assert "below the contracted" in breach["why"]
    led, grant = loop.market.ledger, loop.market.config.agent_grant_mc
    assert led.balance(agent_account("w.0")) == grant - 200           # 10% of 2 credits
    penalties = [e for e in led.entries(PAYER) if e.kind == "penalty"]
    assert [(e.contract_id, e.amount) for e in penalties] == [(breach["contract_id"], 200)]
    assert led.balance(agent_account("j.0")) == grant + 100           # the grader was paid
    # the grading task's own contract is not graded: quality unknown, it pays
    [done] = loop.fields("market.completion")
    assert done["agent"] == "j.0" and done["delivered_quality"] is None
    assert conserved(loop)
    rows = {r["agent"]: r for r in loop.table["reputation"]({}, None)}
    assert rows["w.0"]["quality"] < 0.5 and rows["w.0"]["success"] < 0.5 and rows["w.0"]["graded"] == 1
    assert rows["j.0"]["quality"] is None and rows["j.0"]["graded"] == 0
    contracts = {c["agent"]: c for c in loop.table["market"]({}, None)["contracts"]}
    assert contracts["w.0"]["delivered_quality"] == 0.2 and contracts["j.0"]["delivered_quality"] is None


def test_a_good_grade_completes_and_pays(graded):
    loop = graded({"capability": "grade", "min_quality": 0.5})
    loop.join_as("w.0", "w", "work")
    loop.join_as("j.0", "j", "grade")
    loop.submit()
    loop.answer("w.0", bid(1.0))
    loop.deliver("w.0", {"text": "good"})
    loop.answer("j.0", bid(0.1))
    loop.deliver("j.0", 0.9)
    done = {f["agent"]: f for f in loop.fields("market.completion")}
    assert done["w.0"]["delivered_quality"] == 0.9 and done["w.0"]["min_quality"] == 0.5
    assert loop.market.ledger.balance(agent_account("w.0")) == loop.market.config.agent_grant_mc + 1000


@pytest.mark.parametrize("answer", [{"verdict": "fine"}, 7])
def test_a_grader_answer_that_is_not_a_score_leaves_the_quality_unknown(graded, answer):
    loop = graded({"capability": "grade"})
    loop.join_as("w.0", "w", "work")
    loop.join_as("j.0", "j", "grade")
    loop.submit()
    loop.answer("w.0", bid(1.0))
    loop.deliver("w.0", {"text": "x"})
    loop.answer("j.0", bid(0.1))
    loop.deliver("j.0", answer)
    [failed] = loop.fields("market.grade_failed")
    assert failed["agent"] == "w.0" and "score in" in failed["why"]
    done = {f["agent"]: f for f in loop.fields("market.completion")}
    assert done["w.0"]["delivered_quality"] is None  # not the agent's fault: it is paid


def test_no_grader_pool_alive_the_grade_is_unknown_and_the_contract_pays(graded):
    loop = graded({"capability": "grade"})
    loop.join_as("w.0", "w", "work")
    loop.submit()
    loop.answer("w.0", bid(1.0))
    loop.deliver("w.0", {"text": "x"})
    [failed] = loop.fields("market.grade_failed")
    assert "could not be submitted" in failed["why"]
    [done] = loop.fields("market.completion")
    assert done["delivered_quality"] is None


def test_a_grader_pool_that_died_times_the_grade_out_bounded(graded):
    loop = graded({"capability": "grade", "timeout_s": 2.0})
    loop.join_as("w.0", "w", "work")
    loop.join_as("j.0", "j", "grade")
    loop.die("j.0")
    loop.submit()
    loop.answer("w.0", bid(1.0))
    loop.deliver("w.0", {"text": "x"})
    assert loop.fields("market.grading") and not loop.fields("market.completion")
    loop.later(2.5)  # past the grading task's deadline: nobody could take it
    [failed] = loop.fields("market.grade_failed")
    assert "deadline_exceeded" in failed["why"]
    assert loop.fields("market.completion")[0]["delivered_quality"] is None


def test_without_a_grader_delivered_quality_is_unknown_everywhere(graded):
    loop = graded(None)
    loop.join_as("w.0", "w", "work")
    loop.submit()
    loop.answer("w.0", bid(1.0))
    loop.deliver("w.0", {"text": "x"})
    [done] = loop.fields("market.completion")
    assert done["delivered_quality"] is None and done["min_quality"] == 0.0
    [contract] = loop.table["market"]({}, None)["contracts"]
    assert contract["delivered_quality"] is None and contract["state"] == "completed"
    [row] = loop.table["reputation"]({}, None)
    assert row["quality"] is None and row["measured_quality"] is None
    assert not loop.fields("market.grading")


def _run_function_grade(loop, value, seconds=10.0):
    """Deliver ``value`` and turn the loop (moving its clock by POLL_S) until the grade is in."""
    loop.submit()
    loop.answer("w.0", bid(1.0))
    loop.deliver("w.0", value)
    deadline = time.monotonic() + seconds
    while not (loop.fields("market.completion") or loop.fields("market.breach")):
        assert time.monotonic() < deadline, "no grade within the bound"
        time.sleep(0.002)
        loop.later(grading_service.POLL_S)


@pytest.mark.parametrize("score, outcome", [(0.9, "market.completion"), (0.1, "market.breach")])
def test_a_grader_function_is_really_run_on_the_result(graded, score, outcome):
    loop = graded({"function": "tests.support.graders:by_score_field", "min_quality": 0.5})
    loop.join_as("w.0", "w", "work")
    _run_function_grade(loop, {"score": score})
    [ev] = loop.fields("market.graded")
    assert ev["quality"] == score
    [end] = loop.fields(outcome)
    assert end["delivered_quality"] == score


@pytest.mark.parametrize("fn, why", [("raises", "ValueError: this grader is broken"),
                                     ("not_a_score", "score in"),
                                     ("nowhere", "has no callable")])
def test_a_failing_grader_function_leaves_the_quality_unknown(graded, fn, why):
    loop = graded({"function": f"tests.support.graders:{fn}"})
    loop.join_as("w.0", "w", "work")
    _run_function_grade(loop, {"score": 1.0})
    [failed] = loop.fields("market.grade_failed")
    assert why in failed["why"]
    assert loop.fields("market.completion")[0]["delivered_quality"] is None


def test_a_hung_grader_function_times_out_and_its_thread_is_replaced(graded):
    fns.RELEASE.clear()
    loop = graded({"function": "tests.support.graders:hangs", "timeout_s": 0.5})
    loop.join_as("w.0", "w", "work")
    try:
        _run_function_grade(loop, {"score": 1.0})  # the fake clock passes 0.5 s in ~100 turns
        [failed] = loop.fields("market.grade_failed")
        assert "within 0.5 s" in failed["why"]
        assert loop.market.grading.functions.abandoned == 1
    finally:
        fns.RELEASE.set()


def test_an_inflated_claim_is_capped_by_the_measured_record(graded):
    loop = graded({"capability": "grade"})
    loop.join_as("w.0", "w", "work")   # claims 0.99, graded 0.1 five times
    loop.join_as("w.1", "w", "work")   # claims 0.8, never graded
    now = loop.clock()
    for i in range(MIN_MEASURED):
        loop.market.reputation.record("w.0", "work", Observation(now - 10 + i, True, True, 0.1))
    loop.submit()
    loop.answer("w.0", bid(1.0, quality=0.99))
    loop.answer("w.1", bid(1.0, quality=0.8))
    [capped_ev] = loop.fields("market.quality_capped")
    assert capped_ev["agent"] == "w.0" and capped_ev["claimed"] == 0.99
    assert capped_ev["measured"] == pytest.approx(0.1) and capped_ev["graded"] == MIN_MEASURED
    [award_ev] = loop.fields("market.award")
    assert award_ev["agent"] == "w.1"    # same price: the honest claim wins once measured


def test_a_claim_stands_below_the_record_count(graded):
    loop = graded({"capability": "grade"})
    loop.join_as("w.0", "w", "work")
    loop.join_as("w.1", "w", "work")
    for i in range(MIN_MEASURED - 1):
        loop.market.reputation.record("w.0", "work", Observation(loop.clock() - 10 + i, True, True, 0.1))
    loop.submit()
    loop.answer("w.0", bid(1.0, quality=0.99))
    loop.answer("w.1", bid(1.0, quality=0.8))
    assert not loop.fields("market.quality_capped")


def test_unknown_quality_is_durable_and_an_old_not_null_table_is_migrated(tmp_path):
    import sqlite3

    from coordination.services.store import MarketMemory, Store
    conn = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
    conn.execute("CREATE TABLE coord_reputation (seq INTEGER PRIMARY KEY, agent TEXT NOT NULL, "
                 "capability TEXT NOT NULL, at_wall REAL NOT NULL, success REAL NOT NULL, "
                 "timely REAL NOT NULL, quality REAL NOT NULL)")
    conn.execute("INSERT INTO coord_reputation VALUES (1, 'a', 'w', 1.0, 1.0, 1.0, 0.7)")
    memory = MarketMemory(Store(conn, wall=lambda: 10.0), clock=lambda: 10.0)
    memory.observed("a", "w", Observation(9.0, True, True, None), window=50)
    rep = Reputation()
    assert memory.load(rep, {}) == 2
    assert rep.graded("a", "w") == (1, 0.7)  # the old row kept, the new one unknown
    notnull = {c[1]: c[3] for c in conn.execute("PRAGMA table_info(coord_reputation)")}
    assert notnull["quality"] == 0 and notnull["success"] == 1
    conn.close()


def test_the_runner_moves_the_calls_queued_behind_a_stuck_one_to_a_new_thread():
    from tests.support.helpers import eventually
    fns.RELEASE.clear()
    runner = grading_service.FunctionRunner()
    hung = parse_grader("w", {"function": "tests.support.graders:hangs", "timeout_s": 1})
    fine = parse_grader("w", {"function": "tests.support.graders:by_score_field", "timeout_s": 100})
    try:
        runner.submit(grading_service._Job(1, 1.0, hung), (None, None))
        runner.submit(grading_service._Job(2, 100.0, fine), (None, {"score": 0.4}))
        eventually(lambda: runner._worker.current is not None, "the thread in the hung call", timeout=10)
        got = runner.poll(2.0)  # past the hung call's deadline (the clock is the caller's)
        assert [(j.key, kind) for j, kind, _ in got] == [(1, "error")] and runner.abandoned == 1
        done = eventually(lambda: runner.poll(3.0), "the queued call answered on the new thread", timeout=10)
        assert [(j.key, kind, v) for j, kind, v in done] == [(2, "ok", 0.4)]
        assert len(runner.threads) == 2
    finally:
        fns.RELEASE.set()
        runner.close(join_s=5.0)
    assert not runner.threads
