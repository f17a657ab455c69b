"""The scaler: a coordinator service that samples the pools, decides their size, and acts.

::

    coordinator loop (every TICK_S)                        root process (forks)
    tick -> measure pools (queues, inflight, arrivals,        ^
            latency; psutil every SAMPLE_EVERY ticks)         | start_agent / terminate_child
         -> decide (runtime.scaling.policy.decide, autoscaled pools) |   (one call at a time, on the
         -> act: start agents / retire agents --------------> RootActions thread, never on
         -> recycle (max_tasks, memory_ceiling)                  the loop)
         -> retire: drained (or past the deadline) -> terminate
         -> publish each agent's ``load`` to the registry (on change, once per tick)

Design decisions (the spec is silent on these):

* Membership.  The scaler keeps its own view of which agent indexes a pool has in the
  supervision tree (``members``: the configured ``0..size-1``, plus those it started,
  minus those it terminated).  A crashed agent stays a member: its pool supervisor
  restarts it under the same id, so the scaler must not start another.  Pool size for the
  policy is ``members - retiring`` (agents starting count, agents draining do not).  New
  indexes count up from the configured size and are never reused within a run.
* Root calls block (the root forks and waits for the agent to be ready), so they run on one
  helper thread with its own connection to the root socket; their outcome is picked up by
  the next tick.  Start and join are seen by the loop anyway (the agent's hello).
* Graceful retire: the agent's AgentLink is marked ``draining`` (the scheduler stops giving
  it tasks) and published as ``health = "draining"``; when its in-flight set is empty it
  is terminated; past ``retire_timeout_s`` it is terminated anyway and the scheduler
  re-routes what it still held (EOF = death).  A retiring agent that crashes and is
  restarted by its supervisor is marked draining again when it rejoins.
* Recycling (``max_tasks``, ``memory_ceiling_mib``): the replacement is started first,
  then the old agent retires gracefully, one recycle at a time per pool (no fork storm
  when every agent of a balanced pool reaches ``max_tasks`` in the same second).
* Measurements per pool: ``queue_depth`` is the coordinator's queue over the pool's
  capabilities plus the tasks waiting inside busy agents (every in-flight task but the
  running one); a capability served by two pools counts for both.  ``arrival_rate`` is
  derived by conservation over a 1 s window: arrivals = growth of (queued + in flight) +
  tasks that ended.  Latency is end-to-end (journal ``updated - created``) of tasks that
  ended in the last ``LATENCY_WINDOW_S``, at most the last ``LATENCY_SAMPLES`` of them:
  sorting every task of a busy window at each tick took ~4 % of the coordinator's time at
  2,800 tasks/s (py-spy).  ``busy`` and ``queue_depth`` are smoothed
  exponentially (time constant ``SMOOTHING_S`` = 0.3 s) before the policy sees them: with
  random arrivals the instantaneous counts flip between "up", "hold" and "down" from one
  100 ms tick to the next, so a down pressure was never sustained and a pool stayed at
  its peak size through a whole ramp down.  A fast-attack/slow-release follower was tried
  and dropped: it tracks the upper envelope of the noise, not the mean, and kept pools
  ~25 % too large (perf/scaling.py).  0.3 s still lets a sustained step cross
  ``scale_up_at`` within a few ticks.  CPU and memory (USS) come from psutil once per
  ``SAMPLE_EVERY`` ticks (1 s): reading every agent's smaps each 100 ms would cost more
  than it tells; the 500 ms reaction rests on the queue figures, which are free.
* Registry ``load`` metadata (tasks in flight at the agent) and ``health`` (``ok`` or
  ``draining``) are written only for agents whose figures changed, at most once per tick:
  one registry write each (with the partitioned backend a round trip to one partition),
  none for an idle or steady pool.  A failed write is retried on the next tick; the failure
  is logged once per 10 s.
* Every decision is a ``scaling.decision`` event with its inputs, except that a decision
  equal to the previous one of that pool (same reason and target, no resize) is not
  logged again: a pool at rest would otherwise write ten identical events a second.
  ``agora pools`` always shows the latest decision.
* ``agora scale POOL N`` resizes at once within ``[min, max]``; for an autoscaled pool the
  policy goes on from there (the manual resize counts as its last resize, so the cooldowns
  apply).
"""

