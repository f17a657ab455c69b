"""A session with a running daemon: the command table as typed Python methods.

::

    with agora.connect() as s:                       # home: argument, AGORA_HOME, default
        f = s.submit("echo", {"x": 1})               # TaskFuture, at once
        f.result(timeout=10)
        list(s.map("echo", [{"x": i} for i in range(1000)]))   # results in input order

Every method is one command of the control channel (the string table stays the wire
protocol: ``s.call("status")`` is the escape hatch for any command).  Plain commands wait
at most the session's ``timeout``; task and pipeline waits are futures, bounded by what
their caller passes to ``result(timeout)``.

``map`` submits in chunks (``submit_many``, one group commit each) and keeps at most
``window`` tasks in flight: each chunk is one request whose reply streams (the ids once
durable, then the records of the tasks that ended, a frame per coordinator turn), so
many chunks are pipelined on one socket while the caller consumes results in input order.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from runtime.api.connection import Connection, Pending
from runtime.api.futures import PipelineFuture, TaskFuture
from runtime.errors import DeadlineExceeded, InvalidInput, from_wire
from runtime.wire.client import DEFAULT_TIMEOUT

__all__ = ["Session", "connect", "task_spec"]

#: Tasks per ``submit_many`` of ``map`` and tasks in flight at once (below the default
#: mailbox of 1000 queued tasks per pool, so ``map`` never meets MAILBOX_FULL by itself).
CHUNK = 250
WINDOW = 1000


def task_spec(capability: str, input: Any = None, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The wire form of one task (``runtime.tasks.task.parse_task`` checks it)."""
    spec: dict[str, Any] = {"capability": capability, "input": input}
    if options:
        spec["options"] = options
    return spec


def _options(priority: int | None, max_attempts: int | None, deadline_s: float | None,
             timeout_s: float | None, idempotency_key: str | None) -> dict[str, Any]:
    given = {"priority": priority, "max_attempts": max_attempts, "deadline": deadline_s,
             "timeout_s": timeout_s, "idempotency_key": idempotency_key}
    return {k: v for k, v in given.items() if v is not None}


