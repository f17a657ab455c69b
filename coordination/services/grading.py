"""Grading in the running coordinator (issue 18 item 6): each result of a pool that
declares a grader (coordination.grading) is scored for real, and the score settles its
contract.  The market owns one ``Grading`` and calls it from two small hooks.

::

    market.on_attempt_end (success under contract) -- grade(task, pool, fin, done) -> True
        capability grader: a task {"input", "output", ...} of the grader's capability is
            submitted through the journal and scheduler like any other (same trace: a
            child span of the graded task's); under the market it is auctioned, contracted
            and paid like any other.  Its record, when it ends -> done(score | None, why)
        function grader: func(input, output) runs on a grading thread (the coordinator's
            loop never runs user code); a poll timer (every POLL_S while a call is out)
            brings the answer back to the loop -> done(score | None, why)
    done -> the market settles the contract with the delivered quality (completion, or a
            quality breach with its penalty) and reputation learns it

Decisions where the spec is silent
    * The contract is settled when the grade is in, at the time the result was delivered
      (the grading's own duration never makes a delivery late).  Its escrow stays held
      meanwhile; a coordinator restart in between refunds it without penalty, like every
      contract open at a restart (the grade is lost, the result is not; a grading task
      the journal resumes runs to its end, and its score is applied to nothing).
    * A quality breach does not re-run the task: its result is recorded (exactly once) and
      the buyer has it; the breach is what the agent pays and what reputation learns.
    * Grading tasks themselves are never graded (no grader of graders: a chain would
      never end), and carry ``max_attempts = 2`` and a deadline of the grader's
      ``timeout_s``; a safety timer at timeout_s + 1 s ends any grade still out.
    * A function grader runs in the coordinator process on one daemon thread: keep it
      cheap (exact match, a regex, a schema check); anything heavy is a grader pool.  A
      call past ``timeout_s`` is abandoned with its thread (Python cannot kill a thread)
      and a new thread takes the next calls; after ``MAX_ABANDONED`` (4) hung threads,
      function grades are refused (unknown) until the daemon restarts, so a grader that
      always hangs costs at most four threads.  The function is imported on that thread
      on its first call (a module next to agora.toml is found as agents' modules are):
      an import error is a failed grade, reported, not a coordinator that cannot start.
    * A failed grading (the task failed or ran out of time, the function raised or timed
      out, the answer is not a score in [0, 1]) leaves the quality unknown and is told as
      ``market.grade_failed``: the grader's fault is not the graded agent's.

Events (in the graded task's trace): ``market.grading`` (the grading started: grader,
grading task id), ``market.graded`` (quality, min_quality), ``market.grade_failed`` (why),
``market.quality_capped`` (a bid's claim capped by the agent's measured record).
"""

from __future__ import annotations

import importlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from coordination.contracts import QualityTerms
from coordination.grading import GraderSpec, capped, graders, grading_input, parse_score
from runtime.errors import AgoraError, InvalidInput
from runtime.tasks.scheduler import TaskRun
from runtime.tasks.task import parse_task

__all__ = ["Grading", "FunctionRunner", "POLL_S", "MAX_ABANDONED"]

#: How often the loop looks for a function grader's answer while one is out.
POLL_S = 0.005
#: Hung grading threads tolerated before function grades are refused.
MAX_ABANDONED = 4

#: ``done(quality or None, why or None)``
Done = Callable[[float | None, str | None], None]


@dataclass
class _Job:
    key: int
    deadline: float
    grader: GraderSpec
    result: list[Any] = field(default_factory=list)  # [("ok", value) | ("error", message)]
    dropped: bool = False   # set by the loop when it gave up on the job (the thread skips it)


@dataclass
class _Worker:
    """One grading thread, its queue, and the job it is in (written by the thread)."""

    queue: queue.SimpleQueue[Any]
    thread: threading.Thread | None = None
    current: _Job | None = None


