"""Coordination primitives served to agents by the coordinator: leases with fencing
tokens, locks, leader election, barriers, counters and vector clocks.

The pure state machines live in ``coordination.leases``, ``coordination.barriers`` and
``coordination.clocks``; this module is their driver inside the (supervised) coordinator
process: agents reach it with ``ctx.call("lock.acquire", {...})`` (``coord.agent_ops``),
the CLI with the ``locks`` and ``leaders`` commands.

::

    agent --call lock.acquire--> coordinator: LeaseTable.acquire
        granted                  -> reply {"token", "expires_in", ...} at once
        held by another          -> Deferred; resolved by the Handover that grants it
                                    (release, holder death, expiry) or failed at its timeout
    EOF on an agent socket       -> agent_died: holder_died / candidate_died /
                                    participant_died, all in the same loop turn

Liveness: every holder, candidate and barrier participant is an agent id; its death is
seen at once (EOF on its socket, ``coord.agent_listeners``), so a dead lock holder's lock
passes to the next waiter within the same turn.  A lease's TTL is the backstop for a
holder that is alive but stuck: a timer fires at the earliest expiry.

Decisions where the spec is silent:

* Names: ``lease.*`` ops use the resource name as given; ``lock.*`` ops use the resource
  ``"lock:<name>"`` (as :class:`coordination.leases.Lock`), so a lock and a lease of the
  same name never collide.  Fencing tokens strictly increase per resource, never reused.
* ``lock.acquire`` waits (FIFO) up to ``timeout`` s (default 10).  A grant that reaches
  an agent whose ``ctx.call`` gave up first is released by that agent at once
  (``runtime.agents.process``); ``task.lock``/``ctx.lock`` wait ``timeout`` + 5 s, so the
  coordinator's own timeout answers first.  ``lease.acquire`` does not wait unless
  ``wait`` is true.
* A barrier is created by its first arrival (``parties``: a count or the agent ids); later
  arrivals must name the same parties.  A finished barrier is forgotten once everybody
  was answered, so the name can be reused for the next phase.
* Vector clocks: one per group, held by the coordinator; ``vclock.tick`` merges the
  agent's clock (if sent) and increments the agent's entry — a causal stamp for events
  that agents exchange through the coordinator.  Every stamp of a group dominates the
  group's earlier ones, so it cannot show concurrency: each agent's own clock, carried by
  agora's messages, is ``task.clock`` (runtime.observability.vclock).
* Owners: a lock or lease is held by its agent (released when the agent dies) or, with
  ``"task": {"id", "attempt"}`` in ``lock.acquire`` (``task.lock(name)`` in a handler), by
  that task attempt (holder ``task:<id>:<attempt>``): released when the attempt ends, however
  it ends (result, raise, cancel, crash, lost after a restart), and when its agent dies.
  The attempt must be running on the asking agent.
* Durable (``coordination.services.store``): held leases, the last token of every
  resource, elections (term and candidates), counters and waiting barriers are written
  through to the journal's database in the turn that changes them.  A new coordinator
  restores them: tokens and terms continue from where they were, held leases stay held
  until they expire or their holder is found dead.  A holder is found dead when it says
  hello from another pid (a new incarnation under the same id) or does not say hello
  within ``RECONCILE_S`` of the start.  Wait queues are not restored: a waiter's call
  failed with UNAVAILABLE when the old coordinator died, and it asks again.
* Every op accepts an optional ``trace`` (a wire trace context, e.g. a task's
  ``task.trace.to_wire()``) so lease events join the task's trace; without one each
  lease or election gets a trace of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coordination.barriers import BROKEN, RELEASED, WAITING, Barrier
from coordination.barriers import Outcome as BarrierOutcome
from coordination.clocks import VectorClock
from coordination.leases import Counters, Election, Handover, Lease, LeaseTable, Queued
from coordination.services.store import Store
from runtime.coordinator.command_kit import Deferred, arg, only
from runtime.coordinator.host import ServiceHost
from runtime.coordinator.reconcile import RECONCILE_S
from runtime.errors import Conflict, DeadlineExceeded, InvalidInput, NotFound
from runtime.observability.trace_context import TraceContext

__all__ = ["Primitives", "install", "lease_json"]

DEFAULT_LOCK_TTL = 30.0
DEFAULT_LOCK_TIMEOUT = 10.0


def install(coord: ServiceHost) -> Primitives:
    prims = Primitives(coord.clock, coord.emit, coord.call_later,
                       store=Store(coord.journal.conn), agents=coord.scheduler.agents)
    prims.restore()
    coord.add_agent_listener(prims)
    coord.add_attempt_listener(prims.attempt_ended)
    coord.add_agent_ops(prims.agent_ops())
    coord.add_commands({"locks": prims.cmd_locks, "leaders": prims.cmd_leaders})
    return prims


def lease_json(lease: Lease, now: float) -> dict[str, Any]:
    return {"resource": lease.resource, "holder": lease.holder, "token": lease.token,
            "ttl": lease.ttl, "expires_in": round(lease.expires_at - now, 6)}


def _trace(args: dict[str, Any], wire: Any) -> TraceContext:
    """The caller's trace (argument or frame), else a new one."""
    given = TraceContext.from_wire(args.get("trace")) or TraceContext.from_wire(wire)
    return given.child() if given else TraceContext.new_trace()


