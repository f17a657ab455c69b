"""The supervision tree, with Erlang/OTP semantics, inside the root process.

::

    Tree (owns the sentinel map; the daemon loop hands it every ready sentinel)
     └── Supervisor "root"                 strategy, intensity/period, children in order
          ├── Worker "telemetry"            a forked process
          └── Supervisor "core"             a nested supervisor: a logical node, no process
               ├── Worker "registry.0" ...
               └── Supervisor "pools" ...

Only the root process forks (it stays single-threaded: fork in a threaded process can
deadlock the child).  Nested supervisors are objects in the root; their workers are the
root's children.  A death is seen when the daemon loop's ``connection.wait`` returns the
worker's sentinel — never by polling.

OTP rules kept exactly:

* start children in order, each waiting for its ``ctx.ready()``; stop in reverse order
  (SIGTERM, the child's ``shutdown`` grace, then SIGKILL), always reaping;
* ``one_for_one`` restarts the dead child; ``one_for_all`` stops the others (reverse) and
  restarts all (in order); ``rest_for_one`` does that for the children started after it;
* ``permanent`` always restarts, ``transient`` only after an abnormal exit (non-zero code or
  a signal; a supervisor that gave up counts as a normal ``shutdown``), ``temporary`` never;
* one restart more than ``intensity`` within ``period`` and the supervisor stops all its
  children and exits; its parent treats that as its child's exit (escalation).  A
  supervisor that gave up and is not restarted stays listed as ``failed`` so that status
  shows the degraded branch (RELIABILITY 3: a restart storm in one pool stops that pool).
* a ``significant`` child that ends for good shuts its parent down (OTP's
  ``auto_shutdown = any_significant``); at the top, ``Tree.failed`` is set and
  ``Tree.reason`` says which supervisor gave up on which child, so the daemon exits
  non-zero naming it.
* a supervisor that ``failed`` keeps ``failed_at`` and its children's last exits
  (``last_exits``): a pool's recovery (``runtime.pools.recovery``) reads them.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

from multiprocess.connection import wait

from runtime.errors import BrokenError, InvalidInput, NotFound
from runtime.supervision.child_spec import ChildSpec, Restart, Strategy, SupervisorSpec
from runtime.supervision.forking import Lifeline, forget, fork_child
from runtime.supervision.restart_budget import add_restart

__all__ = ["Tree", "Supervisor", "Worker", "StartFailed"]

Emit = Callable[..., None]


class StartFailed(BrokenError):
    code = "START_FAILED"


class Worker:
    """One supervised process: its spec and, while it runs, its process object."""

    def __init__(self, spec: ChildSpec, parent: Supervisor) -> None:
        self.spec = spec
        self.parent = parent
        self.proc: Any = None
        self.started_at = 0.0
        self.restarts = 0
        self.state = "stopped"
        self.last_code: int | None = None
        self.last_reason: str | None = None  # why its last start failed, in words

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self.await_start(self.fork())

    def fork(self) -> int:
        """The first half of ``start``: the process exists; returns its ready pipe."""
        tree = self.parent.tree
        self.proc, ready_fd = fork_child(self.spec, tree.lifeline, tree.resources)
        return ready_fd

    def abandon_start(self, ready_fd: int) -> None:
        """A sibling's start failed before this one was awaited: kill and reap it."""
        os.close(ready_fd)
        if self.proc is not None:
            self._reap(0.0)

    def await_start(self, ready_fd: int) -> None:
        """The second half of ``start``: its ready, or StartFailed (it is reaped then)."""
        tree = self.parent.tree
        try:
            self._await_ready(ready_fd)
        finally:
            os.close(ready_fd)
        self.started_at = tree.clock()
        self.state = "running"
        tree.watch(self)
        tree.emit("supervisor.child_started", child=self.path, pid=self.pid)

    def _await_ready(self, ready_fd: int) -> None:
        ready = wait([ready_fd, self.proc.sentinel], timeout=self.spec.start_timeout)
        said = os.read(ready_fd, 512) if ready_fd in ready else b""
        if said[:1] == b"R":
            return
        code = self._reap(self.spec.shutdown if not ready else 0.0)
        why = (said[1:].decode(errors="replace") if said[:1] == b"F" else
               f"no ready within {self.spec.start_timeout:g} s" if not ready else "exited")
        self.last_code, self.last_reason = code, f"start-up failed: {why} (exit code {code})"
        raise StartFailed(f"child {self.path!r} did not become ready: {why} (exit code {code})",
                          hint="its start-up raised or hung; the daemon log has its output")

    def stop(self) -> int | None:
        """SIGTERM, grace, SIGKILL; always reaped.  Returns the exit code."""
        if self.proc is None:
            return None
        self.parent.tree.unwatch(self)
        code = self._reap(self.spec.shutdown)
        self.state = "stopped"
        self.parent.tree.emit("supervisor.child_stopped", child=self.path, exitcode=code)
        return code

    def _reap(self, grace: float) -> int | None:
        proc, self.proc = self.proc, None
        if proc.exitcode is None and grace > 0:
            _signal(proc.pid, signal.SIGTERM)
            proc.join(grace)
        if proc.exitcode is None:
            _signal(proc.pid, signal.SIGKILL)
            proc.join()
        code = proc.exitcode
        forget(proc)
        proc.close()
        return code

    def exited(self) -> int | None:
        """The sentinel fired: reap and return the exit code."""
        self.parent.tree.unwatch(self)
        proc, self.proc = self.proc, None
        proc.join()
        code = proc.exitcode
        forget(proc)
        proc.close()
        self.state = "exited"
        self.last_code, self.last_reason = code, None
        return code

    @property
    def path(self) -> str:
        return f"{self.parent.path}/{self.id}"

    def status(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "kind": "worker", "pid": self.pid, "state": self.state,
                "restarts": self.restarts, "restart": self.spec.restart.value,
                "uptime_s": round(now - self.started_at, 3) if self.proc else None}


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


