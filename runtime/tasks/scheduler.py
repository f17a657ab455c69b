"""Dispatch: ready queues, agent links, attempts, retries, dead letters.

The coordinator's loop calls into a :class:`Scheduler`; the scheduler never blocks and
does no socket I/O itself: what it wants sent to an agent goes into ``outbox`` (one
batch per agent per loop turn) and the loop sends it.  The journal is the truth: every
attempt is recorded there before its frame leaves (commit happens once per loop turn,
before the outbox is flushed), and the first recorded success is the result.

Life of a task::

    submit -> queued --(policy picks an agent)--> running --ok--> succeeded
                ^                                   |  \\--handler raised--> retry_wait --timer--> queued
                |                                   |                      \\--no attempts left--> failed
                +------ agent died (attempt + 1) ---+--no attempts left--> dead_lettered
    cancel / deadline at any live state -> cancelled / deadline_exceeded
    running --timeout_s passed--> (attempt failed: TIMED_OUT) -> retry policy, another agent

Stopping work (cancel, deadline, ``timeout_s``): the journal's verdict is immediate (the
task is ``cancelled`` at once), but the agent's room is not given back until its attempt
has *ended*: the agent is sent ``{"t": "cancel", "tasks": [{"id", "attempt"}]}`` (queued
in ``cancels``, sent after the turn's task batches), its handler sees it cooperatively,
and it reports a normal result (``Cancelled``, or its real one).  An agent that has not
reported within its pool's ``cancel_grace_s`` (default 5 s) is killed and replaced: the
scheduler tells its ``kill_listeners`` (the coordinator asks the root), marks the agent
draining, and the death that follows closes the attempt as ``crashed`` (LOST: code
``LOST``, never a handler failure).

Retry policy: a handler error goes through ``runtime.tasks.task.error_outcome`` with the
task's and its pool's ``fatal`` / ``retryable`` lists; a retry goes to an agent that has
not run the task yet when one is free (``TaskRun.tried``: the journal records the agent
of every attempt), else to any.

A death is seen when the agent's socket reaches EOF (the kernel closes it the moment
the process dies): its in-flight tasks go straight back to the head of their queue on
another agent, without backoff.  A handler exception waits a jittered backoff first.

Allocation policies share one interface, ``choose(task, candidates) -> AgentLink``:
``static`` (registry order, the baseline the reference system used: the first capable
agent with room), ``least-loaded`` (lowest in-flight / concurrency, then registry order), and
``market`` (coordination.services.market: an auction among the candidates, asynchronous).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import AgoraError, InvalidInput, Unavailable
from runtime.observability.trace_context import TraceContext
from runtime.observability.vclock import COORDINATOR, LiveClock
from runtime.tasks.balancing import PowerOfTwoPolicy
from runtime.tasks.payloads import Payloads
from runtime.tasks.task import TERMINAL, error_outcome

__all__ = ["Scheduler", "TaskRun", "AgentLink", "StaticPolicy", "LeastLoadedPolicy", "POLICIES",
           "running_attempts", "resumable", "attempt_open",
           "TAKEN", "DEFAULT_CANCEL_GRACE_S"]


#: Seconds an agent has to end a cancelled attempt before it is killed (per pool:
#: ``cancel_grace_s``).  A cooperative handler checks ``task.cancelled`` far more often;
#: 5 s is long enough for a handler to close a file or a connection, short enough that a
#: user who cancelled sees the agent free again before they wonder why.
DEFAULT_CANCEL_GRACE_S = 5.0

#: Adaptive prefetch (with the default ``agent_inflight = 1`` only): a capability whose last
#: ``SHORT_STREAK`` attempts each ran within ``SHORT_TASK_S`` (the handler's time as the
#: agent measured it, ``run_us`` in its result; else from dispatch to result) is
#: *short*, and an agent that holds only short attempts takes several of them at once: as
#: many as fit in ``PREFETCH_BUDGET_S`` of the capability's mean run time, at least 2 and
#: at most ``SHORT_PREFETCH`` (``Scheduler.prefetch_depth``).  The tasks of a turn then go
#: out, run and come back as one batch (one frame, one wake-up, one COMMIT for several
#: tasks): measured with 2 agents and trivial tasks, CPU per task 727-797 -> 437-483 us
#: (depth 4), and the coordinator's 137-143 -> 106 us (depth 16 for a 20 us handler).  A
#: short task still never waits behind a long one: one slow attempt ends the streak, and
#: an agent holding a task of any other capability gets no prefetch.  The worst case is a
#: short capability's first slow attempt, which may hold the prefetched ones (about
#: PREFETCH_BUDGET_S of predicted work) behind it (docs/DECISIONS.md).
SHORT_TASK_S = 0.005
SHORT_STREAK = 32
SHORT_PREFETCH = 16
PREFETCH_BUDGET_S = 0.002


@dataclass
class TaskRun:
    """A live task as the scheduler holds it (the journal holds the durable copy)."""

    id: str
    capability: str
    input: Any
    trace: TraceContext
    max_attempts: int = 3
    priority: int = 0
    deadline: float | None = None  # monotonic
    pipeline_id: str | None = None
    input_handle: Any = None  # the arena block of a large input, while an agent holds it
    attempts: int = 0
    state: str = "queued"
    agent: str | None = None
    excluded: set[str] = field(default_factory=set)
    seq: int = 0
    size: int = 0  # bytes of input, for mailbox accounting
    timeout_s: float | None = None  # per attempt; None: the pool's default
    retryable: tuple[str, ...] = ()
    fatal: tuple[str, ...] = ()
    tried: list[str] = field(default_factory=list)  # the agent of each attempt, in order
    sent_at: float = 0.0  # clock() when the current attempt was dispatched (adaptive prefetch)
    vc: dict[str, int] | None = None  # the agent's vector clock stamp of its (last ok) result


@dataclass
class AgentLink:
    id: str
    pool: str
    pid: int
    caps: dict[str, dict[str, float]]
    send: Callable[[dict[str, Any]], None]
    order: int
    inflight: dict[str, int] = field(default_factory=dict)  # task id -> attempt
    done: int = 0
    draining: bool = False
    stopping: dict[str, int] = field(default_factory=dict)  # task id -> attempt asked to stop
    killed: str | None = None  # why the coordinator had this agent killed
    concurrency: int = 1  # attempts the agent runs at once (its hello says; runtime.agents.executor)
    # runs a service started outside the scheduler's attempts (consensus candidates: task id
    # -> attempt): they take room like attempts, but the service, not the scheduler, ends them
    side: dict[str, int] = field(default_factory=dict)


#: What an asynchronous policy's ``choose`` returns when it took the task (market: an
#: auction runs): the task leaves its queue, so it does not block the tasks behind it,
#: and the policy later calls ``assign(task, agent)`` or ``enqueue(task)`` itself.
TAKEN: Any = type("Deferred", (), {"__repr__": lambda self: "TAKEN"})()


class StaticPolicy:
    """Registry order: the first capable agent that has room (the reference's allocation)."""

    name = "static"

    def choose(self, task: TaskRun, candidates: list[AgentLink]) -> AgentLink | None:
        return candidates[0] if candidates else None


class LeastLoadedPolicy:
    """The lowest occupied share of an agent's slots (in-flight / concurrency); ties go to
    registry order.  Raw in-flight counts would pile work on a ``concurrency = 1`` agent
    holding 1 attempt rather than give it to a ``concurrency = 32`` one holding 2."""

    name = "least-loaded"

    def choose(self, task: TaskRun, candidates: list[AgentLink]) -> AgentLink | None:
        return min(candidates, key=lambda a: (len(a.inflight) / a.concurrency, a.order), default=None)


POLICIES: dict[str, Callable[[], Any]] = {"static": StaticPolicy, "least-loaded": LeastLoadedPolicy,
                                          "p2c": PowerOfTwoPolicy}
_PREFETCHING = (StaticPolicy, LeastLoadedPolicy, PowerOfTwoPolicy)  # adaptive prefetch: the scheduler's own


class Scheduler:
    """Queues per capability and the agents that serve them."""

    def __init__(self, journal: Any, policy: Any, emit: Callable[..., None], clock: Callable[[], float],
                 capacity: int = 4, membership: Any = None) -> None:
        self.journal = journal
        self.registry = membership
        self.payloads = Payloads(None, 0)  # the coordinator sets its arena side
        self._by_cap: dict[str, list[str]] = {}  # capability index read from the registry
        self._unregistered: set[str] = set()
        self.policy = policy
        self.emit = emit
        self.clock = clock
        self.vclock = LiveClock(COORDINATOR)  # the coordinator's own vector clock (frames carry it)
        self.capacity = capacity
        self.tasks: dict[str, TaskRun] = {}
        # capability -> {"pools", "reason", "refuse"} while no live pool serves it (the
        # scaler's PoolHealth keeps it: runtime.scaling.health); its queued tasks wait
        self.down: dict[str, dict[str, Any]] = {}
        self.queued_bytes: dict[str, int] = {}  # input bytes waiting per capability (mailbox)
        self.queues: dict[str, list[tuple[int, int, str]]] = {}
        self.agents: dict[str, AgentLink] = {}
        self.outbox: dict[str, list[dict[str, Any]]] = {}
        # (when, seq, kind, task id | (task id, attempt, agent id) for "grace"/"timeout")
        self.timers: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._order = itertools.count()
        # Hooks are lists of listeners, called in order of registration; none depends on
        # another having run (they are independent by contract: docs/DECISIONS.md, Layout).
        # a task ended: (task, its journal record)
        self.final_listeners: list[Callable[[TaskRun, Any], None]] = []
        # every attempt's end as the journal judged it (the market settles contracts here)
        self.attempt_end_listeners: list[Callable[[TaskRun, int, Any, bool], None]] = []
        # who takes a task over before the policy sees it (a consensus step): True = taken
        self.takers: list[Callable[[TaskRun], bool]] = []
        # task id -> who takes that task's results instead (a consensus step's k candidate runs)
        self.result_sinks: dict[str, Callable[[AgentLink | None, dict[str, Any]], None]] = {}
        # pool name -> its config (timeout_s, cancel_grace_s, retryable, fatal); the
        # coordinator fills it from agora.toml
        self.pools: dict[str, Any] = {}
        # an agent that ignored a cancel past its grace: (link, why); the coordinator kills it
        self.kill_listeners: list[Callable[[AgentLink, str], None]] = []
        self.cancels: dict[str, list[dict[str, Any]]] = {}  # agent id -> cancel frames' entries
        self.short_streak: dict[str, int] = {}  # capability -> attempts in a row back within SHORT_TASK_S
        self.run_mean: dict[str, float] = {}  # capability -> mean run time (s) of its short attempts

    # -- agents ------------------------------------------------------------------------

    def agent_joined(self, agent_id: str, pool: str, pid: int, caps: dict[str, Any],
                     send: Callable[[dict[str, Any]], None], concurrency: int = 1) -> AgentLink:
        link = AgentLink(agent_id, pool, pid, caps, send, next(self._order),
                         concurrency=max(1, int(concurrency)))
        self.agents[agent_id] = link
        self._unregistered.add(agent_id)
        self._register_pending()
        self._by_cap.clear()
        self.emit("agent.joined", agent=agent_id, pid=pid, capabilities=sorted(caps))
        return link

    def agent_died(self, agent_id: str) -> list[TaskRun]:
        """EOF on the agent's socket: its attempts are ``crashed``; the journal decides
        (requeue at once, or dead-letter a task that has used its attempts)."""
        link = self.agents.pop(agent_id, None)
        if link is None:
            return []
        self._by_cap.clear()
        self.emit("agent.died", agent=agent_id, pid=link.pid, inflight=len(link.inflight))
        self._forget_registration(link)
        error = ({"code": "LOST", "message": f"agent {agent_id} (pid {link.pid}) was killed: {link.killed}"}
                 if link.killed else
                 {"code": "AGENT_DIED", "message": f"agent {agent_id} (pid {link.pid}) died mid-task"})
        moved = []
        for tid, attempt in link.inflight.items():
            fin = self.journal.finish_attempt(tid, attempt, "crashed", error=error)
            task = self.tasks.get(tid)
            if task is not None:
                self.payloads.discard(task.input_handle)  # it died before reading its input
            if task is not None:
                self.follow(task, attempt, fin, crashed=True)
                moved.append(task)
        return moved

    def _register_pending(self) -> None:
        """Put joined agents in the registry; one whose partition is restarting is retried
        on a later turn (it is not a candidate until then: candidates come from the index)."""
        for agent_id in list(self._unregistered):
            link = self.agents.get(agent_id)
            if link is None or self.registry is None:
                self._unregistered.discard(agent_id)
                continue
            try:
                self.registry.register(agent_id, {"capabilities": sorted(link.caps), "metadata": {
                    "pool": link.pool, "load": 0, "health": "ok"}}, link.pid)
            except AgoraError as e:
                self.emit("registry.unavailable", agent=agent_id, error=e.message)
                return
            self._unregistered.discard(agent_id)
            self._by_cap.clear()

    def _forget_registration(self, link: AgentLink) -> None:
        """The coordinator saw the death first-hand: tell the registry (partitions also
        watch the owner's pidfd; a local backend only learns it here)."""
        if self.registry is None:
            return
        try:
            self.registry.remove_owner(link.pid)
        except AgoraError as e:  # a partition restarting: it verifies owners when it is back
            self.emit("registry.unavailable", agent=link.id, error=e.message)

    # -- tasks -------------------------------------------------------------------------

    def enqueue(self, task: TaskRun, front: bool = False) -> None:
        if task.state != "queued" or task.id not in self.tasks:
            self.queued_bytes[task.capability] = self.queued_bytes.get(task.capability, 0) + task.size
        task.state = "queued"
        task.seq = -next(self._seq) if front else next(self._seq)
        self.tasks[task.id] = task
        heapq.heappush(self.queues.setdefault(task.capability, []), (-task.priority, task.seq, task.id))
        if task.deadline is not None:
            self._timer(task.deadline, "deadline", task.id)

    def queued(self, capability: str) -> int:
        return len(self.queues.get(capability, ()))

    def _leaves_queue(self, task: TaskRun) -> None:
        """Mailbox accounting: a queued task is leaving its queue (started, deferred, ended)."""
        if task.state == "queued":
            self.queued_bytes[task.capability] -= task.size

    def capable(self, capability: str) -> list[str]:
        """Agents offering ``capability``, in registry order, from the registry's capability
        index (re-read only when membership changed: a select is a shared-memory read)."""
        ids = self._by_cap.get(capability)
        if ids is None:
            try:
                if self.registry is None:
                    raise AgoraError("no registry")
                ids = [e.key for e in self.registry.select(capability=capability)]
            except AgoraError:  # (a read that fell back to a dead partition): own view, uncached
                return [a.id for a in self.agents.values() if capability in a.caps]
            self._by_cap[capability] = ids
        return ids

    def candidates(self, capability: str) -> list[AgentLink]:
        """The agents offering ``capability`` that have room now, in registry order."""
        agents = self.agents
        return [a for a in map(agents.get, self.capable(capability))
                if a is not None and self._open(a, capability)]

    def _open(self, a: AgentLink, capability: str) -> bool:
        """Whether a live agent may take one more attempt of ``capability``."""
        return not a.draining and (len(a.inflight) + len(a.side) < self.room(a)
                                   or self._prefetch(a, capability))

    def _prefetch(self, agent: AgentLink, capability: str) -> bool:
        """Room beyond ``room``: adaptive prefetch of short tasks (see SHORT_TASK_S)."""
        if (self.capacity != 1 or agent.side
                or type(self.policy) not in _PREFETCHING):  # the market sizes its own contracts
            return False
        short = self.short_streak
        if (short.get(capability, 0) < SHORT_STREAK
                or len(agent.inflight) >= agent.concurrency + self.prefetch_depth(capability) - 1):
            return False
        tasks = self.tasks
        return all(t is not None and short.get(t.capability, 0) >= SHORT_STREAK
                   for t in map(tasks.get, agent.inflight))

    def _timed(self, task: TaskRun, run_us: Any) -> None:
        """An attempt came back: extend or end its capability's streak of short ones.  The
        agent's own measure of the handler (``run_us``) when it sent one: time from dispatch
        would count this loop's own latency, and a busy turn would end every streak."""
        cap = task.capability
        took = run_us / 1e6 if type(run_us) is int else self.clock() - task.sent_at
        if took <= SHORT_TASK_S:
            self.short_streak[cap] = self.short_streak.get(cap, 0) + 1
            mean = self.run_mean.get(cap)
            self.run_mean[cap] = took if mean is None else mean + 0.1 * (took - mean)
        else:
            self.short_streak[cap] = 0
            self.run_mean.pop(cap, None)

    def prefetch_depth(self, capability: str) -> int:
        """Attempts of a short capability one agent may hold: ``PREFETCH_BUDGET_S`` of its
        mean run time, between 2 and ``SHORT_PREFETCH``."""
        mean = self.run_mean.get(capability, SHORT_TASK_S)
        return max(2, min(SHORT_PREFETCH, int(PREFETCH_BUDGET_S / max(mean, 1e-6))))

    def room(self, agent: AgentLink) -> int:
        """Attempts an agent may hold: its concurrency plus the prefetch (``agent_inflight - 1``)."""
        return agent.concurrency + self.capacity - 1

    def _choose(self, task: TaskRun, cap: str, open_: list[AgentLink] | None) -> AgentLink | None | object:
        """A taker's (TAKEN), else the policy's choice among the capable agents with room
        (``open_``, kept by ``dispatch`` for the scheduler's own policies; None: read them
        now); agents that have not run this task yet first (a retry goes elsewhere if it can)."""
        if any(take(task) for take in self.takers):
            return TAKEN
        able = self.candidates(cap) if open_ is None else open_
        if task.excluded or task.tried:
            able = [a for a in able if a.id not in task.excluded and task.id not in a.inflight]
            fresh = [a for a in able if a.id not in task.tried] if task.tried else able
            able = fresh or able
        return self.policy.choose(task, able)

    def dispatch(self) -> int:
        """Give queued tasks to agents until queues or room run out; returns tasks sent.
        Every attempt of the turn starts in one journal batch.

        Under the scheduler's own policies the agents with room are listed once per
        capability per pass and an agent leaves the list when it fills: reading them per
        task made a dispatch O(tasks x agents), a third of the coordinator's time with 64
        agents (docs/DECISIONS.md, issue 20).  Other policies (the market) may start
        attempts themselves inside ``choose``, so they get a fresh list per task."""
        picks: list[tuple[TaskRun, AgentLink]] = []
        if self._unregistered:
            self._register_pending()
        kept = type(self.policy) in _PREFETCHING
        for cap, q in self.queues.items():
            open_: list[AgentLink] | None = None
            while q:
                task = self.tasks.get(q[0][2])
                if task is None or task.state != "queued":
                    heapq.heappop(q)
                    continue
                if kept and open_ is None:
                    open_ = self.candidates(cap)
                agent = self._choose(task, cap, open_)
                if agent is TAKEN:  # an asynchronous policy took it (an auction runs)
                    heapq.heappop(q)
                    self._leaves_queue(task)
                    task.state = "deferred"
                    continue
                if agent is None:
                    break
                heapq.heappop(q)
                self._reserve(task, agent)
                picks.append((task, agent))
                if open_ is not None and not self._open(agent, cap):
                    open_.remove(agent)
        if picks:
            self._start(picks)
        return len(picks)

    def assign(self, task: TaskRun, agent: AgentLink) -> None:
        """Start one attempt now (policies that decide later, e.g. after an auction)."""
        self._reserve(task, agent)
        self._start([(task, agent)])

    def _reserve(self, task: TaskRun, agent: AgentLink) -> None:
        self._leaves_queue(task)
        task.state, task.agent = "running", agent.id
        agent.inflight[task.id] = 0  # room taken now; the attempt number follows

    def _start(self, picks: list[tuple[TaskRun, AgentLink]]) -> None:
        numbers = self.journal.start_attempts([(t.id, a.id) for t, a in picks])
        now = self.clock()
        for (task, agent), attempt in zip(picks, numbers):
            task.attempts, task.sent_at = attempt, now
            agent.inflight[task.id] = attempt
            task.tried.append(agent.id)
            limit = task.timeout_s or self._pool_knob(agent.pool, "timeout_s", None)
            if limit:
                self._timer(self.clock() + limit, "timeout", (task.id, attempt, agent.id))
            span = task.trace.child()
            self.emit("task.attempt", span, task_id=task.id, attempt=attempt, agent=agent.id,
                      policy=self.policy.name)
            frame = {"id": task.id, "attempt": attempt, "cap": task.capability,
                     "trace": span.to_wire(), "vc": self.vclock.tick()}
            if self.short_streak.get(task.capability, 0) >= SHORT_STREAK:
                frame["short"] = True  # the agent runs it without a hand-off (runtime.agents.process)
            task.input_handle = self.payloads.pack(task.input, "input", frame, task.size)
            self.outbox.setdefault(agent.id, []).append(frame)

    def take_outbox(self) -> dict[str, list[dict[str, Any]]]:
        out, self.outbox = self.outbox, {}
        return out

    def results(self, agent_id: str, results: list[dict[str, Any]]) -> None:
        """An agent's results, in order.  A batch of plain successes of the attempts it
        holds (a prefetched batch) is recorded in one journal write
        (``Journal.finish_successes``); anything else one by one."""
        link = self.agents.get(agent_id)
        if len(results) > 1 and link is not None and all(self._usual(link, r) for r in results):
            taken = [self._take(link, r) for r in results]
            fins = self.journal.finish_successes([(tid, attempt, result)
                                                  for _, tid, attempt, _, result, _ in taken])
            if fins is not None:
                for (task, _, attempt, *_), fin in zip(taken, fins):
                    self.follow(task, attempt, fin)
                return
            for item in taken:
                self._finish(*item)
            return
        for r in results:
            self._result(link, r)

    def _usual(self, link: AgentLink, r: Any) -> bool:
        """A success of an attempt ``link`` holds, of a task this scheduler runs (no side
        effects: ``results`` decides on it before taking any result)."""
        if type(r) is not dict or "error" in r or r.get("id") in self.result_sinks:
            return False
        task = self.tasks.get(r.get("id"))
        return task is not None and task.attempts == r.get("attempt") == link.inflight.get(task.id)

    def _result(self, link: AgentLink | None, r: dict[str, Any]) -> None:
        item = self._take(link, r)
        if item is not None:
            self._finish(*item)

    def _take(self, link: AgentLink | None, r: dict[str, Any]) -> tuple[Any, ...] | None:
        """A result's bookkeeping before the journal: clocks, the agent's room, the
        streak; None when a sink took it.  Returns (task, id, attempt, outcome, result, error)."""
        tid, attempt = r["id"], r["attempt"]
        stamp = self.receive_clock(r.get("vc"), link)
        sink = self.result_sinks.get(tid)
        if sink is not None:
            sink(link, r)
            return None
        if link is not None and link.inflight.get(tid) == attempt:
            del link.inflight[tid]
            link.stopping.pop(tid, None)
            link.done += 1
        ok = "error" not in r
        task = self.tasks.get(tid)
        if task is not None and task.attempts == attempt:
            self._timed(task, r.get("run_us"))
        if task is not None and ok and stamp is not None:
            task.vc = stamp
        outcome = "succeeded" if ok else self._judge(task, link, r.get("error"))
        return (task, tid, attempt, outcome, self.payloads.unpack(r, "ok") if ok else None,
                r.get("error"))

    def _finish(self, task: TaskRun | None, tid: str, attempt: int, outcome: str,
                result: Any, error: Any) -> None:
        fin = self.journal.finish_attempt(tid, attempt, outcome, result=result, error=error)
        if task is not None:
            self.follow(task, attempt, fin)

    def receive_clock(self, stamp: Any, link: AgentLink | None) -> dict[str, int] | None:
        """Merge an agent's stamp (a result's, an answer's) into the coordinator's clock; the
        agent's stamp, checked, or None (none, or a bad one: dropped and said, never fatal)."""
        if stamp is None:
            return None
        try:
            self.vclock.receive(stamp)
        except InvalidInput as e:
            self.emit("agent.bad_clock", agent=link.id if link else None, error=e.message)
            return None
        return stamp

    def _pool_knob(self, pool: str | None, name: str, default: Any) -> Any:
        value = getattr(self.pools.get(pool or ""), name, None)
        return default if value is None else value

    def _judge(self, task: TaskRun | None, link: AgentLink | None, error: Any) -> str:
        """``failed`` or ``fatal`` for a handler error: the task's lists, then its pool's."""
        pool = link.pool if link is not None else None
        fatal = tuple(task.fatal if task else ()) + tuple(self._pool_knob(pool, "fatal", ()))
        retryable = (task.retryable if task and task.retryable else
                     tuple(self._pool_knob(pool, "retryable", ())))
        return error_outcome(error, fatal, retryable)

    def follow(self, task: TaskRun, attempt: int, fin: Any, crashed: bool = False) -> None:
        """Mirror the journal's verdict on an attempt (it alone decides states)."""
        for listener in self.attempt_end_listeners:
            listener(task, attempt, fin, crashed)
        if fin.state == "succeeded":
            if fin.recorded:  # the one result that counts (maybe of an older attempt)
                self._forget_inflight(task)
                self._final(task, "succeeded", fin.record)
            return
        if attempt != task.attempts:
            return  # a late report of an attempt that was already given up
        task.agent = None
        if fin.state == "queued":
            self.emit("task.rerouted" if crashed else "task.requeued", task.trace,
                      task_id=task.id, attempt=attempt)
            self.enqueue(task, front=crashed)
        elif fin.state == "retry_wait":
            self._schedule_retry(task)
        elif fin.state in TERMINAL:
            self._final(task, fin.state)

    def _schedule_retry(self, task: TaskRun) -> None:
        rec = self.journal.get(task.id)
        delay = max(0.0, (rec.not_before or time.time()) - time.time())
        task.state = "retry_wait"
        self.emit("task.retry_scheduled", task.trace, task_id=task.id, attempt=task.attempts,
                  delay_s=round(delay, 4), error=(rec.error or {}).get("message"))
        self._timer(self.clock() + delay, "retry", task.id)

    def _forget_inflight(self, task: TaskRun) -> None:
        link = self.agents.get(task.agent) if task.agent else None
        if link is not None:
            link.inflight.pop(task.id, None)

    def _final(self, task: TaskRun, state: str, rec: Any = None) -> None:
        """The task ended in ``state``; ``rec`` is its journal record if the caller has it."""
        self._leaves_queue(task)
        task.state = state
        self.tasks.pop(task.id, None)
        rec = rec if rec is not None else self.journal.get(task.id)
        self.emit(f"task.{state}", task.trace, task_id=task.id, attempts=rec.attempts,
                  **({"error": rec.error} if rec.error else {}),
                  **({"vc": task.vc} if task.vc and state == "succeeded" else {}))
        for listener in self.final_listeners:
            listener(task, rec)

    def cancel(self, task_id: str, deadline: bool = False) -> bool:
        """Cancel (or expire) a live task: ended in the journal now; a running attempt is
        asked to stop and its agent stays busy until it has (see the module docstring)."""
        done = self.journal.mark_deadline(task_id) if deadline else self.journal.cancel(task_id)
        task = self.tasks.get(task_id)
        if done and task is not None:
            self._stop_running(task, "deadline passed" if deadline else "cancelled")
            self._final(task, "deadline_exceeded" if deadline else "cancelled")
        return done

    def reject(self, task_id: str, error: dict[str, Any]) -> bool:
        """End a task nobody can take (not started: queued, deferred or waiting) as failed."""
        done = self.journal.reject(task_id, error)
        task = self.tasks.get(task_id)
        if done and task is not None:
            self._final(task, "failed")
        return done

    def cancel_pipeline(self, pipeline_id: str) -> list[str]:
        """Cancel every unfinished step of a pipeline (running ones are stopped)."""
        ids = self.journal.cancel_pipeline(pipeline_id)
        for tid in ids:
            task = self.tasks.get(tid)
            if task is not None:
                self._stop_running(task, "pipeline cancelled")
                self._final(task, "cancelled")
        return ids

    def _stop_running(self, task: TaskRun, why: str) -> None:
        link = self.agents.get(task.agent) if task.state == "running" and task.agent else None
        attempt = link.inflight.get(task.id) if link is not None else None
        if link is not None and attempt:
            self.stop_attempt(link, task.id, attempt, why, task.trace)

    def stop_attempt(self, link: AgentLink, task_id: str, attempt: int, why: str,
                     trace: TraceContext | None = None) -> None:
        """Ask the agent to stop an attempt; arm the kill after its pool's grace."""
        if link.stopping.get(task_id) == attempt:
            return
        link.stopping[task_id] = attempt
        self.cancels.setdefault(link.id, []).append({"id": task_id, "attempt": attempt})
        grace = float(self._pool_knob(link.pool, "cancel_grace_s", DEFAULT_CANCEL_GRACE_S))
        self.emit("task.stop_requested", trace, task_id=task_id, attempt=attempt, agent=link.id,
                  why=why, grace_s=grace)
        self._timer(self.clock() + grace, "grace", (task_id, attempt, link.id))

    def take_cancels(self) -> dict[str, list[dict[str, Any]]]:
        out, self.cancels = self.cancels, {}
        return out

    def _grace_over(self, task_id: str, attempt: int, agent_id: str) -> None:
        link = self.agents.get(agent_id)
        if link is None or link.inflight.get(task_id) != attempt or link.killed:
            return  # it stopped (or died) in time
        link.killed = f"attempt {attempt} of {task_id} did not stop within its cancel grace"
        link.draining = True  # no new work for it while the root replaces it
        self.emit("agent.kill", agent=agent_id, pid=link.pid, task_id=task_id, why=link.killed)
        for listener in self.kill_listeners:
            listener(link, link.killed)

    def _timed_out(self, task_id: str, attempt: int, agent_id: str) -> None:
        """An attempt ran past its ``timeout_s``: stop it and let the retry policy decide
        (the agent stays busy until the attempt has ended or it is killed)."""
        link, task = self.agents.get(agent_id), self.tasks.get(task_id)
        if link is None or link.inflight.get(task_id) != attempt or task is None or task.attempts != attempt:
            return
        self.stop_attempt(link, task_id, attempt, "timeout_s passed", task.trace)
        error = {"code": "TIMED_OUT", "type": "TimedOut",
                 "message": f"attempt {attempt} on agent {agent_id} ran past its timeout_s",
                 "hint": "raise options.timeout_s (or the pool's timeout_s) or make the handler faster"}
        self.emit("task.timed_out", task.trace, task_id=task_id, attempt=attempt, agent=agent_id)
        self.follow(task, attempt, self.journal.finish_attempt(task_id, attempt, "failed", error=error))

    # -- timers ------------------------------------------------------------------------

    def _timer(self, when: float, kind: str, task_id: Any) -> None:
        heapq.heappush(self.timers, (when, next(self._seq), kind, task_id))

    def next_timer_in(self) -> float | None:
        return max(0.0, self.timers[0][0] - self.clock()) if self.timers else None

    def fire_timers(self) -> None:
        now = self.clock()
        due_retry = False
        while self.timers and self.timers[0][0] <= now:
            _, _, kind, tid = heapq.heappop(self.timers)
            if kind == "grace":
                self._grace_over(*tid)
                continue
            if kind == "timeout":
                self._timed_out(*tid)
                continue
            task = self.tasks.get(tid)
            if task is None:
                continue
            if kind == "retry" and task.state == "retry_wait":
                due_retry = True
            elif kind == "deadline" and task.deadline is not None and task.deadline <= now:
                self.cancel(tid, deadline=True)
        if due_retry:
            for tid in self.journal.promote_due():
                if tid in self.tasks:
                    self.enqueue(self.tasks[tid])

    # -- pools that are down (runtime.scaling.health) ------------------------------------

    def admit(self, capability: str) -> None:
        """Refuse a new task for a capability whose every pool is down and says ``refuse``
        (UNAVAILABLE, retryable); with ``park`` it is accepted and waits for the pool."""
        down = self.down.get(capability)
        if down is not None and down["refuse"]:
            raise Unavailable(f"no live pool serves {capability!r}: {down['reason']}",
                              hint=f"retryable; `agora pools restart {down['pools'][0]}` restarts it now",
                              pools=down["pools"])

    def waiting_for(self, capability: str) -> str | None:
        """Why a queued task of ``capability`` cannot start, if its pools are down."""
        down = self.down.get(capability)
        return down["reason"] if down is not None else None

    # -- reconciliation after a coordinator restart (runtime.coordinator.reconcile) -------

    def adopt(self, task: TaskRun, link: AgentLink, attempt: int) -> None:
        """A live agent re-announced a running attempt: it runs on, nothing is re-run."""
        task.state, task.agent, task.attempts = "running", link.id, attempt
        self.tasks[task.id] = task
        link.inflight[task.id] = attempt
        task.tried.append(link.id)  # a retry prefers another agent, and never this one while it still runs
        if task.deadline is not None:
            self._timer(task.deadline, "deadline", task.id)
        self.emit("task.adopted", task.trace, task_id=task.id, attempt=attempt, agent=link.id)

    def lost(self, task: TaskRun, attempt: int, error: dict[str, Any]) -> None:
        """No live agent claimed the attempt: it is crashed, and the journal decides."""
        task.state, task.attempts = "running", attempt
        self.tasks[task.id] = task
        fin = self.journal.finish_attempt(task.id, attempt, "crashed", error=error)
        self.follow(task, attempt, fin, crashed=True)


# -- reconciliation after a coordinator restart (runtime.coordinator.reconcile) ------------

def running_attempts(journal: Any) -> list[tuple[str, int, str]]:
    """(task id, attempt, agent) of every attempt the journal still has open on a running
    task: after a coordinator restart these may still be running in live agents."""
    return [tuple(r) for r in journal.conn.execute(
        "SELECT t.id, a.attempt, a.agent FROM tasks t JOIN attempts a ON a.task_id = t.id "
        "AND a.attempt = t.attempts WHERE t.state = 'running' AND a.ended IS NULL").fetchall()]


def resumable(journal: Any) -> list[Any]:
    """``Journal.unfinished`` without closing running attempts: queued, retry_wait and
    blocked tasks (highest priority first)."""
    from runtime.tasks.journal import _RECORD, TaskRecord
    rows = journal.conn.execute(
        f"SELECT {_RECORD} FROM tasks WHERE state IN ('queued', 'retry_wait', 'blocked') "
        "ORDER BY priority DESC, id").fetchall()
    return [TaskRecord.from_row(r, journal.conn) for r in rows]


def attempt_open(journal: Any, task_id: str, attempt: int) -> bool:
    """True if the journal would still take a result of this attempt (open, or closed as
    crashed: a late success revises it; ``Journal._end_attempt``)."""
    row = journal.conn.execute("SELECT ended, outcome FROM attempts WHERE task_id = ? AND attempt = ?",
                               (task_id, attempt)).fetchone()
    return row is not None and (row[0] is None or row[1] == "crashed")