class FunctionRunner:
    """Calls ``module:func`` graders on a daemon thread; the loop collects answers with
    ``poll``.  A thread stuck in a call past its deadline is abandoned and replaced."""

    def __init__(self, config_dir: Any = None) -> None:
        self.config_dir = None if config_dir is None else str(config_dir)
        self._worker: _Worker | None = None
        self.abandoned = 0
        self.jobs: dict[int, _Job] = {}
        self.threads: list[threading.Thread] = []

    def submit(self, job: _Job, args: tuple[Any, Any]) -> None:
        if self._worker is None:
            w = self._worker = _Worker(queue.SimpleQueue())
            w.thread = threading.Thread(target=self._work, args=(w,), name="agora-grader", daemon=True)
            w.thread.start()
            self.threads.append(w.thread)
        self.jobs[job.key] = job
        self._worker.queue.put((job, args))

    def _work(self, w: _Worker) -> None:
        while True:
            item = w.queue.get()
            if item is None:
                return
            job, (inp, out) = item
            if job.dropped:
                continue
            w.current = job
            try:
                job.result.append(("ok", _function(job.grader.function or "", self.config_dir)(inp, out)))
            except BaseException as e:  # noqa: BLE001 - a user grader's failure is a failed grade
                job.result.append(("error", f"{type(e).__name__}: {e}"))
            w.current = None

    def poll(self, now: float) -> list[tuple[_Job, str, Any]]:
        """Finished or timed-out jobs: (job, "ok" | "error", value or message)."""
        out = []
        for key, job in list(self.jobs.items()):
            if job.result:
                out.append((job, *job.result[0]))
            elif now >= job.deadline:
                job.dropped = True
                out.append((job, "error", f"no answer from the grader function within {job.grader.timeout_s} s"))
            else:
                continue
            del self.jobs[key]
        w = self._worker
        stuck = w.current if w is not None else None
        if stuck is not None and not stuck.result and now >= stuck.deadline:
            self._abandon()  # the thread is in the user's function past its deadline
        return out

    def _abandon(self) -> None:
        """The next calls go to a new thread; the jobs queued behind the stuck call move to it."""
        if self._worker is None:
            return
        old, self._worker, self.abandoned = self._worker, None, self.abandoned + 1
        pending = []
        while True:
            try:
                pending.append(old.queue.get_nowait())
            except queue.Empty:
                break
        old.queue.put(None)  # the old thread ends if it ever returns
        for job, args in pending:
            if job.key in self.jobs and not job.dropped and self.abandoned < MAX_ABANDONED:
                self.submit(job, args)

    def close(self, join_s: float = 0.0) -> None:
        """Stop the grading thread (after its current call); wait up to ``join_s`` for each."""
        if self._worker is not None:
            self._worker.queue.put(None)
            self._worker = None
        for t in self.threads:
            t.join(join_s)
        self.threads = [t for t in self.threads if t.is_alive()]


def _function(path: str, config_dir: str | None) -> Callable[[Any, Any], Any]:
    """Import ``module:func`` (looked for on the path, then in the config's directory)."""
    mod, _, name = path.rpartition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError:
        for d in (config_dir, os.getcwd()):
            if d and d not in sys.path:
                sys.path.append(d)
        module = importlib.import_module(mod)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InvalidInput(f"grader function {path!r}: module {mod!r} has no callable {name!r}")
    return fn


