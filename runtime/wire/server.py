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
from runtime.wire.protocol import HEADER, MAX_FRAME, FrameReader, ProtocolError, encode_frame

__all__ = ["listen_unix", "remove_run_dir", "Conn", "encode_internal", "InternalReader"]

#: Frames between processes of one tree (coordinator <-> agents, root) are trusted: same
#: header + orjson, without the control channel's per-value walk (which costs more than the
#: encoding itself on large inputs).  Only a size bound is kept.
INTERNAL_MAX_FRAME = 1 << 30


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
    """Incremental decoder of trusted frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        frames, start = [], 0
        while len(buf) - start >= 4:
            (size,) = HEADER.unpack_from(buf, start)
            if size > INTERNAL_MAX_FRAME:
                raise ProtocolError(f"internal frame of {size} bytes exceeds {INTERNAL_MAX_FRAME}")
            end = start + 4 + size
            if len(buf) < end:
                break
            frames.append(orjson.loads(memoryview(buf)[start + 4:end]))
            start = end
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
