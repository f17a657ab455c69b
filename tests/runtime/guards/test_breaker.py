"""Circuit breaker: every transition on a fake clock, both windows, listeners, the codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from runtime.guards import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker, CircuitOpen, LocalStateStore
from runtime.guards.breaker import BreakerCodec
from tests.support.helpers import FakeClock


def make(clock, store=None, **cfg):
    cfg = {"failure_rate": 0.5, "window_calls": 10, "min_calls": 4, "open_s": 5.0, "half_open_probes": 2, **cfg}
    b = CircuitBreaker("svc", BreakerConfig(**cfg), clock=clock, store=store)
    moves = []
    b.listeners.append(lambda **f: moves.append((f["old"], f["new"], f["origin"])))
    return b, moves


def call(b, ok):
    p = b.permit()
    b.record(p, ok)


def open_it(b):
    for _ in range(4):
        call(b, False)


def test_closed_until_min_calls_then_open_on_failure_rate():
    clock = FakeClock()
    b, moves = make(clock)
    for _ in range(3):
        call(b, False)
    assert b.state() == CLOSED  # 3 failures < min_calls 4
    call(b, False)
    assert b.state() == OPEN and moves == [(CLOSED, OPEN, "local")]


def test_a_rate_below_the_threshold_stays_closed():
    b, _ = make(FakeClock(), failure_rate=0.8)
    for i in range(30):
        call(b, i % 3 == 0)  # two of every three fail: 67% < 80%
    assert b.state() == CLOSED
    b.record(b.permit(), False)
    b.record(b.permit(), False)  # the last 10 now hold 8 failures
    assert b.state() == OPEN


def test_open_refuses_with_the_time_left_then_half_opens():
    clock = FakeClock()
    b, moves = make(clock)
    open_it(b)
    clock.t += 2.0
    with pytest.raises(CircuitOpen) as info:
        b.permit()
    assert info.value.retry_after == pytest.approx(3.0) and info.value.code == "CIRCUIT_OPEN"
    clock.t += 3.0
    p = b.permit()
    assert p.probe and b.state() == HALF_OPEN
    assert moves[-1] == (OPEN, HALF_OPEN, "local")


def test_half_open_lets_only_the_probes_through_and_closes_when_all_succeed():
    clock = FakeClock()
    b, moves = make(clock)
    open_it(b)
    clock.t += 5.0
    p1, p2 = b.permit(), b.permit()
    with pytest.raises(CircuitOpen, match="probe calls in flight"):
        b.permit()
    b.record(p1, True)
    assert b.state() == HALF_OPEN
    b.record(p2, True)
    assert b.state() == CLOSED and b.stats()["calls"] == 0  # the window starts afresh
    assert moves[-1] == (HALF_OPEN, CLOSED, "local")


def test_a_failed_probe_reopens_and_restarts_the_timer():
    clock = FakeClock()
    b, moves = make(clock)
    open_it(b)
    clock.t += 5.0
    b.record(b.permit(), False)
    assert b.state() == OPEN and moves[-1] == (HALF_OPEN, OPEN, "local")
    clock.t += 4.9
    with pytest.raises(CircuitOpen):
        b.permit()
    clock.t += 0.1
    assert b.permit().probe


def test_lost_probes_are_reissued_after_open_s_and_released_ones_at_once():
    clock = FakeClock()
    b, _ = make(clock)
    open_it(b)
    clock.t += 5.0
    b.permit(), b.permit()  # their callers die: no outcome ever comes
    with pytest.raises(CircuitOpen):
        b.permit()
    clock.t += 5.0
    p = b.permit()
    assert p.probe  # the half-open state has an exit
    b.release(p)  # a cancelled probe hands its place back
    assert b.permit().probe


def test_an_outcome_from_before_a_transition_is_dropped():
    clock = FakeClock()
    b, _ = make(clock)
    slow = b.permit()  # started while closed
    open_it(b)
    clock.t += 5.0
    b.record(b.permit(), True)
    b.record(b.permit(), True)
    assert b.state() == CLOSED
    b.record(slow, False)  # arrives late, from the old closed period
    assert b.stats()["calls"] == 0


def test_count_window_forgets_the_oldest_outcomes():
    b, _ = make(FakeClock(), window_calls=4, min_calls=4)
    for ok in (False, True, True, True, True):
        call(b, ok)  # the failure has left the 4-call window
    assert b.stats() == {**b.stats(), "calls": 4, "failures": 0}


def test_time_window_ages_failures_out():
    clock = FakeClock(1000.0)
    b, _ = make(clock, window_s=10.0, min_calls=3, failure_rate=0.6)
    call(b, False)
    call(b, False)
    clock.t += 11.0  # both failures are now older than the window
    call(b, False)
    call(b, True)
    call(b, True)
    assert b.state() == CLOSED and b.stats()["calls"] == 3
    call(b, False)
    call(b, False)
    assert b.state() == OPEN


def test_another_breaker_on_the_same_store_observes_the_transition():
    clock, store = FakeClock(), LocalStateStore()
    a, _ = make(clock, store)
    other, seen = make(clock, store)
    open_it(a)
    with pytest.raises(CircuitOpen):
        other.permit()
    assert seen == [(CLOSED, OPEN, "observed")]


def test_reset_and_config_errors():
    b, _ = make(FakeClock())
    open_it(b)
    b.reset()
    assert b.state() == CLOSED
    with pytest.raises(InvalidInput, match="failure_rate"):
        BreakerConfig(failure_rate=0)
    with pytest.raises(InvalidInput, match="could never open"):
        BreakerConfig(window_calls=5, min_calls=6)
    with pytest.raises(InvalidInput, match="window_calls"):
        BreakerConfig(window_calls=10_000)


@given(st.lists(st.booleans(), max_size=40), st.booleans(), st.floats(0, 1e6))
def test_codec_round_trips(outcomes, timed, t):
    cfg = BreakerConfig(window_calls=16, min_calls=16, window_s=5.0 if timed else None)
    clock = FakeClock(t)
    b = CircuitBreaker("c", cfg, clock=clock)
    codec = BreakerCodec(cfg)
    b.state()  # creates the record
    for ok in outcomes:
        if b.state() == CLOSED:
            b.record(b.permit(), ok)
    record = b.store._records["c/breaker"]
    again = codec.unpack(codec.pack(record))
    assert again == record
    assert codec.unpack(b"\x09" + codec.pack(record)[1:]) is None  # a record of another kind