def _timeout(args: dict[str, Any], default: float) -> float:
    value = float(arg(args, "timeout", (int, float), default))
    if not 0 <= value <= 3600:
        raise InvalidInput(f"argument 'timeout' must be within [0, 3600] s, got {value}",
                           field="timeout")
    return value



def running_attempt(agents: Any, agent: str, task: Any, hint: str) -> tuple[str, int]:
    """``task`` ({"id", "attempt"}) checked, and that attempt running on ``agent`` (when
    ``agents``, the scheduler's links, is given): what a task-held lock, a task-held
    resource unit and a subcontract's parent all ask of the attempt that names itself."""
    tid, attempt = task.get("id"), task.get("attempt")
    if not isinstance(tid, str) or not tid or type(attempt) is not int:
        raise InvalidInput(f"argument 'task' must be {{'id': str, 'attempt': int}}, "
                           f"got {task!r:.200}", field="task")
    link = None if agents is None else agents.get(agent)
    if agents is not None and (link is None or link.inflight.get(tid) != attempt):
        raise Conflict(f"task {tid} attempt {attempt} is not running on {agent!r}", hint=hint)
    return tid, attempt

class _Wait:
    """An agent waiting for a lease: its reply and the trace its events go to."""

    def __init__(self, deferred: Deferred, trace: TraceContext) -> None:
        self.deferred, self.trace = deferred, trace


