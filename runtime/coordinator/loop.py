"""The coordinator process: control socket, journal, dispatch (and, through them, the
market, voting and scaling).

One thread, one ``selectors`` loop; a turn of the loop reads as its table of contents::

    wait for sockets or the next timer
    -> serve ready sockets (client requests, agent hellos/results/answers, EOF = death)
    -> fire due timers (retries, deadlines, auction windows, vote deadlines)
    -> admit submissions waiting for mailbox room
    -> dispatch queued tasks to agents (allocation policy)
    -> commit the journal (group commit: every write of this turn in one COMMIT; one
       fsync too with durability = "power")
    -> send replies (only now: a task id is never acknowledged before it is durable)
    -> send task batches to agents, flush events

Clients never reach an agent or the root directly: the coordinator is their only door.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from runtime.config import Config, RunPaths, RunResources
from runtime.coordinator.command_kit import Deferred
from runtime.coordinator.commands import Commands
from runtime.coordinator.host import AgentListener, Command, ServiceFactory, ServiceHost
from runtime.coordinator.root_link import RootLink
from runtime.coordinator.slices import Slices
from runtime.errors import AgoraError, Conflict, InvalidInput, UnknownCommand, to_wire
from runtime.observability.events import Emitter
from runtime.observability.metrics import LoopLatency
from runtime.observability.telemetry import install_stop_wakeup
from runtime.observability.trace_context import TraceContext
from runtime.registry.service import open_registry
from runtime.tasks.journal import Journal
from runtime.tasks.payloads import Payloads
from runtime.tasks.scheduler import POLICIES, Scheduler, TaskRun
from runtime.wire import paths
from runtime.wire.boundary import error_wire
from runtime.wire.protocol import ProtocolError, encode_frame, parse_request, peer_uid
from runtime.wire.server import (
    MAX_PENDING_OUT,
    Conn,
    InternalReader,
    encode_internal,
    encode_reply,
    listen_unix,
)

__all__ = ["Coordinator", "Composition", "coordinator_main", "check_agent_message"]

ACCEPT_PAUSE_S = 0.05  # a listener out of descriptors rests this long before accepting again
ASK_TTL_S = 60.0  # an ask unanswered for this long is forgotten (its asker timed it out)

@dataclass(frozen=True)
class Composition:
    """What the composition root gives the coordinator: its services, as factories called
    with the coordinator (``ServiceHost``) in order, and its allocation policy, built after
    them (``policy(host, services)``: the market policy *is* the market service)."""

    services: tuple[tuple[str, ServiceFactory], ...] = ()
    policy: Callable[[ServiceHost, dict[str, Any]], Any] | None = None


def builtin_policy(name: str) -> Callable[[ServiceHost, dict[str, Any]], Any]:
    """One of the scheduler's own policies (static, least-loaded, p2c)."""
    return lambda host, services: POLICIES[name]()


