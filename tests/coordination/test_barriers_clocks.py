"""Barriers on a fake clock; vector and Lamport clock properties."""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.barriers import BROKEN, RELEASED, WAITING, Barrier, BarrierBroken
from coordination.clocks import LamportClock, Order, VectorClock
from runtime.errors import BrokenError, DeadlineExceeded, InvalidInput
from tests.support.helpers import FakeClock

# ---------------------------------------------------------------- barriers


def test_released_when_all_arrive():
    b = Barrier("phase1", ["a", "b", "c"], deadline=10.0, clock=FakeClock())
    assert b.arrive("a").state == WAITING
    assert b.arrive("a").state == WAITING  # a second arrival counts once
    assert b.arrive("c").state == WAITING
    out = b.arrive("b")
    assert (out.state, out.notify, out.error) == (RELEASED, ("a", "c", "b"), None)
    assert b.arrive("a").notify == ("a",)  # idempotent retry after release


def test_counted_barrier_releases_on_the_count():
    b = Barrier("n", 2, deadline=10.0, clock=FakeClock())
    b.arrive("x")
    assert b.arrive("y").state == RELEASED
    with pytest.raises(InvalidInput, match="one-shot"):
        b.arrive("z")


def test_a_death_breaks_the_barrier_for_everyone():
    b = Barrier("phase1", ["a", "b", "c"], deadline=10.0, clock=FakeClock())
    b.arrive("a")
    b.arrive("b")
    out = b.participant_died("c")
    assert out.state == BROKEN and out.notify == ("a", "b")
    assert isinstance(out.error, BarrierBroken) and isinstance(out.error, BrokenError)
    assert "'c' died" in out.error.message and out.error.details["participant"] == "c"
    later = b.arrive("a")  # anyone asking afterwards gets the same error
    assert later.notify == ("a",) and isinstance(later.error, BarrierBroken)
    with pytest.raises(BarrierBroken, match="'c' died"):
        later.raise_if_broken()


def test_counted_barrier_breaks_only_on_a_participant_it_knows():
    b = Barrier("n", 3, deadline=10.0, clock=FakeClock())
    b.arrive("x")
    assert b.participant_died("stranger").state == WAITING
    assert b.participant_died("x").state == BROKEN


def test_death_after_release_changes_nothing():
    b = Barrier("n", ["a"], deadline=10.0, clock=FakeClock())
    b.arrive("a")
    assert b.participant_died("a").state == RELEASED


def test_deadline_breaks_with_deadline_exceeded():
    clock = FakeClock()
    b = Barrier("phase1", ["a", "b"], deadline=5.0, clock=clock)
    b.arrive("a")
    assert b.expire(5.0).state == WAITING  # exactly at the deadline is still in time
    out = b.expire(5.1)
    assert out.state == BROKEN and out.notify == ("a",)
    assert isinstance(out.error, DeadlineExceeded) and "missing: ['b']" in out.error.message


def test_late_arrival_breaks_it_even_before_the_timer():
    clock = FakeClock()
    b = Barrier("phase1", ["a", "b"], deadline=5.0, clock=clock)
    b.arrive("a")
    clock.t = 6.0
    out = b.arrive("b")
    assert (
        out.state == BROKEN and out.notify == ("a", "b") and isinstance(out.error, DeadlineExceeded)
    )
    assert b.expire().notify == ()  # already answered: nobody is told twice


@pytest.mark.parametrize("parties", [0, -1, True, [], "abc", ["a", ""], 2.5])
def test_bad_parties(parties):
    with pytest.raises(InvalidInput, match="parties"):
        Barrier("x", parties, deadline=1.0, clock=FakeClock())


def test_stranger_is_refused():
    b = Barrier("x", ["a"], deadline=1.0, clock=FakeClock())
    with pytest.raises(InvalidInput, match="not a party"):
        b.arrive("z")


events = st.lists(
    st.tuples(st.sampled_from(["arrive", "die", "tick"]), st.sampled_from("abcd")), max_size=20
)


