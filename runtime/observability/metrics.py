"""Counters, gauges and histograms, aggregated from the event stream of every process.

::

    every process --events--> telemetry: EventMetrics.observe(ev) --snapshot file--> coordinator
                                                                      + live gauges (queues, memory)
                                                                      -> `agora metrics` / Prometheus

Pure: no I/O and no clock of its own (times come from the events, ``now`` is passed in).

Decisions where the issue was silent:

* **Where metrics are aggregated.**  The telemetry process already receives every event
  of every process, so it folds them into metrics (:class:`EventMetrics`) and writes a
  snapshot file next to the event log (see runtime.observability.telemetry); no process pays a second
  channel for metrics, and "aggregated across processes" is exact: one sum over one
  stream.  What only the coordinator knows *now* (queue depth, in-flight counts, agent
  memory) is added as gauges when a snapshot is read (runtime.observability.service).
* **Event -> metric table** (``_RULES`` below).  The coordination services' events are
  read as they are (``market.award``'s ``auction_ms`` is the auction latency,
  ``market.transfer``'s ``amount_mc`` the ledger volume in millicredits, ``vote.outcome``'s
  ``elapsed_ms`` a vote's duration, ``scaling.decision``'s ``delta``).  New subsystems get
  metrics by following the conventions: a span-closing event may carry ``duration_s``
  (``auction.*`` / ``market.*`` feed ``agora_auction_latency_seconds``, any other kind
  ``agora_span_duration_seconds{kind}``); ``ledger.*`` events with a numeric ``amount``
  feed the ledger volume; ``breaker.*`` events with ``breaker`` (or ``name``) and
  ``state`` (closed / half_open / open) set ``agora_breaker_state``; ``service.<decision>``
  events of the service guards (runtime.agents.services) count
  ``agora_service_decisions_total{service, decision}`` (cache hits, batch joins, throttle
  waits, whose ``wait_s`` also sums into ``agora_service_throttle_seconds_total``).
* **Bounded memory.**  At most ``MAX_SERIES`` label sets per metric (more are counted in
  ``agora_metrics_series_dropped_total`` and dropped); task start times are kept for at
  most ``max_tracked`` tasks (oldest forgotten first); throughput keeps one bucket per
  second for ``window_s`` seconds.
* Histograms have fixed buckets (0.5 ms .. 60 s), so histograms from any source add up.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any

from runtime.tasks.task import TERMINAL

__all__ = ["Metrics", "EventMetrics", "LoopLatency", "to_prometheus", "quantile", "BUCKETS",
           "MAX_SERIES", "LOOP_RECENT"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0)
MAX_SERIES = 500
LOOP_RECENT = 4096  # turns (and timers) LoopLatency keeps for its exact quantiles

HELP: dict[str, tuple[str, str]] = {
    "agora_events_total": ("counter", "Events received by telemetry, by type."),
    "agora_events_dropped_total": ("counter", "Events an emitter dropped (telemetry away, buffer full)."),
    "agora_tasks_submitted_total": ("counter", "Tasks accepted, by capability."),
    "agora_tasks_finished_total": ("counter", "Tasks that reached a terminal state, by state."),
    "agora_task_attempts_total": ("counter", "Attempts started, by pool."),
    "agora_task_latency_seconds": ("histogram", "Submission (or first attempt) to terminal state."),
    "agora_attempt_duration_seconds": ("histogram", "One attempt, by pool and outcome."),
    "agora_agent_deaths_total": ("counter", "Agents that died (EOF on their socket), by pool."),
    "agora_restarts_total": ("counter", "Supervisor restarts, by child."),
    "agora_escalations_total": ("counter", "Restart-intensity escalations."),
    "agora_auction_latency_seconds": ("histogram", "Auctions, call for proposals to award."),
    "agora_span_duration_seconds": ("histogram", "Spans that report duration_s, by kind."),
    "agora_ledger_volume_total": ("counter", "Credits moved by ledger transfers."),
    "agora_ledger_transfers_total": ("counter", "Ledger transfers (market: by action)."),
    "agora_auctions_total": ("counter", "Auctions closed, by outcome (award, no_award, abandoned)."),
    "agora_contracts_total": ("counter", "Contracts ended, by outcome (completion, breach, cancel)."),
    "agora_votes_total": ("counter", "Votes closed, by method."),
    "agora_scaling_decisions_total": ("counter", "Scaler decisions, by pool and action."),
    "agora_breaker_state": ("gauge", "Circuit breaker state: 0 closed, 1 half open, 2 open."),
    "agora_breaker_transitions_total": ("counter", "Circuit breaker transitions, by breaker and state."),
    "agora_service_decisions_total": ("counter", "Service guard decisions (cache_hit, cache_join, throttle_wait, "
                                      "batch_join, batch_flush, retry, timeout, breaker_reject, hedge, hedge_won, "
                                      "hedge_denied), by service."),
    "agora_service_throttle_seconds_total": ("counter", "Seconds callers waited on a service's rate limiter."),
    "agora_metrics_series_dropped_total": ("counter", "Label sets refused past MAX_SERIES."),
    "agora_queue_depth": ("gauge", "Tasks queued, by capability (coordinator, live)."),
    "agora_agent_inflight": ("gauge", "Tasks in flight, by agent (coordinator, live)."),
    "agora_agent_memory_bytes": ("gauge", "Resident memory of each agent process (live)."),
    "agora_pool_agents": ("gauge", "Connected agents, by pool (coordinator, live)."),
    "agora_throughput_tasks_per_second": ("gauge", "Tasks finished per second over the last 10 s."),
    "agora_loop_turn_seconds": ("histogram", "Coordinator loop: busy time of each turn (live)."),
    "agora_loop_timer_lateness_seconds": ("histogram", "Coordinator loop: how late each timer fired (live)."),
}
_BREAKER = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}

LabelKey = tuple[tuple[str, str], ...]


class Metrics:
    """A set of named series: counters (add), gauges (set), histograms (observe)."""

    def __init__(self) -> None:
        self.series: dict[str, dict[LabelKey, Any]] = {}
        self.types: dict[str, str] = {}

    def _slot(self, name: str, kind: str, labels: dict[str, Any]
              ) -> tuple[dict[LabelKey, Any], LabelKey] | None:
        table = self.series.get(name)
        if table is None:
            table = self.series[name] = {}
            self.types[name] = kind
        key = _key(labels)
        if key not in table and len(table) >= MAX_SERIES:
            if name != "agora_metrics_series_dropped_total":
                self.inc("agora_metrics_series_dropped_total", metric=name)
            return None
        return table, key

    def inc(self, name: str, value: float = 1.0, **labels: Any) -> None:
        table, key = self.series.get(name), _key(labels)
        if table is not None and key in table:  # the common case, without _slot's checks
            table[key] += value
            return
        slot = self._slot(name, "counter", labels)
        if slot is not None:
            slot[0][slot[1]] = slot[0].get(slot[1], 0.0) + value

    def set(self, name: str, value: float, **labels: Any) -> None:
        slot = self._slot(name, "gauge", labels)
        if slot is not None:
            slot[0][slot[1]] = float(value)

    def observe(self, name: str, value: float, **labels: Any) -> None:
        table = self.series.get(name)
        h = None if table is None else table.get(_key(labels))
        if h is None:
            slot = self._slot(name, "histogram", labels)
            if slot is None:
                return
            h = slot[0].setdefault(slot[1], {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0, "count": 0})
        h["counts"][bisect.bisect_left(BUCKETS, value)] += 1
        h["sum"] += value
        h["count"] += 1

    def value(self, name: str, **labels: Any) -> Any:
        return self.series.get(name, {}).get(_key(labels))

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON: ``{name: {"type", "help", "series": [{"labels", "value"}]}}``."""
        out = {}
        for name, table in sorted(self.series.items()):
            kind = self.types[name]
            out[name] = {"type": kind, "help": HELP.get(name, ("", ""))[1],
                         "series": [{"labels": dict(k), "value": _copy(v)} for k, v in sorted(table.items())]}
        return out

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> Metrics:
        m = cls()
        for name, metric in snap.items():
            m.types[name] = metric["type"]
            m.series[name] = {tuple(sorted(s["labels"].items())): _copy(s["value"]) for s in metric["series"]}
        return m

    def merge(self, other: Metrics) -> None:
        """Counters and histograms add; a gauge takes ``other``'s value."""
        for name, table in other.series.items():
            kind = other.types[name]
            for key, v in table.items():
                labels = dict(key)
                if kind == "counter":
                    self.inc(name, v, **labels)
                elif kind == "gauge":
                    self.set(name, v, **labels)
                else:
                    self._merge_hist(name, labels, v)

    def _merge_hist(self, name: str, labels: dict[str, str], h: dict[str, Any]) -> None:
        slot = self._slot(name, "histogram", labels)
        if slot is None:
            return
        mine = slot[0].setdefault(slot[1], {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0, "count": 0})
        mine["counts"] = [a + b for a, b in zip(mine["counts"], h["counts"])]
        mine["sum"] += h["sum"]
        mine["count"] += h["count"]


