"""Subcontracts (coordination.services.economy) over the real market, ledger, journal and
scheduler with a manual clock: the parent agent pays from its balance through the child's
budget account, gets the rest back and the child's result, in the parent's trace."""

from __future__ import annotations

from tests.support.economy_host import EconHost


def _running_parent(h):
    """Agents p (parent) and w (worker); a task running on p; its trace."""
    h.join("p")
    h.join("w")
    tid = h.submit()
    h.answer("p", {"price": 1})
    h.answer("w", None)  # w declines: p runs it
    assert [t["id"] for t in h.sent["p"]] == [tid]
    return tid, h.scheduler.tasks[tid].trace


def _subcontract(h, tid, trace, budget=3, key=1, **more):
    return h.op("p", "economy.subcontract", {"capability": "work", "input": {"x": 1}, "budget": budget,
                                             "task": {"id": tid, "attempt": 1}, "key": key, **more},
                trace=trace.to_wire())


def _child(h):
    child = [t for t in h.sent.get("w", [])]
    return child[-1]["id"] if child else None


def test_a_handler_subcontracts_pays_from_its_balance_and_gets_the_result_in_its_trace(tmp_path):
    h = EconHost(tmp_path)
    tid, trace = _running_parent(h)
    before = h.balance("p")
    worker_before = h.balance("w")
    call = _subcontract(h, tid, trace)
    assert call.pending and h.balance("p") == before - 3000  # the budget left at once
    for agent, _req, _cb in list(h.asks):  # the child's auction: w bids 2, p (busy) declines
        h.answer(agent, {"price": 2} if agent == "w" else None)
    child = _child(h)
    assert child is not None
    assert h.journal.get(child).trace_id == trace.trace_id  # same trace as the parent
    h.result("w", ok=True)
    h.later(0.0)
    out = call.value
    assert out["state"] == "succeeded" and out["task_id"] == child
    assert out["paid_mc"] == 2000 and out["refunded_mc"] == 1000
    assert h.balance("p") == before - 2000 and h.balance("w") == worker_before + 2000
    assert h.ledger.balance(f"budget:sub:{tid}:1:1") == 0
    assert h.ledger.check_conservation().ok


def test_a_breached_child_refunds_the_budget_and_the_same_key_pays_nothing_twice(tmp_path):
    h = EconHost(tmp_path)
    tid, trace = _running_parent(h)
    before = h.balance("p")
    call = _subcontract(h, tid, trace, options={"max_attempts": 1})
    for agent, _req, _cb in list(h.asks):
        h.answer(agent, {"price": 2} if agent == "w" else None)
    again = _subcontract(h, tid, trace, options={"max_attempts": 1})  # e.g. after a restart
    assert again.pending and h.balance("p") == before - 3000  # not paid twice
    h.result("w", ok=False)
    h.later(0.0)
    assert call.value["state"] == "failed" and again.value["task_id"] == call.value["task_id"]
    # the whole budget came back, plus the penalty the worker's bond paid for its breach
    penalty = -call.value["paid_mc"]
    assert penalty == 200 and call.value["refunded_mc"] == 3200  # the market's 10% of the price
    assert h.balance("p") == before + penalty and h.ledger.check_conservation().ok


def test_a_budget_beyond_the_balance_is_a_typed_error(tmp_path):
    h = EconHost(tmp_path)
    tid, trace = _running_parent(h)
    before = h.balance("p")
    assert _subcontract(h, tid, trace, budget=before / 1000 + 1).error == "INSUFFICIENT_CREDITS"
    assert h.balance("p") == before
    assert _subcontract(h, "t-nope", trace).error == "CONFLICT"  # not an attempt running on p
    assert _subcontract(h, tid, trace, budget=-1).error == "INVALID_INPUT"
    unknown = h.op("p", "economy.subcontract", {"capability": "nothing-serves-this", "input": {}, "budget": 1,
                                                "task": {"id": tid, "attempt": 1}, "key": 9})
    assert unknown.error is not None and h.balance("p") == before  # refused: the budget is back
    for bad in ({"options": "x"}, {"options": {"priority": "high"}}, {"capability": 7}):
        args = {"capability": "work", "input": {}, "budget": 1, "task": {"id": tid, "attempt": 1}, "key": 10,
                **bad}
        assert h.op("p", "economy.subcontract", args).error == "INVALID_INPUT", bad
        assert h.balance("p") == before, bad  # nothing stays in a budget account
    assert h.ledger.check_conservation().ok


def test_a_subcontract_open_at_a_restart_is_still_paid_from_its_budget_and_settles(tmp_path):
    h = EconHost(tmp_path)
    tid, trace = _running_parent(h)
    before = h.balance("p")
    _subcontract(h, tid, trace)
    child = h.journal.conn.execute("SELECT child FROM econ_subcontracts").fetchone()[0]
    h.journal.close()
    h2 = EconHost(tmp_path)  # the restarted coordinator: the child is queued again
    assert h2.economy.payers[child] == f"budget:sub:{tid}:1:1"
    h2.resume()
    h2.join("p")
    h2.join("w")
    for _ in range(50):  # the parent resumed too: p takes it, w the child (auctions retry)
        for agent, req, _cb in list(h2.asks):
            h2.answer(agent, {"price": 1} if (agent == "w") == (req["task_id"] == child) else None)
        if h2.sent.get("w"):
            break
        h2.later(0.1)
    assert [t["id"] for t in h2.sent["w"]] == [child]
    h2.result("w", ok=True)
    h2.later(0.0)
    assert h2.balance("p") == before - 1000  # paid the new contract's price, got the rest
    assert h2.ledger.check_conservation().ok


def test_a_child_is_cancelled_when_its_parent_attempt_ends_and_its_budget_comes_back(tmp_path):
    h = EconHost(tmp_path)
    tid, trace = _running_parent(h)
    before = h.balance("p")
    call = _subcontract(h, tid, trace, timeout=1)
    child = h.journal.conn.execute("SELECT child FROM econ_subcontracts").fetchone()[0]
    h.later(2.0)  # nobody bid for the child: the handler's call times out ...
    assert call.error == "DEADLINE_EXCEEDED"
    h.result("p", ok=False)  # ... and the handler fails
    h.later(0.0)
    assert h.state(child) == "cancelled"
    assert any(e[0] == "economy.child_cancelled" for e in h.events)
    assert h.balance("p") == before and h.ledger.check_conservation().ok
