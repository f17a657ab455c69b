"""The hedge budget (runtime.guards.hedge): hedges are at most a share of the calls plus a
burst, the budget is shared through the service's state store (machine-wide in shared
memory), and a service whose budget is spent lets a slow attempt go on alone."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from runtime.guards import SharedStateStore
from runtime.guards.hedge import BURST, HedgeBudget
from runtime.guards.service import Service
from shm import RunId
from shm.guard_state import GuardStateTable
from tests.support.helpers import WAIT, fork_running, read_message, reap, send


@given(st.floats(0.01, 1.0), st.lists(st.booleans(), max_size=400))
def test_hedges_are_at_most_the_share_of_calls_plus_the_burst(share, slow):
    budget = HedgeBudget("s", share)
    hedges = 0
    for is_slow in slow:  # each call deposits; a slow one asks for a hedge
        budget.deposit()
        hedges += is_slow and budget.try_spend()
    assert hedges <= share * len(slow) + BURST
    assert 0 <= budget.tokens() <= BURST


def test_a_spent_budget_refuses_until_calls_refill_it():
    budget = HedgeBudget("s", 0.25)
    assert all(budget.try_spend() for _ in range(int(BURST)))  # a new budget may hedge at once
    assert not budget.try_spend()
    for _ in range(3):
        budget.deposit()
    assert not budget.try_spend()  # 0.75 of a token
    budget.deposit()
    assert budget.try_spend() and not budget.try_spend()


def test_the_budget_is_validated():
    for bad in (0, -0.1, 1.5, float("nan"), True):
        with pytest.raises(InvalidInput, match="hedge_budget"):
            Service("x", {"hedge_budget": bad})


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
        budget = HedgeBudget("llm", 0.1, SharedStateStore(t))
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
