"""The telemetry process: receives event batches, appends them to the event log, keeps a
ring of recent events and the metrics folded from every event.

::

    datagram socket --batch--> EventLog (events.jsonl, rotated)        the whole truth
                          +--> Collector: ring (last ring_size events)  live views
                                          + EventMetrics              counters, histograms
                                  --every SNAPSHOT_S, when changed--> <home>/telemetry.json

The log is ``<home>/events.jsonl``, rotated by size to ``events.jsonl.1`` .. ``.N``
(oldest dropped), so disk use is bounded by ``max_bytes * (keep + 1)`` plus one batch.
Readers (the coordinator's ``events`` and ``trace`` commands) read the files.

Decision: live views reach the coordinator through a *snapshot file*, not a query
socket.  The coordinator must never wait on another process inside its loop; reading a
small local file written atomically (temp file + rename) never waits on telemetry, and
the snapshot survives a telemetry restart.  Staleness is bounded by ``SNAPSHOT_S`` plus
the emitters' batch age (runtime.observability.events).  Memory is bounded by the ring and by the
metrics' own bounds (runtime.observability.metrics).

It is the first child the root starts and the last it stops: on SIGTERM it drains
what is already queued on its socket (and writes a last snapshot) before exiting, so a
graceful stop loses no event (the root flushes its own events after stopping the core
and before stopping telemetry; only telemetry's own stop goes unlogged).  A crash of
telemetry itself loses what was queued on its socket (at most its 4 MiB receive
buffer; emitters keep what they could not send and resend it to the restarted one) and
restarts the metrics from zero (Prometheus reads that as a counter reset); the log on
disk is kept.

Bad datagrams: any same-uid process can write to the events socket, so every line of a
batch is decoded under ``LIMITS`` (``runtime.wire.protocol.decode_value``: 1 MiB, depth 1024,
64-bit integers judged without conversion, no duplicate keys, no NaN, valid UTF-8) and
must be an object with a finite ``ts``.  A line that fails is counted (``bad_lines``) and
*not* written to the log, so readers of the log never see it; a line that breaks the
metrics' folding is an incident on stderr (runtime.wire.boundary) and counted too.  No
datagram ends the telemetry process.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from runtime.errors import ProtocolError
from runtime.observability.metrics import EventMetrics
from runtime.wire.boundary import incident
from runtime.wire.protocol import PARSER_DEPTH, Limits, decode_value

__all__ = ["EventLog", "Collector", "telemetry_main", "read_snapshot", "write_snapshot",
           "LOG_NAME", "SNAPSHOT_NAME", "SNAPSHOT_S", "RING_SIZE", "LIMITS"]

LOG_NAME = "events.jsonl"
SNAPSHOT_NAME = "telemetry.json"
SNAPSHOT_S = 0.5  # at most two snapshot writes per second, only when something changed
RING_SIZE = 1000
#: Telemetry yields the CPU to the work it watches: on a busy machine its folding of
#: metrics waits (the socket's 4 MiB buffer and the emitters' buffers absorb the lag)
#: instead of slowing the coordinator and the agents.  5 keeps it a fair share (~1/4 of
#: a core against one busy process), enough for ~50,000 events/s here.
NICE = 5
LIMITS = Limits(max_frame=1 << 20, max_depth=PARSER_DEPTH, max_string=1 << 20)


class EventLog:
    """Append-only JSONL with size-based rotation."""

    def __init__(self, home: Path, max_bytes: int = 64 << 20, keep: int = 3) -> None:
        self.path = Path(home) / LOG_NAME
        self.max_bytes = max_bytes
        self.keep = keep
        self._f = open(self.path, "ab", buffering=0)

    def append(self, batch: bytes) -> None:
        if not batch.endswith(b"\n"):
            batch += b"\n"
        self._f.write(batch)
        if self._f.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.keep, 0, -1):
            src = self.path.with_name(f"{LOG_NAME}.{i - 1}" if i > 1 else LOG_NAME)
            if src.exists():
                os.replace(src, self.path.with_name(f"{LOG_NAME}.{i}"))
        self._f = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        self._f.close()


class Collector:
    """The ring of recent events and the metrics, fed one batch at a time (no I/O)."""

    def __init__(self, ring_size: int = RING_SIZE) -> None:
        self.ring: deque[dict[str, Any]] = deque(maxlen=ring_size)
        self.metrics = EventMetrics()
        self.bad_lines = 0
        self.received = 0
        self.dirty = False

    def feed(self, batch: bytes) -> bytes:
        """Fold a batch in; returns the lines that were valid events (what the log keeps)."""
        good = [line for line in batch.split(b"\n") if line and self._one(line)]
        self.dirty = True
        return b"".join(line + b"\n" for line in good)

    def _one(self, line: bytes) -> bool:
        try:
            ev = decode_value(line, LIMITS)
        except ProtocolError:
            self.bad_lines += 1
            return False
        ts = ev.get("ts") if isinstance(ev, dict) else None
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            self.bad_lines += 1
            return False
        try:
            self.metrics.observe(ev)
        except Exception as e:  # noqa: BLE001 - the events boundary (module docstring)
            incident(e, "telemetry metrics")
            self.bad_lines += 1
            return False
        self.received += 1
        self.ring.append(ev)
        return True

    def snapshot(self, now: float) -> dict[str, Any]:
        return {"ts": now, "received": self.received, "bad_lines": self.bad_lines,
                "ring_size": self.ring.maxlen, "metrics": self.metrics.snapshot(now),
                "recent": list(self.ring)}


def write_snapshot(home: Path | str, snap: dict[str, Any]) -> None:
    """Atomically: a reader sees the old snapshot or the new one, never half of one."""
    path = Path(home) / SNAPSHOT_NAME
    tmp = path.with_name(f".{SNAPSHOT_NAME}.{os.getpid()}")
    tmp.write_bytes(orjson.dumps(snap))
    os.replace(tmp, path)


def read_snapshot(home: Path | str) -> dict[str, Any] | None:
    """The telemetry process's last snapshot, or None if it has written none yet."""
    try:
        data = (Path(home) / SNAPSHOT_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        snap = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # only a hand-edited file can be torn: writes are atomic
    return snap if isinstance(snap, dict) else None


def install_stop_wakeup() -> int:
    """SIGTERM makes the returned fd readable (select on it beside your sockets).

    A Python handler alone would not do: PEP 475 retries a blocking call after it.
    """
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.set_wakeup_fd(w)
    return r


def _bind(sock_path: str) -> socket.socket:
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    old = os.umask(0o077)
    try:
        sock.bind(sock_path)
    finally:
        os.umask(old)
    return sock


def _drain(sock: socket.socket, log: EventLog, collector: Collector) -> None:
    """Everything queued on the (non-blocking) socket now: log first, then the views."""
    while True:
        try:
            batch = sock.recv(1 << 20)
        except BlockingIOError:
            return
        good = collector.feed(batch)  # only valid events reach the log (module docstring)
        if good:
            log.append(good)


def _snapshot_due(collector: Collector, last: float) -> float | None:
    """Seconds until the next snapshot is due (None: nothing changed, sleep until data)."""
    if not collector.dirty:
        return None
    return max(0.0, last + SNAPSHOT_S - time.monotonic())


def _maybe_snapshot(home: str, collector: Collector, last: float) -> float:
    if collector.dirty and time.monotonic() - last >= SNAPSHOT_S:
        write_snapshot(home, collector.snapshot(time.time()))
        collector.dirty = False
        return time.monotonic()
    return last


def telemetry_main(ctx, home: str, sock_path: str, max_bytes: int = 64 << 20,
                   ring_size: int = RING_SIZE) -> None:
    wake_r = install_stop_wakeup()
    os.nice(NICE)
    sock = _bind(sock_path)
    sock.setblocking(False)
    log = EventLog(Path(home), max_bytes=max_bytes)
    collector = Collector(ring_size)
    last = 0.0
    ctx.ready()
    try:
        while True:
            ready, _, _ = select.select([sock, wake_r], [], [], _snapshot_due(collector, last))
            if wake_r in ready:
                break
            _drain(sock, log, collector)
            last = _maybe_snapshot(home, collector, last)
        _drain(sock, log, collector)
        write_snapshot(home, collector.snapshot(time.time()))
    finally:
        log.close()
        sock.close()
        os.unlink(sock_path)
