"""The agent side of the economy (runtime.agents.economy) against a recording call: what
``task.acquire`` / ``task.subcontract`` / ``task.balance`` send, the held unit's release,
the subcontract's re-ask with the same key while the coordinator restarts."""

from __future__ import annotations

import pytest

from runtime.agents.agent import Agent, TaskHandle
from runtime.agents.economy import SubcontractFailed, default_sale_bid
from runtime.errors import Unavailable


class Calls:
    def __init__(self, *answers):
        self.sent, self.answers = [], list(answers)

    def __call__(self, op, args, timeout=30.0):
        self.sent.append((op, args, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _handle(call):
    return TaskHandle("t-1", 2, "cap", None, lambda *a, **k: None, call)


def test_acquire_bids_for_the_attempt_and_the_with_block_releases_the_unit():
    won = {"resource": "gpu", "unit": 1, "token": 7, "price": 4.0, "auction_id": "s1"}
    call = Calls(won, {"released": True})
    with _handle(call).acquire("gpu", limit=5, timeout=3) as unit:
        assert (unit.unit, unit.token, unit.price) == (1, 7, 4.0)
    (op, args, timeout), (rop, rargs, _) = call.sent
    assert op == "sale.bid" and args == {"resource": "gpu", "limit": 5, "timeout": 3,
                                         "task": {"id": "t-1", "attempt": 2}}
    assert timeout > 3  # the coordinator's own timeout answers first
    assert rop == "sale.release" and rargs == {"resource": "gpu", "unit": 1, "token": 7,
                                               "task": {"id": "t-1", "attempt": 2}}
    unit.release()  # idempotent
    assert len(call.sent) == 2


def test_subcontract_re_asks_with_the_same_key_while_the_coordinator_restarts():
    done = {"task_id": "t-2", "state": "succeeded", "result": {"y": 2}}
    call = Calls(Unavailable("restarting"), Unavailable("restarting"), done, done)
    handle = _handle(call)
    assert handle.subcontract("double", {"x": 1}, budget=3, timeout=5) == {"y": 2}
    keys = [args["key"] for _, args, _ in call.sent]
    assert keys == [1, 1, 1]  # one subcontract: the same key every time
    handle.subcontract("double", {"x": 1}, budget=3, timeout=5)
    assert call.sent[-1][1]["key"] == 2  # the next one is another
    assert call.sent[0][1]["task"] == {"id": "t-1", "attempt": 2}


def test_a_failed_child_raises_with_its_state():
    call = Calls({"task_id": "t-3", "state": "failed", "error": {"message": "boom"}})
    with pytest.raises(SubcontractFailed, match="ended failed: boom"):
        _handle(call).subcontract("double", {}, budget=1)


def test_balance_and_the_default_sale_hook():
    assert _handle(Calls({"balance": 12.5})).balance() == 12.5
    assert default_sale_bid({"price": 3, "limit": 3}) and not default_sale_bid({"price": 3.01, "limit": 3})
    assert Agent().sale_bid({"price": 1, "limit": 2}) is True


def test_an_async_handler_awaits_its_subcontract():
    import asyncio
    call = Calls({"task_id": "t-4", "state": "succeeded", "result": 7})
    assert asyncio.run(_handle(call).asubcontract("double", {}, budget=2)) == 7
    assert call.sent[0][1]["key"] == 1


def test_a_release_during_a_coordinator_restart_is_asked_again():
    won = {"resource": "gpu", "unit": 0, "token": 3, "price": 1.0, "auction_id": "s"}
    call = Calls(won, Unavailable("restarting"), {"released": True})
    with _handle(call).acquire("gpu", limit=2):
        pass
    assert [op for op, _, _ in call.sent] == ["sale.bid", "sale.release", "sale.release"]
