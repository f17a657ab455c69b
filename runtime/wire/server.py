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
           "INTERNAL_LIMITS", "INTERNAL_MAX_FRAME"]

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


class Conn:
    """One non-blocking peer: frames in through a FrameReader, bytes out through a buffer."""

    def __init__(self, sock: socket.socket, reader: Any = None, encode: Any = encode_frame) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.reader = reader or FrameReader()
        self.encode = encode
        self.out = bytearray()
        self.closed = False
        self.state: dict[str, Any] = {}

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
        self.out += self.encode(obj)
        self.flush()

    def flush(self) -> None:
        while self.out and not self.closed:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.closed = True
                return
            del self.out[:n]

    def close(self) -> None:
        self.closed = True
        self.sock.close()
