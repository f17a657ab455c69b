"""Structured events: every process emits them, the telemetry process writes them down.

::

    any process                                   telemetry process
    Emitter.emit() -> in-process buffer  --batch-->  datagram socket -> events.jsonl (rotated)
                      (flushed by size, age,        (one datagram = one batch of JSON lines)
                       the owner's loop, or exit)

Emitting never blocks on inter-process I/O: ``emit`` appends a small dict to a list;
``flush`` sends the batch as one non-blocking datagram to the telemetry socket.  If the
telemetry process is not there (starting, restarting) the batch stays in the buffer, up
to ``max_buffer`` events; past that the oldest are dropped and counted, and the count is
reported in the next batch as an ``events.dropped`` system event.  A graceful stop loses
no event (telemetry is started first and stopped last; every process flushes at exit); a
crash loses at most that process's unflushed buffer.

An event is a flat JSON object::

    {"ts": 1764290000.123, "type": "supervisor.restart", "source": "root", "pid": 41,
     "trace_id": "...", "span_id": "...", "parent_span_id": null, "system": false, ...}

Events outside any trace carry ``"system": true`` and no trace id.

Tracing can be switched off (``tracing = false`` in ``[daemon]``, for measuring what it
costs): the root calls :func:`set_tracing` before it forks anything, which sets
``AGORA_TRACING=0`` in its environment; every Emitter made in that process or its
children is then disabled and ``emit`` returns at once.  An environment variable rather
than a module flag so that it also holds in processes started by exec, not only by fork.
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
import time
from typing import Any

import orjson

from runtime.observability.trace_context import TraceContext

__all__ = ["Emitter", "make_event", "MAX_DATAGRAM", "set_tracing", "tracing_enabled"]

MAX_DATAGRAM = 60_000  # bytes; well under the default unix datagram limit (~208 KiB)


def set_tracing(enabled: bool) -> None:
    """Emitters made from now on, here and in children, emit (True) or do nothing."""
    os.environ["AGORA_TRACING"] = "1" if enabled else "0"


def tracing_enabled() -> bool:
    return os.environ.get("AGORA_TRACING", "1").strip().lower() not in ("0", "false", "off", "no")


_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)  # the pid is read per event: cache it, fork-safe


def make_event(type_: str, source: str, trace: TraceContext | None, fields: dict[str, Any]
               ) -> dict[str, Any]:
    # built in one literal (not trace.to_wire() + update): emit is on every hot path
    if trace is None:
        ev = {"ts": time.time(), "type": type_, "source": source, "pid": _pid, "system": True}
    else:
        ev = {"ts": time.time(), "type": type_, "source": source, "pid": _pid,
              "trace_id": trace.trace_id, "span_id": trace.span_id,
              "parent_span_id": trace.parent_span_id, "system": False}
    ev.update(fields)
    return ev


class Emitter:
    """A per-process event buffer that hands batches to the telemetry process."""

    def __init__(self, sock_path: str | None, source: str, *, max_batch: int = 256,
                 max_age: float = 0.05, max_buffer: int = 20_000) -> None:
        self.sock_path = sock_path
        self.source = source
        self.max_batch = max_batch
        self.max_age = max_age
        self.max_buffer = max_buffer
        self.enabled = tracing_enabled()
        self._buf: list[bytes] = []
        self._first_at = 0.0
        self.dropped = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # agents emit from their task and control threads
        atexit.register(self.flush)

    def emit(self, type_: str, trace: TraceContext | None = None, **fields: Any) -> None:
        if not self.enabled:
            return
        # make_event inlined: a call less on every hot path (see perf/tracing.py)
        if trace is None:
            ev = {"ts": time.time(), "type": type_, "source": self.source, "pid": _pid, "system": True}
        else:
            ev = {"ts": time.time(), "type": type_, "source": self.source, "pid": _pid,
                  "trace_id": trace.trace_id, "span_id": trace.span_id,
                  "parent_span_id": trace.parent_span_id, "system": False}
        ev.update(fields)
        line = orjson.dumps(ev)
        with self._lock:
            if not self._buf:
                self._first_at = time.monotonic()
            self._buf.append(line)
            n = len(self._buf)
        if n >= self.max_batch:
            self.flush()
        if n > self.max_buffer:
            with self._lock:
                self._drop_oldest()

    __call__ = emit

    def flush_due_in(self) -> float | None:
        """Seconds until the buffer is old enough to flush (None when empty)."""
        if not self._buf:
            return None
        return max(0.0, self._first_at + self.max_age - time.monotonic())

    def maybe_flush(self) -> None:
        if self._buf and time.monotonic() - self._first_at >= self.max_age:
            self.flush()

    def flush(self) -> bool:
        """Send what is buffered; True when the buffer is empty afterwards."""
        with self._lock:
            return self._flush_locked()

    def _flush_locked(self) -> bool:
        if self.dropped:
            self._buf.append(orjson.dumps(make_event("events.dropped", self.source, None,
                                                     {"count": self.dropped})))
            self.dropped = 0
        while self._buf:
            n = self._fit(self._buf)
            if not self._send(b"\n".join(self._buf[:n])):
                return False
            del self._buf[:n]
        return True

    @staticmethod
    def _fit(buf: list[bytes]) -> int:
        size = 0
        for i, line in enumerate(buf):
            size += len(line) + 1
            if size > MAX_DATAGRAM:
                return max(i, 1)
        return len(buf)

    def _send(self, payload: bytes) -> bool:
        if self.sock_path is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self.sock_path)
            return True
        except (BlockingIOError, FileNotFoundError, ConnectionRefusedError, OSError):
            return False  # telemetry busy or restarting: keep the batch, try again later

    def _drop_oldest(self) -> None:
        excess = len(self._buf) - self.max_buffer
        del self._buf[:excess]
        self.dropped += excess

    def close(self) -> None:
        self.flush()
        atexit.unregister(self.flush)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
