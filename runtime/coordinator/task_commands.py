"""Task and pipeline commands of the control channel: submit (with mailbox back-pressure),
results and waits, pipelines, listings, cancel.

A submission is validated whole, then either accepted in this turn (durable at the turn's
COMMIT, acknowledged after it) or parked until its capability's mailbox has room, in
messages and in bytes, for at most ``wait_s`` (then MAILBOX_FULL).  Nothing is accepted
that is not in the journal, and nothing in the journal is dropped.

Every wait here is bounded: ``result``/``pipeline_result``/``wait_all`` without a
``timeout_s`` wait at most ``MAX_WAIT_S`` (then DEADLINE_EXCEEDED; the task goes on).
``cancel`` takes a task or a pipeline id and says what happened (``outcome``):
``cancelled`` (it was queued or waiting), ``stopping`` (a running attempt was asked to
stop), ``already_ended`` (nothing to do; ``state`` says how it ended).  ``retry``
re-drives dead-lettered or failed tasks (``Journal.redrive``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import orjson

from runtime.coordinator.command_kit import (
    MAX_ID,
    Deferred,
    arg,
    int_arg,
    list_arg,
    num_arg,
    only,
    str_arg,
)
from runtime.errors import DeadlineExceeded, InvalidInput, MailboxFull
from runtime.observability.trace_context import TraceContext
from runtime.tasks.task import TERMINAL, parse_task

#: The longest a single server-side wait lasts when the caller gave no bound (a client
#: that wants longer asks again: `agora result --wait` does).
MAX_WAIT_S = 3600.0
#: ``submit`` with ``ack``: how long a task may run before its id is sent ahead of its
#: result (a trivial task's round trip stays one frame each way).
ACK_AFTER_S = 0.005

__all__ = ["TaskCommands"]


class TaskCommands:
    """Registered into the coordinator's command table by ``Commands``."""

    def __init__(self, commands: Any) -> None:
        self.commands = commands
        self.coord = commands.coord
        self.pending_submits: list[tuple[Deferred, list[Any], list[int], TraceContext]] = []
        commands.extend({
            "submit": self.submit, "submit_many": self.submit_many, "result": self.result,
            "wait_all": self.wait_all, "tasks": self.tasks, "attempts": self.attempts,
            "cancel": self.cancel, "pipeline": self.pipeline, "pipeline_result": self.pipeline_result,
            "retry": self.retry, "journal_stats": self.journal_stats,
        })

    def submit(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        """One task; with ``result: true`` the reply is the finished task, not its id
        (one request for the whole round trip; the id is durable before the task runs).
        With ``ack: true`` as well, a ``more`` frame ``{"id": ...}`` comes first once the
        task is durable, if it is still running ``ACK_AFTER_S`` later (a future then knows
        its task id long before the task ends)."""
        only(args, "task", "wait_s", "result", "ack")
        want_result = arg(args, "result", bool, False)
        ack = want_result and arg(args, "ack", bool, False)
        d = self.submit_many({"tasks": [arg(args, "task", dict)],
                              "wait_s": num_arg(args, "wait_s", 5.0, hi=3600.0)}, trace)
        if not isinstance(d, Deferred):
            return self._then_result(d[0], ack) if want_result else d[0]
        inner = Deferred()
        d.bind(lambda msg: inner._finish(msg) if "ok" not in msg else (
            self._then_result(msg["ok"][0], ack, inner) if want_result
            else inner.resolve(msg["ok"][0])))
        return inner

    def _then_result(self, tid: str, ack: bool = False, into: Deferred | None = None) -> Deferred:
        """The finished task's record; with ``ack`` a ``more`` frame ``{"id": ...}`` first
        if the task is still running ``ACK_AFTER_S`` after it became durable
        (``runtime.api`` learns the id of a future that way)."""
        d = self._result_of(tid)
        out = into if into is not None else d
        if into is not None:
            d.bind(into._finish)
        if ack:  # a task that ends sooner carries its id in the reply: no frame, no wake-up
            self.coord.call_later(ACK_AFTER_S, lambda: out.notify({"id": tid}))
        return out

    def _result_of(self, tid: str) -> Deferred:
        d = Deferred()
        if tid not in self.coord.scheduler.tasks:  # live tasks are not read back
            rec = self.coord.journal.get(tid)
            if rec.state in TERMINAL:  # an idempotency key named a task that already ended
                d.resolve(_public(rec))
                return d
        self.coord.wait_for(tid, lambda r: d.resolve(_public(r)))
        return d

    def wait_all(self, args: dict[str, Any], trace: Any) -> Any:
        """Reply when every task of ``ids`` has ended: counts by final state."""
        only(args, "ids", "timeout_s")
        ids = list_arg(args, "ids")
        counts: dict[str, int] = {}
        pending = set()
        for i, tid in enumerate(ids):
            if not isinstance(tid, str) or not 0 < len(tid) <= MAX_ID:
                raise InvalidInput(f"argument 'ids': item {i} must be a task id (a string of "
                                   f"1-{MAX_ID} characters), got {type(tid).__name__}", field="ids")
        states = self.coord.journal.states(ids)  # one query per 500 ids, no record decoded
        for tid in ids:
            if states[tid] in TERMINAL:
                counts[states[tid]] = counts.get(states[tid], 0) + 1
            else:
                pending.add(tid)
        if not pending:
            return counts
        timeout = num_arg(args, "timeout_s", MAX_WAIT_S, hi=MAX_WAIT_S)
        d = self.commands._defer(timeout, lambda: DeadlineExceeded(
            f"{len(pending)} of {len(ids)} tasks still running after {timeout} s"))

        def one_done(rec: Any) -> None:
            counts[rec.state] = counts.get(rec.state, 0) + 1
            pending.discard(rec.id)
            if not pending:
                d.resolve(counts)
        for tid in pending:
            self.coord.wait_for(tid, one_done)
        return d

    def submit_many(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        """Validate all, then admit (durable at the end of this turn) or wait for room."""
        only(args, "tasks", "wait_s", "results")
        raw = list_arg(args, "tasks", max_len=10_000)
        if arg(args, "results", bool, False):
            return self._streamed(self.submit_many({k: v for k, v in args.items() if k != "results"}, trace))
        wait_s = float(num_arg(args, "wait_s", 5.0, hi=3600.0))
        now, caps = time.time(), self.commands._known_caps()
        specs = [parse_task(t, now=now, capabilities=caps) for t in raw]
        for spec in specs:  # a capability with no live pool: UNAVAILABLE, or parked
            self.coord.scheduler.admit(spec.capability)
        sizes = [len(orjson.dumps(spec.input)) for spec in specs]  # mailbox bytes
        trace = trace or TraceContext.new_trace()
        if self._has_room(specs, sizes):
            return self._accept(specs, sizes, trace)
        d = self.commands._defer(wait_s, lambda: MailboxFull(
            f"the mailbox for {specs[0].capability!r} stayed full for {wait_s} s",
            queued=self.coord.scheduler.queued(specs[0].capability),
            queued_bytes=self.coord.scheduler.queued_bytes.get(specs[0].capability, 0)))
        self.pending_submits.append((d, specs, sizes, trace))
        return d

    def _streamed(self, accepted: Any) -> Deferred:
        """``submit_many`` with ``results``: a ``more`` frame ``{"ids": [...]}`` once the
        tasks are durable, then frames of the tasks that ended in a turn (one per turn):
        ``{"ok": [[id, result], ...], "done": [records]}``, successes as pairs (all a
        caller of ``map`` needs, and the bulk of the frames: a whole record per task cost
        the coordinator and the client about 20 us each), every other end as its whole
        record; then ``{"count": n}``.  ``runtime.api``'s ``map`` reads this: one request
        per chunk instead of one wait per task.  Bounded like ``result``."""
        out = self.commands._defer(MAX_WAIT_S, lambda: DeadlineExceeded(
            f"tasks still running after {MAX_WAIT_S} s", hint="ask for each with `result`"))
        if isinstance(accepted, Deferred):  # parked for mailbox room: stream once admitted
            accepted.bind(lambda msg: self._stream_into(out, msg["ok"]) if "ok" in msg else out._finish(msg))
        else:
            self._stream_into(out, accepted)
        return out

    def _stream_into(self, out: Deferred, ids: list[str]) -> None:
        out.notify({"ids": ids})
        ok: list[list[Any]] = []
        done: list[dict[str, Any]] = []
        left = [len(ids)]

        def flush() -> None:
            frame = {"ok": list(ok), "done": list(done)}
            ok.clear()
            done.clear()
            out.notify(frame)
            if not left[0]:
                out.resolve({"count": len(ids)})

        def one(rec: Any) -> None:
            left[0] -= 1
            if rec.state == "succeeded":
                ok.append([rec.id, rec.result])
            else:
                done.append(_public(rec))
            if len(ok) + len(done) == 1:  # the first of this turn: flush when the turn's timers run
                self.coord.call_later(0.0, flush)
        for tid in ids:
            rec = None if tid in self.coord.scheduler.tasks else self.coord.journal.get(tid)
            if rec is not None and rec.state in TERMINAL:
                one(rec)
            else:
                self.coord.wait_for(tid, one)
        if not ids:
            out.resolve({"count": 0})

    def _mailbox_limit(self, capability: str) -> tuple[int, int]:
        pools = [p for p in self.coord.cfg.pools if capability in p.capabilities] or list(self.coord.cfg.pools)
        return (sum(p.mailbox_messages for p in pools) or 1000, sum(p.mailbox_bytes for p in pools) or 1 << 24)

    def _has_room(self, specs: list[Any], sizes: list[int]) -> bool:
        """Bounded in messages and in bytes (of input JSON), per capability's pools."""
        need: dict[str, list[int]] = {}
        for spec, size in zip(specs, sizes):
            n = need.setdefault(spec.capability, [0, 0])
            n[0] += 1
            n[1] += size
        sched = self.coord.scheduler
        for cap, (msgs, size) in need.items():
            max_msgs, max_bytes = self._mailbox_limit(cap)
            if sched.queued(cap) + msgs > max_msgs:
                return False
            queued_bytes = sched.queued_bytes.get(cap, 0)
            if queued_bytes and queued_bytes + size > max_bytes:
                return False  # (an empty mailbox takes one oversized batch: no deadlock)
        return True

    def _admit_pending(self) -> None:
        still = []
        for d, specs, sizes, trace in self.pending_submits:
            if d.done:
                continue
            if self._has_room(specs, sizes):
                d.resolve(self._accept(specs, sizes, trace))
            else:
                still.append((d, specs, sizes, trace))
        self.pending_submits = still

    def _accept(self, specs: list[Any], sizes: list[int], trace: TraceContext) -> list[str]:
        traces = [trace if len(specs) == 1 else trace.child() for _ in specs]
        journal, sched = self.coord.journal, self.coord.scheduler
        ids = journal.submit_many(specs, trace_ids=[t.trace_id for t in traces])
        for spec, tid, tr, size in zip(specs, ids, traces, sizes):
            if spec.idempotency_key is None:  # certainly new: no need to read it back
                task = self._new_run(tid, spec, tr, size)
            else:
                rec = journal.get(tid)
                if rec.state != "queued" or tid in sched.tasks:
                    continue  # the key named a task already known
                task = self.task_run(rec, tr)
            sched.enqueue(task)
            self.coord.emit("task.submitted", tr, task_id=tid, capability=spec.capability)
        return ids

    @staticmethod
    def _new_run(tid: str, spec: Any, trace: TraceContext, size: int) -> Any:
        from runtime.tasks.scheduler import TaskRun
        deadline = time.monotonic() + (spec.deadline - time.time()) if spec.deadline else None
        return TaskRun(tid, spec.capability, spec.input, trace, max_attempts=spec.max_attempts,
                       priority=spec.priority, deadline=deadline, size=size, timeout_s=spec.timeout_s,
                       retryable=spec.retryable, fatal=spec.fatal)

    def task_run(self, rec: Any, trace: TraceContext | None = None) -> Any:
        """The scheduler's view of a journal record (deadline moved to the monotonic clock)."""
        from runtime.tasks.scheduler import TaskRun
        deadline = time.monotonic() + (rec.deadline - time.time()) if rec.deadline else None
        # no span given (a pipeline step unblocked later, a task resumed after a restart):
        # a pipeline step's span is a child of its pipeline's span (see pipeline())
        tr = trace or TraceContext(rec.trace_id or os.urandom(8).hex(), os.urandom(8).hex(),
                                   rec.trace_id[:16] if rec.pipeline_id and rec.trace_id else None)
        opts = rec.options or {}
        return TaskRun(rec.id, rec.capability, rec.input, tr, max_attempts=rec.max_attempts,
                       priority=rec.priority, deadline=deadline, pipeline_id=rec.pipeline_id,
                       attempts=rec.attempts, timeout_s=opts.get("timeout_s"),
                       retryable=tuple(opts.get("retryable") or ()), fatal=tuple(opts.get("fatal") or ()))

    def result(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id", "wait", "timeout_s")
        tid = str_arg(args, "id")
        rec = self.coord.journal.get(tid)
        if rec.state in TERMINAL or not arg(args, "wait", bool, False):
            return self._waiting(_public(rec))
        timeout = num_arg(args, "timeout_s", MAX_WAIT_S, hi=MAX_WAIT_S)
        d = self.commands._defer(timeout, lambda: DeadlineExceeded(
            f"task {tid} has not finished within {timeout} s", hint="it goes on; ask again later"))
        self.coord.wait_for(tid, lambda r: d.resolve(_public(r)))
        return d

    def pipeline(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        """Validate (cycles, dangling refs, unknown capabilities name the step), store, queue."""
        only(args, "spec")
        from runtime.tasks.pipeline import parse_pipeline
        spec = parse_pipeline(arg(args, "spec", dict), now=time.time(), capabilities=self.commands._known_caps(),
                              methods=self.coord.consensus_methods)
        for step in spec.steps:
            self.coord.scheduler.admit(step.spec.capability)
        given = trace or TraceContext.new_trace()
        # the pipeline's span id is derived from its trace id, so steps queued later and
        # the final pipeline event (Coordinator.pipeline_progress) find it again
        trace = TraceContext(given.trace_id, given.trace_id[:16], given.span_id if trace else None)
        pid, steps = self.coord.journal.submit_pipeline(spec, trace_id=trace.trace_id)
        states = self.coord.journal.states(list(steps.values()))
        for task_id in steps.values():
            if states[task_id] == "queued":  # the others are blocked: read when unblocked
                self.coord.scheduler.enqueue(self.task_run(self.coord.journal.get(task_id), trace.child()))
        self.coord.emit("pipeline.submitted", trace, pipeline_id=pid, steps=list(steps))
        return {"id": pid, "steps": steps, "trace_id": trace.trace_id}

    def pipeline_result(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id", "wait", "timeout_s")
        pid = str_arg(args, "id")
        p = self.coord.journal.get_pipeline(pid)
        if p.state != "running" or not arg(args, "wait", bool, False):
            return _public_pipeline(p, self.coord.journal)
        timeout = num_arg(args, "timeout_s", MAX_WAIT_S, hi=MAX_WAIT_S)
        d = self.commands._defer(timeout, lambda: DeadlineExceeded(
            f"pipeline {pid} has not finished within {timeout} s", hint="it goes on; ask again later"))
        self.coord.wait_for(pid, lambda p: d.resolve(_public_pipeline(p, self.coord.journal)))
        return d

    def tasks(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "state", "limit")
        rows = self.coord.journal.list(state=str_arg(args, "state", None, max_len=32),
                                       limit=int_arg(args, "limit", 100, hi=100_000), with_input=False)
        return [self._waiting(_public(r, brief=True)) for r in rows]

    def _waiting(self, out: dict[str, Any]) -> dict[str, Any]:
        """A queued task whose pools are all down says so (``waiting_for``; its deadline runs)."""
        why = self.coord.scheduler.waiting_for(out["capability"]) if out["state"] == "queued" else None
        if why is not None:
            out["waiting_for"] = why
        return out

    def attempts(self, args: dict[str, Any], trace: Any) -> Any:
        """Every attempt with its agent and outcome; ``lost`` marks the ones that did not
        finish (agent died or killed, daemon killed), counted apart from handler failures."""
        only(args, "id")
        return [{**dataclasses.asdict(a), "lost": a.outcome == "crashed"}
                for a in self.coord.journal.attempts(str_arg(args, "id"))]

    def cancel(self, args: dict[str, Any], trace: Any) -> Any:
        """A task or a whole pipeline (``p-`` ids); ``outcome`` says what happened."""
        only(args, "id")
        tid = str_arg(args, "id")
        sched = self.coord.scheduler
        if tid.startswith("p-"):
            steps = sched.cancel_pipeline(tid)
            state = self.coord.journal.get_pipeline(tid).state
            return {"id": tid, "kind": "pipeline", "state": state, "cancelled": bool(steps),
                    "steps": steps, "outcome": "cancelled" if steps else "already_ended"}
        task = sched.tasks.get(tid)
        was_running = task is not None and task.state == "running"
        done = sched.cancel(tid)
        outcome = ("stopping" if was_running else "cancelled") if done else "already_ended"
        return {"id": tid, "kind": "task", "state": self.coord.journal.get(tid).state,
                "cancelled": done, "outcome": outcome}

    def retry(self, args: dict[str, Any], trace: Any) -> Any:
        """Re-drive dead-lettered or failed tasks: queued again with fresh attempts."""
        only(args, "ids")
        out = []
        for tid in arg(args, "ids", list)[:10_000]:
            rec = self.coord.journal.redrive(str(tid))
            self.coord.scheduler.enqueue(self.task_run(rec))
            self.coord.emit("task.redriven", None, task_id=rec.id, attempts=rec.attempts,
                            max_attempts=rec.max_attempts)
            out.append(_public(rec, brief=True))
        return out

    def journal_stats(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        stats = self.coord.journal.stats()
        stats["retention"] = getattr(self.coord, "retention_report", None)
        return stats


_PUBLIC = ("id", "capability", "state", "attempts", "max_attempts", "priority", "created",
           "updated", "trace_id", "pipeline_id", "step_id")


def _public(rec: Any, brief: bool = False) -> dict[str, Any]:
    """A journal TaskRecord as the control channel shows it."""
    out = {k: getattr(rec, k) for k in _PUBLIC}
    if not brief:
        out.update(result=rec.result, error=rec.error)
    return out


def _public_pipeline(p: Any, journal: Any) -> dict[str, Any]:
    steps = []
    for step_id, task_id in p.steps.items():
        rec = journal.get(task_id, with_input=False)  # _public shows no input
        steps.append({"step_id": step_id, **_public(rec)})
    order = {s["id"]: i for i, s in enumerate(p.spec["steps"])}
    steps.sort(key=lambda s: order.get(s["step_id"], 0))
    return {"id": p.id, "name": p.name, "state": p.state, "trace_id": p.trace_id,
            "created": p.created, "updated": p.updated, "steps": steps}
