"""Observability commands on the control channel: ``trace``, ``metrics``, ``top``,
``events_after``.

Installed by the coordinator (``SERVICES``).  No command makes the loop wait (issue 15,
item 4): ``trace`` and ``events_after`` read the event log as jobs run in bounded slices
between requests (runtime.coordinator.slices, runtime.observability.eventlog), ``top``
asks the root for its tree asynchronously (``RootLink.request``, as ``status`` does), and
their replies are Deferred to the turn their answer is ready in:

* ``trace {id}`` -- ``id`` is a task id, a pipeline id or a trace id.  The trace id comes
  from the journal (task, then pipeline), else from the event log; the trace's events
  are read from the log with a bytes pre-filter (runtime.observability.eventlog) and built into a span
  tree (runtime.observability.tracing).  Reply: ``{"id", "trace_id", "trace": <tree>}``.
* ``metrics {}`` -- the telemetry process's last snapshot (runtime.observability.telemetry) plus live
  gauges only the coordinator knows now: queue depth per capability, in-flight per agent,
  agents per pool, each agent's resident memory (psutil, no other process involved), and
  the loop's own latency (``agora_loop_turn_seconds``, ``agora_loop_timer_lateness_seconds``;
  exact recent p50/p99/max in ``"loop"``, runtime.observability.metrics.LoopLatency).
* ``top {}`` -- what ``agora top`` draws: tree, pools, recent auctions/votes/restarts from
  the telemetry ring, throughput, task counts.
* ``events_after {cursor?, type?, agent?, limit?}`` -- events written after a position in
  the log (``--follow`` by position, see runtime.observability.eventlog.read_after).

Reading a trace scans the log (bounded by rotation: ``max_bytes * (keep + 1)``); the
pre-filter keeps that to a memory search, ~30 ms per 64 MiB, spread over turns of at
most ``SLICE_S`` of scanning each.  ``events_after``'s ``limit`` is at most
``MAX_FOLLOW`` events per call.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

from runtime.coordinator.command_kit import Deferred, arg, only
from runtime.coordinator.host import ServiceHost
from runtime.coordinator.slices import Slices
from runtime.errors import AgoraError, InvalidInput, NotFound
from runtime.observability.eventlog import scan_after, scan_events, scan_trace_id
from runtime.observability.metrics import Metrics
from runtime.observability.telemetry import read_snapshot
from runtime.observability.tracing import build_trace

__all__ = ["install", "Observe", "RECENT_KINDS", "MAX_TRACE_EVENTS", "MAX_FOLLOW"]

MAX_TRACE_EVENTS = 10_000  # a trace shows its last 10,000 events: its span tree is built in
#                             one unit of ~1 us per event (10 ms), the reply is ~1.7 MB
MAX_FOLLOW = 10_000  # events_after: events per call (a follower calls again for more)
#: Event type prefixes `top` shows as recent coordination activity.
RECENT_KINDS = ("auction.", "market.", "contract.", "vote.", "consensus.", "negotiation.")


def install(coord: ServiceHost) -> Observe:
    obs = Observe(coord)
    coord.add_commands({"trace": obs.trace, "metrics": obs.metrics, "top": obs.top,
                           "events_after": obs.events_after})
    return obs


class Observe:
    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.home = coord.cfg.home
        # the coordinator's own Slices when it has one (one budget per turn for all jobs)
        self.slices = getattr(coord, "slices", None) or Slices(coord.call_later, coord.clock, emit=coord.emit)

    def sliced(self, name: str, job: Any) -> Deferred:
        d = Deferred()
        self.slices.start(name, job, lambda out, err: d.fail(err) if err is not None else d.resolve(out))
        return d

    # -- trace ---------------------------------------------------------------------------

    def trace(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "id")
        ident = arg(args, "id", str)
        return self.sliced("trace", self.trace_job(ident))

    def trace_job(self, ident: str) -> Any:
        """Resolve ``ident``, read its trace's events, build the span tree: a job."""
        trace_id = yield from self.resolve(ident)
        events = yield from scan_events(self.home, trace_id=trace_id, limit=MAX_TRACE_EVENTS)
        if not events:
            raise NotFound(f"no events of trace {trace_id} (for {ident!r}) in the event log",
                           hint="events arrive within ~0.1 s; the log keeps only its last "
                                "rotations; a daemon with tracing = false writes none")
        return {"id": ident, "trace_id": trace_id, "trace": build_trace(events)}

    def resolve(self, ident: str) -> Any:
        """Task id, pipeline id, or trace id -> trace id (a job: the journal first, then
        the event log)."""
        for get in (self.coord.journal.get, self.coord.journal.get_pipeline):
            try:
                rec = get(ident)
            except NotFound:
                continue
            if rec.trace_id:
                return str(rec.trace_id)
        found = yield from scan_trace_id(self.home, ident)
        if found is None:
            raise NotFound(f"{ident!r} is no task, pipeline or trace id this daemon knows",
                           hint="`agora tasks` lists task ids; `agora events` shows trace ids")
        return found

    # -- metrics -------------------------------------------------------------------------

    def metrics(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        return self.sliced("metrics", self.metrics_job())

    def metrics_job(self) -> Any:
        """The telemetry snapshot, the live gauges and the loop's figures: a job, one
        agent's memory read per unit (psutil, ~0.1 ms each), so many agents never fill
        one loop turn (issue 15, item 4)."""
        snap = read_snapshot(self.home) or {}
        m = Metrics.from_snapshot(snap.get("metrics") or {})
        m.merge((yield from self.live_gauges()))
        age = round(time.time() - snap["ts"], 3) if "ts" in snap else None
        latency = getattr(self.coord, "latency", None)
        if latency is not None:
            m.merge(latency.metrics)
        return {"ts": time.time(), "metrics": m.snapshot(),
                "loop": latency.summary() if latency is not None else None,
                "telemetry": {"snapshot_age_s": age, "received": snap.get("received", 0),
                              "bad_lines": snap.get("bad_lines", 0)}}

    def live_gauges(self) -> Any:
        """Queue depths, agents per pool, in-flight and memory per agent: a job (the
        agents are listed first; one that dies meanwhile has no memory gauge)."""
        sched = self.coord.scheduler
        m = Metrics()
        for cap in sorted(set(sched.queues) | self.coord.known_capabilities):
            m.set("agora_queue_depth", sched.queued(cap), capability=cap)
        per_pool: dict[str, int] = {p.name: 0 for p in self.coord.cfg.pools}
        agents = [(a.id, a.pid) for a in sched.agents.values()]
        for a in sched.agents.values():
            per_pool[a.pool] = per_pool.get(a.pool, 0) + 1
            m.set("agora_agent_inflight", len(a.inflight), agent=a.id)
        for pool, n in per_pool.items():
            m.set("agora_pool_agents", n, pool=pool)
        for agent_id, pid in agents:
            yield
            rss = _rss(pid)
            if rss is not None:
                m.set("agora_agent_memory_bytes", rss, agent=agent_id)
        return m

    # -- top -----------------------------------------------------------------------------

    def top(self, args: dict[str, Any], trace: Any) -> Any:
        only(args)
        d = Deferred()

        def done(tree: Any, error: AgoraError | None) -> None:
            if error is not None:
                d.fail(error)
            else:
                d.resolve(self.top_frame(tree))
        self.coord.root.request("tree", {}, done)
        return d

    def top_frame(self, tree: Any) -> dict[str, Any]:
        snap = read_snapshot(self.home) or {}
        recent = snap.get("recent") or []
        metrics = snap.get("metrics") or {}
        return {"ts": time.time(), "tree": tree,
                "pools": self.pools(), "tasks": self.coord.journal.counts(),
                "throughput": _gauge(metrics, "agora_throughput_tasks_per_second"),
                "restarts_total": _total(metrics, "agora_restarts_total"),
                "restarts": [e for e in recent if e.get("type") == "supervisor.restart"][-5:],
                "coordination": [e for e in recent if str(e.get("type", "")).startswith(RECENT_KINDS)][-10:]}

    def pools(self) -> list[dict[str, Any]]:
        sched = self.coord.scheduler
        rows = []
        for p in self.coord.cfg.pools:
            agents = [a for a in sched.agents.values() if a.pool == p.name]
            rows.append({"pool": p.name, "size": p.size, "min": p.min, "max": p.max,
                         "agents": len(agents), "inflight": sum(len(a.inflight) for a in agents),
                         "done": sum(a.done for a in agents),
                         "queue": sum(sched.queued(c) for c in p.capabilities)})
        return rows

    # -- events by position ----------------------------------------------------------------

    def events_after(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "cursor", "type", "agent", "limit")
        cursor = arg(args, "cursor", list, None)
        if cursor is not None and not (len(cursor) == 2 and all(type(x) is int and x >= 0 for x in cursor)):
            raise InvalidInput("argument 'cursor': expected [inode, offset] as returned before",
                               field="cursor")
        limit = arg(args, "limit", int, 1000)
        if not 1 <= limit <= MAX_FOLLOW:
            raise InvalidInput(f"argument 'limit': expected 1..{MAX_FOLLOW}, got {limit}", field="limit")
        type_, agent = arg(args, "type", str, None), arg(args, "agent", str, None)
        return self.sliced("events_after", self.after_job(tuple(cursor) if cursor else None, limit,
                                                          type_, agent))

    def after_job(self, cursor: Any, limit: int, type_: str | None, agent: str | None) -> Any:
        events, new = yield from scan_after(self.home, cursor, limit=limit)
        keep = [e for e in events if (not type_ or str(e.get("type", "")).startswith(type_))
                and (not agent or e.get("agent") == agent or e.get("source") == f"agent:{agent}")]
        return {"events": keep, "cursor": list(new)}


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None  # it died between the list and the read: its death is already handled


def _gauge(metrics: dict[str, Any], name: str) -> float:
    series = (metrics.get(name) or {}).get("series") or []
    return float(series[0]["value"]) if series else 0.0


def _total(metrics: dict[str, Any], name: str) -> float:
    return float(sum(s["value"] for s in (metrics.get(name) or {}).get("series") or []))
