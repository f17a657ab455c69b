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
from runtime.errors import AgoraError, Conflict, InvalidInput, UnknownCommand, to_wire
from runtime.observability.events import Emitter
from runtime.observability.telemetry import install_stop_wakeup
from runtime.observability.trace_context import TraceContext
from runtime.registry.service import open_registry
from runtime.tasks.journal import Journal
from runtime.tasks.payloads import Payloads
from runtime.tasks.scheduler import POLICIES, Scheduler, TaskRun
from runtime.wire import paths
from runtime.wire.protocol import ProtocolError, parse_request, peer_uid
from runtime.wire.server import Conn, InternalReader, encode_internal, encode_reply, listen_unix

__all__ = ["Coordinator", "Composition", "coordinator_main"]

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
        """Tasks accepted before a restart and not finished go back to their queues
        (``Journal.unfinished`` closes the attempts that were running as crashed)."""
        resumed = 0
        for rec in self.journal.unfinished():
            task = self.commands.tasks.task_run(rec)
            if rec.state == "queued":
                self.scheduler.enqueue(task)
            elif rec.state == "retry_wait":
                self.scheduler.tasks[task.id] = task
                self.scheduler._schedule_retry(task)
            resumed += rec.state != "blocked"
        self.emit("coordinator.resumed", tasks=resumed)

    # -- the loop ----------------------------------------------------------------------

    def serve_forever(self, wake_fd: int | None = None) -> None:
        if wake_fd is not None:
            self.sel.register(wake_fd, selectors.EVENT_READ, ("wake", None))
        while not self.stopping:
            self.turn(self._timeout())
        self.drain_and_close()

    def turn(self, timeout: float | None) -> None:
        ready = self.sel.select(timeout)
        with self.journal.transaction():  # group commit: one COMMIT for the whole turn
            # (a turn that wrote nothing commits nothing: no WAL write, no fsync)
            # agents first: a hello or a result that arrived with a request is seen before it
            for key, _ in sorted(ready, key=lambda kv: kv[0].data[0] != "agent"):
                self.on_ready(key)
            self.fire_timers()
            self.scheduler.fire_timers()
            for hook in list(self.turn_hooks):
                hook()
            self.scheduler.dispatch()
        self.send_replies()
        self.send_task_batches()
        self.emit.maybe_flush()

    def _timeout(self) -> float | None:
        mine = max(0.0, self.timers[0][0] - self.clock()) if self.timers else None
        ts = [t for t in (self.scheduler.next_timer_in(), self.emit.flush_due_in(),
                          self.commands.next_deadline_in(), mine) if t is not None]
        return min(ts) if ts else None

    def on_ready(self, key: selectors.SelectorKey) -> None:
        kind, detail = key.data
        if kind == "listen":
            self.accept(key.fileobj, detail)
        elif kind == "client":
            self.on_client(detail)
        elif kind == "agent":
            self.on_agent(detail)
        elif kind == "wake":
            os.read(key.fd, 64)
            self.stopping = True

    # -- clients -----------------------------------------------------------------------

    def accept(self, listener: socket.socket, kind: str) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        uid = peer_uid(sock)
        if uid != os.getuid():
            self.emit("control.refused", peer_uid=uid, socket=kind)
            sock.close()
            return
        conn = Conn(sock, encode=encode_reply) if kind == "client" else Conn(sock, InternalReader(), encode_internal)
        self.sel.register(sock, selectors.EVENT_READ, (kind, conn))

    def on_client(self, conn: Conn) -> None:
        try:
            frames = conn.read_frames()
        except AgoraError as e:  # bad bytes: say why, then hang up (the stream is lost)
            conn.send({"v": 1, "id": None, "error": to_wire(e)})
            self.close_conn(conn)
            return
        if frames is None:
            self.close_conn(conn)
            return
        for obj in frames:
            self.request(conn, obj)

    def request(self, conn: Conn, obj: Any) -> None:
        rid = obj.get("id") if isinstance(obj, dict) else None
        try:
            req = parse_request(obj)
            result = self.commands.run(req.cmd, req.args, req.trace, conn)
        except ProtocolError as e:
            self.reply(conn, {"v": 1, "id": rid, "error": to_wire(e)})
            return
        except AgoraError as e:
            self.reply(conn, {"v": 1, "id": rid, "error": to_wire(e)})
            return
        if isinstance(result, Deferred):
            result.bind(lambda msg, rid=rid: self.reply(conn, {"v": 1, "id": rid, **msg}))
        else:
            self.reply(conn, {"v": 1, "id": rid, "ok": result})

    def reply(self, conn: Conn, msg: dict[str, Any]) -> None:
        self.replies.append((conn, msg))

    def send_replies(self) -> None:
        replies, self.replies = self.replies, []
        for conn, msg in replies:
            if conn.closed:
                continue
            try:
                conn.send(msg)
            except ProtocolError as e:  # a reply we cannot encode: say so instead
                conn.send({"v": 1, "id": msg.get("id"), "error": to_wire(e)})
            if conn.out:
                self._want_write(conn)

    def _want_write(self, conn: Conn) -> None:
        # rare (a reply larger than the socket buffer): block briefly rather than juggle
        # write interest; the peer is a local client reading its reply.
        conn.sock.setblocking(True)
        conn.sock.settimeout(5.0)
        try:
            conn.sock.sendall(conn.out)
            conn.out.clear()
        except OSError:
            self.close_conn(conn)
        else:
            conn.sock.setblocking(False)

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
        except AgoraError:
            frames = None
        if frames is None:
            self.close_conn(conn)
            agent_id = conn.state.get("agent")
            if agent_id:
                self._forget_asks_of(agent_id)
                self.scheduler.agent_died(agent_id)
                for listener in self.agent_listeners:
                    listener.agent_died(agent_id)
            return
        for msg in frames:
            self.agent_message(conn, msg)

    def agent_message(self, conn: Conn, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t == "results":
            self.scheduler.results(conn.state["agent"], msg["results"])
        elif t == "answer":
            asked = self.asks.pop(msg.get("rid"), None)
            if asked is not None:
                asked[1](conn.state.get("agent"), msg)
        elif t == "call":
            self.agent_call(conn, msg)
        elif t == "hello":
            conn.state["agent"] = msg["agent"]
            link = self.scheduler.agent_joined(msg["agent"], msg["pool"], msg["pid"], msg["caps"],
                                               lambda m, c=conn: c.send(m),
                                               concurrency=msg.get("concurrency", 1))
            self.commands.agent_joined(link)
            for listener in self.agent_listeners:
                listener.agent_joined(link)

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
        link.send({"t": "ask", "rid": rid, "kind": kind, "request": request})
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
            heapq.heappop(self.timers)[2]()

    def agent_call(self, conn: Conn, msg: dict[str, Any]) -> None:
        """An agent asks the coordinator (locks, leases, barriers...): ``agent_ops[op]``
        returns a value, a Deferred, or raises; the reply goes back on the agent's socket."""
        rid, op = msg.get("rid"), msg.get("op")
        agent_id = conn.state.get("agent")
        fn = self.agent_ops.get(op)
        try:
            if fn is None:
                raise UnknownCommand(f"unknown agent operation {op!r}", hint=f"known: {sorted(self.agent_ops)}")
            out = fn(agent_id, msg.get("args") or {}, msg.get("trace"))
        except AgoraError as e:
            conn.send({"t": "reply", "rid": rid, "error": to_wire(e)})
            return
        if isinstance(out, Deferred):
            out.bind(lambda m: conn.send({"t": "reply", "rid": rid, **m}) if not conn.closed else None)
        else:
            conn.send({"t": "reply", "rid": rid, "ok": out})

    def send_task_batches(self) -> None:
        for agent_id, tasks in self.scheduler.take_outbox().items():
            link = self.scheduler.agents.get(agent_id)
            if link is not None:
                link.send({"t": "tasks", "tasks": tasks})

    # -- results and shutdown ----------------------------------------------------------

    def _task_final(self, task: TaskRun, rec: Any) -> None:
        for notify in self.waiters.pop(task.id, []):
            notify(rec)
        if rec.pipeline_id:
            self.pipeline_progress(rec.pipeline_id)

    def pipeline_progress(self, pipeline_id: str) -> None:
        """A step ended: the journal has unblocked (or cancelled) what follows it."""
        p = self.journal.get_pipeline(pipeline_id)
        for task_id in p.steps.values():
            if task_id not in self.scheduler.tasks:
                rec = self.journal.get(task_id)
                if rec.state == "queued":
                    self.scheduler.enqueue(self.commands.tasks.task_run(rec))
        if p.state != "running":
            self.emit("pipeline." + p.state, None if p.trace_id is None else
                      TraceContext(p.trace_id, p.trace_id[:16]), pipeline_id=pipeline_id)
            for notify in self.waiters.pop(pipeline_id, []):
                notify(p)

    def wait_for(self, task_id: str, notify: Callable[[dict[str, Any]], None]) -> None:
        self.waiters.setdefault(task_id, []).append(notify)

    def drain_and_close(self) -> None:
        """Stop accepting; let running tasks finish for up to drain_s; the rest stays
        in the journal as accepted and resumes on the next start."""
        self.emit("coordinator.draining", running=sum(len(a.inflight) for a in self.scheduler.agents.values()))
        self.sel.unregister(self.control)
        self.control.close()
        deadline = self.clock() + self.cfg.drain_s
        while any(a.inflight for a in self.scheduler.agents.values()) and self.clock() < deadline:
            self.turn(min(0.05, max(0.0, deadline - self.clock())))
        self.journal.close()  # running attempts stay open: the next start requeues them
        self.contexts.close()
        self.emit("coordinator.stopped")
        self.emit.close()


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