class Session:
    """A connection to one daemon, with a typed method per command (module docstring)."""

    def __init__(self, home: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn = Connection(home, timeout=timeout)
        self.home = self.conn.home
        self.timeout = timeout

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (futures still waiting fail with ``ClosedError``)."""
        self.conn.close()

    def call(self, cmd: str, /, timeout: float | None = None, **args: Any) -> Any:
        """Any command of the table by name (the typed methods below are built on this)."""
        return self.conn.request(cmd, args, timeout=timeout)

    # --- tasks -------------------------------------------------------------------------

    def submit(self, capability: str, input: Any = None, *, priority: int | None = None,
               max_attempts: int | None = None, deadline_s: float | None = None,
               timeout_s: float | None = None, idempotency_key: str | None = None,
               wait_s: float = 5.0) -> TaskFuture:
        """Submit one task; a :class:`TaskFuture` at once (its ``task_id`` as soon as the
        daemon has the task durably).  ``wait_s``: how long a full mailbox may hold the
        submission before it fails with ``MailboxFull``."""
        spec = task_spec(capability, input, _options(priority, max_attempts, deadline_s, timeout_s,
                                                     idempotency_key))
        f = TaskFuture(self.conn, capability)
        self.conn.send("submit", {"task": spec, "result": True, "ack": True, "wait_s": wait_s},
                       callback=f.on_submit_reply)
        return f

    def submit_many(self, capability: str, inputs: Iterable[Any], *, wait_s: float = 60.0,
                    **options: Any) -> list[TaskFuture]:
        """Submit several tasks of one capability in one request (one group commit), a
        future each; ``options`` as for :meth:`submit`."""
        opts = _options(options.pop("priority", None), options.pop("max_attempts", None),
                        options.pop("deadline_s", None), options.pop("timeout_s", None), None)
        if options:
            raise InvalidInput(f"unknown option(s) {sorted(options)}",
                               hint="priority, max_attempts, deadline_s, timeout_s")
        specs = [task_spec(capability, x, opts) for x in inputs]
        futures = [TaskFuture(self.conn, capability) for _ in specs]
        if specs:
            self.conn.send("submit_many", {"tasks": specs, "wait_s": wait_s, "results": True},
                           callback=_Streamed(futures))
        return futures

    def map(self, capability: str, inputs: Iterable[Any], *, timeout: float | None = None,
            chunk_size: int = CHUNK, window: int = WINDOW, **options: Any) -> Iterator[Any]:
        """The result of each input's task, in input order (like ``Executor.map``).

        Submission starts at once; at most ``window`` tasks are in flight.  ``timeout``
        (seconds from this call) bounds the whole iteration.  A failed task raises its
        :class:`TaskFailed` when its turn comes; leaving early cancels what is in flight."""
        if not 1 <= chunk_size <= 10_000 or window < chunk_size:
            raise InvalidInput(f"map: chunk_size must be in 1..10000 and window >= chunk_size, "
                               f"got {chunk_size} and {window}")
        deadline = None if timeout is None else time.monotonic() + timeout
        source = iter(inputs)
        inflight: deque[TaskFuture] = deque()

        def fill() -> None:
            while len(inflight) + chunk_size <= window:
                chunk = list(itertools.islice(source, chunk_size))
                if not chunk:
                    return
                inflight.extend(self.submit_many(capability, chunk, **options))
        fill()
        return self._results(inflight, fill, deadline)

    def _results(self, inflight: deque[TaskFuture], fill: Any, deadline: float | None) -> Iterator[Any]:
        try:
            while inflight:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield inflight[0].result(left)
                inflight.popleft()
                fill()
        finally:
            self._abandon(inflight)

    def _abandon(self, futures: Iterable[TaskFuture]) -> None:
        """Leaving a map early: cancel its tasks still running (without waiting)."""
        for f in futures:
            if not f.done() and f.task_id is not None:
                self.conn.send("cancel", {"id": f.task_id}, callback=lambda p: None)
                f._cancel_locally()

    def future(self, task_id: str) -> TaskFuture | PipelineFuture:
        """A future for a task or pipeline (``p-`` id) submitted earlier, by anyone."""
        if task_id.startswith("p-"):
            rec = self.call("pipeline_result", id=task_id)
            pf = PipelineFuture(self.conn, task_id, {s["step_id"]: s["id"] for s in rec["steps"]})
            pf.watch()
            return pf
        rec = self.call("result", id=task_id)  # NotFound for an unknown id, here
        f = TaskFuture(self.conn, rec["capability"], task_id)
        f.watch()
        return f

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The result of a task (or a pipeline's step outputs), waiting at most ``timeout``
        seconds (``None``: as long as it runs); ``TaskFailed`` if it failed."""
        return self.future(task_id).result(timeout)

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task or a pipeline; ``outcome`` says what happened (cancelled, stopping,
        already_ended)."""
        return self.call("cancel", id=task_id)

    def retry(self, *task_ids: str) -> list[dict[str, Any]]:
        """Run failed or dead-lettered tasks again with fresh attempts."""
        return self.call("retry", ids=list(task_ids))

    def task(self, task_id: str) -> dict[str, Any]:
        """The journal's record of one task (state, attempts, result or error)."""
        return self.call("result", id=task_id)

    def tasks(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Recent tasks, newest first, optionally of one ``state``."""
        return self.call("tasks", limit=limit, **({"state": state} if state else {}))

    def attempts(self, task_id: str) -> list[dict[str, Any]]:
        """Every attempt of a task: agent, outcome, error."""
        return self.call("attempts", id=task_id)

    def pipeline(self, spec: dict[str, Any]) -> PipelineFuture:
        """Submit a pipeline (``{"name": .., "steps": [{"id", "capability", "input"}, ...]}``,
        a step's input may hold ``{"$ref": "other_step"}``; ``name`` defaults to "pipeline");
        a future whose result maps each step id to its output."""
        made = self.call("pipeline", spec={"name": "pipeline", **spec})
        pf = PipelineFuture(self.conn, made["id"], made["steps"])
        pf.watch()
        return pf

    # --- the daemon --------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """The coordinator's pid and protocol version."""
        return self.call("ping")

    def status(self) -> dict[str, Any]:
        """Home, uptime, the supervision tree, agents and task counts."""
        return self.call("status")

    def ps(self) -> list[dict[str, Any]]:
        """Every process of the tree with its pid, state, restarts, memory and CPU."""
        return self.call("ps")

    def agents(self) -> list[dict[str, Any]]:
        """The connected agents: pool, pid, capabilities, tasks in flight and done."""
        return self.call("agents")

    def pools(self) -> Any:
        """Each pool's size, bounds and scaling state."""
        return self.call("pools")

    def scale(self, pool: str, size: int) -> Any:
        """Set a pool's size now (within its bounds)."""
        return self.call("scale", pool=pool, size=size)

    def events(self, type: str | None = None, *, agent: str | None = None, since: float | None = None,
               trace_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The last ``limit`` events matching the filters (``type`` is a prefix)."""
        given = {"type": type, "agent": agent, "since": since, "trace_id": trace_id}
        return self.call("events", limit=limit, **{k: v for k, v in given.items() if v is not None})

    def trace(self, id: str) -> Any:
        """The spans of a task's or a pipeline's trace."""
        return self.call("trace", id=id)

    def metrics(self) -> Any:
        """The daemon's counters and latency histograms."""
        return self.call("metrics")

    def journal_stats(self) -> dict[str, Any]:
        """The journal's size, counts and retention."""
        return self.call("journal_stats")

    def down(self) -> Any:
        """Ask the daemon to stop (running tasks get their drain time)."""
        return self.call("down")

    # --- shared context and the registry ------------------------------------------------

    def context_put(self, name: str, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Publish a ``.npy`` file (or a new version of it) as shared context ``name``."""
        return self.call("context_put", name=name, path=os.fspath(os.path.abspath(path)))

    def context_ls(self) -> Any:
        """The published contexts with their versions and sizes."""
        return self.call("context_ls")

    def context_rm(self, name: str) -> dict[str, Any]:
        """Withdraw a context."""
        return self.call("context_rm", name=name)

    def registry_ls(self) -> Any:
        """Who is registered, with what capabilities."""
        return self.call("registry_ls")

    def registry_get(self, key: str) -> dict[str, Any]:
        """One registry entry (``NotFound`` if there is none)."""
        return self.call("registry_get", key=key)

    # --- market and decisions ---------------------------------------------------------

    def market(self, limit: int = 50) -> Any:
        """Recent auctions: bids, scores, winners."""
        return self.call("market", limit=limit)

    def ledger(self, agent: str | None = None, limit: int = 50) -> Any:
        """Balances and recent transfers, in credits."""
        return self.call("ledger", limit=limit, **({"agent": agent} if agent else {}))

    def reputation(self, capability: str | None = None) -> Any:
        """Each agent's reputation (per capability)."""
        return self.call("reputation", **({"capability": capability} if capability else {}))

    def resources(self, limit: int = 20) -> Any:
        """Resources agents buy in sale auctions: units, holders, waiting bids, recent sales."""
        return self.call("resources", limit=limit)

    def resource_create(self, name: str, *, quantity: int = 1, auction: str = "vickrey",
                        reserve: float = 0.0, **more: Any) -> Any:
        """Create a resource agents bid for (``task.acquire(name, limit=...)``); durable."""
        return self.call("resource_create", name=name, quantity=quantity, auction=auction,
                         reserve=reserve, **more)

    def subcontracts(self, limit: int = 50) -> Any:
        """Subcontracts agents paid from their balances (``task.subcontract``)."""
        return self.call("subcontracts", limit=limit)

    def vote(self, question: str, options: list[str], *, method: str = "plurality",
             pool: str | None = None, voters: list[str] | None = None, deadline_s: float | None = None,
             quorum: int | None = None, weights: dict[str, float] | None = None,
             wait: bool = True) -> dict[str, Any]:
        """Ask agents to vote; with ``wait`` the outcome (tally, winner), else the vote's id."""
        given = {"pool": pool, "voters": voters, "deadline_s": deadline_s, "quorum": quorum,
                 "weights": weights}
        args = {k: v for k, v in given.items() if v is not None}
        bound = (deadline_s or self.timeout) + 10.0 if wait else None
        return self.call("vote", timeout=bound, question=question, options=options, method=method,
                         wait=wait, **args)

    def negotiate(self, question: str, options: list[str], *, method: str = "plurality",
                  threshold: float = 0.5, max_rounds: int = 3, round_s: float | None = None,
                  pool: str | None = None, voters: list[str] | None = None) -> dict[str, Any]:
        """Rounds of proposals and votes until ``threshold`` agrees (or ``max_rounds``)."""
        given = {"round_s": round_s, "pool": pool, "voters": voters}
        bound = max_rounds * (round_s or self.timeout) + 10.0
        return self.call("negotiate", timeout=bound, question=question, options=options, method=method,
                         threshold=threshold, max_rounds=max_rounds,
                         **{k: v for k, v in given.items() if v is not None})

    def votes(self, id: str | None = None, limit: int = 50) -> Any:
        """Recent votes and negotiations (one by ``id``)."""
        return self.call("votes", **({"id": id} if id else {"limit": limit}))

    def locks(self) -> Any:
        """The distributed locks held now."""
        return self.call("locks")

    def leaders(self) -> Any:
        """The elected leaders."""
        return self.call("leaders")


class _Streamed:
    """``submit_many`` with ``results``: the ids, then the records as their tasks end
    (``runtime.coordinator.task_commands``), each to its future (reader thread)."""

    def __init__(self, futures: list[TaskFuture]) -> None:
        self.futures = futures
        self.by_id: dict[str, TaskFuture] = {}

    def __call__(self, p: Pending) -> None:
        if p.error is not None:
            return self._fail_rest(p.error)
        assert p.reply is not None
        if p.reply.kind == "more":
            return self._more(p.reply.value)
        if p.reply.kind == "error":
            err = from_wire(p.reply.value)
            if isinstance(err, DeadlineExceeded) and self.by_id:  # an hour passed: ask one by one
                for f in self.futures:
                    f.done() or f.watch()
                return None
            return self._fail_rest(err)
        return None

    def _more(self, value: dict[str, Any]) -> None:
        if "ids" in value:
            for f, tid in zip(self.futures, value["ids"]):
                f._learn_id(tid)
                self.by_id[tid] = f
        by_id = self.by_id
        for tid, result in value.get("ok", ()):
            f = by_id.get(tid)
            if f is not None:
                f._settle(result)
        for rec in value.get("done", ()):
            f = by_id.get(rec["id"])
            if f is not None:
                f.on_record(rec)

    def _fail_rest(self, err: BaseException) -> None:
        for f in self.futures:
            if not f.done():
                f._fail(err)


def connect(home: str | os.PathLike[str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Session:
    """A :class:`Session` with the daemon of ``home`` (``--home`` / ``AGORA_HOME`` /
    the default); ``DaemonNotRunning`` if none answers there."""
    return Session(home, timeout=timeout)

