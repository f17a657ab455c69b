"""Long work on the loop in bounded slices: event-log scans for ``trace``/``events``,
``ps``'s per-process reads.

A job is a generator that does a small unit of work between ``yield``s and ``return``s its
result.  ``Slices`` runs the jobs it holds round robin, for at most ``budget_s`` per turn
in all, so a job of any length adds at most ``budget_s`` (plus one unit) to a turn:
requests keep being served between slices and the loop's latency stays bounded (issue 15,
item 4).  An idle loop runs slice after slice, so a lone scan runs at nearly full speed.

Who runs the slices: the coordinator calls ``run_slice()`` at the end of each turn, after
the turn's replies went out (a ping that came with a slice is answered before it), and
does not sleep while ``busy``; without such a driver (``call_later`` given), a timer due
at once runs each slice.

Why slices and not a thread: the coordinator's work is Python; a scanning thread would hold
the GIL for up to the 5 ms switch interval each time the loop wants it back (several times
per turn), and the loop would pay that in every turn instead of a known budget.

Bounds: at most ``max_jobs`` at once (one more is refused with UNAVAILABLE, retryable);
memory is the jobs' own (each scan keeps at most its ``limit`` events).  A job that raises
an ``AgoraError`` fails its caller with it; any other exception is reported to the caller
as INTERNAL with its type and message (the loop goes on).
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from runtime.errors import AgoraError, RemoteError, Unavailable

__all__ = ["Slices", "Job", "SLICE_S", "MAX_JOBS", "run_to_end"]

SLICE_S = 0.002  # per turn, all jobs together: a tenth of the 20 ms loop p99 target
MAX_JOBS = 16    # scans at once; more clients than this asking at once retry

#: A job: yields between units of work, returns its result.
Job = Generator[None, None, Any]
#: ``on_done(result, error)``: exactly one of them is None.
OnDone = Callable[[Any, "AgoraError | None"], None]


def run_to_end(job: Job) -> Any:
    """A job's result without slicing (no loop: the CLI reading the log itself, tests)."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


class Slices:
    """Jobs run in slices from the host's timers (``call_later(0, ...)``)."""

    def __init__(self, call_later: Callable[[float, Callable[[], None]], None] | None, clock: Callable[[], float],
                 budget_s: float = SLICE_S, max_jobs: int = MAX_JOBS,
                 emit: Callable[..., None] | None = None) -> None:
        self.call_later, self.clock, self.budget_s, self.max_jobs = call_later, clock, budget_s, max_jobs
        self.emit = emit
        self.jobs: deque[tuple[str, Job, OnDone]] = deque()
        self._scheduled = False

    def start(self, name: str, job: Job, on_done: OnDone) -> None:
        """Run ``job`` from the next turn on; UNAVAILABLE at once if ``max_jobs`` run."""
        if len(self.jobs) >= self.max_jobs:
            job.close()
            raise Unavailable(f"{len(self.jobs)} long commands (trace, events, ps) are already running",
                              hint="retry in a moment")
        self.jobs.append((name, job, on_done))
        self._schedule()

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    def _schedule(self) -> None:
        if self.call_later is not None and not self._scheduled and self.jobs:
            self._scheduled = True
            self.call_later(0.0, self.run_slice)

    def run_slice(self) -> None:
        """Round robin over the jobs until the budget is spent (one unit each at least)."""
        self._scheduled = False
        end = self.clock() + self.budget_s
        while self.jobs:
            name, job, on_done = self.jobs[0]
            if self._step(name, job, on_done):
                self.jobs.popleft()
            else:
                self.jobs.rotate(-1)
            if self.clock() >= end:
                break
        self._schedule()

    def _step(self, name: str, job: Job, on_done: OnDone) -> bool:
        """One unit of ``job``; True when it ended (and ``on_done`` was called)."""
        try:
            next(job)
            return False
        except StopIteration as stop:
            on_done(stop.value, None)
        except AgoraError as e:
            on_done(None, e)
        except Exception as e:  # noqa: BLE001 -- a broken job must not take the loop down
            if self.emit is not None:
                self.emit("coordinator.job_failed", job=name, error=f"{type(e).__name__}: {e}",
                          traceback=traceback.format_exc(limit=20))
            on_done(None, RemoteError(f"{name} failed inside the daemon: {type(e).__name__}: {e}",
                                      hint="a bug: the event log has the traceback (coordinator.job_failed)"))
        return True
