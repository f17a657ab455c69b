"""Ledger retention (issue 16): old transfers fold into one checkpoint per account;
balances stay exact, money is never deleted, conservation still checks."""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.ledger import Ledger
from tests.support.helpers import FakeClock


def ledger(clock):
    return Ledger(sqlite3.connect(":memory:", isolation_level=None), clock=clock)


def entry_sums(led, accounts):
    return {a: sum(e.amount for e in led.entries(a)) for a in accounts}


@settings(max_examples=40, deadline=None)
@given(moves=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(1, 500)), max_size=40),
       cut=st.integers(0, 45), again=st.integers(0, 45))
def test_fold_keeps_every_balance_and_conservation(moves, cut, again):
    clock = FakeClock(0.0)
    led = ledger(clock)
    names = ["a", "b", "c"]
    for n in names:
        led.grant(n, 10_000, "start")
    for i, (src, dst, amount) in enumerate(moves):
        clock.t = float(i + 1)
        if src != dst:
            led.transfer(names[src], names[dst], amount, None, "pay")
    before = {n: led.balance(n) for n in names}
    led.fold(float(cut))
    led.fold(float(again))  # a second fold merges the first checkpoint
    assert {n: led.balance(n) for n in names} == before
    assert entry_sums(led, names) == before
    assert led.check_conservation().ok
    checkpoints = [r for r in led._conn.execute("SELECT kind FROM ledger_transfers WHERE kind = 'checkpoint'")]
    assert len(checkpoints) <= 1


def test_fold_leaves_held_escrows_alone_and_shrinks_the_tables():
    clock = FakeClock(0.0)
    led = ledger(clock)
    led.grant("client", 100_000, "start")
    led.grant("agent:x", 10_000, "bond")
    for i in range(50):
        clock.t = float(i)
        led.hold(f"c{i}", "client", "agent:x", 100, bond=10)
        led.release(f"c{i}")
    led.hold("open", "client", "agent:x", 100, bond=10)
    rows = led._conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0]
    out = led.fold(1000.0)
    assert out["escrows"] == 50 and out["transfers"] > 0
    assert led._conn.execute("SELECT count(*) FROM ledger_entries").fetchone()[0] < rows // 10
    led.release("open")  # its hold was not folded: it still settles
    assert led.check_conservation().ok
    assert led.balance("agent:x") == 10_000 + 51 * 100
