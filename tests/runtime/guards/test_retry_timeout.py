"""Retry policy (full jitter, Retry-After, retryable only) and call timeouts, on fake clocks."""

from __future__ import annotations

import asyncio
import email.utils
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput, Unavailable
from runtime.guards import CallTimeout, CircuitOpen, Deadline, RetryPolicy, ServiceError, parse_retry_after
from runtime.guards.errors import is_retryable
from runtime.guards.timeout import current_deadline, run_async, run_sync
from tests.support.helpers import FakeClock


@given(st.integers(0, 2**32), st.integers(1, 12), st.floats(0.001, 2.0), st.floats(0.01, 30.0))
def test_full_jitter_stays_under_the_exponential_ceiling(seed, attempt, base, cap):
    policy = RetryPolicy(max_attempts=20, base_s=base, cap_s=cap, rng=random.Random(seed))
    d = policy.backoff(attempt)
    assert 0.0 <= d <= min(cap, base * 2 ** (attempt - 1))


def test_jitter_is_seeded_and_spread():
    a = [RetryPolicy(rng=random.Random(7)).backoff(4) for _ in range(1)]
    b = [RetryPolicy(rng=random.Random(7)).backoff(4) for _ in range(1)]
    assert a == b
    policy = RetryPolicy(base_s=1.0, cap_s=100.0, rng=random.Random(3))
    draws = [policy.backoff(3) for _ in range(200)]
    assert min(draws) < 1.0 and max(draws) > 3.0  # full jitter covers [0, 4], not a fixed step


def test_gives_up_after_max_attempts_and_on_non_retryable_errors():
    policy = RetryPolicy(max_attempts=3, rng=random.Random(0))
    err = ConnectionError("reset")
    assert policy.next_delay(1, err) is not None
    assert policy.next_delay(2, err) is not None
    assert policy.next_delay(3, err) is None
    assert policy.next_delay(1, InvalidInput("bad")) is None
    assert policy.next_delay(1, ValueError("bug")) is None
    assert policy.next_delay(1, CircuitOpen("open", retry_after=1.0)) is None


def test_retry_after_is_a_floor_and_a_long_one_gives_up():
    policy = RetryPolicy(max_attempts=5, base_s=0.01, cap_s=0.02, max_retry_after_s=10, rng=random.Random(0))
    assert policy.next_delay(1, ServiceError("429", retryable=True, retry_after=2.5)) == 2.5
    assert policy.next_delay(1, ServiceError("429", retryable=True, retry_after=11)) is None


def test_errors_marked_retryable_or_not():
    assert is_retryable(Unavailable("down")) and is_retryable(TimeoutError()) and is_retryable(ConnectionError())
    assert not is_retryable(KeyError("x"))
    assert not is_retryable(ServiceError("400", retryable=False))
    flagged = ValueError("flaky")
    flagged.retryable = True  # type: ignore[attr-defined]
    assert is_retryable(flagged)
    with pytest.raises(InvalidInput, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_parse_retry_after_seconds_dates_and_garbage():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(" 0.25 ", now) == 0.25
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-3", "nan", "Wed, 99 Foo 2024"):
        assert parse_retry_after(bad, now) is None


def test_deadline_on_a_fake_clock_and_late_sync_call():
    clock = FakeClock(100.0)
    d = Deadline(clock, 2.0)
    assert d.remaining() == 2.0 and not d.expired()

    def slow():
        assert current_deadline() is d  # published for the call to honour
        clock.t += 2.5
        return "late"
    with pytest.raises(CallTimeout, match="2 s"):
        run_sync(slow, d)
    assert current_deadline() is None
    assert run_sync(lambda: "quick", Deadline(clock, 1.0)) == "quick"


def test_async_timeout_cancels_and_own_timeouts_pass_through():
    async def main():
        never = asyncio.Event()
        with pytest.raises(CallTimeout):
            await run_async(never.wait, Deadline(asyncio.get_running_loop().time, 0.01))

        async def own():
            raise TimeoutError("the callee's own")
        with pytest.raises(TimeoutError, match="own") as info:
            await run_async(own, Deadline(asyncio.get_running_loop().time, 5.0))
        assert not isinstance(info.value, CallTimeout)
        assert await run_async(lambda: asyncio.sleep(0, "ok"), None) == "ok"
    asyncio.run(main())