class Primitives:
    """The coordinator's leases, elections, barriers, counters and vector clocks.

    ``store`` (None: in memory only) makes them durable; ``agents`` (the scheduler's live
    agent links, by id) lets it check that a task-held lock's attempt runs on its asker and
    record holders' pids."""

    def __init__(self, clock: Callable[[], float], emit: Callable[..., None],
                 call_later: Callable[[float, Callable[[], None]], None], *,
                 store: Store | None = None, agents: dict[str, Any] | None = None) -> None:
        self.clock, self.emit, self.call_later = clock, emit, call_later
        self.store, self.agents = store, agents
        self.owners: dict[str, str] = {}                       # task holder -> its agent
        self.unconfirmed: dict[str, int | None] = {}           # restored agent -> pid it had
        self.restored_barriers: set[str] = set()
        self.leases = LeaseTable(clock)
        self.lease_traces: dict[str, TraceContext] = {}        # resource -> trace of its lease
        self.waits: dict[tuple[str, str], _Wait] = {}          # (resource, holder) -> waiter
        self.elections: dict[str, Election] = {}
        self.election_traces: dict[str, TraceContext] = {}
        self.barriers: dict[str, Barrier] = {}
        self.barrier_waits: dict[str, dict[str, Deferred]] = {}
        self.barriers_ended: set[str] = set()                  # names whose end was announced
        self.barrier_traces: dict[str, TraceContext] = {}
        self.counters = Counters()
        self.vclocks: dict[str, VectorClock] = {}
        self._expiry_at: float | None = None

    def agent_ops(self) -> dict[str, Callable[[str, dict[str, Any], Any], Any]]:
        return {
            "lease.acquire": self.lease_acquire, "lease.renew": self.lease_renew,
            "lease.release": self.lease_release, "lease.check": self.lease_check,
            "lock.acquire": self.lock_acquire, "lock.release": self.lock_release,
            "lock.renew": self.lock_renew, "lock.check": self.lock_check,
            "election.join": self.election_join, "election.leave": self.election_leave,
            "election.leader": self.election_leader,
            "barrier.wait": self.barrier_wait,
            "counter.add": self.counter_add, "counter.get": self.counter_get,
            "vclock.tick": self.vclock_tick,
        }

    # -- leases and locks --------------------------------------------------------------

    def lease_acquire(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "ttl", "wait", "timeout", "task", "trace")
        wait = arg(args, "wait", bool, False)
        return self._acquire(agent, arg(args, "name", str), args, wait=wait,
                             default_timeout=DEFAULT_LOCK_TIMEOUT, wire=wire)

    def lock_acquire(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "ttl", "timeout", "task", "trace")
        return self._acquire(agent, "lock:" + arg(args, "name", str), args, wait=True,
                             default_timeout=DEFAULT_LOCK_TIMEOUT, wire=wire)

    def _holder(self, agent: str, args: dict[str, Any]) -> str:
        """Who holds: the agent, or (``task`` given) that attempt, which must run on it."""
        task = arg(args, "task", dict, None)
        if task is None:
            return agent
        tid, attempt = running_attempt(self.agents, agent, task,
                                       "a task-held lock is taken from the attempt's own handler "
                                       "(task.lock(name)); a finished attempt holds nothing")
        holder = f"task:{tid}:{attempt}"
        self.owners.setdefault(holder, agent)
        return holder

    def _acquire(self, agent: str, resource: str, args: dict[str, Any], *, wait: bool,
                 default_timeout: float, wire: Any) -> Any:
        ttl = arg(args, "ttl", (int, float), DEFAULT_LOCK_TTL)
        timeout = _timeout(args, default_timeout)
        trace = _trace(args, wire)
        holder = self._holder(agent, args)
        held = self.leases.holder_of(resource)
        got = self.leases.acquire(resource, holder, ttl, wait=wait and timeout > 0)
        if isinstance(got, Lease):
            if held is not None and held.token == got.token:  # its holder asked again: renewed
                self.emit("lease.renewed", self.lease_traces.get(resource), resource=resource,
                          holder=holder, token=got.token, ttl=got.ttl)
                self._save(resource)
                self._arm_expiry()
            else:
                self._granted(got, trace)
            return lease_json(got, self.clock())
        return self._queue(got, trace, timeout)

    def _queue(self, queued: Queued, trace: TraceContext, timeout: float) -> Deferred:
        key = (queued.resource, queued.holder)
        earlier = self.waits.pop(key, None)
        if earlier is not None:  # the same agent asked again: the newest request gets the grant
            earlier.deferred.fail(InvalidInput(
                f"{queued.holder!r} asked for {queued.resource!r} again while waiting",
                hint="wait for one acquire at a time"))
        wait = _Wait(Deferred(), trace)
        self.waits[key] = wait
        self.emit("lease.waiting", trace, resource=queued.resource, holder=queued.holder,
                  position=queued.position)
        self.call_later(timeout, lambda: self._wait_timed_out(key, wait, timeout))
        return wait.deferred

    def _wait_timed_out(self, key: tuple[str, str], wait: _Wait, timeout: float) -> None:
        if self.waits.get(key) is not wait:
            return  # granted, replaced, or its agent died
        del self.waits[key]
        self.leases.cancel(*key)
        holder = self.leases.holder_of(key[0])
        self.emit("lease.wait_timeout", wait.trace, resource=key[0], holder=key[1],
                  timeout_s=timeout)
        wait.deferred.fail(DeadlineExceeded(
            f"{key[1]!r} waited {timeout} s for {key[0]!r}, held by "
            f"{holder.holder if holder else 'nobody'!r} (token {holder.token if holder else '-'})",
            hint="raise the timeout, shorten the holder's critical section, "
                 "or look for a stuck holder"))

    def _granted(self, lease: Lease, trace: TraceContext) -> None:
        self.lease_traces[lease.resource] = trace
        self.emit("lease.granted", trace, resource=lease.resource, holder=lease.holder,
                  token=lease.token, ttl=lease.ttl)
        self._save(lease.resource)
        self._arm_expiry()

    def _save(self, resource: str) -> None:
        """Write ``resource``'s lease (or its absence) and last token through to the store."""
        if self.store is None:
            return
        lease = self.leases.holder_of(resource)
        if lease is None:
            self.store.drop_lease(resource)
            return
        agent = self.owners.get(lease.holder, lease.holder)
        link = None if self.agents is None else self.agents.get(agent)
        self.store.put_lease(resource, lease.holder, lease.token, lease.ttl,
                             lease.expires_at - self.clock(), agent,
                             getattr(link, "pid", None))

    def _apply(self, handover: Handover, why: str) -> None:
        """Leases that ended (released / expired / holder died) and grants to waiters."""
        for lease in handover.released:
            trace = self.lease_traces.pop(lease.resource, None)
            self.emit("lease." + why, trace, resource=lease.resource, holder=lease.holder,
                      token=lease.token)
            self._save(lease.resource)
        for lease in handover.granted:
            wait = self.waits.pop((lease.resource, lease.holder), None)
            trace = wait.trace if wait else TraceContext.new_trace()
            self._granted(lease, trace)
            if wait is not None:
                wait.deferred.resolve(lease_json(lease, self.clock()))

    def _arm_expiry(self) -> None:
        """One timer at the earliest lease expiry (re-armed when it fires)."""
        due = self.leases.next_deadline()
        if due is None or (self._expiry_at is not None and self._expiry_at <= due):
            return
        self._expiry_at = due
        self.call_later(max(0.0, due - self.clock()), self._expire)

    def _expire(self) -> None:
        self._expiry_at = None
        self._apply(self.leases.expire(), "expired")
        self._arm_expiry()

    def lease_renew(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "token", "ttl", "task", "trace")
        return self._renew(self._holder(agent, args), arg(args, "name", str), args)

    def lock_renew(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "token", "ttl", "task", "trace")
        return self._renew(self._holder(agent, args), "lock:" + arg(args, "name", str), args)

    def _renew(self, holder: str, resource: str, args: dict[str, Any]) -> Any:
        lease = self.leases.renew(resource, holder, arg(args, "token", int),
                                  arg(args, "ttl", (int, float), None))
        self.emit("lease.renewed", self.lease_traces.get(resource), resource=resource,
                  holder=holder, token=lease.token, ttl=lease.ttl)
        self._save(resource)
        self._arm_expiry()
        return lease_json(lease, self.clock())

    def lease_release(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "token", "task", "trace")
        return self._release(self._holder(agent, args), arg(args, "name", str),
                             arg(args, "token", int))

    def lock_release(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "token", "task", "trace")
        return self._release(self._holder(agent, args), "lock:" + arg(args, "name", str),
                             arg(args, "token", int))

    def _release(self, holder: str, resource: str, token: int) -> Any:
        self._apply(self.leases.release(resource, holder, token), "released")
        return {"released": True, "resource": resource, "token": token}

    def lease_check(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "token", "task", "trace")
        return self.leases.check_fence(arg(args, "name", str), arg(args, "token", int))

    def lock_check(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "token", "task", "trace")
        return self.leases.check_fence("lock:" + arg(args, "name", str), arg(args, "token", int))

    # -- leader election ---------------------------------------------------------------

    def election_join(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "group", "trace")
        group = arg(args, "group", str)
        election = self.elections.get(group)
        if election is None:
            election = self.elections[group] = Election(group)
            self.election_traces[group] = _trace(args, wire)
        self._announce(election.join(agent))
        self._save_election(election)
        return self._leadership(election, agent)

    def election_leave(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "group", "trace")
        election = self._election(arg(args, "group", str))
        self._announce(election.leave(agent))
        self._save_election(election)
        return self._leadership(election, agent)

    def election_leader(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "group", "trace")
        return self._leadership(self._election(arg(args, "group", str)), agent)

    def _election(self, group: str) -> Election:
        election = self.elections.get(group)
        if election is None:
            raise NotFound(f"no election group {group!r}",
                           hint="join it first with election.join; "
                                "`agora leaders` lists the groups")
        return election

    @staticmethod
    def _leadership(election: Election, agent: str) -> dict[str, Any]:
        return {"group": election.group, "leader": election.leader, "term": election.term,
                "is_leader": election.leader == agent, "candidates": list(election.candidates)}

    def _save_election(self, election: Election) -> None:
        if self.store is not None:
            self.store.put_election(election.group, election.term, list(election.candidates))

    def _announce(self, change: Any) -> None:
        if change is not None:
            self.emit("election.leader", self.election_traces.get(change.group), group=change.group,
                      leader=change.leader, term=change.term)

    # -- barriers ----------------------------------------------------------------------

    def barrier_wait(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "parties", "timeout", "trace")
        name = arg(args, "name", str)
        parties = arg(args, "parties", (int, list))
        if isinstance(parties, list) and not all(isinstance(x, str) and x for x in parties):
            raise InvalidInput(f"barrier {name!r}: parties must be a count or a list of agent ids, "
                               f"got {parties!r:.200}", field="parties")
        barrier = self._barrier(name, parties, _timeout(args, 30.0))
        outcome = barrier.arrive(agent)
        self._save_barrier(name, barrier)
        d = Deferred()
        self.barrier_waits.setdefault(name, {})[agent] = d
        trace = self.barrier_traces.setdefault(name, _trace(args, wire))
        self.emit("barrier.arrived", trace, barrier=name, agent=agent,
                  arrived=len(barrier.arrived), parties=barrier.parties)
        self.call_later(0.0, lambda: self._answer(name, barrier, outcome))  # once d is bound
        return d

    def _barrier(self, name: str, parties: Any, timeout: float) -> Barrier:
        barrier = self.barriers.get(name)
        if barrier is None:
            barrier = Barrier(name, parties, self.clock() + timeout, self.clock)
            self.barriers[name] = barrier
            self.call_later(timeout, lambda: self._expire_barrier(name, barrier))
            return barrier
        asked = frozenset(parties) if isinstance(parties, list) else parties
        if (barrier.members or barrier.parties) != asked:
            opened = sorted(barrier.members) if barrier.members else barrier.parties
            raise InvalidInput(f"barrier {name!r} was opened with parties {opened}, "
                               f"not {parties!r}",
                               hint="every participant must name the same parties")
        return barrier

    def _expire_barrier(self, name: str, barrier: Barrier) -> None:
        """Its deadline: break it if still waiting; a broken barrier is forgotten now."""
        self._answer(name, barrier, barrier.expire())
        if self.barriers.get(name) is barrier:
            self._forget_barrier(name)

    def _answer(self, name: str, barrier: Barrier, outcome: BarrierOutcome) -> None:
        waits = self.barrier_waits.get(name, {})
        for who in outcome.notify:
            d = waits.pop(who, None)
            if d is None:
                continue
            if outcome.error is not None:
                d.fail(outcome.error)
            else:
                d.resolve({"barrier": name, "state": outcome.state, "parties": barrier.parties})
        if outcome.state in (RELEASED, BROKEN) and name not in self.barriers_ended:
            self.barriers_ended.add(name)
            self.emit("barrier." + outcome.state, self.barrier_traces.get(name), barrier=name,
                      arrived=list(barrier.arrived),
                      error=None if outcome.error is None else outcome.error.message)
        # a released barrier is forgotten once everybody was answered (the name is free for
        # the next phase); a broken one stays until its deadline so late arrivals hear why
        # (a restored one stays until its deadline: its arrivals' calls died with the old
        # coordinator and they ask again, to hear "released")
        if outcome.state == RELEASED and not waits and self.barriers.get(name) is barrier \
                and name not in self.restored_barriers:
            self._forget_barrier(name)
        if outcome.state != WAITING and self.store is not None:
            self.store.drop_barrier(name)

    def _save_barrier(self, name: str, barrier: Barrier) -> None:
        if self.store is None or barrier.state != WAITING:
            return
        parties = sorted(barrier.members) if barrier.members is not None else barrier.parties
        self.store.put_barrier(name, {"parties": parties, "arrived": list(barrier.arrived),
                                      "deadline_in": barrier.deadline - self.clock(),
                                      "wall": self.store.wall()})

    def _forget_barrier(self, name: str) -> None:
        self.restored_barriers.discard(name)
        if self.store is not None:
            self.store.drop_barrier(name)
        del self.barriers[name]
        self.barrier_waits.pop(name, None)
        self.barriers_ended.discard(name)
        self.barrier_traces.pop(name, None)

    # -- counters and vector clocks ----------------------------------------------------

    def counter_add(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "delta", "trace")
        name = arg(args, "name", str)
        value = self.counters.add(name, arg(args, "delta", int, 1))
        if self.store is not None:
            self.store.put_counter(name, value)
        return value

    def counter_get(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "name", "trace")
        return self.counters.get(arg(args, "name", str))

    def vclock_tick(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "group", "clock", "trace")
        group = arg(args, "group", str)
        theirs = VectorClock.from_json(arg(args, "clock", dict, {}))
        stamped = self.vclocks.get(group, VectorClock()).receive(agent, theirs)
        self.vclocks[group] = stamped
        return stamped.to_json()

    # -- liveness ----------------------------------------------------------------------

    def agent_joined(self, link: Any) -> None:
        """A new agent holds nothing; after a restart, a holder that comes back from
        another pid is a new incarnation: the old one, which held things, died."""
        if link.id not in self.unconfirmed:
            return
        pid = self.unconfirmed.pop(link.id)
        if pid is not None and pid != link.pid:
            self.emit("primitives.holder_replaced", agent=link.id, old_pid=pid, pid=link.pid)
            self.agent_died(link.id)

    def agent_died(self, agent_id: str) -> None:
        holders = [agent_id, *(h for h, a in self.owners.items() if a == agent_id)]
        for key in [k for k in self.waits if k[1] in holders]:
            del self.waits[key]  # its socket is closed: nobody to answer
        for holder in holders:
            self._holder_gone(holder, "holder_died")
        for election in self.elections.values():
            if agent_id in election.candidates:
                self._announce(election.candidate_died(agent_id))
                self._save_election(election)
        for name, barrier in list(self.barriers.items()):
            self.barrier_waits.get(name, {}).pop(agent_id, None)
            self._answer(name, barrier, barrier.participant_died(agent_id))

    def attempt_ended(self, task: Any, attempt: int, finish: Any, crashed: bool) -> None:
        """A task attempt ended (any way): what it held is released, its waits dropped."""
        holder = f"task:{task.id}:{attempt}"
        if holder not in self.owners:
            return
        for key in [k for k in self.waits if k[1] == holder]:
            self.waits.pop(key).deferred.fail(Conflict(
                f"task {task.id} attempt {attempt} ended while waiting for {key[0]!r}"))
        self._holder_gone(holder, "task_ended")

    def _holder_gone(self, holder: str, why: str) -> None:
        self._apply(self.leases.holder_died(holder), why)
        self.owners.pop(holder, None)

    # -- restart -----------------------------------------------------------------------

    def restore(self) -> None:
        """Take back what the previous coordinator left in the store (see the docstring)."""
        if self.store is None:
            return
        for row in self.store.leases():
            self._restore_lease(*row)
        self.leases.restore((), self.store.tokens())
        for group, (term, candidates) in self.store.elections().items():
            self.elections[group] = Election.restored(group, term, candidates)
            self.election_traces[group] = TraceContext.new_trace()
            self.unconfirmed.update((c, self.unconfirmed.get(c)) for c in candidates)
        self.counters.restore(self.store.counters())
        for name, state in self.store.barriers().items():
            self._restore_barrier(name, state)
        self.emit("primitives.restored", leases=len(self.leases.resources()),
                  elections=len(self.elections), barriers=len(self.barriers),
                  unconfirmed=sorted(self.unconfirmed))
        if self.unconfirmed:
            self.call_later(RECONCILE_S, self._reconcile_done)
        self._arm_expiry()

    def _restore_lease(self, resource: str, holder: str, token: int, ttl: float,
                       expires_wall: float, agent: str, pid: int | None) -> None:
        now = self.clock()
        left = expires_wall - self.store.wall()  # type: ignore[union-attr]
        self.leases.restore([Lease(resource, holder, token, ttl, now + left - ttl, now + left)], {})
        self.lease_traces[resource] = TraceContext.new_trace()
        if holder != agent:
            self.owners[holder] = agent
        self.unconfirmed[agent] = pid if pid is not None else self.unconfirmed.get(agent)

    def _restore_barrier(self, name: str, state: dict[str, Any]) -> None:
        left = state["deadline_in"] - (self.store.wall() - state["wall"])  # type: ignore[union-attr]
        if left <= 0:
            self.store.drop_barrier(name)  # type: ignore[union-attr]
            return
        barrier = Barrier(name, state["parties"], self.clock() + left, self.clock)
        for who in state["arrived"]:
            barrier.arrive(who)
            self.unconfirmed.setdefault(who, None)
        self.barriers[name] = barrier
        self.barrier_traces[name] = TraceContext.new_trace()
        self.restored_barriers.add(name)
        self.call_later(left, lambda: self._expire_barrier(name, barrier))

    def _reconcile_done(self) -> None:
        """The reconnect window is over: a restored holder that did not come back is dead."""
        gone = [a for a in self.unconfirmed if self.agents is None or a not in self.agents]
        self.unconfirmed.clear()
        for agent in gone:
            self.agent_died(agent)

    # -- commands (CLI) ----------------------------------------------------------------

    def cmd_locks(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        now = self.clock()
        rows = []
        for resource in self.leases.resources():
            lease = self.leases.holder_of(resource)
            held = lease_json(lease, now) if lease else {"resource": resource, "holder": None}
            rows.append({**held,
                         "waiters": list(self.leases.waiters(resource)),
                         "last_token": self.leases.last_token(resource)})
        return rows

    def cmd_leaders(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return [{"group": e.group, "leader": e.leader, "term": e.term,
                 "candidates": list(e.candidates)} for _, e in sorted(self.elections.items())]

