"""Reading the event log back: filters for ``agora events`` and ``agora trace``.

The telemetry process writes ``events.jsonl`` (and rotated ``events.jsonl.1..N``); this
module only reads.  A line that is not valid JSON (a torn write after a crash) is skipped.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import orjson

from runtime.telemetry import LOG_NAME

__all__ = ["read_events", "log_files"]


def log_files(home: Path | str) -> list[Path]:
    """Oldest first."""
    base = Path(home) / LOG_NAME
    rotated = sorted(base.parent.glob(LOG_NAME + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [p for p in [*rotated, base] if p.exists()]


def _match(ev: dict[str, Any], type_prefix: str | None, agent: str | None, since: float | None,
           trace_id: str | None) -> bool:
    if type_prefix and not str(ev.get("type", "")).startswith(type_prefix):
        return False
    if agent and ev.get("agent") != agent and ev.get("source") != f"agent:{agent}":
        return False
    if since is not None and ev.get("ts", 0) < since:
        return False
    return not trace_id or ev.get("trace_id") == trace_id


def read_events(home: Path | str, type_prefix: str | None = None, agent: str | None = None,
                since: float | None = None, trace_id: str | None = None,
                limit: int | None = 200) -> list[dict[str, Any]]:
    """The last ``limit`` matching events (all of them with ``limit=None``), oldest first."""
    out: deque[dict[str, Any]] = deque(maxlen=limit)
    for path in log_files(home):
        with open(path, "rb") as f:
            for line in f:
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(ev, dict) and _match(ev, type_prefix, agent, since, trace_id):
                    out.append(ev)
    return list(out)
