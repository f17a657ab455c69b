"""The message envelope: trace context carried by every message between processes.

A trace is one task's or pipeline's whole life; a span is one step of it (an attempt,
an auction, a vote).  Every message and every event carries ``trace_id``, ``span_id``
and ``parent_span_id``; an event outside any trace is a *system* event and carries
``trace_id = None`` with ``system = True``.

Ids are random 64-bit values printed as 16 hex digits (W3C trace-context uses 128-bit
trace ids; 64 bits is plenty for one machine and keeps frames small).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

__all__ = ["TraceContext", "new_id"]


def new_id() -> str:
    return os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    parent_span_id: str | None = None

    @classmethod
    def new_trace(cls) -> TraceContext:
        return cls(new_id(), new_id(), None)

    def child(self) -> TraceContext:
        """A new span under this one, in the same trace."""
        return TraceContext(self.trace_id, new_id(), self.span_id)

    def to_wire(self) -> dict[str, Any]:
        return {"trace_id": self.trace_id, "span_id": self.span_id,
                "parent_span_id": self.parent_span_id}

    @classmethod
    def from_wire(cls, d: Any) -> TraceContext | None:
        if not isinstance(d, dict):
            return None
        t, s, p = d.get("trace_id"), d.get("span_id"), d.get("parent_span_id")
        if not (isinstance(t, str) and isinstance(s, str) and (p is None or isinstance(p, str))):
            return None
        return cls(t, s, p)
