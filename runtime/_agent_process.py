"""The agent process: a user's Agent, a task path and a separate control path.

::

    coordinator ==(agents.sock, frames)==> reader thread --tasks--> queue --> main thread
                                             |  cfp / vote / propose             | handler(input, task)
                                             +--answers at once (control path)   +--> results (batched)

The reader thread owns every read from the socket: task frames go to the queue, calls
for proposals and ballots are answered at once by the agent's ``bid``/``vote``/
``propose`` hooks, so an agent busy in a long handler still bids and votes.  Writes are
serialised by one lock.  Results finished back-to-back are sent in one frame.

Messages (orjson frames, see runtime._protocol):
  -> {"t": "hello", "agent": id, "pool", "index", "pid", "caps": {cap: {cost, quality}}}
  <- {"t": "tasks", "tasks": [{"id", "attempt", "cap", "input", "trace"}]}
  -> {"t": "results", "results": [{"id", "attempt", "ok": value} | {..., "error": {...}}],
      "queue": n}
  <- {"t": "ask", "rid", "kind": "bid"|"vote"|"propose", "request": {...}}
  -> {"t": "answer", "rid", "answer": value | None, "error": str (hook raised)}
  -> {"t": "call", "rid", "op", "args"}       the agent asks (locks, leases, barriers...)
  <- {"t": "reply", "rid", "ok": value} | {"t": "reply", "rid", "error": {...}}

EOF from the coordinator means it is gone: the agent exits (the supervisor's
rest_for_one restarts the pools after a new coordinator anyway).
"""

from __future__ import annotations

import importlib
import itertools
import os
import socket
import threading
import time
import traceback
from collections import deque
from typing import Any

from runtime._payload import Payloads
from runtime._server import InternalReader, encode_internal
from runtime.agent import Agent, AgentContext, TaskHandle
from runtime.config import Config, RunPaths
from runtime.envelope import TraceContext
from runtime.errors import InvalidInput, Unavailable, from_wire
from runtime.events import Emitter

__all__ = ["agent_main", "import_agent", "AgentRunner"]