def _key(labels: dict[str, Any]) -> LabelKey:
    """Labels as a hashable, order-free key (the common one-label case without a sort)."""
    if len(labels) == 1:
        (k, v), = labels.items()
        return ((k, v if type(v) is str else str(v)),)
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _copy(v: Any) -> Any:
    return {"counts": list(v["counts"]), "sum": v["sum"], "count": v["count"]} if isinstance(v, dict) else v


def quantile(h: dict[str, Any], q: float) -> float | None:
    """An upper bound of the ``q`` quantile from bucket counts (None when empty)."""
    if not h["count"]:
        return None
    rank = q * h["count"]
    seen = 0
    for i, c in enumerate(h["counts"]):
        seen += c
        if seen >= rank and c:
            return BUCKETS[i] if i < len(BUCKETS) else math.inf
    return math.inf


# -- the coordinator loop's own latency ------------------------------------------------------

class LoopLatency:
    """How long the coordinator's loop keeps a request waiting (issue 15, item 4).

    A request that arrives during a turn waits for the rest of that turn, so the busy time
    of each turn (from ``select`` returning to the end of the turn) bounds what any client
    waits for the loop; a timer's lateness (fired at minus due at) is the same wait seen
    from inside.  Both go to fixed-bucket histograms (they add up with any other
    histogram; Prometheus reads them) and to a ring of the last ``recent`` values, from
    which :meth:`summary` gives exact p50/p99/max in milliseconds (bucket bounds are too
    coarse to check a 20 ms target).  Pure: the loop passes the durations in.
    """

    def __init__(self, recent: int = LOOP_RECENT) -> None:
        self.metrics = Metrics()
        self.turns: deque[float] = deque(maxlen=recent)
        self.lateness: deque[float] = deque(maxlen=recent)
        self.count = 0

    def turn(self, busy_s: float) -> None:
        self.count += 1
        self.turns.append(busy_s)
        self.metrics.observe("agora_loop_turn_seconds", busy_s)

    def timer(self, late_s: float) -> None:
        late_s = max(0.0, late_s)
        self.lateness.append(late_s)
        self.metrics.observe("agora_loop_timer_lateness_seconds", late_s)

    def summary(self) -> dict[str, Any]:
        """Exact quantiles over the recent turns and timers, in milliseconds."""
        out: dict[str, Any] = {"turns": self.count, "recent": len(self.turns)}
        for name, xs in (("turn", self.turns), ("timer_late", self.lateness)):
            ordered = sorted(xs)
            for label, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
                v = ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else None
                out[f"{name}_{label}_ms"] = None if v is None else round(v * 1000, 3)
        return out


