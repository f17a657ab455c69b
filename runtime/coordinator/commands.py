"""The control channel's fixed command table, served by the coordinator.

Every command takes an ``args`` object whose keys are checked (unknown keys refused,
types checked, each error naming the key) and returns a JSON value, or a
:class:`Deferred` that the coordinator completes later (a result being waited for, a
submission waiting for mailbox room).  Nothing a client sends is ever unpickled or
evaluated; a command not in the table is UNKNOWN_COMMAND.

Here: ping, status, ps, down, agents, events, context_put/ls/rm, registry_ls/get.

None of them makes the loop wait (issue 15, item 4): ``status``, ``ps`` and ``down`` ask the
root asynchronously (``RootLink.request``: the reply comes on a later turn, so a root
busy forking a storm of agents delays only them), ``ps`` reads each process in slices and
``events`` scans the event log in slices (``runtime.coordinator.slices``).
``runtime.coordinator.task_commands`` adds the task and pipeline commands; the coordination
services (market, consensus, primitives), the scaler and observability add theirs, all
through ``Commands.extend`` at coordinator start: the table is fixed once serving begins.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from runtime.coordinator.command_kit import MAX_TEXT, Deferred, arg, int_arg, num_arg, only, str_arg
from runtime.coordinator.root_link import RootLink
from runtime.errors import (
    AgoraError,
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    RemoteError,
    UnknownCommand,
)
from runtime.observability.trace_context import TraceContext

__all__ = ["Commands", "Deferred", "arg", "only", "MAX_EVENTS"]

MAX_EVENTS = 10_000  # `events --limit`: what one reply may carry (well inside a frame)

class Commands:
    """The command table and the state commands keep between turns."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.started = time.time()
        self.root: RootLink = coord.root
        self.deferred: list[Deferred] = []
        self.capabilities: set[str] = {c for p in coord.cfg.pools for c in p.capabilities}
        self.table: dict[str, Callable[..., Any]] = {
            "ping": self.ping, "status": self.status, "ps": self.ps, "down": self.down,
            "agents": self.agents, "events": self.events,
            "context_put": self.context_put, "context_ls": self.context_ls,
            "context_rm": self.context_rm, "registry_ls": self.registry_ls,
            "registry_get": self.registry_get,
        }
        from runtime.coordinator.task_commands import TaskCommands
        self.tasks = TaskCommands(self)
        coord.turn_hooks.append(self.turn)

    def extend(self, commands: dict[str, Callable[..., Any]]) -> None:
        taken = sorted(set(commands) & set(self.table))
        if taken:
            raise Conflict(f"commands {taken} are registered twice", hint="one owner per command")
        self.table.update(commands)

    def run(self, cmd: str, args: dict[str, Any], trace: TraceContext | None, conn: Any) -> Any:
        fn = self.table.get(cmd)
        if fn is None:
            raise UnknownCommand(f"unknown command {cmd!r}", hint=f"commands: {sorted(self.table)}",
                                 commands=sorted(self.table))
        return fn(args, trace)

    # -- per-turn bookkeeping ----------------------------------------------------------

    def turn(self) -> None:
        self.tasks._admit_pending()
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
        return self.with_tree(self._status)

    def _status(self, tree: Any) -> Any:
        sched = self.coord.scheduler
        return {"home": str(self.coord.cfg.home), "root_pid": self.coord.root_pid,
                "uptime_s": round(time.time() - self.started, 3), "tree": tree,
                "daemon_uptime_s": _process_uptime(self.coord.root_pid),
                "allocation": self.coord.cfg.allocation, "agents": len(sched.agents),
                "payloads": sched.payloads.stats,
                "tasks": self.coord.journal.counts(),
                # capabilities no live pool serves (runtime.scaling.health): their tasks wait
                "waiting": {cap: {"reason": d["reason"], "queued": sched.queued(cap)}
                            for cap, d in sched.down.items()}}

    def with_tree(self, answer: Callable[[Any], Any]) -> Deferred:
        """A reply built from the root's tree when it comes (a later turn); ``answer(tree)``
        returns the reply, or a Deferred of it, or raises an AgoraError."""
        d = Deferred()

        def done(tree: Any, error: Any) -> None:
            if error is not None:
                d.fail(error)
                return
            try:
                out = answer(tree)
            except AgoraError as e:
                d.fail(e)
                return
            except Exception as e:  # noqa: BLE001 -- on a later turn: nobody else would catch it
                d.fail(RemoteError(f"building the reply failed: {type(e).__name__}: {e}"))
                return
            if isinstance(out, Deferred):
                out.bind(lambda msg: d._finish(msg))
            else:
                d.resolve(out)
        self.root.request("tree", {}, done)
        return d

    def ps(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return self.with_tree(lambda tree: self.sliced("ps", _ps_rows(tree)))

    def sliced(self, name: str, job: Any) -> Deferred:
        """Run ``job`` (a generator, runtime.coordinator.slices) in slices; its return
        value is the reply."""
        d = Deferred()
        self.coord.slices.start(name, job, lambda out, err: d.fail(err) if err is not None else d.resolve(out))
        return d

    def down(self, args: dict[str, Any], trace: Any) -> Any:
        """Ask the root to stop the tree; the reply comes when the root has said yes (a
        later turn: a root busy forking never holds the loop, issue 15 item 4)."""
        only(args)
        d = Deferred()
        self.root.request("shutdown", {}, lambda ok, error: d.fail(error) if error is not None
                          else d.resolve({"stopping": True}))
        return d

    # -- tasks -------------------------------------------------------------------------

    def _known_caps(self) -> set[str]:
        """Capabilities of the config and of every agent that ever joined (``agent_joined``
        adds an agent's own at its hello); the live set itself, not a copy: read only."""
        return self.capabilities

    def agent_joined(self, link: Any) -> None:
        self.capabilities.update(link.caps)

    # -- shared context and registry ----------------------------------------------------

    def context_put(self, args: dict[str, Any], trace: Any) -> Any:
        """Publish a file (.npy as an array, anything else as bytes) as a new version.
        The daemon reads the path itself: it runs as the same user on the same machine,
        and a context may be far larger than a control frame."""
        only(args, "name", "path")
        name = _context_name(args)
        path = str_arg(args, "path", max_len=MAX_TEXT)
        if not os.path.isfile(path):
            raise NotFound(f"argument 'path': no file {path!r} (the daemon resolves it; pass an "
                           "absolute path)", field="path")
        try:
            info = self.coord.contexts.put_file(name, path)
        except (ValueError, OSError, EOFError) as e:  # a corrupt .npy, an unreadable file
            raise InvalidInput(f"argument 'path': {path!r} cannot be published as context "
                               f"{name!r}: {type(e).__name__}: {str(e)[:200]}", field="path",
                               hint="a .npy must be a valid numpy file saved without pickles "
                                    "(np.save(..., allow_pickle=False))") from e
        self.coord.emit("context.published", name=info.name, version=info.version, bytes=info.nbytes)
        return info.to_json()

    def context_ls(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return [i.to_json() for i in self.coord.contexts.list()]

    def context_rm(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "name")
        name = _context_name(args)
        if name not in {i.name for i in self.coord.contexts.list()}:
            raise NotFound(f"argument 'name': no context named {name!r}", field="name",
                           hint="`agora context ls` lists the published contexts")
        self.coord.contexts.remove(name)
        self.coord.emit("context.removed", name=name)
        return {"removed": name}

    def registry_ls(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "capability", "where", "order_by", "limit")
        from runtime.registry.model import parse_filters
        where = parse_filters(arg(args, "where", list, []))
        entries = self.coord.registry.select(capability=str_arg(args, "capability", None), where=where,
                                             order_by=str_arg(args, "order_by", None),
                                             limit=int_arg(args, "limit", None, hi=1_000_000))
        return [e.to_wire() for e in entries]

    def registry_get(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "key")
        key = str_arg(args, "key")
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
        """The last ``limit`` matching events, scanned in slices (a long log never holds
        the loop)."""
        only(args, "type", "agent", "since", "limit", "trace_id")
        from runtime.observability.eventlog import scan_events
        job = scan_events(self.coord.cfg.home, type_prefix=str_arg(args, "type", None),
                          agent=str_arg(args, "agent", None),
                          since=num_arg(args, "since", None, hi=1e12),
                          trace_id=str_arg(args, "trace_id", None, max_len=64),
                          limit=int_arg(args, "limit", 200, hi=MAX_EVENTS))
        return self.sliced("events", job)


def _process_uptime(pid: int) -> float | None:
    """Seconds since ``pid`` started (the root's: the daemon's uptime, which a restarted
    coordinator's own ``uptime_s`` is not)."""
    try:
        return round(time.time() - psutil.Process(pid).create_time(), 3)
    except (psutil.Error, TypeError, ValueError):
        return None


def _ps_rows(tree: dict[str, Any]) -> Any:
    """``ps``'s rows, one process read (psutil, ~0.1 ms) per unit of the job."""
    rows = []
    for node in _flatten(tree):
        row = {"path": node["path"], "pid": node["pid"], "state": node["state"],
               "restarts": node["restarts"]}
        try:
            if node["pid"] is None:
                raise ValueError("not running")  # psutil.Process(None) is this process
            p = psutil.Process(node["pid"])
            with p.oneshot():
                row.update(rss_mib=round(p.memory_info().rss / 2**20, 1),
                           cpu_s=round(sum(p.cpu_times()[:2]), 2), name=p.name())
        except (psutil.Error, TypeError, ValueError):
            pass  # gone since the tree was read, or not started (pid None)
        rows.append(row)
        yield
    return rows


_CONTEXT_NAME_MAX = 200  # shm.context's own bound, checked here to name the argument


def _context_name(args: dict[str, Any]) -> str:
    name = str_arg(args, "name", max_len=_CONTEXT_NAME_MAX)
    if not name.isprintable():
        raise InvalidInput(f"argument 'name': {name[:40]!r} has unprintable characters", field="name")
    return name


def _flatten(node: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    path = f"{prefix}/{node['id']}" if prefix else node["id"]
    if node["kind"] == "worker":
        return [{**node, "path": path}]
    return [row for c in node["children"] for row in _flatten(c, path)]
