"""The agent process: a user's Agent, a task path and a separate control path.

::

    coordinator ==(agents.sock, frames)==> thread READING --cfp / vote / propose--> answers at once
                                               |  tasks, the other thread idle: it takes READING,
                                               |  this one runs them (handler(input, task))
                                               +- tasks, the other thread busy: queue --> it runs them next

Two threads take turns at two roles.  Exactly one thread at a time *reads*: it owns every
read from the socket and answers calls for bids, ballots and proposals at once with the
agent's ``bid``/``vote``/``propose`` hooks, so an agent busy in a long handler still bids
and votes.  At most one thread at a time *runs* tasks (handlers never run concurrently).
When tasks arrive and the other thread is idle, the reading thread hands it the reading
role and runs the tasks itself: the task starts with no wake-up of another thread on its
path (a hand-off through a queue cost about 40 us here, a tenth of a task's round trip).
When the other thread is busy running, the tasks are queued for it.  Writes are
serialised by one lock.  Results finished back-to-back are sent in one frame.

Messages (orjson frames, see runtime.wire.protocol):
  -> {"t": "hello", "agent": id, "pool", "index", "pid", "caps": {cap: {cost, quality}}, "vc"}
  <- {"t": "tasks", "tasks": [{"id", "attempt", "cap", "input", "trace", "vc"}]}
  -> {"t": "results", "results": [{"id", "attempt", "ok": value} | {..., "error": {...}}],
      (each also with "run_us": the handler's time, for the scheduler's adaptive prefetch,
      and "vc": the agent's vector clock stamp of the result, runtime.observability.vclock;
      a task marked "short": true, from a capability the scheduler found short, is run by
      the reading thread itself when the other one is idle: no hand-off wake-up)
      "queue": n}
  <- {"t": "ask", "rid", "kind": "bid"|"vote"|"propose"|"sale", "request": {...}, "vc"}
  -> {"t": "answer", "rid", "answer": value | None, "error": str (hook raised), "vc": stamp}
  -> {"t": "call", "rid", "op", "args", "vc"}       the agent asks (locks, leases, barriers...)
  <- {"t": "reply", "rid", "ok": value, "vc"} | {"t": "reply", "rid", "error": {...}, "vc"}
  <- {"t": "cancel", "tasks": [{"id", "attempt"}], "reason"?}   stop these attempts
The hello also says "concurrency": n (attempts at once).  An agent whose pool has
``concurrency > 1`` or an ``async def`` handler runs its attempts through
runtime.agents.executor (ConcurrentRunner below); the others keep the two threads above
(InlineRunner: with cancellation).

Connecting (``runtime.supervision.kinship``): the coordinator first sends
``{"t": "challenge", "nonce"}``; the hello carries ``proof``, an HMAC of the nonce, the id and
the pid under the run's secret, which only processes forked by this root hold.

EOF from the coordinator means it died (a coordinator restart does not restart agents,
see runtime.daemon.root): the agent keeps running its tasks and reconnects with backoff
(20 ms doubling to 0.5 s, for at most ``RECONNECT_S``; then it exits and its pool restarts
it).  The new hello re-announces it with ``inflight`` (``[{"id", "attempt"}]`` still
running) and ``results`` (finished while the coordinator was away, plus the last
``RECENT_RESULTS`` delivered ones, which the old coordinator may not have committed; the
journal records each once).  An agent that cannot reach the coordinator at start-up is
ready at once and keeps trying on its own: no start in the root waits on the coordinator.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
import traceback
from collections import deque
from typing import Any

from runtime.agents.agent import Agent, AgentContext, TaskHandle
from runtime.agents.executor import ConcurrentMixin, InlineMixin, needs_executor
from runtime.agents.loading import import_agent
from runtime.agents.services import agent_guards
from runtime.config import Config, RunPaths
from runtime.errors import Unavailable, from_wire
from runtime.observability.events import Emitter
from runtime.observability.trace_context import TraceContext
from runtime.observability.vclock import LiveClock
from runtime.tasks.payloads import Payloads
from runtime.wire.buffers import RECV_BYTES
from runtime.wire.server import InternalReader, encode_internal

__all__ = ["agent_main", "import_agent", "AgentRunner", "InlineRunner", "ConcurrentRunner", "make_runner",
           "RECONNECT_S"]

RECONNECT_S = 10.0  # how long an agent tries to reach a (restarting) coordinator
RECENT_RESULTS = 64  # delivered results re-announced after a reconnect
HANDSHAKE_S = 2.0  # one connection attempt: connect, challenge, hello


def _handshake(path: str, secret: bytes, hello: dict[str, Any]) -> tuple[socket.socket, InternalReader]:
    """One attempt: connect, read the challenge, send the hello with its proof.
    Raises OSError (nobody listens, or it went away) or Unavailable (no challenge)."""
    from runtime.supervision.kinship import proof
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(HANDSHAKE_S)
        s.connect(path)
        reader = InternalReader()
        frames: list[Any] = []
        while not frames:
            data = s.recv(RECV_BYTES)
            if not data:
                raise ConnectionResetError("the coordinator closed before its challenge")
            frames = reader.feed(data)
        first = frames[0]
        if not isinstance(first, dict) or first.get("t") != "challenge":
            raise Unavailable(f"expected a challenge from the coordinator, got {str(first)[:80]!r}")
        s.sendall(encode_internal({**hello, "proof": proof(secret, str(first.get("nonce")),
                                                           hello["agent"], hello["pid"])}))
        s.settimeout(None)
        return s, reader
    except BaseException:
        s.close()
        raise


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
    """The two paths of one agent process around one socket (see the module docstring)."""

    def __init__(self, agent: Agent, sock: socket.socket, emit: Emitter, agent_id: str,
                 payloads: Payloads | None = None) -> None:
        self.payloads = payloads or Payloads(None, 0)
        self.agent = agent
        self.sock = sock
        self.emit = emit
        self.agent_id = agent_id
        self.tasks: deque[dict[str, Any]] = deque()
        self.cond = threading.Condition()  # guards tasks, reader_free, idle, gone
        self.reader_free = True  # no thread holds the reading role
        self.idle = 0  # threads waiting in _next_job
        self.gone = False
        self.frames = InternalReader()  # the stream's decoder: used by the reading thread only
        self.send_lock = threading.Lock()
        self._calls: dict[int, list[Any]] = {}  # rid -> [event, reply]
        self._abandoned: dict[int, tuple[str, dict[str, Any]]] = {}  # rid -> (release op, args)
        self._running = threading.local()  # the trace of the task this thread runs
        self._call_ids = itertools.count(1)
        self.clock = LiveClock(agent_id)  # this agent's own vector clock (runtime.observability.vclock)
        # the connection part (agent_main sets these): see "EOF from the coordinator"
        self.path = ""
        self.secret = b""
        self.hello: dict[str, Any] = {}
        self.inflight: dict[str, int] = {}  # task id -> attempt, received and not yet answered
        self.pending: list[dict[str, Any]] = []  # results the coordinator has not had
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_RESULTS)
        self.reconnects = 0
        self._handles: dict[tuple[str, int], TaskHandle] = {}  # running attempts, for cancel
        self._inline: int | None = None  # the reading thread's id while it runs short tasks
        self._handed = False  # ... and a handler's call made it give up the reading role

    def send(self, msg: dict[str, Any]) -> None:
        data = encode_internal(msg)
        with self.send_lock:
            if self.sock is None:
                raise ConnectionError("not connected to the coordinator (it is restarting)")
            self.sock.sendall(data)

    # -- the connection (hello, reconnect) -----------------------------------------------

    def connect_once(self) -> bool:
        """One handshake attempt; on success the hello re-announces in-flight attempts and
        undelivered (and recent) results.  Holds the send lock: nothing else is sent on the
        new socket before the hello."""
        with self.send_lock:
            hello = {**self.hello, "inflight": [{"id": k, "attempt": v} for k, v in self.inflight.items()],
                     "results": [*self.pending, *(r for r in self.recent if r not in self.pending)],
                     "vc": self.clock.now}  # a restarted coordinator's clock resumes past it
            try:
                sock, reader = _handshake(self.path, self.secret, hello)
            except (OSError, Unavailable):
                return False
            self.sock, self.frames = sock, reader
            self.recent.extend(self.pending)
            self.pending = []
        return True

    def reconnect(self, budget: float = RECONNECT_S) -> bool:
        """The coordinator went away: retry with backoff for at most ``budget`` seconds."""
        with self.send_lock:
            old, self.sock = self.sock, None
        if old is not None:
            old.close()
        self._fail_calls()
        deadline = time.monotonic() + budget
        delay = 0.02
        while True:
            if self.connect_once():
                self.reconnects += 1
                self.emit("agent.reconnected", agent=self.agent_id, inflight=len(self.inflight))
                return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)  # backoff between attempts (bounded by the deadline above)
            delay = min(delay * 2, 0.5)

    def _deliver(self, results: list[dict[str, Any]], queued: int) -> None:
        """Send results; kept for the next hello when the coordinator is away."""
        data = encode_internal({"t": "results", "results": results, "queue": queued})
        with self.send_lock:
            for r in results:
                if self.inflight.get(r.get("id")) == r.get("attempt"):
                    del self.inflight[r["id"]]
            try:
                if self.sock is None:
                    raise ConnectionError("not connected")
                self.sock.sendall(data)
            except OSError:
                self.pending.extend(results)
                return
            self.recent.extend(results)

    def run(self) -> None:
        """Serve until the coordinator goes away: this thread and one helper take turns."""
        threading.Thread(target=self._work, name="agora-agent-peer", daemon=True).start()
        self._work()

    def _work(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            if job == "read":
                self._read()
            else:
                self._run_batch(job)

    def _next_job(self) -> list[dict[str, Any]] | str | None:
        """Queued tasks to run, "read" (take the reading role), or None (gone)."""
        with self.cond:
            self.idle += 1
            while not self.tasks and not self.reader_free and not self.gone:
                self.cond.wait(self.emit.flush_due_in())
                self.emit.maybe_flush()
            self.idle -= 1
            if self.gone:
                return None
            if self.tasks:
                batch = list(self.tasks)
                self.tasks.clear()
                self.agent.queue_len = 0
                return batch
            self.reader_free = False
            return "read"

    # -- the reading role (control path) -------------------------------------------------

    def _read(self) -> None:
        """Read and answer until tasks arrive while the other thread is idle: then hand it
        the reading role and run them here (no hand-off on the task's path)."""
        while True:
            try:
                data = self.sock.recv(RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                if self.path and self.reconnect():
                    continue
                self._coordinator_gone()
                return
            batch: list[dict[str, Any]] = []
            for msg in self.frames.feed(data):
                if msg.get("t") == "tasks":
                    batch.extend(msg["tasks"])
                else:
                    self.on_control(msg)
            for t in batch:
                self.inflight[t["id"]] = t["attempt"]
            how = self._hand_over_or_queue(batch) if batch else False
            if how == "inline" and not self._run_inline(batch):
                return  # a handler asked the coordinator: the other thread reads now
            if how is True:
                self._run_batch(batch)
                return

    def _hand_over_or_queue(self, batch: list[dict[str, Any]]) -> bool | str:
        """True when the other thread is idle and takes over reading (run ``batch`` now);
        "inline" when it is idle and every task is marked ``short`` by the coordinator (run
        them here and keep the reading role: waking the other thread costs more than the
        tasks, and control frames wait at most the batch); else ``batch`` is queued for
        the thread that is running tasks."""
        with self.cond:
            if self.idle and not self.tasks:
                if all(t.get("short") for t in batch):
                    return "inline"
                self.reader_free = True
                self.cond.notify()
                return True
            self.tasks.extend(batch)
            self.agent.queue_len = len(self.tasks)
            self.cond.notify()
            return False

    def _run_inline(self, batch: list[dict[str, Any]]) -> bool:
        """Run short tasks on the reading thread; False if a handler's ``call`` had to give
        the reading role to the other thread meanwhile (its reply must be read)."""
        self._inline = threading.get_ident()
        try:
            self._run_batch(batch)
        finally:
            self._inline = None
        kept, self._handed = not self._handed, False
        return kept

    def _give_up_reading(self) -> None:
        """``call`` from a handler run inline: wake the other thread to read the reply."""
        if self._inline == threading.get_ident() and not self._handed:
            self._handed = True
            with self.cond:
                self.reader_free = True
                self.cond.notify()

    def _coordinator_gone(self) -> None:
        with self.cond:
            self.gone = True
            self.cond.notify_all()
        self._fail_calls()

    def _fail_calls(self) -> None:
        for waiter in list(self._calls.values()):  # nobody will answer now
            waiter[1] = {"error": {"code": Unavailable.code, "message": "the coordinator went away"}}
            waiter[0].set()

    def on_control(self, msg: dict[str, Any]) -> None:
        if msg.get("t") == "ask":
            self.answer(msg)
        elif msg.get("t") == "cancel":
            self._on_cancel(msg)
        elif msg.get("t") == "reply":
            waiter = self._calls.get(msg.get("rid"))
            if waiter is not None:
                waiter[1] = msg
                waiter[0].set()
            else:
                self._release_abandoned(msg)

    def _on_cancel(self, msg: dict[str, Any]) -> None:
        """The coordinator wants attempts stopped: flag their handles (``task.cancelled``);
        a handler that never looks is killed after its pool's grace (the coordinator's
        side, runtime.tasks.scheduler)."""
        for entry in msg.get("tasks") or ():
            handle = self._handles.get((entry.get("id"), entry.get("attempt")))
            if handle is not None:
                handle.cancelled = True

    def call(self, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        """Ask the coordinator (from any thread of the agent); raises its typed error."""
        rid = next(self._call_ids)
        waiter: list[Any] = [threading.Event(), None]
        self._calls[rid] = waiter
        msg = {"t": "call", "rid": rid, "op": op, "args": args, "vc": self.clock.tick()}
        trace = getattr(self._running, "trace", None)
        if trace is not None:  # a call made by a handler belongs to its task's trace
            msg["trace"] = trace.to_wire()
        self._give_up_reading()
        try:
            try:
                self.send(msg)
            except OSError as e:  # the coordinator is restarting: a typed, retryable error
                raise Unavailable(f"the coordinator is not reachable for {op!r}: {e}",
                                  hint="retry shortly: the agent reconnects on its own") from e
            if not waiter[0].wait(timeout):
                self._abandon(rid, op, args, waiter)
                raise Unavailable(f"the coordinator did not answer {op!r} within {timeout} s")
        finally:
            self._calls.pop(rid, None)
        reply = waiter[1]
        self.clock.receive(reply.get("vc"))  # the reply's receipt: ordered after the coordinator's
        if "error" in reply:
            raise from_wire(reply["error"])
        return reply.get("ok")

    def _abandon(self, rid: int, op: str, args: dict[str, Any], waiter: list[Any]) -> None:
        """The caller gave up on an acquire: a grant that arrives now is released at once
        rather than held, by nobody, until its TTL (issue 18).  Registered before the call
        leaves ``_calls``, checked after: a reply in between is never lost."""
        if op not in _RELEASE_OF:
            return
        while len(self._abandoned) >= ABANDONED_MAX:
            self._abandoned.pop(next(iter(self._abandoned)))
        self._abandoned[rid] = (_RELEASE_OF[op], args)
        self._calls.pop(rid, None)
        if waiter[0].is_set():
            self._release_abandoned({**waiter[1], "rid": rid})

    def _release_abandoned(self, msg: dict[str, Any]) -> None:
        gave_up = self._abandoned.pop(msg.get("rid"), None)  # type: ignore[arg-type]
        granted = msg.get("ok")
        if gave_up is None or not isinstance(granted, dict) or "token" not in granted:
            return
        op, args = gave_up
        release = {"name": args.get("name"), "token": granted["token"],
                   **({"task": args["task"]} if "task" in args else {})}
        try:  # fire and forget: its reply finds no waiter and is dropped
            self.send({"t": "call", "rid": next(self._call_ids), "op": op, "args": release})
        except OSError:
            pass  # the coordinator went away: the lease's TTL ends it

    def answer(self, msg: dict[str, Any]) -> None:
        hook = {"bid": self.agent.bid, "vote": self.agent.vote, "propose": self.agent.propose,
                "sale": self.agent.sale_bid}[msg["kind"]]
        request = dict(msg.get("request") or {}, **self.ask_load())
        if msg["kind"] == "vote":
            self._resolve_refs(request)
        self.clock.receive(msg.get("vc"))  # the ask's receipt
        try:
            self.send({"t": "answer", "rid": msg["rid"], "answer": hook(request), "vc": self.clock.tick()})
        except Exception as e:  # a user hook raised: the asker must hear it, not time out
            self.send({"t": "answer", "rid": msg["rid"], "answer": None,
                       "error": f"{type(e).__name__}: {e}", "vc": self.clock.tick()})

    def ask_load(self) -> dict[str, Any]:
        """What bids and votes see of this agent's load (``queue``: tasks waiting)."""
        return {"queue": len(self.tasks)}

    def _resolve_refs(self, request: dict[str, Any]) -> None:
        """A consensus vote's large candidates (and a large step input) come as a reference
        with an arena handle (coordination.services.decisions): the hook gets the value
        itself, read from the coordinator's block; a block already gone leaves the
        reference (size and preview)."""
        candidates = request.get("candidates")
        places = list(candidates.items()) if isinstance(candidates, dict) else []
        for label, value in places + [(None, request.get("input"))]:
            if isinstance(value, dict) and "$large" in value and "handle" in value:
                try:
                    read = self.payloads.peek(value["handle"])
                except Exception:  # noqa: BLE001 - stale, reset or malformed: keep the reference
                    continue
                if label is None:
                    request["input"] = read
                else:
                    candidates[label] = read

    # -- the running role (task path) ----------------------------------------------------

    def _run_batch(self, batch: list[dict[str, Any]]) -> None:
        results = [self.execute(t) for t in batch]
        with self.cond:
            queued = len(self.tasks)
        self._deliver(results, queued)  # kept for the next hello if the coordinator is away
        self.emit.maybe_flush()

    def execute(self, t: dict[str, Any]) -> dict[str, Any]:
        trace = TraceContext.from_wire(t.get("trace"))
        handle = TaskHandle(t["id"], t["attempt"], t["cap"], trace, self.emit, self.call)
        out: dict[str, Any] = {"id": t["id"], "attempt": t["attempt"]}
        self._running.trace = trace
        self._handles[(t["id"], t["attempt"])] = handle
        try:
            value = self.agent.handler(t["cap"])(self.payloads.unpack(t, "input"), handle)
            self.payloads.pack(value, "ok", out)
        except Exception as e:  # the attempt failed; the retry policy decides what follows
            out["error"] = {"type": type(e).__name__, "message": str(e),
                            "traceback": traceback.format_exc(limit=20)}
        finally:
            self._running.trace = None
            self._handles.pop((t["id"], t["attempt"]), None)
        return out


#: acquire ops -> the op that gives back what a late grant handed a caller that gave up
_RELEASE_OF = {"lock.acquire": "lock.release", "lease.acquire": "lease.release"}
ABANDONED_MAX = 256  # late grants remembered (bounded: RELIABILITY "no state without an exit")


class InlineRunner(InlineMixin, AgentRunner):
    """One plain handler at a time, no hand-off on the task's path, plus cancellation."""


class ConcurrentRunner(ConcurrentMixin, AgentRunner):
    """Up to ``concurrency`` attempts at once (runtime.agents.executor)."""


def make_runner(agent: Agent, sock: socket.socket, emit: Emitter, agent_id: str, payloads: Payloads,
                concurrency: int) -> AgentRunner:
    """The runner this agent needs (see runtime.agents.executor)."""
    if needs_executor(agent, concurrency):
        return ConcurrentRunner(agent, sock, emit, agent_id, payloads, concurrency)
    return InlineRunner(agent, sock, emit, agent_id, payloads)


def _volunteer_for_the_oom_killer() -> None:
    """RELIABILITY 9: when memory runs out the kernel should pick an agent, never the
    supervisor or the coordinator.  Raising one's own score needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass  # not Linux, or /proc read-only: the default scores apply


def _make_agent(cfg: Config, pc: Any, ids: tuple[str, str, int], res: Any) -> Any:
    """The user's Agent here (engine "local"), or the driver of its Ray actor (runtime.agents.engines)."""
    if pc.engine == "ray":
        from runtime.agents._ray import RayAgent
        from runtime.agents.engines import ray_env
        return RayAgent(cfg, pc, import_agent(pc.agent, cfg.config_dir), ids, res.ray_address, ray_env(res.ray_token))
    return import_agent(pc.agent, cfg.config_dir)()


def agent_main(ctx: Any, cfg: Config, run: RunPaths, pool: str, index: int, slot: int) -> None:
    _volunteer_for_the_oom_killer()
    pc = cfg.pool(pool)
    agent_id = f"{pool}.{index}"
    emit = Emitter(run.events, f"agent:{agent_id}")
    if pc.engine == "ray":  # joining the cluster and placing the actor take seconds (or
        ctx.ready()         # never, if no node fits): the root's start must not wait on it
    agent = _make_agent(cfg, pc, (agent_id, pool, index), ctx.resources)
    actx = AgentContext(agent_id, pool, index, pc.capabilities, _Contexts(str(cfg.home)), emit)
    agent.ctx = actx
    table = ctx.resources.guard_table  # machine-wide: in-flight de-duplication across agents as well
    actx.guards = agent_guards(cfg.services, table, emit,
                               flights_dir=os.path.join(run.dir, "flights") if table is not None else None)
    agent.setup(actx)
    arena = ctx.resources.arena
    if arena is not None:
        arena.reset_slot(slot)  # a predecessor's blocks (if it died) are stale from now on
    runner = make_runner(agent, None, emit, agent_id, Payloads(arena, slot), pc.concurrency)  # type: ignore[arg-type]
    actx.call = runner.call
    runner.path, runner.secret = run.agents_sock, ctx.resources.agent_secret
    runner.hello = {"t": "hello", "agent": agent_id, "pool": pool, "index": index, "pid": os.getpid(),
                    "caps": {c: pc.capabilities.get(c, {}) for c in agent.handlers},
                    "concurrency": pc.concurrency}
    connected = runner.connect_once()
    ctx.ready()  # connected or not: the root's start never waits on the coordinator
    if connected or runner.reconnect():
        runner.run()
    emit.close()
