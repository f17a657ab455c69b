"""The budgets (runtime.guards.budget): hedges and retries are each at most a share of the
calls plus a burst, a budget is shared through the service's state store (machine-wide in
shared memory), a service whose hedge budget is spent lets a slow attempt go on alone, and
one whose retry budget is spent raises the attempt's error instead of sending it again."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from runtime.guards import SharedStateStore
from runtime.guards.budget import BURST, Budget
from runtime.guards.service import Service
from shm import RunId
from shm.guard_state import GuardStateTable
from tests.support.helpers import WAIT, fork_running, read_message, reap, send


@given(st.floats(0.01, 1.0), st.lists(st.booleans(), max_size=400))
def test_hedges_are_at_most_the_share_of_calls_plus_the_burst(share, slow):
    budget = Budget("s", "hedge", share)
    hedges = 0
    for is_slow in slow:  # each call deposits; a slow one asks for a hedge
        budget.deposit()
        hedges += is_slow and budget.try_spend()
    assert hedges <= share * len(slow) + BURST
    assert 0 <= budget.tokens() <= BURST


def test_a_spent_budget_refuses_until_calls_refill_it():
    budget = Budget("s", "hedge", 0.25)
    assert all(budget.try_spend() for _ in range(int(BURST)))  # a new budget may hedge at once
    assert not budget.try_spend()
    for _ in range(3):
        budget.deposit()
    assert not budget.try_spend()  # 0.75 of a token
    budget.deposit()
    assert budget.try_spend() and not budget.try_spend()


@pytest.mark.parametrize("key, top", [("hedge_budget", 1), ("retry_budget", 100)])
def test_the_budgets_are_validated(key, top):
    for bad in (0, -0.1, top + 0.5, float("nan"), True):
        with pytest.raises(InvalidInput, match=key):
            Service("x", {key: bad})


async def _slow(n: list[int]) -> int:
    n.append(len(n) + 1)
    await asyncio.sleep(0.05 if len(n) == 1 else 0.0)  # the first attempt is slow, a twin fast
    return len(n)


def test_a_service_with_its_budget_spent_does_not_hedge_and_still_answers():
    events: list[str] = []
    svc = Service("x", {"hedge_after_s": 0.01, "hedge_budget": 0.1, "retries": 0, "breaker": False},
                  on_event=lambda e, **f: events.append(e))
    while svc.hedges.try_spend():
        pass  # other callers spent it
    calls: list[int] = []
    assert asyncio.run(svc.acall(_slow, calls)) == 1  # the first attempt's own answer
    assert calls == [1] and svc.counts["hedge"] == 0 and svc.counts["hedge_denied"] == 1
    assert "hedge_denied" in events
    for _ in range(9):
        svc.hedges.deposit()  # nine calls of others, the next call's own: 1.1 tokens
    calls2: list[int] = []
    assert asyncio.run(svc.acall(_slow, calls2)) == 2 and svc.counts["hedge"] == 1  # one token: one twin


def _spender(name: str):
    """Child: spend the shared budget dry and report how many hedges it got."""
    def body(w: int) -> None:
        t = GuardStateTable.attach(name)
        budget = Budget("llm", "hedge", 0.1, SharedStateStore(t))
        got = 0
        while budget.try_spend():
            got += 1
        send(w, got)
        t.close()
    return body


def test_the_budget_is_one_for_the_machine():
    table = GuardStateTable.create(RunId.new(), slots=8, slot_size=1024)
    try:
        children = [fork_running(_spender(table.name)) for _ in range(4)]
        got = []
        try:
            for pid, fd in children:
                got.append(orjson.loads(read_message(fd, WAIT)))
                assert os.waitstatus_to_exitcode(reap(pid)) == 0
        finally:
            for _, fd in children:
                os.close(fd)
        assert sum(got) == BURST, got  # four processes share one bucket, not four
    finally:
        table.close()
        table.unlink()


# -- the retry budget ------------------------------------------------------------------

class _Down(Exception):
    retryable = True


def _failing(n: list[int]) -> None:
    n.append(1)
    raise _Down("503")


def _retrying_service(events: list[str], budget: float = 0.2) -> Service:
    return Service("x", {"retries": 3, "backoff": 0, "breaker": False, "retry_budget": budget},
                   on_event=lambda e, **f: events.append(e), retryable=lambda e: isinstance(e, _Down))


@given(st.floats(0.01, 4.0), st.integers(0, 120))
def test_retries_against_a_dead_service_are_at_most_the_share_of_calls_plus_the_burst(share, calls):
    events: list[str] = []
    svc = _retrying_service(events, share)
    sent: list[int] = []
    for _ in range(calls):
        with pytest.raises(_Down):
            svc.call(_failing, sent)
    retries = len(sent) - calls
    assert retries == svc.counts["retry"] <= share * calls + BURST
    if share >= 3:  # as many as the policy's retries: every call makes its 4 attempts
        assert retries == 3 * calls


def test_a_spent_retry_budget_raises_the_first_error_and_a_passing_fault_is_retried():
    events: list[str] = []
    svc = _retrying_service(events)
    while svc.retry_budget.try_spend():
        pass  # an outage elsewhere on the machine spent it
    sent: list[int] = []
    with pytest.raises(_Down):
        svc.call(_failing, sent)
    assert sent == [1] and svc.counts["retry_denied"] == 1 and "retry_denied" in events
    for _ in range(4):
        svc.retry_budget.deposit()  # four good calls of others, this call's own: one token
    flaky = iter([_Down("503"), None])

    def once() -> str:
        err = next(flaky)
        if err:
            raise err
        return "ok"
    assert svc.call(once) == "ok" and svc.counts["retry"] == 1


def test_async_calls_and_batch_items_spend_the_same_retry_budget():
    events: list[str] = []
    svc = _retrying_service(events, 0.1)
    while svc.retry_budget.try_spend():
        pass

    async def down() -> None:
        raise _Down("503")
    with pytest.raises(_Down):
        asyncio.run(svc.acall(down))
    item = svc.batched(lambda items: [_Down("503") if i == "bad" else i for i in items])
    with pytest.raises(_Down):
        item("bad")
    assert svc.counts["retry"] == 0 and svc.counts["retry_denied"] == 2