class Coordinator:
    """Implements ``runtime.coordinator.host.ServiceHost`` for its services."""

    def __init__(self, cfg: Config, run: RunPaths, root_pid: int | None = None,
                 resources: RunResources | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 composition: Composition | None = None) -> None:
        self.cfg, self.run, self.root_pid, self.clock = cfg, run, root_pid, clock
        self.resources = resources or RunResources(run_id="")
        self.composition = composition or Composition(policy=builtin_policy(cfg.allocation))
        self.emit = Emitter(run.events, "coordinator")
        self.journal = Journal(cfg.home, durability="full" if cfg.durability == "power" else "normal")
        self.journal.checkpoint_in_background()  # COMMITs never pay for a checkpoint
        self.registry = open_registry(cfg, run, self.resources)
        self.scheduler = Scheduler(self.journal, None, self.emit, clock,  # policy: at start()
                                   capacity=cfg.agent_inflight, membership=self.registry)
        self.scheduler.final_listeners.append(self._task_final)
        self.scheduler.pools = {p.name: p for p in cfg.pools}  # timeout_s, cancel_grace_s, retry lists
        self.scheduler.payloads = Payloads(self.resources.arena, 0)
        self.sel = selectors.DefaultSelector()
        self.replies: list[tuple[Conn, dict[str, Any]]] = []
        self.waiters: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self.turn_hooks: list[Callable[[], None]] = []
        self.asks: dict[int, tuple[str, Callable[[str | None, dict[str, Any]], None]]] = {}
        self._ask_ids = itertools.count(1)
        self._asks_mark = 0
        self._asks_timer = False
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._timer_ids = itertools.count()
        self.agent_listeners: list[AgentListener] = []
        self.agent_ops: dict[str, Callable[[str, dict[str, Any], Any], Any]] = {}
        self.root = RootLink(run.root_sock)
        self.root.attach(self._open_root_conn, self.close_conn, self.call_later)
        self.latency = LoopLatency()  # `agora metrics`: turn busy time, timer lateness
        self.slices = Slices(None, clock, emit=self.emit)  # long commands, a slice per turn
        self.consensus_methods: set[str] = set()  # what a pipeline step may ask (decisions)
        self.commands = Commands(self)
        self.stopping = False

    # -- start -------------------------------------------------------------------------

    def start(self) -> None:
        paths.ensure_socket_dir(self.cfg.home)
        self.control = listen_unix(self.run.control)
        self.agents_listener = listen_unix(self.run.agents_sock)
        for lst, kind in ((self.control, "client"), (self.agents_listener, "agent")):
            lst.setblocking(False)
            self.sel.register(lst, selectors.EVENT_READ, ("listen", kind))
        self.publish_contexts()
        self.install_services()
        self.resume()

    def install_services(self) -> None:
        """Build the composition's services, then the allocation policy (which may be one
        of them); the command table is fixed from here on."""
        self.services: dict[str, Any] = {name: make(self) for name, make in self.composition.services}
        if self.composition.policy is None:
            raise InvalidInput(f"allocation {self.cfg.allocation!r} needs a policy the composition "
                               "root did not give", hint="start the coordinator through runtime.daemon")
        self.scheduler.policy = self.composition.policy(self, self.services)

    # -- the ServiceHost surface (runtime.coordinator.host) -----------------------------

    @property
    def known_capabilities(self) -> set[str]:
        return self.commands.capabilities

    def add_commands(self, table: dict[str, Command]) -> None:
        self.commands.extend(table)

    def add_agent_ops(self, ops: dict[str, Callable[[str, dict[str, Any], Any], Any]]) -> None:
        taken = sorted(set(ops) & set(self.agent_ops))
        if taken:
            raise Conflict(f"agent operations {taken} are registered twice")
        self.agent_ops.update(ops)

    def add_agent_listener(self, listener: AgentListener) -> None:
        self.agent_listeners.append(listener)

    def add_turn_hook(self, fn: Callable[[], None]) -> None:
        self.turn_hooks.append(fn)

    def add_final_listener(self, fn: Callable[[Any, Any], None]) -> None:
        self.scheduler.final_listeners.append(fn)

    def add_attempt_listener(self, fn: Callable[[Any, int, Any, bool], None]) -> None:
        self.scheduler.attempt_end_listeners.append(fn)

    def add_task_taker(self, fn: Callable[[Any], bool]) -> None:
        self.scheduler.takers.append(fn)

    def add_consensus_methods(self, methods: Iterable[str]) -> None:
        self.consensus_methods.update(methods)

    def publish_contexts(self) -> None:
        """The root names the coordinator owner of this run's context segments; the
        config's contexts are published before any agent starts (pools come after us)."""
        from shm.context import ContextStore
        from shm.segment import RunId
        self.contexts = ContextStore(RunId.parse(self.resources.run_id), self.cfg.home)
        for name, path in self.cfg.contexts.items():
            info = self.contexts.put_file(name, path)
            self.emit("context.published", name=name, version=info.version, bytes=info.nbytes)

    def resume(self) -> None:
        """Tasks accepted before a restart and not finished go back to their queues.

        After a daemon start ``Journal.unfinished`` closes the attempts that were running as
        crashed.  After a coordinator restart within a run, the agents are still running
        them: they stay open until the agents reconnect (``runtime.coordinator.reconcile``)."""
        from runtime.coordinator.reconcile import Reconciler
        self.reconciler = Reconciler(self.scheduler, self.journal, self.emit,
                                     self.commands.tasks.task_run, self.call_later)
        records = self.reconciler.hold() if self._count_start() > 1 else self.journal.unfinished()
        resumed = 0
        for rec in records:
            task = self.commands.tasks.task_run(rec)
            if rec.state == "queued":
                self.scheduler.enqueue(task)
            elif rec.state == "retry_wait":
                self.scheduler.tasks[task.id] = task
                self.scheduler._schedule_retry(task)
            resumed += rec.state != "blocked"
        self.emit("coordinator.resumed", tasks=resumed)

    def _count_start(self) -> int:
        """This coordinator's number within the run (1: the daemon just started)."""
        counter = self.resources.coordinator_starts
        if counter is None:
            return 1
        n = int.from_bytes(counter[:8], "little") + 1
        counter[:8] = n.to_bytes(8, "little")
        return n

    # -- the loop ----------------------------------------------------------------------

    def serve_forever(self, wake_fd: int | None = None) -> None:
        if wake_fd is not None:
            self.sel.register(wake_fd, selectors.EVENT_READ, ("wake", None))
        while not self.stopping:
            self.turn(self._timeout())
        self.drain_and_close()

    def turn(self, timeout: float | None) -> None:
        ready = self.sel.select(timeout)
        busy_from = self.clock()
        with self.journal.transaction():  # group commit: one COMMIT for the whole turn
            # (a turn that wrote nothing commits nothing: no WAL write, no fsync)
            # agents first: a hello or a result that arrived with a request is seen before it
            for key, mask in sorted(ready, key=lambda kv: kv[0].data[0] != "agent"):
                if mask & selectors.EVENT_WRITE:
                    self.on_writable(key)
                if mask & selectors.EVENT_READ:
                    self.on_ready(key)
            self.fire_timers()
            self.scheduler.fire_timers()
            for hook in list(self.turn_hooks):
                hook()
            self.scheduler.dispatch()
        self.send_replies()
        self.send_task_batches()
        self.emit.maybe_flush()
        self.run_slice()
        self.latency.turn(self.clock() - busy_from)

    def run_slice(self) -> None:
        """Long commands (trace, events, ps) a slice at a time, after this turn's replies
        went out; the replies of the jobs that ended go out at once."""
        if self.slices.busy:
            self.slices.run_slice()
            self.send_replies()

    def _timeout(self) -> float | None:
        mine = max(0.0, self.timers[0][0] - self.clock()) if self.timers else None
        ts = [t for t in (self.scheduler.next_timer_in(), self.emit.flush_due_in(),
                          self.commands.next_deadline_in(), mine,
                          0.0 if self.slices.busy else None) if t is not None]
        return min(ts) if ts else None

    def on_ready(self, key: selectors.SelectorKey) -> None:
        kind, detail = key.data
        if kind == "listen":
            self.accept(key.fileobj, detail)
        elif kind == "client":
            self.on_client(detail)
        elif kind == "agent":
            self.on_agent(detail)
        elif kind == "root":
            self.root.on_readable(detail)
        elif kind == "wake":
            os.read(key.fd, 64)
            self.stopping = True

    # -- clients -----------------------------------------------------------------------

    def accept(self, listener: socket.socket, kind: str) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as e:  # EMFILE/ENFILE/ENOBUFS (a flood of connections), ECONNABORTED
            self._accept_failed(listener, kind, e)
            return
        uid = peer_uid(sock)
        if uid != os.getuid():
            self.emit("control.refused", peer_uid=uid, socket=kind)
            sock.close()
            return
        if kind == "client":  # replies wait for a slow reader up to MAX_PENDING_OUT, then it goes
            conn = Conn(sock, encode=encode_reply, max_out=MAX_PENDING_OUT,
                        on_backlog=self._want_write, on_full=self._drop_slow_client)
        else:  # an agent's mailbox bounds what waits for it (the scheduler's mailbox limits)
            conn = Conn(sock, InternalReader(), encode_internal, on_backlog=self._want_write)
        self.sel.register(sock, selectors.EVENT_READ, (kind, conn))
        if kind == "agent":  # the agent proves its kinship in its hello (runtime.supervision.kinship)
            from runtime.supervision.kinship import new_nonce
            conn.state["nonce"] = new_nonce()
            conn.send({"t": "challenge", "nonce": conn.state["nonce"]})

    def _accept_failed(self, listener: socket.socket, kind: str, e: OSError) -> None:
        """Out of descriptors: serve the connections we have and pause this listener for
        ACCEPT_PAUSE_S (level-triggered, it would be ready again at once: a busy loop);
        the waiting peers stay in the backlog or are refused by the kernel."""
        self.emit("control.accept_failed", socket=kind, error=f"{type(e).__name__}: {e}"[:200])
        if e.errno == errno.ECONNABORTED:
            return  # that peer gave up; the next one is fine
        self.sel.unregister(listener)
        self.call_later(ACCEPT_PAUSE_S, lambda: self._resume_accept(listener, kind))

    def _resume_accept(self, listener: socket.socket, kind: str) -> None:
        if not self.stopping and listener.fileno() >= 0:
            self.sel.register(listener, selectors.EVENT_READ, ("listen", kind))

    def on_client(self, conn: Conn) -> None:
        try:
            frames = conn.read_frames()
        except AgoraError as e:  # bad bytes: the frames before them are answered, then the
            # refusal is the connection's last reply and it is closed (the stream is lost)
            self.refuse_stream(conn, getattr(e, "frames", []), e)
            return
        if frames is None:
            self.close_conn(conn)
            return
        for obj in frames:
            self.request(conn, obj)

    def refuse_stream(self, conn: Conn, frames: list[Any], exc: AgoraError) -> None:
        """A bad frame glued after good ones (runtime.wire.protocol): the good ones are
        answered, the bad one refused explicitly, never dropped silently; then hang up
        once those replies are sent (``send_replies`` closes at ``last_reply``)."""
        for obj in frames:
            self.request(conn, obj)
        msg = {"v": 1, "id": None, "error": to_wire(exc)}
        conn.state["last_reply"] = msg
        try:
            self.sel.unregister(conn.sock)  # read nothing more from a broken stream
        except (KeyError, ValueError):
            pass
        self.reply(conn, msg)

    def request(self, conn: Conn, obj: Any) -> None:
        """One control request under the boundary policy (runtime.wire.boundary): an
        AgoraError is its own reply, anything else INTERNAL with an incident id; the
        coordinator never dies of a request."""
        rid = obj.get("id") if isinstance(obj, dict) else None
        if type(rid) is not int or not 0 <= rid < 2**63:
            rid = None  # an id we could not echo validly: the reply says null
        try:
            req = parse_request(obj)
            result = self.commands.run(req.cmd, req.args, req.trace, conn)
        except Exception as e:  # noqa: BLE001 - the control boundary
            where = f"command {obj.get('cmd')!r}"[:80] if isinstance(obj, dict) else "request"
            self.reply(conn, {"v": 1, "id": rid, "error": error_wire(e, where, self.emit)})
            return
        if isinstance(result, Deferred):
            result.bind(lambda msg, rid=rid: self.reply(conn, {"v": 1, "id": rid, **msg}))
        else:
            self.reply(conn, {"v": 1, "id": rid, "ok": result})

    def reply(self, conn: Conn, msg: dict[str, Any]) -> None:
        self.replies.append((conn, msg))

    def send_replies(self) -> None:
        """Replies of this turn, into each connection's output buffer: what the socket
        does not take now is written when the selector says it is writable (``_want_write``,
        ``on_writable``); the loop never waits for a client to read."""
        replies, self.replies = self.replies, []
        for conn, msg in replies:
            if conn.closed:
                continue
            try:
                conn.send(msg)
            except ProtocolError as e:  # a reply we cannot encode: say so instead
                conn.send({"v": 1, "id": msg.get("id"), "error": to_wire(e)})
            if conn.state.get("last_reply") is msg:  # refuse_stream: refused, now hang up
                conn.flush()  # a small error reply: what the socket takes now is all it gets
                self.close_conn(conn)

    def _want_write(self, conn: Conn) -> None:
        """``conn`` has bytes its socket did not take: be told when it takes more."""
        try:
            key = self.sel.get_key(conn.sock)
        except (KeyError, ValueError):
            return  # closed meanwhile
        if not key.events & selectors.EVENT_WRITE:
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, key.data)

    def on_writable(self, key: selectors.SelectorKey) -> None:
        """Write what waits; once nothing does, back to read interest only.  A write error
        marks the Conn closed and its read side then sees the EOF and cleans up."""
        conn = key.data[1]
        conn.flush()
        if (not conn.out or conn.closed) and conn.sock.fileno() >= 0:
            self.sel.modify(conn.sock, selectors.EVENT_READ, key.data)

    def _drop_slow_client(self, conn: Conn) -> None:
        """A client that does not read its replies: MAX_PENDING_OUT bytes wait for it."""
        self.emit("control.slow_client_dropped", pending_bytes=len(conn.out), limit_bytes=MAX_PENDING_OUT,
                  reason="the client did not read its replies")
        self.close_conn(conn)

    def _open_root_conn(self, sock: socket.socket) -> Conn:
        """The root link's asynchronous socket, served by this loop (RootLink.request)."""
        conn = Conn(sock, InternalReader(), encode_frame, on_backlog=self._want_write)
        self.sel.register(sock, selectors.EVENT_READ, ("root", conn))
        return conn

    def close_conn(self, conn: Conn) -> None:
        if not conn.closed or conn.sock.fileno() >= 0:
            try:
                self.sel.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
            conn.close()
        self.commands.conn_closed(conn)

    # -- agents ------------------------------------------------------------------------

    def on_agent(self, conn: Conn) -> None:
        try:
            frames = conn.read_frames()
        except AgoraError as e:  # bad bytes: the frames before them count, then hang up
            self.emit("agent.bad_frame", agent=conn.state.get("agent"), error=to_wire(e))
            for msg in getattr(e, "frames", []):
                self.agent_message(conn, msg)
            frames = None
        if frames is None:
            self._drop_agent_conn(conn)
            return
        for msg in frames:
            self.agent_message(conn, msg)

    def agent_message(self, conn: Conn, msg: Any) -> None:
        """One agent frame under the boundary policy: a frame of the wrong shape is a
        ProtocolError (event ``agent.bad_frame``; the connection is closed, as for bad
        bytes: its peer does not speak the protocol); any other exception is an incident
        and the coordinator goes on serving."""
        try:
            check_agent_message(conn.state.get("agent"), msg)
            self._agent_message(conn, msg)
        except ProtocolError as e:
            self.emit("agent.bad_frame", agent=conn.state.get("agent"), error=to_wire(e))
            if not conn.closed:
                self._drop_agent_conn(conn)
        except Exception as e:  # noqa: BLE001 - the agents' boundary
            t = msg.get("t") if isinstance(msg, dict) else None
            error_wire(e, f"agent frame {str(t)[:40]!r}", self.emit)

    def _drop_agent_conn(self, conn: Conn) -> None:
        """Close an agent connection and tell everyone its agent is gone (EOF, bad bytes,
        a frame of the wrong shape: one death path)."""
        self.close_conn(conn)
        agent_id = conn.state.get("agent")
        if agent_id:
            self._forget_asks_of(agent_id)
            self.scheduler.agent_died(agent_id)
            for listener in self.agent_listeners:
                listener.agent_died(agent_id)

    def _agent_message(self, conn: Conn, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if "agent" not in conn.state and t != "hello":
            self.refuse_agent(conn, msg, f"a {str(t)[:32]!r} message before a valid hello")
            return
        if t == "results":
            self.scheduler.results(conn.state["agent"], msg["results"])
        elif t == "answer":
            self.scheduler.receive_clock(msg.get("vc"), self.scheduler.agents.get(conn.state["agent"]))
            asked = self.asks.pop(msg.get("rid"), None)
            if asked is not None:
                asked[1](conn.state.get("agent"), msg)
        elif t == "call":
            self.agent_call(conn, msg)
        elif t == "hello":
            self.agent_hello(conn, msg)

    def agent_hello(self, conn: Conn, msg: dict[str, Any]) -> None:
        """A hello counts only with the proof of kinship, once per connection, and never for
        an id that is live on another connection; then the reconciler hears what it says."""
        from runtime.supervision.kinship import verify
        agent_id, pid = msg.get("agent"), msg.get("pid")
        if "agent" in conn.state:
            return self.refuse_agent(conn, msg, "a second hello on one connection")
        if not verify(self.resources.agent_secret, conn.state.get("nonce"), agent_id, pid, msg.get("proof")):
            return self.refuse_agent(conn, msg, "no valid proof of kinship (not forked by this root)")
        if agent_id in self.scheduler.agents:
            return self.refuse_agent(conn, msg, f"agent id {agent_id!r} is live on another connection")
        if _peer_pid(conn) not in (pid, None):
            return self.refuse_agent(conn, msg, f"the hello names pid {pid} but its peer is another process")
        if not isinstance(msg.get("pool"), str) or not isinstance(msg.get("caps"), dict):
            return self.refuse_agent(conn, msg, "a hello without its pool or capabilities")
        conn.state["agent"] = agent_id
        concurrency = msg.get("concurrency", 1)
        if type(concurrency) is not int or not 1 <= concurrency <= 1024:
            return self.refuse_agent(conn, msg, f"a hello with concurrency {concurrency!r} (1..1024)")
        link = self.scheduler.agent_joined(agent_id, msg["pool"], pid, msg["caps"],
                                           lambda m, c=conn: c.send(m), concurrency=concurrency)
        self.scheduler.receive_clock(msg.get("vc"), link)  # after a restart: resume past its stamps
        self.commands.agent_joined(link)
        for listener in self.agent_listeners:
            listener.agent_joined(link)
        self.reconciler.hello(link, msg.get("inflight"), msg.get("results"))

    def refuse_agent(self, conn: Conn, msg: Any, why: str) -> None:
        """Refused and logged; the connection is closed (a live agent's own is untouched)."""
        if conn.state.get("refused"):
            return
        conn.state["refused"] = True
        claimed = msg.get("agent") if isinstance(msg, dict) else None
        self.emit("agent.refused", reason=why, claimed=str(claimed)[:64], peer_pid=_peer_pid(conn))
        self.close_conn(conn)

    # -- services for coordination modules ---------------------------------------------

    def ask(self, agent_id: str, kind: str, request: dict[str, Any],
            on_answer: Callable[[str | None, dict[str, Any]], None]) -> bool:
        """Ask an agent's control path (``bid``/``vote``/``propose`` hook); the answer
        comes back through ``on_answer(agent_id, {"answer": ..., "error"?: ...})``.
        False if the agent is not connected.  Unanswered asks are the asker's to time out."""
        link = self.scheduler.agents.get(agent_id)
        if link is None:
            return False
        rid = next(self._ask_ids)
        self.asks[rid] = (agent_id, on_answer)
        link.send({"t": "ask", "rid": rid, "kind": kind, "request": request, "vc": self.scheduler.vclock.tick()})
        if not self._asks_timer:
            self._asks_timer = True
            self.call_later(ASK_TTL_S, self._expire_asks)
        return True

    def _expire_asks(self) -> None:
        """Asks nobody answered for ASK_TTL_S (a hung hook) are forgotten: their askers
        have timed them out long before; the map must not grow without bound."""
        first_live = next(self._ask_ids)  # ids are increasing: everything older than the
        self.asks = {rid: a for rid, a in self.asks.items() if rid > self._asks_mark}
        self._asks_mark = first_live      # previous mark has waited at least ASK_TTL_S
        self._asks_timer = bool(self.asks)
        if self._asks_timer:
            self.call_later(ASK_TTL_S, self._expire_asks)

    def _forget_asks_of(self, agent_id: str) -> None:
        self.asks = {rid: a for rid, a in self.asks.items() if a[0] != agent_id}

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (self.clock() + delay, next(self._timer_ids), fn))

    def fire_timers(self) -> None:
        now = self.clock()
        while self.timers and self.timers[0][0] <= now:
            due, _, fn = heapq.heappop(self.timers)
            self.latency.timer(now - due)
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - a timer's failure (e.g. EMFILE reading /proc
                # in the scaler's sample) is an incident, not the coordinator's end
                error_wire(e, f"timer {getattr(fn, '__qualname__', 'lambda')[:60]}", self.emit)

    def agent_call(self, conn: Conn, msg: dict[str, Any]) -> None:
        """An agent asks the coordinator (locks, leases, barriers...): ``agent_ops[op]``
        returns a value, a Deferred, or raises; the reply goes back on the agent's socket."""
        rid, op = msg.get("rid"), msg.get("op")
        agent_id = conn.state.get("agent")
        self.scheduler.receive_clock(msg.get("vc"), self.scheduler.agents.get(agent_id or ""))
        vclock = self.scheduler.vclock  # the reply is a send: it carries the coordinator's stamp
        fn = self.agent_ops.get(op) if isinstance(op, str) else None
        try:
            if fn is None:
                raise UnknownCommand(f"unknown agent operation {str(op)[:64]!r}",
                                     hint=f"known: {sorted(self.agent_ops)}")
            args = msg.get("args") or {}
            if not isinstance(args, dict):
                raise InvalidInput(f"agent operation {op!r}: 'args' must be an object, "
                                   f"got {type(args).__name__}", field="args")
            out = fn(agent_id, args, msg.get("trace"))
        except Exception as e:  # noqa: BLE001 - the agents' boundary (runtime.wire.boundary)
            self.reply(conn, {"t": "reply", "rid": rid, "vc": vclock.tick(),
                              "error": error_wire(e, f"agent op {str(op)[:40]!r}", self.emit)})
            return
        # replies leave after the turn's COMMIT (send_replies), as clients' do: a fencing
        # token or a term an agent has heard of is on disk (coordination.services.store)
        if isinstance(out, Deferred):
            out.bind(lambda m: self.reply(conn, {"t": "reply", "rid": rid, **m, "vc": vclock.tick()}))
        else:
            self.reply(conn, {"t": "reply", "rid": rid, "ok": out, "vc": vclock.tick()})

    def send_task_batches(self) -> None:
        for agent_id, tasks in self.scheduler.take_outbox().items():
            link = self.scheduler.agents.get(agent_id)
            if link is not None:
                link.send({"t": "tasks", "tasks": tasks})
        for agent_id, stops in self.scheduler.take_cancels().items():  # after the tasks they name
            link = self.scheduler.agents.get(agent_id)
            if link is not None:
                link.send({"t": "cancel", "tasks": stops})

    # -- results and shutdown ----------------------------------------------------------

    def _task_final(self, task: TaskRun, rec: Any) -> None:
        for notify in self.waiters.pop(task.id, []):
            notify(rec)
        if rec.pipeline_id:
            self.pipeline_progress(rec.pipeline_id)

    def pipeline_progress(self, pipeline_id: str) -> None:
        """A step ended: the journal has unblocked (or cancelled) what follows it."""
        p = self.journal.get_pipeline(pipeline_id)
        # states first, records only of the steps to queue: reading every step's record
        # decoded each finished step's input and result again (~2 ms of a 6-step pipeline
        # of 35 KB documents, perf/pipeline_cost.py)
        idle = [task_id for task_id in p.steps.values() if task_id not in self.scheduler.tasks]
        states = self.journal.states(idle)
        for task_id in idle:
            if states[task_id] == "queued":
                self.scheduler.enqueue(self.commands.tasks.task_run(self.journal.get(task_id)))
        if p.state != "running":
            self.emit("pipeline." + p.state, None if p.trace_id is None else
                      TraceContext(p.trace_id, p.trace_id[:16]), pipeline_id=pipeline_id)
            for notify in self.waiters.pop(pipeline_id, []):
                notify(p)

    def wait_for(self, task_id: str, notify: Callable[[dict[str, Any]], None]) -> None:
        self.waiters.setdefault(task_id, []).append(notify)

    def command(self, name: str, args: dict[str, Any], trace: Any) -> Any:
        return self.commands.run(name, args, trace, None)

    def drain_and_close(self) -> None:
        """Stop accepting; let running tasks finish for up to drain_s; the rest stays
        in the journal as accepted and resumes on the next start."""
        self.emit("coordinator.draining", running=sum(len(a.inflight) for a in self.scheduler.agents.values()))
        self.sel.unregister(self.control)
        self.control.close()
        deadline = self.clock() + self.cfg.drain_s
        while any(a.inflight for a in self.scheduler.agents.values()) and self.clock() < deadline:
            self.turn(min(0.05, max(0.0, deadline - self.clock())))
        # a graceful stop never burns an attempt: what still runs is given up uncharged
        self.journal.interrupt_running()
        self.journal.close()
        self.contexts.close()
        self._close_registry()
        self.emit("coordinator.stopped")
        self.emit.close()

    def _close_registry(self) -> None:
        """A daemon going down takes its agents out of the registry: with Redis the
        entries would otherwise outlive it until their leases ran out."""
        try:
            if self.cfg.registry == "redis":
                self.registry.clear()
            self.registry.close()
        except AgoraError as e:  # the server is gone: the leases expire the entries
            self.emit("registry.unavailable", error=e.message)


