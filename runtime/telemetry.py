"""The telemetry process: receives event batches and appends them to the event log.

The log is ``<home>/events.jsonl``, rotated by size to ``events.jsonl.1`` .. ``.N``
(oldest dropped), so disk use is bounded by ``max_bytes * (keep + 1)``.  Readers (the
coordinator's ``events`` and ``trace`` commands) read the files; they hold the whole truth.

It is the first child the root starts and the last it stops: on SIGTERM it drains
what is already queued on its socket before exiting, so a graceful stop loses no event.
"""

from __future__ import annotations

import os
import select
import signal
import socket
from pathlib import Path

__all__ = ["EventLog", "telemetry_main", "LOG_NAME"]

LOG_NAME = "events.jsonl"


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


def _drain(sock: socket.socket, log: EventLog) -> None:
    sock.setblocking(False)
    while True:
        try:
            log.append(sock.recv(1 << 20))
        except BlockingIOError:
            return


def telemetry_main(ctx, home: str, sock_path: str, max_bytes: int = 64 << 20) -> None:
    wake_r = install_stop_wakeup()
    sock = _bind(sock_path)
    log = EventLog(Path(home), max_bytes=max_bytes)
    ctx.ready()
    try:
        while True:
            ready, _, _ = select.select([sock, wake_r], [], [])
            if wake_r in ready:
                break
            log.append(sock.recv(1 << 20))
        _drain(sock, log)
    finally:
        log.close()
        sock.close()
        os.unlink(sock_path)