Child = Worker | Any  # Worker or Supervisor (both have id, start, stop, state, restarts)


class Supervisor:
    """A node of the tree: restarts its children by strategy within its intensity."""

    def __init__(self, spec: SupervisorSpec, tree: Tree, parent: Supervisor | None) -> None:
        self.spec = spec
        self.tree = tree
        self.parent = parent
        self.children: list[Child] = [_make(c, tree, self) for c in spec.children]
        self.restart_times: tuple[float, ...] = ()
        self.restarts = 0
        self.state = "stopped"
        self.failed_at: float | None = None
        self.last_exits: list[dict[str, Any]] = []  # the latest child exits (at most 5)

    id = property(lambda self: self.spec.id)
    path = property(lambda self: f"{self.parent.path}/{self.id}" if self.parent else self.id)

    # -- start / stop ------------------------------------------------------------------

    def start(self) -> None:
        """Start every child in order; on a failure stop those started and re-raise.

        A restarted supervisor starts with a fresh restart budget, as a new OTP process
        would; unlike OTP it keeps its dynamic children (agent pools are dynamic).
        """
        self.restart_times = ()
        started: list[Child] = []
        try:
            if self.spec.start_together and all(isinstance(c, Worker) for c in self.children):
                self._start_together(started)
            else:
                for child in self.children:
                    child.start()
                    started.append(child)
        except BaseException:
            for child in reversed(started):
                child.stop()
            raise
        self.state = "running"

    def _start_together(self, started: list[Child]) -> None:
        """``start_together``: fork every worker, then await each in order (an agent's
        start is mostly its own imports and hello: 25-35 ms each, one after the other,
        was most of a 4-agent daemon's start after its own imports).  After a failure the
        workers not yet awaited are killed; the caller stops the ones that started."""
        forked: list[tuple[Worker, int]] = []
        failure: BaseException | None = None
        try:
            for child in self.children:
                forked.append((child, child.fork()))
        except BaseException as e:
            failure = e
        for child, fd in forked:
            if failure is not None:
                child.abandon_start(fd)
                continue
            try:
                child.await_start(fd)
                started.append(child)
            except BaseException as e:
                failure = e
        if failure is not None:
            raise failure

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self.state == "running":
            self.state = "stopped"

    # -- dynamic children --------------------------------------------------------------

    def start_child(self, spec: ChildSpec | SupervisorSpec, start: bool = True) -> Child:
        """Add a dynamic child and start it; ``start=False`` only adds it (a supervisor that
        failed starts it with the others when it is restarted: runtime.pools.recovery)."""
        if any(c.id == spec.id for c in self.children):
            raise InvalidInput(f"supervisor {self.path!r} already has a child {spec.id!r}")
        child = _make(spec, self.tree, self)
        if start:
            child.start()
        self.children.append(child)
        return child

    def terminate_child(self, child_id: str) -> None:
        child = self.child(child_id)
        child.stop()
        self.children.remove(child)

    def child(self, child_id: str) -> Child:
        for c in self.children:
            if c.id == child_id:
                return c
        raise NotFound(f"supervisor {self.path!r} has no child {child_id!r}")

    # -- failure handling --------------------------------------------------------------

    def child_exited(self, child: Child, abnormal: bool) -> None:
        """A child died (or a child supervisor gave up): apply restart type and strategy."""
        self.tree.emit("supervisor.child_exited", child=child.path, abnormal=abnormal)
        self._note_exit(child, abnormal)
        wanted = child.spec.restart is Restart.PERMANENT or (
            child.spec.restart is Restart.TRANSIENT and abnormal)
        if not wanted:
            if child.spec.restart is Restart.TEMPORARY:
                self.children.remove(child)
            if getattr(child.spec, "significant", False) and self.state != "stopped":
                self._give_up(child, why="significant child ended")
            return
        allowed, self.restart_times = add_restart(
            self.restart_times, self.tree.clock(), self.spec.intensity, self.spec.period)
        if not allowed:
            self._give_up(child)
            return
        self.restarts += 1
        self._restart_by_strategy(child)

    def _restart_by_strategy(self, failed: Child) -> None:
        idx = self.children.index(failed)
        group = {Strategy.ONE_FOR_ONE: [failed],
                 Strategy.ONE_FOR_ALL: list(self.children),
                 Strategy.REST_FOR_ONE: self.children[idx:]}[self.spec.strategy]
        for c in reversed(group):
            if c is not failed:
                c.stop()
        for c in group:
            c.restarts += 1
            self.tree.emit("supervisor.restart", child=c.path, strategy=self.spec.strategy.value)
            try:
                c.start()
            except StartFailed:
                self.child_exited(c, abnormal=True)  # counts against the intensity again
                return

    def _note_exit(self, child: Child, abnormal: bool) -> None:
        code = getattr(child, "last_code", None)
        self.last_exits = [*self.last_exits[-4:], {
            "child": child.id, "abnormal": abnormal, "exitcode": code,
            "reason": getattr(child, "last_reason", None), "at": round(self.tree.clock(), 3)}]

    def _give_up(self, child: Child, why: str = "") -> None:
        why = why or (f"more than {self.spec.intensity} restarts in {self.spec.period} s")
        reason = f"supervisor {self.path!r} gave up on {child.path!r}: {why}"
        self.tree.emit("supervisor.escalation", supervisor=self.path, child=child.path,
                       intensity=self.spec.intensity, period_s=self.spec.period, reason=reason)
        self.stop()
        self.state = "failed"
        self.failed_at = self.tree.clock()
        if not self.tree.reason or self.parent is None:
            self.tree.reason = self.tree.reason or reason
        if self.parent is None:
            self.tree.failed = True
        else:
            # OTP: a supervisor that reached its intensity exits with reason `shutdown`,
            # which a `transient` parent spec treats as normal (no restart).
            self.parent.child_exited(self, abnormal=self.spec.restart is Restart.PERMANENT)

    def status(self, now: float) -> dict[str, Any]:
        out = {"id": self.id, "kind": "supervisor", "state": self.state,
               "strategy": self.spec.strategy.value, "restarts": self.restarts,
               "intensity": self.spec.intensity, "period_s": self.spec.period,
               "children": [c.status(now) for c in self.children]}
        if self.state == "failed":
            out["last_exits"] = list(self.last_exits)
        return out