from __future__ import annotations

import collections
import itertools
import math
import queue
import statistics
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from runtime.coordinator.command_kit import Deferred, arg, only
from runtime.coordinator.host import ServiceHost
from runtime.coordinator.root_link import RootLink
from runtime.errors import AgoraError, InvalidInput, NotFound, Unavailable
from runtime.pools.specs import pool_path
from runtime.scaling.health import PoolHealth
from runtime.scaling.policy import (
    Decision,
    PoolInputs,
    PoolScaling,
    ScalingState,
    decide,
    pool_scaling,
    should_recycle,
)
from runtime.scaling.sampler import Sample, Sampler

__all__ = ["install", "Scaler", "TICK_S", "SAMPLE_EVERY", "MEMORY_EVERY_S"]

TICK_S = 0.1  # decision period: well under the 500 ms reaction target
SAMPLE_EVERY = 10  # psutil sample every 10 ticks (1 s)
MEMORY_EVERY_S = 5.0  # USS/PSS (smaps_rollup, ~1 ms per agent) at most this often, or when RSS moves
RATE_WINDOW_S = 1.0
LATENCY_WINDOW_S = 10.0
LATENCY_SAMPLES = 1000  # the p95 is taken over at most this many recent tasks
SMOOTHING_S = 0.3  # time constant of the busy/queue_depth smoothing (see above)
ROOT_TIMEOUT_S = 30.0
_MiB = 1 << 20


def install(coord: ServiceHost) -> Scaler:
    scaler = Scaler(coord)
    coord.add_commands({"scale": scaler.cmd_scale, "pools": scaler.cmd_pools,
                        "pool_restart": scaler.cmd_pool_restart})
    coord.add_agent_listener(scaler)
    coord.add_final_listener(scaler.task_final)
    coord.call_later(TICK_S, scaler.tick)
    return scaler


# ---------------------------------------------------------------- root calls


class RootActions:
    """Root-supervisor calls run one at a time on a helper thread, off the loop.

    ``submit(cmd, args, on_done)``; ``collect()`` (on the loop) calls
    ``on_done(result, error)`` for every call that finished since the last collect.
    """

    def __init__(self, root_sock: str) -> None:
        self._link = RootLink(root_sock)  # its own connection: the loop's RootLink is not shared
        self._todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: collections.deque[tuple[Callable[..., None], Any, Any]] = collections.deque()
        self._thread: threading.Thread | None = None

    def submit(self, cmd: str, args: dict[str, Any], on_done: Callable[[Any, Any], None]) -> None:
        if self._thread is None:  # started on first use: a pool that never scales has no thread
            self._thread = threading.Thread(target=self._run, name="agora-scaler-root", daemon=True)
            self._thread.start()
        self._todo.put((cmd, args, on_done))

    def collect(self) -> None:
        while self._done:
            on_done, result, error = self._done.popleft()
            on_done(result, error)

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            cmd, args, on_done = item
            try:
                result, error = self._link.call(cmd, timeout=ROOT_TIMEOUT_S, **args), None
            except (AgoraError, OSError) as e:  # reported on the loop as a scaling.error event
                result, error = None, e
            self._done.append((on_done, result, error))


# ---------------------------------------------------------------- per-pool state


@dataclass
class PoolState:
    name: str
    scaling: PoolScaling
    members: set[int]
    next_index: int
    starting: set[int] = field(default_factory=set)
    retiring: dict[int, tuple[float, str]] = field(default_factory=dict)  # index -> (deadline, why)
    policy: ScalingState = field(default_factory=ScalingState)
    decision: Decision | None = None
    decided_at: float | None = None
    logged: tuple[str, int] | None = None
    backlog: int | None = None
    arrivals: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    ended: int = 0
    latencies: collections.deque[tuple[float, float]] = field(
        default_factory=lambda: collections.deque(maxlen=LATENCY_SAMPLES))
    inputs: PoolInputs | None = None
    queued: int = 0
    smoothed: tuple[float, float] | None = None  # (busy, waiting), see SMOOTHING_S
    measured_at: float | None = None
    caps: set[str] | None = None  # the pool's capabilities as of the last measure()
    seen_caps: set[str] = field(default_factory=set)  # every capability its agents said at hello

    @property
    def target(self) -> int:
        return len(self.members) - len(self.retiring)

    def recycling(self) -> bool:
        return any(why in ("max_tasks", "memory_ceiling") for _, why in self.retiring.values())


