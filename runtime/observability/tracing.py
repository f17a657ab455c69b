"""Traces from events: the span tree of one task or pipeline, and its terminal drawing.

Pure: takes the events of one trace (any order, any process) and returns plain JSON-able
dicts; ``render`` turns such a dict into lines.  No I/O, no clock (times are the events').

How a span gets its start, end and outcome (the decision; the issue left it open)
--------------------------------------------------------------------------------
There are no separate "span start" / "span end" records.  A span is the set of events
that carry its ``span_id``:

* start = the earliest of its events (or ``ts - duration_s`` of an event that carries
  ``duration_s``, when that is earlier: an emitter that measured the span itself);
* end and outcome = the first event that *closes* it: one carrying an ``outcome`` field
  (the convention for every new span: breakers, scaling, anything added later), a
  terminal type of the core paths (``task.succeeded`` / ``failed`` / ``dead_lettered``
  / ``cancelled`` / ``deadline_exceeded``, ``pipeline.succeeded`` / ``failed`` /
  ``cancelled``), or a closing type of the coordination services (``_CLOSERS``:
  ``market.award`` / ``no_award`` / ``abandoned`` end an auction span,
  ``market.completion`` / ``breach`` / ``cancel`` a contract span, ``market.transfer``
  is a one-event span, ``vote.outcome``, ``negotiation.outcome``, ``bargain.outcome``);
* an attempt span (opened by ``task.attempt``, or ``consensus.started`` for a step run
  by k agents) is closed by what its *task* span says about that attempt number,
  because the attempt's end is decided in the coordinator: ``task.rerouted`` (agent
  died: ``crashed``), ``task.requeued`` (``requeued``), ``task.retry_scheduled``
  (handler raised: ``failed``), ``consensus.succeeded`` / ``failed``, a terminal task
  event whose ``attempts`` equals it (the task's state);
* a span with no closing event is ``open`` (still running, or its closer was lost in a
  crash); its end is its last event.

A parent that no event carries as its own span (a step span whose only events are its
children's, a client's span) still becomes a node.  The root is the span with no parent
in the trace; when there are several (a task resumed after a restart gets a fresh span
without a parent) the one holding ``pipeline.submitted`` / ``task.submitted`` (else the
earliest) is the root and the others hang under it marked ``adopted`` -- the trace stays
one tree and the drawing says which links were inferred.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runtime.tasks.pipeline import PIPELINE_TERMINAL
from runtime.tasks.task import TERMINAL

__all__ = ["build_trace", "render", "span_label", "event_text", "TERMINAL_TYPES"]

TERMINAL_TYPES = {f"task.{s}": s for s in sorted(TERMINAL)}
TERMINAL_TYPES.update({f"pipeline.{s}": s for s in sorted(PIPELINE_TERMINAL)})
_ATTEMPT_END = {"task.rerouted": "crashed", "task.requeued": "requeued",
                "task.retry_scheduled": "failed", "consensus.succeeded": "succeeded",
                "consensus.failed": "failed"}
_ATTEMPT_OPENERS = ("task.attempt", "consensus.started")
#: Closing events of the coordination services (coordination.services.market / .consensus),
#: which predate the ``outcome`` field convention: type -> outcome from the event.
_CLOSERS: dict[str, Any] = {
    "market.award": lambda e: "awarded", "market.no_award": lambda e: "no_award",
    "market.abandoned": lambda e: "abandoned", "market.completion": lambda e: "completed",
    "market.breach": lambda e: "breached", "market.cancel": lambda e: "cancelled",
    "market.transfer": lambda e: str(e.get("action", "transfer")),
    "vote.outcome": lambda e: f"winner {e.get('winner')}" if e.get("winner") is not None else "no winner",
    "negotiation.outcome": lambda e: str(e.get("state")), "bargain.outcome": lambda e: str(e.get("state")),
}
_ROOT_TYPES = ("pipeline.submitted", "task.submitted")
#: Which id names a span: its own kind's id first, then the most specific one.
_NAMED_BY = (("auction_id", "auction"), ("vote_id", "vote"), ("negotiation_id", "negotiation"),
             ("bargain_id", "bargain"), ("contract_id", "contract"), ("task_id", "task"),
             ("pipeline_id", "pipeline"))
_ENVELOPE = ("ts", "type", "source", "pid", "trace_id", "span_id", "parent_span_id", "system")


def build_trace(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The span tree of one trace (events of other traces are ignored; see the module doc)."""
    evs = sorted((e for e in events if e.get("span_id")), key=lambda e: e.get("ts", 0.0))
    if not evs:
        return {"trace_id": None, "root": None, "spans": 0, "events": 0, "adopted": 0}
    trace_id = evs[0].get("trace_id")
    evs = [e for e in evs if e.get("trace_id") == trace_id]
    spans = _group(evs)
    for span in spans.values():
        _close(span)
    _close_attempts(spans)
    root, adopted = _link(spans)
    return {"trace_id": trace_id, "root": _as_tree(spans, root), "spans": len(spans),
            "events": len(evs), "adopted": adopted}


