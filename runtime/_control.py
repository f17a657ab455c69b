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
        self.done = False

    def bind(self, cb: Callable[[dict[str, Any]], None]) -> None:
        self._cb = cb

    def resolve(self, value: Any) -> None:
        self._finish({"ok": value})

    def fail(self, exc: Exception) -> None:
        self._finish({"error": to_wire(exc)})

    def _finish(self, msg: dict[str, Any]) -> None:
        if not self.done and self._cb is not None:
            self.done = True
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
        self.pending_submits: list[tuple[Deferred, list[Any], TraceContext]] = []
        self.capabilities: set[str] = {c for p in coord.cfg.pools for c in p.capabilities}
        self.table: dict[str, Callable[..., Any]] = {
            "ping": self.ping, "status": self.status, "ps": self.ps, "down": self.down,
            "submit": self.submit, "submit_many": self.submit_many, "result": self.result,
            "tasks": self.tasks, "attempts": self.attempts, "cancel": self.cancel,
            "pipeline": self.pipeline, "pipeline_result": self.pipeline_result,
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
        only(args, "task", "wait_s")
        d = self.submit_many({"tasks": [arg(args, "task", dict)],
                              "wait_s": arg(args, "wait_s", (int, float), 5.0)}, trace)
        if isinstance(d, Deferred):
            inner = Deferred()
            d.bind(lambda msg: inner._finish({"ok": msg["ok"][0]} if "ok" in msg else msg))
            return inner
        return d[0]

    def submit_many(self, args: dict[str, Any], trace: TraceContext | None) -> Any:
        """Validate all, then admit (durable at the end of this turn) or wait for room."""
        only(args, "tasks", "wait_s")
        raw = arg(args, "tasks", list)
        wait_s = float(arg(args, "wait_s", (int, float), 5.0))
        now, caps = time.time(), self._known_caps()
        specs = [parse_task(t, now=now, capabilities=caps) for t in raw]
        trace = trace or TraceContext.new_trace()
        if self._has_room(specs):
            return self._accept(specs, trace)
        d = self._defer(wait_s, lambda: MailboxFull(
            f"the mailbox for {specs[0].capability!r} stayed full for {wait_s} s",
            queued=self.coord.scheduler.queued(specs[0].capability)))
        self.pending_submits.append((d, specs, trace))
        return d

    def _mailbox_limit(self, capability: str) -> tuple[int, int]:
        pools = [p for p in self.coord.cfg.pools if capability in p.capabilities] or list(self.coord.cfg.pools)
        return (sum(p.mailbox_messages for p in pools) or 1000, sum(p.mailbox_bytes for p in pools) or 1 << 24)

    def _has_room(self, specs: list[Any]) -> bool:
        by_cap: dict[str, int] = {}
        for s in specs:
            by_cap[s.capability] = by_cap.get(s.capability, 0) + 1
        sched = self.coord.scheduler
        return all(sched.queued(c) + n <= self._mailbox_limit(c)[0] for c, n in by_cap.items())

    def _admit_pending(self) -> None:
        still = []
        for d, specs, trace in self.pending_submits:
            if d.done:
                continue
            if self._has_room(specs):
                d.resolve(self._accept(specs, trace))
            else:
                still.append((d, specs, trace))
        self.pending_submits = still

    def _accept(self, specs: list[Any], trace: TraceContext) -> list[str]:
        traces = [trace if len(specs) == 1 else trace.child() for _ in specs]
        ids = self.coord.journal.submit_many(specs, trace_ids=[t.trace_id for t in traces])
        for spec, tid, tr in zip(specs, ids, traces):
            rec = self.coord.journal.get(tid)
            if rec.state == "queued" and tid not in self.coord.scheduler.tasks:
                self.coord.scheduler.enqueue(self.task_run(rec, tr))
                self.coord.emit("task.submitted", tr, task_id=tid, capability=spec.capability)
        return ids

    def task_run(self, rec: Any, trace: TraceContext | None = None) -> Any:
        """The scheduler's view of a journal record (deadline moved to the monotonic clock)."""
        from runtime.dispatch import TaskRun
        deadline = time.monotonic() + (rec.deadline - time.time()) if rec.deadline else None
        tr = trace or TraceContext(rec.trace_id or os.urandom(8).hex(), os.urandom(8).hex())
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
        trace = trace or TraceContext.new_trace()
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