# -- from events ---------------------------------------------------------------------------

class EventMetrics:
    """Folds events (from any process, in arrival order) into :class:`Metrics`."""

    def __init__(self, max_tracked: int = 100_000, window_s: int = 60) -> None:
        self.metrics = Metrics()
        self.max_tracked = max_tracked
        self.window_s = window_s
        # insertion-ordered plain dicts (cheaper than OrderedDict): the first key is the oldest
        self._tasks: dict[str, tuple[float, str]] = {}  # id -> (start ts, capability)
        self._attempts: dict[tuple[str, Any], tuple[float, str]] = {}
        self._finished: deque[list[float]] = deque()  # [second, count]
        self._types: dict[str, int] = {}  # agora_events_total, folded in at snapshot time

    def observe(self, ev: dict[str, Any]) -> None:
        type_ = ev.get("type")
        type_ = type_ if type(type_) is str else str(type_)
        if type_ not in self._types and len(self._types) >= MAX_SERIES:
            type_ = "(other)"  # user-defined handler events must not grow this without end
        self._types[type_] = self._types.get(type_, 0) + 1  # the hot counter: a plain dict
        rule = _RULES.get(type_)
        if rule is None:
            rule = _RULES.get(type_.split(".", 1)[0] + ".*")
        if rule is not None:
            rule(self, ev)
        if "duration_s" in ev and _is_num(ev["duration_s"]):
            self._duration(type_.split(".", 1)[0], float(ev["duration_s"]))

    def _duration(self, kind: str, seconds: float) -> None:
        if kind in ("auction", "market"):
            self.metrics.observe("agora_auction_latency_seconds", seconds)
        else:
            self.metrics.observe("agora_span_duration_seconds", seconds, kind=kind)

    def _remember(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        if len(table) > self.max_tracked:
            del table[next(iter(table))]  # one in, one out: the oldest

    # -- rules (one per event family) --------------------------------------------------

    def _submitted(self, ev: dict[str, Any]) -> None:
        cap = str(ev.get("capability", "unknown"))
        self.metrics.inc("agora_tasks_submitted_total", capability=cap)
        self._remember(self._tasks, ev.get("task_id"), (ev["ts"], cap))

    def _attempt(self, ev: dict[str, Any]) -> None:
        pool = _pool(ev.get("agent"))
        self.metrics.inc("agora_task_attempts_total", pool=pool)
        tid = ev.get("task_id")
        if tid not in self._tasks:  # a pipeline step: no task.submitted of its own
            self._remember(self._tasks, tid, (ev["ts"], "unknown"))
        self._remember(self._attempts, (tid, ev.get("attempt")), (ev["ts"], pool))

    def _attempt_end(self, ev: dict[str, Any], n: Any, outcome: str) -> None:
        started = self._attempts.pop((ev.get("task_id"), n), None)
        if started is not None:
            self.metrics.observe("agora_attempt_duration_seconds", max(0.0, ev["ts"] - started[0]),
                                 pool=started[1], outcome=outcome)

    def _requeued(self, ev: dict[str, Any]) -> None:
        outcome = {"task.rerouted": "crashed", "task.requeued": "requeued"}.get(ev["type"], "failed")
        self._attempt_end(ev, ev.get("attempt"), outcome)

    def _final(self, ev: dict[str, Any]) -> None:
        state = ev["type"].split(".", 1)[1]
        self.metrics.inc("agora_tasks_finished_total", state=state)
        self._attempt_end(ev, ev.get("attempts"), state)
        started = self._tasks.pop(ev.get("task_id"), None)
        if started is not None:
            self.metrics.observe("agora_task_latency_seconds", max(0.0, ev["ts"] - started[0]),
                                 capability=started[1])
        self._count_finished(float(ev["ts"]))

    def _count_finished(self, ts: float) -> None:
        second = math.floor(ts)
        if self._finished and self._finished[-1][0] == second:
            self._finished[-1][1] += 1
        elif not self._finished or second > self._finished[-1][0]:
            self._finished.append([second, 1])
        else:  # a late event from a slower emitter: add it to its own second
            for bucket in self._finished:
                if bucket[0] == second:
                    bucket[1] += 1
                    break
        while self._finished and self._finished[0][0] <= second - self.window_s:
            self._finished.popleft()

    def throughput(self, now: float, over: float = 10.0) -> float:
        """Tasks finished per second over the ``over`` seconds before ``now``."""
        n = sum(c for s, c in self._finished if now - over < s + 1 and s <= now)
        return n / over

    def _died(self, ev: dict[str, Any]) -> None:
        self.metrics.inc("agora_agent_deaths_total", pool=_pool(ev.get("agent")))

    def _restart(self, ev: dict[str, Any]) -> None:
        self.metrics.inc("agora_restarts_total", child=str(ev.get("child", "?")))

    def _escalation(self, ev: dict[str, Any]) -> None:
        self.metrics.inc("agora_escalations_total")

    def _dropped(self, ev: dict[str, Any]) -> None:
        if _is_num(ev.get("count")):
            self.metrics.inc("agora_events_dropped_total", float(ev["count"]), source=str(ev.get("source")))

    def _ledger(self, ev: dict[str, Any]) -> None:
        if _is_num(ev.get("amount")):
            self.metrics.inc("agora_ledger_volume_total", abs(float(ev["amount"])))
            self.metrics.inc("agora_ledger_transfers_total")

    def _breaker(self, ev: dict[str, Any]) -> None:
        name, state = ev.get("breaker", ev.get("name")), ev.get("state")
        if name is None or state not in _BREAKER:
            return
        self.metrics.set("agora_breaker_state", _BREAKER[state], breaker=str(name))
        self.metrics.inc("agora_breaker_transitions_total", breaker=str(name), state=state)

    def _service(self, ev: dict[str, Any]) -> None:
        decision = ev["type"].split(".", 1)[1]
        service = str(ev.get("service"))
        self.metrics.inc("agora_service_decisions_total", service=service, decision=decision)
        if decision == "throttle_wait" and _is_num(ev.get("wait_s")):
            self.metrics.inc("agora_service_throttle_seconds_total", float(ev["wait_s"]), service=service)

    def _award(self, ev: dict[str, Any]) -> None:
        self.metrics.inc("agora_auctions_total", outcome=ev["type"].split(".", 1)[1])
        if _is_num(ev.get("auction_ms")):
            self.metrics.observe("agora_auction_latency_seconds", float(ev["auction_ms"]) / 1000)

    def _contract_end(self, ev: dict[str, Any]) -> None:
        self.metrics.inc("agora_contracts_total", outcome=ev["type"].split(".", 1)[1])

    def _transfer(self, ev: dict[str, Any]) -> None:
        if _is_num(ev.get("amount_mc")):  # millicredits (coordination.ledger's unit)
            self.metrics.inc("agora_ledger_volume_total", abs(float(ev["amount_mc"])) / 1000)
            self.metrics.inc("agora_ledger_transfers_total", action=str(ev.get("action")))

    def _vote(self, ev: dict[str, Any]) -> None:
        self.metrics.inc("agora_votes_total", method=str(ev.get("method")))
        if _is_num(ev.get("elapsed_ms")):
            self.metrics.observe("agora_span_duration_seconds", float(ev["elapsed_ms"]) / 1000, kind="vote")

    def _scaling(self, ev: dict[str, Any]) -> None:
        delta = ev.get("delta")
        delta = delta if _is_num(delta) else 0
        action = "grow" if delta > 0 else "shrink" if delta < 0 else "hold"
        self.metrics.inc("agora_scaling_decisions_total", pool=str(ev.get("pool")), action=action)

    def snapshot(self, now: float) -> dict[str, Any]:
        m = Metrics()
        for type_, n in self._types.items():
            m.inc("agora_events_total", n, type=type_)
        m.merge(self.metrics)
        m.set("agora_throughput_tasks_per_second", self.throughput(now))
        return m.snapshot()

    def value(self, name: str, **labels: Any) -> Any:
        """One series' value, as a snapshot would show it."""
        if name == "agora_events_total":
            return self._types.get(labels.get("type", ""))
        return self.metrics.value(name, **labels)


_RULES: dict[str, Any] = {
    "task.submitted": EventMetrics._submitted,
    "task.attempt": EventMetrics._attempt,
    "task.rerouted": EventMetrics._requeued,
    "task.requeued": EventMetrics._requeued,
    "task.retry_scheduled": EventMetrics._requeued,
    **{f"task.{s}": EventMetrics._final for s in sorted(TERMINAL)},
    "agent.died": EventMetrics._died,
    "supervisor.restart": EventMetrics._restart,
    "supervisor.escalation": EventMetrics._escalation,
    "events.dropped": EventMetrics._dropped,
    "ledger.*": EventMetrics._ledger,
    "market.award": EventMetrics._award,
    "market.no_award": EventMetrics._award,
    "market.abandoned": EventMetrics._award,
    "market.completion": EventMetrics._contract_end,
    "market.breach": EventMetrics._contract_end,
    "market.cancel": EventMetrics._contract_end,
    "market.transfer": EventMetrics._transfer,
    "vote.outcome": EventMetrics._vote,
    "scaling.decision": EventMetrics._scaling,
    "breaker.*": EventMetrics._breaker,
    "service.*": EventMetrics._service,
}


def _pool(agent: Any) -> str:
    return str(agent).rsplit(".", 1)[0] if agent else "unknown"


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- Prometheus text format ------------------------------------------------------------------

def to_prometheus(snapshot: dict[str, Any]) -> str:
    """Prometheus text exposition format (version 0.0.4) of a :meth:`Metrics.snapshot`."""
    lines: list[str] = []
    for name, metric in sorted(snapshot.items()):
        if metric.get("help"):
            lines.append(f"# HELP {name} {_escape_help(metric['help'])}")
        lines.append(f"# TYPE {name} {metric['type']}")
        for s in metric["series"]:
            if metric["type"] == "histogram":
                lines.extend(_histogram_lines(name, s["labels"], s["value"]))
            else:
                lines.append(f"{name}{_labels(s['labels'])} {_fmt(s['value'])}")
    return "\n".join(lines) + "\n"


def _histogram_lines(name: str, labels: dict[str, str], h: dict[str, Any]) -> list[str]:
    out, cum = [], 0
    for le, c in zip([*BUCKETS, math.inf], h["counts"]):
        cum += c
        out.append(f"{name}_bucket{_labels({**labels, 'le': _fmt(le)})} {cum}")
    out.append(f"{name}_sum{_labels(labels)} {_fmt(h['sum'])}")
    out.append(f"{name}_count{_labels(labels)} {h['count']}")
    return out


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))
