"""Token-bucket limiter on a fake clock: waits are reservations; requests and token budgets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from runtime.guards import LimiterConfig, RateLimiter, Throttled
from tests.support.helpers import FakeClock


def test_a_full_bucket_then_one_wait_per_request():
    clock = FakeClock(10.0)
    lim = RateLimiter("s", LimiterConfig(rate=2.0, burst=3), clock=clock)
    assert [lim.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.acquire() == pytest.approx(0.5)
    assert lim.acquire() == pytest.approx(1.0)  # reserved behind the previous caller
    clock.t += 1.0
    assert lim.acquire() == pytest.approx(0.5)


def test_refill_is_capped_at_the_burst():
    clock = FakeClock()
    lim = RateLimiter("s", LimiterConfig(rate=10.0, burst=2), clock=clock)
    lim.acquire()
    clock.t += 100.0
    assert [lim.acquire() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_token_budget_waits_for_big_calls_and_charge_settles():
    clock = FakeClock()
    lim = RateLimiter("llm", LimiterConfig(rate=100.0, tokens_per_s=1000.0, token_burst=1000), clock=clock)
    assert lim.acquire(tokens=800) == 0.0
    assert lim.acquire(tokens=1200) == pytest.approx(1.0)  # 200 left, 1000 short: one second
    clock.t += 1.0
    lim.charge(-500)  # the last call used 500 fewer than estimated
    assert lim.acquire(tokens=400) == pytest.approx(0.0)
    lim.charge(2000)  # more than estimated: a debt the next caller waits for
    assert lim.acquire(tokens=1) == pytest.approx(1.901)  # 100 left - 2000 = -1900; +1 needed


def test_max_wait_throttles_without_reserving():
    clock = FakeClock()
    lim = RateLimiter("s", LimiterConfig(rate=1.0, burst=1), clock=clock)
    assert lim.try_acquire()
    assert not lim.try_acquire()
    with pytest.raises(Throttled) as info:
        lim.acquire(max_wait=0.5)
    assert info.value.retry_after == pytest.approx(1.0)
    assert lim.acquire(max_wait=1.0) == pytest.approx(1.0)  # nothing was reserved by the refusals


def test_unlimited_and_bad_config():
    lim = RateLimiter("s", LimiterConfig(), clock=FakeClock())
    assert not lim.active and lim.acquire(tokens=10**9) == 0.0
    for bad in ({"rate": 0}, {"rate": -1}, {"tokens_per_s": "fast"}, {"burst": True}):
        with pytest.raises(InvalidInput):
            LimiterConfig(**bad)


@given(st.lists(st.floats(0.0, 0.5), min_size=1, max_size=60), st.floats(0.5, 50), st.integers(1, 5))
def test_granted_moments_never_exceed_burst_plus_rate(gaps, rate, burst):
    """Whatever the arrivals, over any span the grants (arrival + wait) fit the bucket."""
    clock = FakeClock(5.0)
    lim = RateLimiter("s", LimiterConfig(rate=rate, burst=burst), clock=clock)
    grants = []
    for gap in gaps:
        clock.t += gap
        grants.append(clock.t + lim.acquire())
    grants.sort()
    for i in range(len(grants)):
        for j in range(i, len(grants)):
            assert j - i + 1 <= burst + rate * (grants[j] - grants[i]) + 1e-6