def _make(spec: ChildSpec | SupervisorSpec, tree: Tree, parent: Supervisor) -> Child:
    return Supervisor(spec, tree, parent) if isinstance(spec, SupervisorSpec) else Worker(spec, parent)


class Tree:
    """The whole tree as the root process sees it: sentinels -> workers."""

    def __init__(self, spec: SupervisorSpec, emit: Emit | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 resources: Any = None) -> None:
        self.emit: Emit = emit or (lambda *a, **k: None)
        self.clock = clock
        self.resources = resources  # handed to every child as ctx.resources (opaque here)
        self.lifeline = Lifeline()
        self._by_sentinel: dict[int, Worker] = {}
        self.failed = False
        self.reason = ""  # why the tree (or the first supervisor of it) gave up
        self.root = Supervisor(spec, self, None)

    def watch(self, worker: Worker) -> None:
        self._by_sentinel[worker.proc.sentinel] = worker

    def unwatch(self, worker: Worker) -> None:
        if worker.proc is not None:
            self._by_sentinel.pop(worker.proc.sentinel, None)

    @property
    def sentinels(self) -> list[int]:
        return list(self._by_sentinel)

    def start(self) -> None:
        self.root.start()

    def handle(self, ready: list[Any]) -> None:
        """Handle every sentinel among ``ready`` (the rest is the caller's)."""
        batch = [(w, w.proc) for fd in ready if (w := self._by_sentinel.get(fd)) is not None]
        for worker, proc in batch:
            if worker.proc is not proc:
                continue  # stopped or restarted within this batch (one_for_all, rest_for_one):
                # its old sentinel fd may even have been reused by the new process
            code = worker.exited()
            worker.parent.child_exited(worker, abnormal=code != 0)

    def wait_and_handle(self, timeout: float | None) -> list[Any]:
        """One turn for callers that have no other fds (tests, perf)."""
        ready = wait(self.sentinels, timeout)
        self.handle(ready)
        return ready

    def find(self, path: str) -> Supervisor:
        node: Any = self.root
        for part in path.split("/")[1:] if "/" in path else []:
            node = node.child(part)
        if path.split("/")[0] != self.root.id or not isinstance(node, Supervisor):
            raise NotFound(f"no supervisor at {path!r}")
        return node

    def stop(self) -> None:
        self.root.stop()
        self.lifeline.close()

    def status(self) -> dict[str, Any]:
        return self.root.status(self.clock())

    def pids(self) -> list[int]:
        return [w.pid for w in self._by_sentinel.values() if w.pid]
