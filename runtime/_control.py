"""The control channel's fixed command table, served by the coordinator.

Every command takes an ``args`` object whose keys are checked (unknown keys refused,
types checked, each error naming the key) and returns a JSON value, or a
:class:`Deferred` that the coordinator completes later (a result being waited for, a
submission waiting for mailbox room).  Nothing a client sends is ever unpickled or
evaluated; a command not in the table is UNKNOWN_COMMAND.

Commands: ping, status, ps, down, submit, submit_many, pipeline, result, tasks,
attempts, cancel, agents, events (more are added by the registry, context, market,
voting and scaling modules through ``Commands.extend``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import orjson
import psutil

from runtime._protocol import recv_frame, send_frame
from runtime.envelope import TraceContext
from runtime.errors import (
    DeadlineExceeded,
    InvalidInput,
    MailboxFull,
    NotFound,
    Unavailable,
    UnknownCommand,
    to_wire,
)
from runtime.task import TERMINAL, parse_task

__all__ = ["Commands", "Deferred", "arg"]

_MISSING = object()


def arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """One argument, type-checked; booleans are not integers."""
    if name not in args:
        if default is _MISSING:
            raise InvalidInput(f"argument {name!r} is missing", field=name)
        return default
    value = args[name]
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise InvalidInput(f"argument {name!r}: expected {getattr(kind, '__name__', kind)}, "
                           f"got {type(value).__name__}", field=name)
    return value


def only(args: dict[str, Any], *allowed: str) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown argument(s) {unknown}", hint=f"allowed: {sorted(allowed)}")


class Deferred:
    """A reply that comes later: ``resolve({"ok": ...})`` or ``fail(exc)``, or a deadline."""

    def __init__(self, deadline: float | None = None, on_expire: Callable[[], Exception] | None = None):
        self.deadline = deadline
        self.on_expire = on_expire
        self._cb: Callable[[dict[str, Any]], None] | None = None
        self._msg: dict[str, Any] | None = None
        self.done = False

    def bind(self, cb: Callable[[dict[str, Any]], None]) -> None:
        """Where the reply goes; a Deferred finished before it was bound delivers now."""
        self._cb = cb
        if self.done and self._msg is not None:
            cb(self._msg)

    def resolve(self, value: Any) -> None:
        self._finish({"ok": value})

    def fail(self, exc: Exception) -> None:
        self._finish({"error": to_wire(exc)})

    def _finish(self, msg: dict[str, Any]) -> None:
        if self.done:
            return
        self.done = True
        self._msg = msg
        if self._cb is not None:
            self._cb(msg)


class RootLink:
    """The coordinator's blocking line to the root process (trusted, tree-internal)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: Any = None
        self._rid = 0

    def call(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        import socket
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(self.path)
        self._rid += 1
        deadline = time.monotonic() + timeout
        try:
            send_frame(self._sock, {"v": 1, "id": self._rid, "cmd": cmd, "args": args}, deadline)
            reply = recv_frame(self._sock, deadline)
        except OSError as e:
            self._sock.close()
            self._sock = None
            raise Unavailable(f"the root supervisor did not answer {cmd!r}: {e}") from e
        if reply is None or "error" in reply:
            from runtime.errors import from_wire
            raise from_wire((reply or {}).get("error") or {"code": "UNAVAILABLE", "message": "root closed"})
        return reply["ok"]


class Commands:
    """The command table and the state commands keep between turns."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.started = time.time()
        self.root = RootLink(coord.run.root_sock)
        self.deferred: list[Deferred] = []
        self.pending_submits: list[tuple[Deferred, list[Any], list[int], TraceContext]] = []
        self.capabilities: set[str] = {c for p in coord.cfg.pools for c in p.capabilities}
        self.table: dict[str, Callable[..., Any]] = {
            "ping": self.ping, "status": self.status, "ps": self.ps, "down": self.down,
            "submit": self.submit, "submit_many": self.submit_many, "result": self.result,
            "tasks": self.tasks, "attempts": self.attempts, "cancel": self.cancel,
            "pipeline": self.pipeline, "pipeline_result": self.pipeline_result,
            "wait_all": self.wait_all,
            "context_put": self.context_put, "context_ls": self.context_ls,
            "context_rm": self.context_rm, "registry_ls": self.registry_ls,
            "registry_get": self.registry_get,
            "agents": self.agents, "events": self.events,
        }
        coord.turn_hooks.append(self.turn)

    def extend(self, commands: dict[str, Callable[..., Any]]) -> None:
        self.table.update(commands)

    def run(self, cmd: str, args: dict[str, Any], trace: TraceContext | None, conn: Any) -> Any:
        fn = self.table.get(cmd)
        if fn is None:
            raise UnknownCommand(f"unknown command {cmd!r}", hint=f"commands: {sorted(self.table)}")
        return fn(args, trace)

    # -- per-turn bookkeeping ----------------------------------------------------------

    def turn(self) -> None:
        self._admit_pending()
        now = time.monotonic()
        for d in [d for d in self.deferred if d.deadline is not None and d.deadline <= now]:
            d.fail(d.on_expire() if d.on_expire else DeadlineExceeded("timed out"))
        self.deferred = [d for d in self.deferred if not d.done]

    def next_deadline_in(self) -> float | None:
        ds = [d.deadline for d in self.deferred if d.deadline is not None and not d.done]
        return max(0.0, min(ds) - time.monotonic()) if ds else None

    def _defer(self, timeout: float | None, on_expire: Callable[[], Exception]) -> Deferred:
        d = Deferred(time.monotonic() + timeout if timeout is not None else None, on_expire)
        self.deferred.append(d)
        return d

    def conn_closed(self, conn: Any) -> None:
        """A client went away: its waits are dropped with it (their tasks go on)."""

    # -- daemon ------------------------------------------------------------------------

    def ping(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return {"pong": True, "pid": os.getpid(), "protocol": 1}

    def status(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        sched = self.coord.scheduler
        return {"home": str(self.coord.cfg.home), "root_pid": self.coord.root_pid,
                "uptime_s": round(time.time() - self.started, 3), "tree": self.root.call("tree"),
                "allocation": self.coord.cfg.allocation, "agents": len(sched.agents),
                "payloads": sched.payloads.stats,
                "tasks": self.coord.journal.counts()}

    def ps(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        rows = []
        for node in _flatten(self.root.call("tree")):
            row = {"path": node["path"], "pid": node["pid"], "state": node["state"],
                   "restarts": node["restarts"]}
            try:
                p = psutil.Process(node["pid"])
                with p.oneshot():
                    row.update(rss_mib=round(p.memory_info().rss / 2**20, 1),
                               cpu_s=round(sum(p.cpu_times()[:2]), 2), name=p.name())
            except (psutil.Error, TypeError):
                pass
            rows.append(row)
        return rows

    def down(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        self.root.call("shutdown")
        return {"stopping": True}

    # -- tasks -------------------------------------------------------------------------

    def _known_caps(self) -> set[str]:
        return self.capabilities | {c for a in self.coord.scheduler.agents.values() for c in a.caps}

    def agent_joined(self, link: Any) -> None:
        self.capabilities.update(link.caps)

    def submit(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        """One task; with ``result: true`` the reply is the finished task, not its id
        (one request for the whole round trip; the id is durable before the task runs)."""
        only(args, "task", "wait_s", "result")
        want_result = arg(args, "result", bool, False)
        d = self.submit_many({"tasks": [arg(args, "task", dict)],
                              "wait_s": arg(args, "wait_s", (int, float), 5.0)}, trace)
        if not isinstance(d, Deferred):
            return self._then_result(d[0]) if want_result else d[0]
        inner = Deferred()
        d.bind(lambda msg: inner._finish(msg) if "ok" not in msg else (
            self._then_result(msg["ok"][0]).bind(inner._finish) if want_result
            else inner.resolve(msg["ok"][0])))
        return inner

    def _then_result(self, tid: str) -> Deferred:
        d = Deferred()
        rec = self.coord.journal.get(tid)
        if rec.state in TERMINAL:  # an idempotency key named a task that already ended
            d.resolve(_public(rec))
            return d
        self.coord.wait_for(tid, lambda r: d.resolve(_public(r)))
        return d

    def wait_all(self, args: dict[str, Any], trace: Any) -> Any:
        """Reply when every task of ``ids`` has ended: counts by final state."""
        only(args, "ids", "timeout_s")
        ids = arg(args, "ids", list)
        counts: dict[str, int] = {}
        pending = set()
        for tid in ids:
            rec = self.coord.journal.get(str(tid))
            if rec.state in TERMINAL:
                counts[rec.state] = counts.get(rec.state, 0) + 1
            else:
                pending.add(rec.id)
        if not pending:
            return counts
        timeout = arg(args, "timeout_s", (int, float), None)
        d = self._defer(timeout, lambda: DeadlineExceeded(
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
        only(args, "tasks", "wait_s")
        raw = arg(args, "tasks", list)
        wait_s = float(arg(args, "wait_s", (int, float), 5.0))
        now, caps = time.time(), self._known_caps()
        specs = [parse_task(t, now=now, capabilities=caps) for t in raw]
        sizes = [len(orjson.dumps(spec.input)) for spec in specs]  # mailbox bytes
        trace = trace or TraceContext.new_trace()
        if self._has_room(specs, sizes):
            return self._accept(specs, sizes, trace)
        d = self._defer(wait_s, lambda: MailboxFull(
            f"the mailbox for {specs[0].capability!r} stayed full for {wait_s} s",
            queued=self.coord.scheduler.queued(specs[0].capability),
            queued_bytes=self.coord.scheduler.queued_bytes.get(specs[0].capability, 0)))
        self.pending_submits.append((d, specs, sizes, trace))
        return d

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
        from runtime.dispatch import TaskRun
        deadline = time.monotonic() + (spec.deadline - time.time()) if spec.deadline else None
        return TaskRun(tid, spec.capability, spec.input, trace, max_attempts=spec.max_attempts,
                       priority=spec.priority, deadline=deadline, size=size)

    def task_run(self, rec: Any, trace: TraceContext | None = None) -> Any:
        """The scheduler's view of a journal record (deadline moved to the monotonic clock)."""
        from runtime.dispatch import TaskRun
        deadline = time.monotonic() + (rec.deadline - time.time()) if rec.deadline else None
        # no span given (a pipeline step unblocked later, a task resumed after a restart):
        # a pipeline step's span is a child of its pipeline's span (see pipeline())
        tr = trace or TraceContext(rec.trace_id or os.urandom(8).hex(), os.urandom(8).hex(),
                                   rec.trace_id[:16] if rec.pipeline_id and rec.trace_id else None)
        return TaskRun(rec.id, rec.capability, rec.input, tr, max_attempts=rec.max_attempts,
                       priority=rec.priority, deadline=deadline, pipeline_id=rec.pipeline_id,
                       attempts=rec.attempts)

    def result(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id", "wait", "timeout_s")
        tid = arg(args, "id", str)
        rec = self.coord.journal.get(tid)
        if rec.state in TERMINAL or not arg(args, "wait", bool, False):
            return _public(rec)
        timeout = arg(args, "timeout_s", (int, float), None)
        d = self._defer(timeout, lambda: DeadlineExceeded(
            f"task {tid} has not finished within {timeout} s", hint="it goes on; ask again later"))
        self.coord.wait_for(tid, lambda r: d.resolve(_public(r)))
        return d

    def pipeline(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        """Validate (cycles, dangling refs, unknown capabilities name the step), store, queue."""
        only(args, "spec")
        from runtime.pipeline import parse_pipeline
        spec = parse_pipeline(arg(args, "spec", dict), now=time.time(), capabilities=self._known_caps())
        given = trace or TraceContext.new_trace()
        # the pipeline's span id is derived from its trace id, so steps queued later and
        # the final pipeline event (Coordinator.pipeline_progress) find it again
        trace = TraceContext(given.trace_id, given.trace_id[:16], given.span_id if trace else None)
        pid, steps = self.coord.journal.submit_pipeline(spec, trace_id=trace.trace_id)
        for task_id in steps.values():
            rec = self.coord.journal.get(task_id)
            if rec.state == "queued":
                self.coord.scheduler.enqueue(self.task_run(rec, trace.child()))
        self.coord.emit("pipeline.submitted", trace, pipeline_id=pid, steps=list(steps))
        return {"id": pid, "steps": steps, "trace_id": trace.trace_id}

    def pipeline_result(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id", "wait", "timeout_s")
        pid = arg(args, "id", str)
        p = self.coord.journal.get_pipeline(pid)
        if p.state != "running" or not arg(args, "wait", bool, False):
            return _public_pipeline(p, self.coord.journal)
        timeout = arg(args, "timeout_s", (int, float), None)
        d = self._defer(timeout, lambda: DeadlineExceeded(
            f"pipeline {pid} has not finished within {timeout} s", hint="it goes on; ask again later"))
        self.coord.wait_for(pid, lambda p: d.resolve(_public_pipeline(p, self.coord.journal)))
        return d

    def tasks(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "state", "limit")
        rows = self.coord.journal.list(state=arg(args, "state", str, None),
                                       limit=arg(args, "limit", int, 100))
        return [_public(r, brief=True) for r in rows]

    def attempts(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id")
        return [dataclasses.asdict(a) for a in self.coord.journal.attempts(arg(args, "id", str))]

    def cancel(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id")
        tid = arg(args, "id", str)
        done = self.coord.scheduler.cancel(tid)
        return {"id": tid, "state": self.coord.journal.get(tid).state, "cancelled": done}

    # -- shared context and registry ----------------------------------------------------

    def context_put(self, args: dict[str, Any], trace: Any) -> Any:
        """Publish a file (.npy as an array, anything else as bytes) as a new version.
        The daemon reads the path itself: it runs as the same user on the same machine,
        and a context may be far larger than a control frame."""
        only(args, "name", "path")
        path = arg(args, "path", str)
        if not os.path.isfile(path):
            raise NotFound(f"no file {path!r} (the daemon resolves it; pass an absolute path)")
        info = self.coord.contexts.put_file(arg(args, "name", str), path)
        self.coord.emit("context.published", name=info.name, version=info.version, bytes=info.nbytes)
        return info.to_json()

    def context_ls(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return [i.to_json() for i in self.coord.contexts.list()]

    def context_rm(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "name")
        name = arg(args, "name", str)
        self.coord.contexts.remove(name)
        self.coord.emit("context.removed", name=name)
        return {"removed": name}

    def registry_ls(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "capability", "where", "order_by", "limit")
        from runtime.registry import parse_filters
        where = parse_filters(arg(args, "where", list, []))
        entries = self.coord.registry.select(capability=arg(args, "capability", str, None), where=where,
                                             order_by=arg(args, "order_by", str, None),
                                             limit=arg(args, "limit", int, None))
        return [e.to_wire() for e in entries]

    def registry_get(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "key")
        key = arg(args, "key", str)
        entry = self.coord.registry.lookup(key)
        if entry is None:
            raise NotFound(f"no registry entry {key!r}", hint="`agora registry ls` lists the keys")
        return entry.to_wire()

    def agents(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return [{"id": a.id, "pool": a.pool, "pid": a.pid, "capabilities": sorted(a.caps),
                 "inflight": len(a.inflight), "done": a.done, "draining": a.draining}
                for a in self.coord.scheduler.agents.values()]

    def events(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "type", "agent", "since", "limit", "trace_id")
        from runtime.eventlog import read_events
        return read_events(self.coord.cfg.home, type_prefix=arg(args, "type", str, None),
                           agent=arg(args, "agent", str, None), since=arg(args, "since", (int, float), None),
                           trace_id=arg(args, "trace_id", str, None), limit=arg(args, "limit", int, 200))


def _flatten(node: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    path = f"{prefix}/{node['id']}" if prefix else node["id"]
    if node["kind"] == "worker":
        return [{**node, "path": path}]
    return [row for c in node["children"] for row in _flatten(c, path)]


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
        rec = journal.get(task_id)
        steps.append({"step_id": step_id, **_public(rec)})
    order = {s["id"]: i for i, s in enumerate(p.spec["steps"])}
    steps.sort(key=lambda s: order.get(s["step_id"], 0))
    return {"id": p.id, "name": p.name, "state": p.state, "trace_id": p.trace_id,
            "created": p.created, "updated": p.updated, "steps": steps}
