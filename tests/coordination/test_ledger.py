"""The credit ledger: double entry, floors, escrow, conservation, and no double spending
when several threads with their own connections spend from one account of a WAL db."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import threading
from contextlib import closing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordination.contracts import BreachReason, award, breach, complete, start
from coordination.ledger import MINT, InsufficientCredits, Ledger
from runtime.errors import Conflict, InvalidInput, NotFound, ResourceExhausted


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture(params=["", None], ids=["implicit-transactions", "autocommit"])
def ledger(request):
    """Both connection styles: Python's default and the journal's isolation_level=None."""
    with closing(sqlite3.connect(":memory:", isolation_level=request.param)) as conn:
        yield Ledger(conn, clock=FakeClock())


def test_grant_mints_from_the_mint_account(ledger):
    ledger.grant("alice", 5000, "initial budget")
    ledger.grant("alice", 1000, "top-up")
    assert ledger.balance("alice") == 6000
    assert ledger.balance(MINT) == -6000 and ledger.issued() == 6000
    assert ledger.check_conservation().ok


def test_transfer_moves_credits_and_names_contract_and_trace(ledger):
    ledger.grant("alice", 5000, "budget")
    ledger.open_account("bob")
    tid = ledger.transfer("alice", "bob", 1200, contract_id="c1", trace_id="t1", reason="price")
    assert (ledger.balance("alice"), ledger.balance("bob")) == (3800, 1200)
    [entry] = ledger.entries("bob")
    assert (entry.transfer_id, entry.amount, entry.counterparty) == (tid, 1200, "alice")
    labels = (entry.contract_id, entry.trace_id, entry.kind, entry.reason)
    assert labels == ("c1", "t1", "transfer", "price")
    assert [e.amount for e in ledger.entries("alice")] == [5000, -1200]
    assert ledger.entries("alice")[1].at == entry.at  # the fake clock stamped it


def test_transfer_below_the_floor_is_refused_with_the_facts(ledger):
    ledger.grant("alice", 500, "budget")
    ledger.open_account("bob")
    with pytest.raises(InsufficientCredits) as info:
        ledger.transfer("alice", "bob", 501, contract_id="c9", trace_id="tr9")
    err = info.value
    assert isinstance(err, ResourceExhausted) and err.code == "INSUFFICIENT_CREDITS"
    for fact in ("501 mc", "'alice'", "c9", "tr9", "holds 500 mc", "floor 0", "at most 500"):
        assert fact in err.message
    assert "grant credits" in err.hint
    assert (ledger.balance("alice"), ledger.balance("bob")) == (500, 0)  # nothing moved
    ledger.transfer("alice", "bob", 500, "c9", "tr9")                   # exactly down to the floor
    assert ledger.balance("alice") == 0


def test_floors_may_allow_an_overdraft_or_keep_a_minimum(ledger):
    ledger.open_account("ops", floor=-1000)
    ledger.open_account("sink")
    ledger.transfer("ops", "sink", 1000, None, None)
    assert ledger.balance("ops") == -1000
    with pytest.raises(InsufficientCredits):
        ledger.transfer("ops", "sink", 1, None, None)
    ledger.open_account("ops", floor=-1000)  # same floor again: nothing happens
    with pytest.raises(Conflict):
        ledger.open_account("ops", floor=0)
    with pytest.raises(Conflict, match="below the new floor"):
        ledger.set_floor("ops", 0)
    assert ledger.check_conservation().ok


@pytest.mark.parametrize("call", [
    lambda L: L.transfer("mint", "bob", 10, None, None),
    lambda L: L.transfer("bob", "mint", 10, None, None),
    lambda L: L.transfer("bob", "escrow:c1", 10, None, None),
    lambda L: L.transfer("bob", "bob", 10, None, None),
    lambda L: L.transfer("bob", "alice", 0, None, None),
    lambda L: L.transfer("bob", "alice", 1.5, None, None),
    lambda L: L.transfer("bob", "alice", True, None, None),
    lambda L: L.grant("bob", -5, "x"),
    lambda L: L.grant("bob", 5, ""),
    lambda L: L.grant("mint", 5, "x"),
    lambda L: L.open_account(""),
])
def test_bad_input_is_refused(ledger, call):
    ledger.grant("bob", 100, "budget")
    ledger.grant("alice", 100, "budget")
    with pytest.raises(InvalidInput):
        call(ledger)
    assert ledger.check_conservation().ok


def test_unknown_accounts_are_not_found(ledger):
    ledger.grant("bob", 100, "budget")
    with pytest.raises(NotFound):
        ledger.transfer("bob", "nobody", 10, None, None)
    with pytest.raises(NotFound):
        ledger.balance("nobody")
    with pytest.raises(NotFound):
        ledger.entries("nobody")


def test_a_connection_inside_a_transaction_is_refused():
    with closing(sqlite3.connect(":memory:")) as conn:
        led = Ledger(conn)
        conn.execute("CREATE TABLE other (x)")
        conn.execute("INSERT INTO other VALUES (1)")  # opens an implicit transaction
        with pytest.raises(InvalidInput, match="inside a transaction"):
            led.grant("a", 1, "x")
        conn.rollback()
        led.grant("a", 1, "x")


# -- escrow ---------------------------------------------------------------------------------

def balances(ledger, *accounts):
    return [ledger.balance(a) for a in accounts]


def funded(ledger):
    ledger.grant("buyer", 10_000, "budget")
    ledger.grant("agent", 300, "bond money")


def test_escrow_release_on_completion_pays_price_and_returns_bond(ledger):
    funded(ledger)
    ledger.hold("c1", payer="buyer", payee="agent", price=2000, bond=200, trace_id="t")
    assert balances(ledger, "buyer", "agent", "escrow:c1") == [8000, 100, 2200]
    ledger.release("c1", trace_id="t")
    assert balances(ledger, "buyer", "agent", "escrow:c1") == [8000, 2300, 0]
    assert ledger.escrow("c1").state == "released"
    with pytest.raises(Conflict, match="already released"):
        ledger.refund("c1", penalty=200)
    assert ledger.check_conservation().ok


def test_escrow_refund_on_breach_returns_price_and_takes_the_penalty(ledger):
    funded(ledger)
    ledger.hold("c1", "buyer", "agent", price=2000, bond=200)
    assert ledger.refund("c1", penalty=150) == 150
    assert (ledger.balance("buyer"), ledger.balance("agent")) == (10_150, 150)
    assert ledger.check_conservation().ok


def test_hold_is_all_or_nothing_when_the_agent_cannot_post_its_bond(ledger):
    funded(ledger)
    with pytest.raises(InsufficientCredits, match="'agent'"):
        ledger.hold("c1", "buyer", "agent", price=2000, bond=301)
    assert (ledger.balance("buyer"), ledger.balance("agent")) == (10_000, 300)
    with pytest.raises(NotFound):
        ledger.escrow("c1")
    ledger.hold("c1", "buyer", "agent", price=2000, bond=300)
    with pytest.raises(Conflict, match="already has an escrow"):
        ledger.hold("c1", "buyer", "agent", price=1, bond=0)


def test_contract_settlements_drive_the_escrow(ledger):
    funded(ledger)
    c = award("c1", "task1", "agent", price=2000, deadline=10.0, now=0.0)
    ledger.hold(c.id, "buyer", c.agent, c.price, bond=200)
    _, settlement = breach(start(c, 1.0), BreachReason.FAILED, 2.0)
    assert ledger.settle(settlement) == 200  # 10% of 2000, all of the bond
    c2 = award("c2", "task1", "agent", price=1000, deadline=10.0, now=3.0)
    ledger.hold(c2.id, "buyer", c2.agent, c2.price, bond=50)
    _, paid = complete(start(c2, 4.0), 5.0, 1.0)
    assert ledger.settle(paid) == 1000
    assert balances(ledger, "buyer", "agent") == [10_000 - 1000 + 200, 300 - 200 + 1000]
    assert ledger.check_conservation().ok


# -- conservation under random sequences ------------------------------------------------------

ACCOUNTS = ["a", "b", "c"]
ops = st.lists(st.one_of(
    st.tuples(st.just("grant"), st.sampled_from(ACCOUNTS), st.integers(1, 5000)),
    st.tuples(st.just("transfer"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.integers(1, 5000)),
    st.tuples(st.just("contract"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS),
              st.integers(1, 5000), st.integers(0, 500), st.booleans()),
), max_size=40)


def apply(ledger, model, op, n):
    """Apply one op to the ledger and to a dict model; InsufficientCredits exactly when the
    model says the payer cannot afford it."""
    if op[0] == "grant":
        ledger.grant(op[1], op[2], "test")
        model[op[1]] = model.get(op[1], 0) + op[2]
        return
    src, dst, amount = op[1], op[2], op[3]
    bond = op[4] if op[0] == "contract" else 0
    affordable = model.get(src, 0) >= amount and model.get(dst, 0) >= bond
    if src == dst or src not in model or dst not in model:
        return
    try:
        if op[0] == "transfer":
            ledger.transfer(src, dst, amount, f"c{n}", f"t{n}")
        else:
            ledger.hold(f"c{n}", src, dst, amount, bond)
            ledger.release(f"c{n}") if op[5] else ledger.refund(f"c{n}", penalty=bond)
    except InsufficientCredits:
        assert not affordable
        return
    assert affordable
    gain = amount if op[0] == "transfer" or op[5] else -bond
    model[src] -= gain
    model[dst] += gain


@settings(max_examples=60, deadline=None)
@given(ops)
def test_credits_are_conserved_under_random_sequences(sequence):
    with closing(sqlite3.connect(":memory:")) as conn:
        ledger, model = Ledger(conn), {}
        for n, op in enumerate(sequence):
            apply(ledger, model, op, n)
            report = ledger.check_conservation()
            assert report.ok, report
        assert {a: ledger.balance(a) for a in model} == model
        assert ledger.issued() == sum(model.values())


# -- concurrency: several threads, own connections, one WAL database ---------------------------

def spender(path, worker, plan, start_line, outcomes, errors):
    """One thread: its own connection; spends from 'pool' by transfers and contracts."""
    try:
        style = None if worker % 2 else ""  # the journal's autocommit style, and the default
        with closing(sqlite3.connect(path, timeout=30.0, isolation_level=style)) as conn:
            ledger = Ledger(conn)
            start_line.wait(timeout=30.0)
            for n, (amount, kind) in enumerate(plan):
                cid = f"w{worker}-{n}"
                try:
                    if kind == "transfer":
                        ledger.transfer("pool", f"agent{worker}", amount, cid, f"trace-{cid}")
                    else:
                        ledger.hold(cid, "pool", f"agent{worker}", amount)
                        ledger.release(cid) if kind == "release" else ledger.refund(cid)
                except InsufficientCredits:
                    outcomes.append((kind, amount, False))
                else:
                    outcomes.append((kind, amount, True))
    except BaseException as exc:  # reported by the main thread, never swallowed
        errors.append(exc)


def run_spenders(path, plans):
    start_line = threading.Barrier(len(plans))
    outcomes: list = []
    errors: list = []
    threads = [threading.Thread(target=spender, args=(path, w, plan, start_line, outcomes, errors),
                                name=f"spender-{w}") for w, plan in enumerate(plans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60.0)
    assert not any(t.is_alive() for t in threads), "a spender thread hung"
    if errors:
        raise errors[0]
    return outcomes


def new_wal_db(directory, budget, workers):
    path = os.path.join(directory, "journal.db")
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
        ledger = Ledger(conn)
        ledger.grant("pool", budget, "budget")
        for w in range(workers):
            ledger.open_account(f"agent{w}")
    return path


def check_no_double_spending(path, budget, outcomes):
    spent = sum(a for kind, a, ok in outcomes if ok and kind in ("transfer", "release"))
    with closing(sqlite3.connect(path)) as conn:
        ledger = Ledger(conn)
        report = ledger.check_conservation()
        assert report.ok, report
        assert ledger.balance("pool") >= 0
        assert ledger.balance("pool") == budget - spent
        assert ledger.issued() == budget


step = st.tuples(st.integers(1, 400), st.sampled_from(["transfer", "release", "refund"]))
plans = st.lists(st.lists(step, min_size=1, max_size=8), min_size=2, max_size=4)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=plans, budget=st.integers(1, 2000))
def test_no_double_spending_under_concurrent_contracts(plans, budget):
    with tempfile.TemporaryDirectory() as d:
        path = new_wal_db(d, budget, len(plans))
        outcomes = run_spenders(path, plans)
        assert len(outcomes) == sum(len(p) for p in plans)
        check_no_double_spending(path, budget, outcomes)


def test_concurrent_spenders_exhaust_the_pool_exactly_once(tmp_path):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    plans = [[(rng.randint(50, 150), "transfer") for _ in range(15)] for _ in range(4)]
    path = new_wal_db(str(tmp_path), 3000, 4)
    outcomes = run_spenders(path, plans)
    refused = [o for o in outcomes if not o[2]]
    assert refused, f"seed {seed}: demand exceeds the budget, some transfers must be refused"
    check_no_double_spending(path, 3000, outcomes)
    with closing(sqlite3.connect(path)) as conn:
        assert Ledger(conn).balance("pool") < 150, f"seed {seed}: refused while credits remained"