@settings(max_examples=150, deadline=None)
@given(events, st.booleans())
def test_no_hang_every_arrival_is_answered_exactly_once(sequence, named):
    """Whatever happens, once the deadline timer fires nobody is left waiting."""
    clock = FakeClock()
    b = Barrier("p", list("abcd") if named else 4, deadline=3.0, clock=clock)
    pending: set[str] = set()  # arrivals told to wait and not answered yet

    def answer(out, caller=None):
        for who in out.notify:
            assert who in pending or who == caller, f"{who} answered without waiting"
            pending.discard(who)

    for kind, who in sequence:
        if kind == "tick":
            clock.t += 1.0
        elif kind == "arrive":
            out = b.arrive(who)
            answer(out, caller=who)
            if out.state == WAITING:
                pending.add(who)
        else:
            answer(b.participant_died(who))
    clock.t += 10.0
    answer(b.expire())
    assert b.state in (RELEASED, BROKEN)
    assert not pending, f"left waiting: {pending}"


# ---------------------------------------------------------------- vector clocks

nodes = st.sampled_from(["a", "b", "c"])
clocks = st.dictionaries(nodes, st.integers(min_value=0, max_value=4)).map(VectorClock)


@settings(max_examples=100, deadline=None)
@given(clocks, clocks, clocks)
def test_merge_is_commutative_associative_idempotent(x, y, z):
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(x) == x
    m = x.merge(y)
    assert x.compare(m) in (Order.BEFORE, Order.EQUAL) and y.compare(m) in (
        Order.BEFORE,
        Order.EQUAL,
    )


@settings(max_examples=100, deadline=None)
@given(clocks, clocks, clocks)
def test_happened_before_is_a_strict_partial_order(x, y, z):
    assert not x.happened_before(x)  # irreflexive
    if x.happened_before(y):
        assert not y.happened_before(x)  # antisymmetric
        assert y.compare(x) is Order.AFTER
    if x.happened_before(y) and y.happened_before(z):
        assert x.happened_before(z)  # transitive
    assert (x.compare(y) is Order.CONCURRENT) == (y.compare(x) is Order.CONCURRENT)
    assert (x.compare(y) is Order.EQUAL) == (x == y)


@settings(max_examples=50, deadline=None)
@given(clocks, nodes)
def test_increment_moves_forward(x, node):
    assert x.happened_before(x.increment(node))
    assert x.increment(node)[node] == x[node] + 1


def test_concurrent_and_equal():
    a = VectorClock().increment("a")
    b = VectorClock().increment("b")
    assert a.compare(b) is Order.CONCURRENT and a.concurrent_with(b)
    assert VectorClock({"a": 0}) == VectorClock() and hash(VectorClock({"a": 0})) == hash(
        VectorClock()
    )


@settings(max_examples=50, deadline=None)
@given(clocks)
def test_json_round_trip(x):
    assert VectorClock.from_json(orjson.loads(orjson.dumps(x.to_json()))) == x


@pytest.mark.parametrize("bad", [[1], {"a": -1}, {"a": 1.5}, {"": 1}, {"a": True}, {"a": "1"}])
def test_from_json_refuses_bad_input(bad):
    with pytest.raises(InvalidInput):
        VectorClock.from_json(bad)


def test_message_passing_matches_causality_and_lamport_is_consistent():
    """Three processes exchange messages at random; vector clocks must agree with the
    causal history tracked explicitly, and Lamport times must respect it."""
    seed = 20240611
    rng = random.Random(seed)
    procs = ["p0", "p1", "p2"]
    vc = {p: VectorClock() for p in procs}
    lam = {p: LamportClock() for p in procs}
    history = {p: frozenset() for p in procs}  # events each process has seen (its causal past)
    events = []  # (id, vector clock, lamport time, causal past)
    inflight = []
    for i in range(200):
        p = rng.choice(procs)
        if inflight and rng.random() < 0.4:
            msg_vc, msg_lam, msg_hist = inflight.pop(rng.randrange(len(inflight)))
            vc[p] = vc[p].receive(p, msg_vc)
            t = lam[p].receive(msg_lam)
            history[p] = history[p] | msg_hist
        else:
            vc[p] = vc[p].increment(p)
            t = lam[p].tick()
        events.append((i, vc[p], t, history[p]))
        history[p] = history[p] | {i}
        if rng.random() < 0.3:
            inflight.append((vc[p], t, history[p]))
    for i, vi, ti, _ in events:
        for j, vj, tj, past_j in events:
            causal = i in past_j
            assert vi.happened_before(vj) == causal, f"seed={seed}: events {i}->{j}"
            if causal:
                assert ti < tj, f"seed={seed}: lamport {i}->{j}"


def test_lamport_clock():
    c = LamportClock()
    assert c.tick() == 1 and c.receive(10) == 11 and c.receive(3) == 12 and c.tick() == 13
    with pytest.raises(InvalidInput):
        c.receive(-1)
