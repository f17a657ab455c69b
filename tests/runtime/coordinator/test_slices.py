"""Long commands in bounded slices (runtime.coordinator.slices): the budget per turn, round
robin between jobs, the bound on jobs, and errors typed for the caller."""

from __future__ import annotations

import pytest

from runtime.coordinator.slices import Slices, run_to_end
from runtime.errors import NotFound, RemoteError, Unavailable
from tests.support.helpers import FakeClock


def counting(clock: FakeClock, units: int, cost: float, log: list[str], name: str):
    """A job of ``units`` units, each moving the clock by ``cost``; returns its name."""
    for _ in range(units):
        clock.t += cost
        log.append(name)
        yield
    return name


def make(budget: float = 0.002, max_jobs: int = 4):
    clock, timers, events = FakeClock(10.0), [], []
    sl = Slices(lambda delay, fn: timers.append((delay, fn)), clock, budget_s=budget, max_jobs=max_jobs,
                emit=lambda type_, **f: events.append((type_, f)))
    return sl, clock, timers, events


def fire(timers: list) -> None:
    """One loop turn: the timers due now (the slices schedule themselves at delay 0)."""
    due, timers[:] = list(timers), []
    for delay, fn in due:
        assert delay == 0.0
        fn()


def test_a_turn_spends_at_most_the_budget_and_jobs_take_turns():
    sl, clock, timers, _ = make(budget=0.5)  # binary fractions: exact sums on the fake clock
    log, done = [], []
    for name in "ab":
        sl.start(name, counting(clock, 10, 0.25, log, name), lambda out, err: done.append((out, err)))
    t0 = clock()
    fire(timers)
    assert clock() - t0 == 0.5 and log == ["a", "b"]  # two units of a half budget
    turns = 1
    while timers:
        fire(timers)
        turns += 1
    assert turns == 11 and done == [("a", None), ("b", None)] and not sl.busy  # 10 units each, +1 to end
    assert log[:6] == ["a", "b", "a", "b", "a", "b"]


def test_a_unit_longer_than_the_budget_still_runs_one_unit_per_turn():
    sl, clock, timers, _ = make(budget=0.25)
    log, done = [], []
    sl.start("slow", counting(clock, 3, 1.0, log, "slow"), lambda out, err: done.append(out))
    for expected in (1, 2, 3):
        fire(timers)
        assert len(log) == expected
    fire(timers)
    assert done == ["slow"] and not timers


def test_more_jobs_than_the_bound_are_refused_as_unavailable():
    sl, clock, timers, _ = make(max_jobs=2)
    for name in "ab":
        sl.start(name, counting(clock, 5, 0.0, [], name), lambda out, err: None)
    closed = []

    def third():
        try:
            yield
        finally:
            closed.append(True)
    job = third()
    next(job)  # started, so that close() runs its finally
    with pytest.raises(Unavailable, match="retry"):
        sl.start("c", job, lambda out, err: None)
    assert closed == [True]


def test_errors_reach_the_caller_typed_and_the_runner_goes_on():
    sl, clock, timers, events = make()
    got = []

    def not_found():
        yield
        raise NotFound("no such trace")

    def broken():
        yield
        raise KeyError("oops")
    sl.start("nf", not_found(), lambda out, err: got.append(err))
    sl.start("bug", broken(), lambda out, err: got.append(err))
    sl.start("ok", counting(clock, 1, 0.0, [], "ok"), lambda out, err: got.append(out))
    while timers:
        fire(timers)
    assert isinstance(got[0], NotFound) and isinstance(got[1], RemoteError) and got[2] == "ok"
    assert "KeyError" in got[1].message and events[0][0] == "coordinator.job_failed"
    assert "Traceback" in events[0][1]["traceback"]


def test_without_a_timer_the_driver_runs_slices_while_busy():
    clock = FakeClock(0.0)
    sl = Slices(None, clock, budget_s=0.5)
    out = []
    sl.start("a", counting(clock, 4, 0.25, [], "a"), lambda r, e: out.append(r))
    turns = 0
    while sl.busy:
        sl.run_slice()
        turns += 1
    assert out == ["a"] and turns == 3


def test_run_to_end_returns_the_jobs_value():
    clock = FakeClock()
    assert run_to_end(counting(clock, 3, 1.0, [], "x")) == "x" and clock() == 3.0
