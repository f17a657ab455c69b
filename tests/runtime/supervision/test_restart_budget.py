"""OTP's restart intensity as a pure function: ``add_restart``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runtime.supervision.restart_budget import add_restart


def test_intensity_restarts_in_the_period_are_allowed_and_one_more_is_not():
    restarts: tuple[float, ...] = ()
    for t in (0.0, 1.0, 2.0):
        ok, restarts = add_restart(restarts, t, intensity=3, period=5.0)
        assert ok
    ok, restarts = add_restart(restarts, 3.0, intensity=3, period=5.0)
    assert not ok and restarts == (0.0, 1.0, 2.0, 3.0)


def test_old_restarts_fall_out_of_the_window():
    ok, restarts = add_restart((0.0, 1.0, 2.0), 6.5, intensity=3, period=5.0)
    assert ok and restarts == (2.0, 6.5)


def test_a_restart_exactly_one_period_ago_is_outside_the_window():
    ok, restarts = add_restart((0.0,), 5.0, intensity=1, period=5.0)
    assert ok and restarts == (5.0,)


def test_otp_default_one_in_five_seconds():
    ok, r = add_restart((), 0.0, intensity=1, period=5.0)
    assert ok
    assert not add_restart(r, 4.9, intensity=1, period=5.0)[0]
    assert add_restart(r, 5.1, intensity=1, period=5.0)[0]


def test_intensity_zero_never_restarts():
    assert add_restart((), 0.0, intensity=0, period=5.0) == (False, (0.0,))


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=30), st.integers(0, 10),
       st.floats(0.1, 50, allow_nan=False))
def test_allowed_exactly_when_the_window_holds_at_most_intensity(times, intensity, period):
    times = sorted(times)
    restarts: tuple[float, ...] = ()
    for i, now in enumerate(times):
        ok, restarts = add_restart(restarts, now, intensity, period)
        in_window = [t for t in times[: i + 1] if now - t < period]
        assert ok == (len(in_window) <= intensity)
        assert all(now - t < period for t in restarts) and restarts[-1] == now
        if not ok:
            break  # the supervisor gives up here: nothing after it is counted