def _group(evs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    spans: dict[str, dict[str, Any]] = {}
    for ev in evs:
        span = spans.setdefault(ev["span_id"], _node(ev["span_id"], ev.get("parent_span_id")))
        span["events"].append(ev)
        if span["parent"] is None:
            span["parent"] = ev.get("parent_span_id")
    for span in list(spans.values()):  # parents known only through their children
        if span["parent"] and span["parent"] not in spans:
            spans[span["parent"]] = _node(span["parent"], None)
    return spans


def _node(span_id: str, parent: str | None) -> dict[str, Any]:
    return {"span_id": span_id, "parent": parent, "events": [], "children": [],
            "start": None, "end": None, "outcome": None, "open": True, "adopted": False}


def _close(span: dict[str, Any]) -> None:
    evs = span["events"]
    if not evs:
        return
    span["start"] = min(e["ts"] - _num(e.get("duration_s")) for e in evs)
    span["end"] = evs[-1]["ts"]
    for ev in evs:
        outcome = _outcome(ev)
        if outcome is not None:
            span.update(end=ev["ts"], outcome=outcome, open=False)
            return


def _outcome(ev: dict[str, Any]) -> str | None:
    if isinstance(ev.get("outcome"), str):
        return ev["outcome"]
    closer = _CLOSERS.get(ev["type"])
    return closer(ev) if closer is not None else TERMINAL_TYPES.get(ev["type"])


def _close_attempts(spans: dict[str, dict[str, Any]]) -> None:
    """Attempt spans end where their task span reports on that attempt number."""
    for span in spans.values():
        opener = span["events"][0] if span["events"] else None
        if opener is None or opener["type"] not in _ATTEMPT_OPENERS or not span["open"]:
            continue
        parent = spans.get(span["parent"] or "")
        verdict = _attempt_verdict(parent["events"] if parent else [], opener)
        if verdict is not None:
            span.update(end=max(span["end"], verdict[0]), outcome=verdict[1], open=False)


def _attempt_verdict(task_events: list[dict[str, Any]], opener: dict[str, Any]
                     ) -> tuple[float, str] | None:
    n, tid = opener.get("attempt"), opener.get("task_id")
    for ev in task_events:
        if ev["ts"] < opener["ts"] or ev.get("task_id") != tid:
            continue
        if ev["type"] in _ATTEMPT_END and ev.get("attempt") == n:
            return ev["ts"], _ATTEMPT_END[ev["type"]]
        if ev["type"] in TERMINAL_TYPES and ev.get("attempts") == n:
            return ev["ts"], TERMINAL_TYPES[ev["type"]]
    return None


def _link(spans: dict[str, dict[str, Any]]) -> tuple[str, int]:
    roots = [s for s in spans.values() if not s["parent"]]
    if not roots:  # malformed ids made a cycle: cut it at the earliest span
        first = min(spans.values(), key=lambda s: _start_of(s, spans))
        first["parent"] = None
        roots = [first]
    roots.sort(key=lambda s: (not any(e["type"] in _ROOT_TYPES for e in s["events"]),
                              _start_of(s, spans)))
    root = roots[0]["span_id"]
    for extra in roots[1:]:
        extra.update(parent=root, adopted=True)
    for span in spans.values():
        if span["parent"]:
            spans[span["parent"]]["children"].append(span["span_id"])
    return root, len(roots) - 1


def _start_of(span: dict[str, Any], spans: dict[str, dict[str, Any]]) -> float:
    if span["start"] is not None:
        return span["start"]
    starts = [_start_of(spans[c], spans) for c in _kids(span, spans)]
    return min(starts, default=float("inf"))


def _kids(span: dict[str, Any], spans: dict[str, dict[str, Any]]) -> list[str]:
    return [s["span_id"] for s in spans.values() if s["parent"] == span["span_id"]]


def _as_tree(spans: dict[str, dict[str, Any]], span_id: str, seen: set[str] | None = None
             ) -> dict[str, Any]:
    seen = set() if seen is None else seen
    seen.add(span_id)
    span = spans[span_id]
    kids = [_as_tree(spans, c, seen) for c in span["children"] if c not in seen]
    kids.sort(key=lambda k: k["start"] if k["start"] is not None else float("inf"))
    # a span covers its children (a step span's first own event may come after its
    # first attempt began); a closed span ends at its closing event, an open one at the
    # last thing seen in it
    starts = [t for t in [span["start"], *(k["start"] for k in kids)] if t is not None]
    start = min(starts, default=None)
    ends = [t for t in [span["end"], *(k["end"] for k in kids)] if t is not None]
    end = span["end"] if not span["open"] and span["end"] is not None else max(ends, default=None)
    out = {"span_id": span_id, "parent_span_id": span["parent"], "kind": _kind(span["events"]),
           "label": span_label(span["events"]), "start": start, "end": end,
           "duration_s": None if start is None or end is None else round(end - start, 6),
           "outcome": span["outcome"], "open": span["open"] and bool(span["events"]),
           "adopted": span["adopted"], "events": span["events"], "children": kids}
    return out


def _kind(evs: list[dict[str, Any]]) -> str:
    if not evs:
        return "span"
    if evs[0]["type"] in _ATTEMPT_OPENERS:
        return "attempt"
    return str(evs[0]["type"]).split(".", 1)[0]


def span_label(evs: list[dict[str, Any]]) -> str:
    """A short human name for a span from its events' fields."""
    if not evs:
        return "(span with no events of its own)"
    first = evs[0]
    if first["type"] == "task.attempt":
        return f"attempt {first.get('attempt')} on {first.get('agent')}"
    if first["type"] == "consensus.started":
        return f"attempt {first.get('attempt')}: consensus of {first.get('k')} ({first.get('method')})"
    if first["type"] == "market.transfer":
        return f"transfer {first.get('action')} {first.get('amount_mc')} mc ({first.get('contract_id')})"
    kind = str(first["type"]).split(".", 1)[0]
    for key, name in sorted(_NAMED_BY, key=lambda kn: kn[1] != kind):  # its own kind first
        for ev in evs:
            if key in ev:
                cap = next((e["capability"] for e in evs if "capability" in e), None)
                return f"{name} {ev[key]}" + (f" ({cap})" if cap and name == "task" else "")
    return str(first["type"])


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else 0.0


# -- drawing -------------------------------------------------------------------------------

def render(trace: dict[str, Any], details: bool = True) -> list[str]:
    """The tree as lines: offsets from the trace's start, durations, outcomes, events."""
    root = trace.get("root")
    if root is None:
        return [f"trace {trace.get('trace_id')}: no events"]
    t0 = root["start"] or 0.0
    head = (f"trace {trace['trace_id']}  {trace['spans']} spans, {trace['events']} events"
            + (f", {trace['adopted']} adopted" if trace.get("adopted") else ""))
    lines = [head]
    _render_span(root, t0, "", True, lines, details)
    return lines


def _render_span(span: dict[str, Any], t0: float, pad: str, last: bool, lines: list[str],
                 details: bool) -> None:
    off = " " * 10 if span["start"] is None else f"+{span['start'] - t0:8.3f}s"
    dur = "" if span["duration_s"] is None else f"{span['duration_s']:.3f}s"
    state = span["outcome"] or ("open" if span["open"] else "")
    mark = " (adopted)" if span["adopted"] else ""
    lines.append(f"{off} {pad}{'└─ ' if last else '├─ '}{span['label']}{mark}  {dur} {state}".rstrip())
    inner = pad + ("   " if last else "│  ")
    items = [("ev", e["ts"], e) for e in span["events"] if details] + \
            [("span", c["start"] if c["start"] is not None else float("inf"), c) for c in span["children"]]
    items.sort(key=lambda it: it[1])
    for i, (kind, _, item) in enumerate(items):
        if kind == "span":
            _render_span(item, t0, inner, i == len(items) - 1, lines, details)
        else:
            lines.append(f"+{item['ts'] - t0:8.3f}s {inner}· {event_text(item)}")


def event_text(ev: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_short(v)}" for k, v in ev.items() if k not in _ENVELOPE)
    return f"{ev['type']} [{ev.get('source', '?')}] {fields}".rstrip()


def _short(v: Any, limit: int = 60) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[:limit - 1] + "…"
