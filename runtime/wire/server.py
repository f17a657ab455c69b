"""Unix-socket plumbing shared by the root and the coordinator: private listening
sockets, and the per-connection state of a non-blocking frame server.

Security (DESIGN "Control channel"): sockets live in a 0700 directory owned by the user
(``runtime.wire.paths``), are bound under umask 077 and chmod 0600, and every accepted
connection's SO_PEERCRED uid must equal ours; a refusal is logged as an event.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Any

import orjson

from runtime.wire import paths
from runtime.wire.buffers import RECV_BYTES
from runtime.wire.protocol import (
    HEADER,
    MAX_FRAME,
    PARSER_DEPTH,
    FrameReader,
    Limits,
    ProtocolError,
    decode_value,
    encode_frame,
)

__all__ = ["listen_unix", "remove_run_dir", "Conn", "encode_internal", "InternalReader",
           "MAX_PENDING_OUT", "SlowPeer", "INTERNAL_LIMITS", "INTERNAL_MAX_FRAME"]

#: Replies queued for one client that is not reading them, in bytes.  A client's replies
#: wait in its output buffer (the loop never blocks on a socket: issue 15, item 4); a
#: reply is queued only while less than this is waiting, so one reply of any size up to
#: the 16 MiB frame limit always fits, and a client that stops reading is dropped once
#: 8 MiB wait unread (``control.slow_client_dropped``): two full-size replies at most.
MAX_PENDING_OUT = 8 << 20

#: Frames between processes of one tree (coordinator <-> agents): same header + orjson and
#: the same decoder as the control channel (``decode_value``: integer literals, duplicate
#: keys, UTF-8, NaN), with limits of their own: a larger frame (results may be large),
#: depth left to the parser (1024, no per-value walk: it cost more than the encoding on
#: large inputs), strings bounded by the frame, integers by orjson's 64 bits.  A same-uid
#: process can connect to these sockets, so they are not trusted to be well formed.
INTERNAL_MAX_FRAME = 1 << 30
INTERNAL_LIMITS = Limits(max_frame=INTERNAL_MAX_FRAME, max_depth=PARSER_DEPTH, max_int=2**64,
                         max_string=INTERNAL_MAX_FRAME, max_containers=1 << 24)


def encode_reply(obj: Any) -> bytes:
    """Our own replies to clients: orjson refuses what JSON cannot say (ints beyond 64 bits,
    cycles, deep nesting); the client enforces the protocol's limits on receipt.  Skips the
    per-value walk that inbound frames need (it cost more than the encoding itself)."""
    try:
        body = orjson.dumps(obj)
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"cannot encode a reply as JSON: {e}") from e
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"a reply of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit",
                            hint="ask for less (a smaller --limit), or fetch large data another way")
    return HEADER.pack(len(body)) + body


def encode_internal(obj: Any) -> bytes:
    body = orjson.dumps(obj)
    return HEADER.pack(len(body)) + body


class InternalReader:
    """Incremental decoder of the tree's internal frames (``INTERNAL_LIMITS``).  Like
    ``FrameReader``: a ``ProtocolError`` is final for the connection and carries the frames
    decoded before it in the same ``feed`` as ``.frames`` (answer them, then refuse)."""

    def __init__(self, limits: Limits = INTERNAL_LIMITS) -> None:
        self.limits = limits
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Any]:
        if self._failed is not None:
            raise ProtocolError(f"this connection already sent a bad frame ({self._failed.message})",
                                hint="close the connection")
        buf = self._buf
        buf += data
        frames: list[Any] = []
        start = 0
        try:
            while len(buf) - start >= 4:
                (size,) = HEADER.unpack_from(buf, start)
                if size > self.limits.max_frame:
                    raise ProtocolError(f"internal frame header announces {size} bytes, over "
                                        f"the {self.limits.max_frame}-byte limit")
                end = start + 4 + size
                if len(buf) < end:
                    break
                frames.append(decode_value(bytes(buf[start + 4:end]), self.limits))
                start = end
        except ProtocolError as e:
            self._failed = e
            e.frames = frames  # type: ignore[attr-defined]
            raise
        del buf[:start]
        return frames


def listen_unix(path: str, backlog: int = 128) -> socket.socket:
    paths.ensure_private_dir(os.path.dirname(path))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    return sock


def remove_run_dir(run: Any) -> None:
    shutil.rmtree(run.dir, ignore_errors=True)


class SlowPeer(Exception):
    """A peer's output buffer is full: it has not read ``pending`` bytes (see
    MAX_PENDING_OUT).  Not an AgoraError: nobody is told, the peer is dropped."""

    def __init__(self, pending: int, limit: int) -> None:
        super().__init__(f"{pending} bytes wait unread (limit {limit})")
        self.pending, self.limit = pending, limit


class Conn:
    """One non-blocking peer: frames in through a FrameReader, bytes out through a buffer.

    ``send`` never blocks: what the socket does not take now stays in ``out`` and
    ``on_backlog(conn)`` is called (the loop then asks the selector for write interest and
    calls ``flush`` when the socket is writable).  With ``max_out``, once ``max_out`` bytes
    wait unread ``send`` queues nothing more and calls ``on_full(conn)`` (the loop drops
    the peer), or raises :class:`SlowPeer` without ``on_full``.
    """

    def __init__(self, sock: socket.socket, reader: Any = None, encode: Any = encode_frame,
                 max_out: int | None = None, on_backlog: Any = None, on_full: Any = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = reader or FrameReader()
        self.encode = encode
        self.out = bytearray()
        self.closed = False
        self.state: dict[str, Any] = {}
        self.max_out = max_out
        self.on_backlog = on_backlog
        self.on_full = on_full

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_frames(self) -> list[Any] | None:
        """Frames now complete; None on EOF (the peer is gone).  Raises ProtocolError."""
        try:
            data = self.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return None
        if not data:
            return None
        return self.reader.feed(data)

    def send(self, obj: Any) -> None:
        """Queue one frame and write what the socket takes now (ProtocolError if ``obj``
        cannot be encoded: nothing is queued then; SlowPeer if the buffer is full)."""
        data = self.encode(obj)
        if self.closed:
            return  # gone: its EOF is on the way to the loop
        if self.max_out is not None and len(self.out) >= self.max_out:
            if self.on_full is None:
                raise SlowPeer(len(self.out), self.max_out)
            self.on_full(self)
            return
        waiting = bool(self.out)
        self.out += data
        if waiting and self.on_backlog is not None:
            return  # the selector says when the socket takes more: no write that would fail
        self.flush()
        if self.out and not self.closed and self.on_backlog is not None:
            self.on_backlog(self)

    def flush(self) -> None:
        """Write until the socket would block; True-ish ``out`` afterwards means more waits."""
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True  # the read side sees the EOF and closes us
                self.out.clear()
                return
            del self.out[:n]

    def close(self) -> None:
        self.closed = True
        self.sock.close()