class Grading:
    """The market's grader driver: ``grade`` starts a grading, ``cap`` caps a claim."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.specs = graders(getattr(coord.cfg, "pools", ()))
        self.grading_tasks: set[str] = set()   # task ids of grading tasks (never graded)
        self.out: dict[int, Done] = {}          # grading key -> its callback, until it fires
        self._keys = iter(range(1, 1 << 62))
        self.functions = FunctionRunner(getattr(coord.cfg, "config_dir", None))
        self._polling = False

    def terms(self, pool: str) -> QualityTerms:
        """A contract's quality terms for an agent of ``pool``: its grader's min_quality
        (no grader: nothing can be measured, so nothing is promised)."""
        spec = self.specs.get(pool)
        return QualityTerms(spec.min_quality) if spec is not None else QualityTerms()

    def cap(self, reputation: Any, agent: str, capability: str, claimed: float, span: Any,
            auction_id: str) -> float:
        """The claim an offer is evaluated with, capped by the agent's measured record."""
        record = reputation.graded(agent, capability)
        quality = capped(claimed, record)
        if quality < claimed:
            self.coord.emit("market.quality_capped", span, auction_id=auction_id, agent=agent,
                            capability=capability, claimed=claimed, measured=round(quality, 4),
                            graded=record[0])
        return quality

    def grade(self, task: Any, pool: str, fin: Any, done: Done) -> bool:
        """Start grading ``task``'s result if its agent's pool has a grader; False if not
        (the delivered quality is then unknown).  ``done`` is called exactly once."""
        spec = self.specs.get(pool)
        if spec is None or task.id in self.grading_tasks:
            return False
        rec = fin.record if getattr(fin, "record", None) is not None else self.coord.journal.get(task.id)
        key = next(self._keys)
        self.out[key] = done
        payload = grading_input(task.capability, task.id, task.input, rec.result)  # a finish's record has no input
        self.coord.call_later(spec.timeout_s + 1.0, partial(self._finish, key, None,
                                                            f"no grade within {spec.timeout_s + 1.0} s"))
        if spec.capability is not None:
            self._by_task(key, spec, task, payload)
        elif self.functions.abandoned >= MAX_ABANDONED:
            self._finish(key, None, f"{MAX_ABANDONED} grader threads hung: function grades are off "
                                    "until the daemon restarts")
        else:
            job = _Job(key, self.coord.clock() + spec.timeout_s, spec)
            self.functions.submit(job, (payload["input"], payload["output"]))
            self.coord.emit("market.grading", task.trace, task_id=task.id, grader=spec.name)
            self._poll_soon()
        return True

    def _by_task(self, key: int, spec: GraderSpec, task: Any, payload: dict[str, Any]) -> None:
        """Submit the grading task as any task is accepted (journal, then scheduler)."""
        assert spec.capability is not None
        try:
            self.coord.scheduler.admit(spec.capability)  # nobody serves it: UNAVAILABLE
            ts = parse_task({"capability": spec.capability, "input": payload,
                             "options": {"max_attempts": 2, "deadline": spec.timeout_s}}, now=time.time(),
                            capabilities=self.coord.known_capabilities)  # no such capability: refused
            trace = task.trace.child()
            tid = self.coord.journal.submit(ts, trace_id=trace.trace_id)
        except AgoraError as e:
            self._finish(key, None, f"the grading task could not be submitted: {e.message}")
            return
        self.grading_tasks.add(tid)
        run = TaskRun(tid, spec.capability, payload, trace, max_attempts=2,
                      deadline=self.coord.clock() + spec.timeout_s)
        self.coord.scheduler.enqueue(run)
        self.coord.emit("task.submitted", trace, task_id=tid, capability=spec.capability)
        self.coord.emit("market.grading", task.trace, task_id=task.id, grader=spec.name, grading_task=tid)
        self.coord.wait_for(tid, partial(self._task_ended, key, tid))

    def _task_ended(self, key: int, tid: str, rec: Any) -> None:
        self.grading_tasks.discard(tid)
        if rec.state != "succeeded":
            error = (rec.error or {}).get("message") if isinstance(rec.error, dict) else rec.error
            self._finish(key, None, f"grading task {tid} ended {rec.state}" + (f": {error}" if error else ""))
            return
        self._score(key, rec.result)

    def _score(self, key: int, answer: Any) -> None:
        try:
            score = parse_score(answer)
        except InvalidInput as e:
            self._finish(key, None, e.message)
            return
        self._finish(key, score, None)

    def _finish(self, key: int, quality: float | None, why: str | None) -> None:
        done = self.out.pop(key, None)
        if done is not None:  # (the first of answer and safety timer wins)
            done(quality, why)

    def _poll_soon(self) -> None:
        if not self._polling:
            self._polling = True
            self.coord.call_later(POLL_S, self._poll)

    def _poll(self) -> None:
        self._polling = False
        for job, kind, value in self.functions.poll(self.coord.clock()):
            if kind == "ok":
                self._score(job.key, value)
            else:
                self._finish(job.key, None, f"grader {job.grader.name} failed: {value}")
        if self.functions.jobs:
            self._poll_soon()