#: Shapes of the frames an agent may send (beyond "t"): field -> accepted types.  A
#: frame of another shape is a ProtocolError (Coordinator.agent_message).
_AGENT_FRAMES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "results": {"results": list},
    "answer": {"rid": int},
    "call": {},
    "hello": {"agent": str, "pool": str, "pid": int, "caps": (list, dict)},
}


def check_agent_message(agent_id: str | None, msg: Any) -> None:
    """Refuse an agent frame of the wrong shape (names the field); "results" and "call"
    need a connection that said hello first."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"an agent frame must be a JSON object, got {type(msg).__name__}")
    t = msg.get("t")
    fields = _AGENT_FRAMES.get(t) if isinstance(t, str) else None
    if fields is None:
        raise ProtocolError(f"agent frame type {str(t)[:40]!r} is not one of {sorted(_AGENT_FRAMES)}")
    for name, kind in fields.items():
        if not isinstance(msg.get(name), kind) or isinstance(msg.get(name), bool):
            raise ProtocolError(f"agent frame {t!r}: field {name!r} must be "
                                f"{getattr(kind, '__name__', kind)}, got {type(msg.get(name)).__name__}")
    if t in ("results", "call") and agent_id is None:
        raise ProtocolError(f"agent frame {t!r} before 'hello' on this connection",
                            hint="an agent says hello first")


def _peer_pid(conn: Conn) -> int | None:
    from runtime.wire.protocol import peer_cred
    try:
        return peer_cred(conn.sock)[0]
    except OSError:
        return None


def coordinator_main(ctx: Any, cfg: Config, run: RunPaths, composition: Composition | None = None) -> None:
    wake = install_stop_wakeup()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    coord = Coordinator(cfg, run, root_pid=ctx.root_pid, resources=ctx.resources, composition=composition)
    coord.start()
    ctx.ready()
    profile_to = os.environ.get("AGORA_PROFILE_COORDINATOR")  # developers: where time goes
    if not profile_to:
        coord.serve_forever(wake)
        return
    import cProfile
    cProfile.runctx("coord.serve_forever(wake)", globals(), locals(), profile_to)