def split_agent_id(agent_id: str) -> tuple[str, int] | None:
    """``"pool.3"`` -> ``("pool", 3)`` (pool names may hold dots; the index is last)."""
    pool, _, index = agent_id.rpartition(".")
    return (pool, int(index)) if pool and index.isdigit() else None


def follow(smoothed: float, raw: float, dt: float) -> float:
    """One step of exponential smoothing towards ``raw`` over ``dt`` seconds."""
    return smoothed + (1.0 - math.exp(-dt / SMOOTHING_S)) * (raw - smoothed)


def p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


# ---------------------------------------------------------------- the service


class Scaler:
    """Sampling, decisions, acting and recycling for every pool of one coordinator."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.sched = coord.scheduler
        self.root = RootActions(coord.run.root_sock)
        self.sampler = Sampler(memory_every_s=MEMORY_EVERY_S)
        self.sample: Sample | None = None
        self.available = psutil.virtual_memory().available
        self.pools = {p.name: PoolState(p.name, pool_scaling(p), set(range(p.size)), p.size)
                      for p in coord.cfg.pools}
        self.published: dict[str, tuple[int, bool]] = {}
        self.publish_failed_at: float | None = None
        self.ticks = itertools.count()
        self.health = PoolHealth(coord, lambda name: self.capabilities(self.pools[name]))

    # -- the tick -------------------------------------------------------------------------

    def tick(self) -> None:
        if self.coord.stopping:
            return  # no resizing while the daemon stops (its agents are being stopped)
        self.coord.call_later(TICK_S, self.tick)
        now = self.coord.clock()
        self.root.collect()
        if next(self.ticks) % SAMPLE_EVERY == 0:
            self.take_sample()
        self.health.tick(now)
        for pool in self.pools.values():
            self.measure(pool, now)
            if self.health.failed(pool.name) is None:  # a failed pool: the root restarts it
                if pool.scaling.autoscale:
                    self.autoscale(pool, now)
                self.recycle(pool, now)
            self.progress_retiring(pool, now)
        self.publish_load(now)

    def take_sample(self) -> None:
        self.sample = self.sampler.sample(link.pid for link in self.sched.agents.values())
        self.available = self.sample.machine.available_memory

    # -- measuring ------------------------------------------------------------------------

    def links(self, pool: PoolState, draining: bool | None = False) -> list[Any]:
        return [a for a in self.sched.agents.values()
                if a.pool == pool.name and (draining is None or a.draining == draining)]

    def capabilities(self, pool: PoolState) -> set[str]:
        declared = set(self.coord.cfg.pool(pool.name).capabilities) | pool.seen_caps
        return declared.union(*(a.caps for a in self.links(pool, None)))

    def measure(self, pool: PoolState, now: float) -> None:
        live = self.links(pool)
        pool.caps = self.capabilities(pool)
        queued = sum(self.sched.queued(c) for c in pool.caps)
        inflight = sum(len(a.inflight) for a in live)
        busy = sum(1 for a in live if a.inflight)
        pool.queued = queued
        smooth_busy, smooth_waiting = self.smooth(pool, now, busy, queued + inflight - busy)
        pool.inputs = PoolInputs(
            now=now, size=pool.target, busy=smooth_busy, queue_depth=smooth_waiting,
            arrival_rate=self.arrival_rate(pool, now, queued + inflight),
            p95_latency=self.latency_p95(pool, now),
            available_memory=self.available, agent_memory=self.agent_memory(live))

    def smooth(self, pool: PoolState, now: float, busy: int, waiting: int) -> tuple[float, float]:
        """Exponential smoothing of (busy, waiting) over irregular ticks."""
        if pool.smoothed is None or pool.measured_at is None:
            pool.smoothed = (float(busy), float(waiting))
        else:
            dt = max(0.0, now - pool.measured_at)
            pool.smoothed = (follow(pool.smoothed[0], busy, dt), follow(pool.smoothed[1], waiting, dt))
        pool.measured_at = now
        return pool.smoothed

    def arrival_rate(self, pool: PoolState, now: float, backlog: int) -> float:
        """Tasks per second over the last RATE_WINDOW_S, by conservation (module docstring)."""
        if pool.backlog is not None:
            pool.arrivals.append((now, max(0, backlog - pool.backlog + pool.ended)))
        pool.backlog, pool.ended = backlog, 0
        while pool.arrivals and pool.arrivals[0][0] <= now - RATE_WINDOW_S:
            pool.arrivals.popleft()
        return sum(n for _, n in pool.arrivals) / RATE_WINDOW_S

    def latency_p95(self, pool: PoolState, now: float) -> float:
        while pool.latencies and pool.latencies[0][0] <= now - LATENCY_WINDOW_S:
            pool.latencies.popleft()
        return p95([lat for _, lat in pool.latencies])

    def agent_memory(self, live: list[Any]) -> int:
        """Median USS (else RSS) of the pool's agents at the last sample; 0 if unknown."""
        procs = self.sample.processes if self.sample else {}
        sizes = [procs[a.pid].memory for a in live if a.pid in procs]
        return int(statistics.median(sizes)) if sizes else 0

    def task_final(self, task: Any, rec: Any) -> None:
        """A final listener: a task ended; count it and keep its latency."""
        now = self.coord.clock()
        for pool in self.pools.values():
            if task.capability in (pool.caps if pool.caps is not None else self.capabilities(pool)):
                pool.ended += 1
                pool.latencies.append((now, max(0.0, rec.updated - rec.created)))

    # -- deciding -------------------------------------------------------------------------

    def autoscale(self, pool: PoolState, now: float) -> None:
        assert pool.inputs is not None
        decision, pool.policy = decide(pool.policy, pool.inputs, pool.scaling.config)
        pool.decision, pool.decided_at = decision, now
        if decision.delta or pool.logged != (decision.reason, decision.target):
            pool.logged = (decision.reason, decision.target)
            self.coord.emit("scaling.decision", None, pool=pool.name, **decision.to_event())
        self.resize(pool, decision.target, decision.reason)

    def resize(self, pool: PoolState, target: int, why: str) -> None:
        for _ in range(target - pool.target):
            self.start_agent(pool, why)
        for index in self.victims(pool, pool.target - target):
            self.retire(pool, index, why)

    def victims(self, pool: PoolState, n: int) -> list[int]:
        """Agents to retire: fewest tasks in flight first, then the newest."""
        if n <= 0:
            return []
        links = {parsed[1]: a for a in self.links(pool) if (parsed := split_agent_id(a.id))}
        ready = [i for i in pool.members - pool.starting - set(pool.retiring) if i in links]
        ready.sort(key=lambda i: (len(links[i].inflight), -i))
        return ready[:n]

    # -- acting ---------------------------------------------------------------------------

    def start_agent(self, pool: PoolState, why: str) -> int:
        index, pool.next_index = pool.next_index, pool.next_index + 1
        pool.members.add(index)
        pool.starting.add(index)
        self.coord.emit("scaling.start", None, pool=pool.name, agent=f"{pool.name}.{index}",
                        reason=why)
        self.root.submit("start_agent", {"pool": pool.name, "index": index},
                         lambda result, error: self.started(pool, index, error))
        return index

    def started(self, pool: PoolState, index: int, error: Any) -> None:
        pool.starting.discard(index)
        if error is not None:
            pool.members.discard(index)
            self.coord.emit("scaling.error", None, pool=pool.name, agent=f"{pool.name}.{index}",
                            action="start_agent", error=str(error))

    def retire(self, pool: PoolState, index: int, why: str) -> None:
        agent_id = f"{pool.name}.{index}"
        pool.retiring[index] = (self.coord.clock() + pool.scaling.retire_timeout, why)
        link = self.sched.agents.get(agent_id)
        if link is not None:
            link.draining = True
        self.coord.emit("scaling.retire", None, pool=pool.name, agent=agent_id, reason=why,
                        inflight=len(link.inflight) if link else 0)

    def progress_retiring(self, pool: PoolState, now: float) -> None:
        for index, (deadline, why) in list(pool.retiring.items()):
            if index in pool.starting:
                continue  # retire it once it is up (or its start failed)
            link = self.sched.agents.get(f"{pool.name}.{index}")
            if link is None or not link.inflight or now >= deadline:
                self.terminate(pool, index, why, len(link.inflight) if link else 0)

    def terminate(self, pool: PoolState, index: int, why: str, left: int) -> None:
        agent_id = f"{pool.name}.{index}"
        del pool.retiring[index]
        pool.members.discard(index)
        self.coord.emit("scaling.retired", None, pool=pool.name, agent=agent_id, reason=why,
                        drained=left == 0, rerouted=left)
        self.root.submit("terminate_child", {"supervisor": pool_path(pool.name),
                                             "child": f"agent:{agent_id}"},
                         lambda result, error: self.terminated(pool, agent_id, error))

    def terminated(self, pool: PoolState, agent_id: str, error: Any) -> None:
        if error is not None and not isinstance(error, NotFound):  # NotFound: gone already
            self.coord.emit("scaling.error", None, pool=pool.name, agent=agent_id,
                            action="terminate_child", error=str(error))

    # -- recycling ------------------------------------------------------------------------

    def recycle(self, pool: PoolState, now: float) -> None:
        config = pool.scaling.config
        if pool.recycling() or (config.recycle_after_tasks is None and config.memory_ceiling is None):
            return
        procs = self.sample.processes if self.sample else {}
        for link in self.links(pool):
            sample = procs.get(link.pid)
            why = should_recycle(link.done, sample.memory if sample else None, config)
            parsed = split_agent_id(link.id)
            if why and parsed and parsed[1] in pool.members:
                self.start_agent(pool, why)
                self.retire(pool, parsed[1], why)
                return

    # -- agents joining and leaving (coordinator listener) --------------------------------

    def agent_joined(self, link: Any) -> None:
        parsed = split_agent_id(link.id)
        pool = self.pools.get(link.pool)
        if pool is None or parsed is None:
            return
        pool.starting.discard(parsed[1])
        pool.members.add(parsed[1])
        pool.seen_caps.update(link.caps)  # still known while the pool is down
        if parsed[1] in pool.retiring:  # restarted by its supervisor while retiring
            link.draining = True

    def agent_died(self, agent_id: str) -> None:
        # Membership is unchanged: the supervisor restarts a crashed agent under its id (and
        # the sampler drops the dead pid by itself at its next sample).
        self.published.pop(agent_id, None)

    # -- load metadata --------------------------------------------------------------------

    def publish_load(self, now: float) -> None:
        """Each agent's in-flight count as registry ``load`` (and draining as ``health``),
        written only when it changed since the last tick."""
        registry = self.coord.registry
        if registry is None:
            return
        for link in list(self.sched.agents.values()):
            state = (len(link.inflight), link.draining)
            if self.published.get(link.id) == state:
                continue
            try:
                registry.update(link.id, {"load": state[0],
                                          "health": "draining" if state[1] else "ok"})
            except AgoraError as e:
                self.publish_failed(now, link.id, e)
                continue
            self.published[link.id] = state

    def publish_failed(self, now: float, agent_id: str, error: AgoraError) -> None:
        if self.publish_failed_at is None or now - self.publish_failed_at >= 10.0:
            self.publish_failed_at = now  # one event per 10 s: a partition down is one fact
            self.coord.emit("scaling.load_publish_failed", None, agent=agent_id,
                            error=str(error), hint="the registry's load metadata is stale")

    # -- commands -------------------------------------------------------------------------

    def pool_named(self, name: str) -> PoolState:
        pool = self.pools.get(name)
        if pool is None:
            raise NotFound(f"no pool named {name!r}", hint=f"pools: {sorted(self.pools)}")
        return pool

    def fresh(self, answer: Callable[[], Any]) -> Deferred:
        """A reply built by ``answer()`` once the pools' health is fresh from the root."""
        d = Deferred()

        def then(error: Any) -> None:
            if error is not None:
                d.fail(error)
                return
            try:
                d.resolve(answer())
            except AgoraError as e:
                d.fail(e)
        self.health.refresh(then)
        return d

    def cmd_scale(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "pool", "size")
        pool = self.pool_named(arg(args, "pool", str))
        size = arg(args, "size", int)
        config = pool.scaling.config
        if not config.min_size <= size <= config.max_size:
            raise InvalidInput(
                f"pool {pool.name!r} takes {config.min_size}..{config.max_size} agents, got: {size}",
                hint=f"change min/max of [pools.{pool.name}] in agora.toml to go beyond them")
        return self.fresh(lambda: self.scale_now(pool, size, trace))

    def scale_now(self, pool: PoolState, size: int, trace: Any) -> dict[str, Any]:
        row = self.health.failed(pool.name)
        if row is not None:
            raise Unavailable(f"cannot scale: {self.health.describe(row)}",
                              hint=f"`agora pools restart {pool.name}` restarts it now; "
                                   "`agora pools` shows its last exits")
        before = pool.target
        self.resize(pool, size, "manual")
        now = self.coord.clock()
        pool.policy = ScalingState(last_resize=now) if pool.scaling.autoscale else pool.policy
        self.coord.emit("scaling.manual", trace, pool=pool.name, before=before, target=size)
        return {"pool": pool.name, "from": before, "to": size}

    def cmd_pools(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return self.fresh(lambda: [self.pool_row(pool, self.coord.clock()) for pool in self.pools.values()])

    def cmd_pool_restart(self, args: dict[str, Any], trace: Any) -> Any:
        """Restart a failed pool now (the root does it; the reply comes when it is up)."""
        only(args, "pool")
        pool = self.pool_named(arg(args, "pool", str))
        d = Deferred()

        def done(row: Any, error: Any) -> None:
            if error is not None:
                self.health.refresh()
                d.fail(error)
                return
            self.coord.emit("pool.restart_requested", trace, pool=pool.name)
            self.health.refresh(lambda _: d.resolve(self.pool_row(pool, self.coord.clock())))
        self.coord.root.request("restart_pool", {"pool": pool.name}, done, timeout=ROOT_TIMEOUT_S)
        return d

    def health_row(self, pool: PoolState) -> dict[str, Any]:
        row = self.health.failed(pool.name)
        if row is None:
            return {"state": "running", "retry_in_s": None, "failures": 0, "last_exits": []}
        wait = self.health.retry_in(row)
        return {"state": "failed", "retry_in_s": None if wait is None else round(wait, 1),
                "failures": row.get("failures", 0), "last_exits": row.get("last_exits", []),
                "reason": self.health.describe(row)}

    def pool_row(self, pool: PoolState, now: float) -> dict[str, Any]:
        live = self.links(pool)
        inputs = pool.inputs
        procs = self.sample.processes if self.sample else {}
        samples = [procs[a.pid] for a in self.links(pool, None) if a.pid in procs]
        return {
            "pool": pool.name, "autoscale": pool.scaling.autoscale,
            "size": len(live), "target": pool.target, "starting": len(pool.starting),
            "retiring": len(pool.retiring), "min": pool.scaling.config.min_size,
            "max": pool.scaling.config.max_size,
            "inflight": sum(len(a.inflight) for a in live),
            "queued": pool.queued,
            "load": round((inputs.busy + inputs.queue_depth) / max(1, pool.target), 3)
            if inputs else 0.0,
            "arrival_rate": round(inputs.arrival_rate, 2) if inputs else 0.0,
            "p95_ms": round(inputs.p95_latency * 1000, 1) if inputs else 0.0,
            "cpu_percent": round(float(sum(s.cpu_percent or 0.0 for s in samples)), 1),
            "memory_mib": round(sum(s.memory for s in samples) / _MiB, 1),
            "last_decision": self.decision_row(pool, now),
            **self.health_row(pool),
        }

    def decision_row(self, pool: PoolState, now: float) -> dict[str, Any] | None:
        d = pool.decision
        if d is None or pool.decided_at is None:
            return None
        return {"reason": d.reason, "target": d.target, "delta": d.delta,
                "utilisation": d.to_event()["utilisation"], "age_s": round(now - pool.decided_at, 3)}