def import_agent(path: str) -> type[Agent]:
    """``"package.module:ClassName"`` -> the class (imported here, after the fork)."""
    mod_name, _, cls_name = path.partition(":")
    if not mod_name or not cls_name:
        raise InvalidInput(f"expected an agent import path 'module:Class', got {path!r}")
    cls = getattr(importlib.import_module(mod_name), cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise InvalidInput(f"{path!r} is not a runtime.Agent subclass")
    return cls


def _connect(path: str, deadline: float) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError as e:
            s.close()
            if time.monotonic() > deadline:
                raise Unavailable(f"agent cannot reach the coordinator at {path}: {e}") from e
            time.sleep(0.005)


class _Contexts:
    """Shared context, opened on first use (agents that use none never map anything)."""

    def __init__(self, home: str) -> None:
        self.home = home
        self._reader: Any = None

    def _get(self) -> Any:
        if self._reader is None:
            from shm.context import ContextReader
            self._reader = ContextReader(self.home)
        return self._reader

    def array(self, name: str) -> Any:
        return self._get().array(name)

    def bytes(self, name: str) -> memoryview:
        return self._get().bytes(name)


class AgentRunner:
    """The two paths of one agent process around one socket."""

    def __init__(self, agent: Agent, sock: socket.socket, emit: Emitter, agent_id: str,
                 payloads: Payloads | None = None) -> None:
        self.payloads = payloads or Payloads(None, 0)
        self.agent = agent
        self.sock = sock
        self.emit = emit
        self.agent_id = agent_id
        self.tasks: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.gone = False
        self._calls: dict[int, list[Any]] = {}  # rid -> [event, reply]
        self._running = threading.local()  # the trace of the task this thread runs
        self._call_ids = itertools.count(1)

    def send(self, msg: dict[str, Any]) -> None:
        data = encode_internal(msg)
        with self.send_lock:
            self.sock.sendall(data)

    # -- control path (reader thread) ----------------------------------------------------

    def read_loop(self) -> None:
        reader = InternalReader()
        try:
            while data := self.sock.recv(1 << 18):
                for msg in reader.feed(data):
                    self.on_message(msg)
        except OSError:
            pass
        with self.cond:
            self.gone = True
            self.cond.notify()
        for waiter in list(self._calls.values()):  # nobody will answer now
            waiter[1] = {"error": {"code": "UNAVAILABLE", "message": "the coordinator went away"}}
            waiter[0].set()

    def on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("t") == "tasks":
            with self.cond:
                self.tasks.extend(msg["tasks"])
                self.agent.queue_len = len(self.tasks)
                self.cond.notify()
        elif msg.get("t") == "ask":
            self.answer(msg)
        elif msg.get("t") == "reply":
            waiter = self._calls.get(msg.get("rid"))
            if waiter is not None:
                waiter[1] = msg
                waiter[0].set()

    def call(self, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        """Ask the coordinator (from any thread of the agent); raises its typed error."""
        rid = next(self._call_ids)
        waiter: list[Any] = [threading.Event(), None]
        self._calls[rid] = waiter
        msg = {"t": "call", "rid": rid, "op": op, "args": args}
        trace = getattr(self._running, "trace", None)
        if trace is not None:  # a call made by a handler belongs to its task's trace
            msg["trace"] = trace.to_wire()
        try:
            self.send(msg)
            if not waiter[0].wait(timeout):
                raise Unavailable(f"the coordinator did not answer {op!r} within {timeout} s")
        finally:
            self._calls.pop(rid, None)
        reply = waiter[1]
        if "error" in reply:
            raise from_wire(reply["error"])
        return reply.get("ok")

    def answer(self, msg: dict[str, Any]) -> None:
        hook = {"bid": self.agent.bid, "vote": self.agent.vote, "propose": self.agent.propose}[msg["kind"]]
        request = dict(msg.get("request") or {}, queue=len(self.tasks))
        try:
            self.send({"t": "answer", "rid": msg["rid"], "answer": hook(request)})
        except Exception as e:  # a user hook raised: the asker must hear it, not time out
            self.send({"t": "answer", "rid": msg["rid"], "answer": None,
                       "error": f"{type(e).__name__}: {e}"})

    # -- task path (main thread) ---------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self.read_loop, name="agora-agent-control", daemon=True).start()
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            results = [self.execute(t) for t in batch]
            with self.cond:
                queued = len(self.tasks)
            self.send({"t": "results", "results": results, "queue": queued})
            self.emit.maybe_flush()

    def _next_batch(self) -> list[dict[str, Any]] | None:
        with self.cond:
            while not self.tasks and not self.gone:
                self.cond.wait(self.emit.flush_due_in())
                self.emit.maybe_flush()
            if not self.tasks:
                return None
            batch = list(self.tasks)
            self.tasks.clear()
            self.agent.queue_len = 0
            return batch

    def execute(self, t: dict[str, Any]) -> dict[str, Any]:
        trace = TraceContext.from_wire(t.get("trace"))
        handle = TaskHandle(t["id"], t["attempt"], t["cap"], trace, self.emit)
        out: dict[str, Any] = {"id": t["id"], "attempt": t["attempt"]}
        self._running.trace = trace
        try:
            value = self.agent.handler(t["cap"])(self.payloads.unpack(t, "input"), handle)
            self.payloads.pack(value, "ok", out)
        except Exception as e:  # the attempt failed; the retry policy decides what follows
            out["error"] = {"type": type(e).__name__, "message": str(e),
                            "traceback": traceback.format_exc(limit=20)}
        finally:
            self._running.trace = None
        return out


def _volunteer_for_the_oom_killer() -> None:
    """RELIABILITY 9: when memory runs out the kernel should pick an agent, never the
    supervisor or the coordinator.  Raising one's own score needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass  # not Linux, or /proc read-only: the default scores apply


def agent_main(ctx: Any, cfg: Config, run: RunPaths, pool: str, index: int, slot: int) -> None:
    _volunteer_for_the_oom_killer()
    pc = cfg.pool(pool)
    agent_id = f"{pool}.{index}"
    emit = Emitter(run.events, f"agent:{agent_id}")
    agent = import_agent(pc.agent)()
    actx = AgentContext(agent_id, pool, index, pc.capabilities, _Contexts(str(cfg.home)), emit)
    agent.ctx = actx
    agent.setup(actx)
    sock = _connect(run.agents_sock, time.monotonic() + 10)
    arena = ctx.extra.get("arena")
    if arena is not None:
        arena.reset_slot(slot)  # a predecessor's blocks (if it died) are stale from now on
    runner = AgentRunner(agent, sock, emit, agent_id, Payloads(arena, slot))
    actx.call = runner.call
    caps = {c: pc.capabilities.get(c, {}) for c in agent.handlers}
    runner.send({"t": "hello", "agent": agent_id, "pool": pool, "index": index,
                 "pid": os.getpid(), "caps": caps})
    ctx.ready()
    runner.run()
    emit.close()
