"""One registry partition process: it owns the writes of its shard.

Data flow::

    client ──frame──▶ unix socket ──▶ PartitionServer ──▶ Shard (truth, indexes)
                                              │                  │
                                              │ reply after ──▶  TableWriter (shared
                                              ▼ the publish      table, read by everyone)
                       pidfd of each owner ───┘ readable = the owner died: drop its entries

* A blocking, single-threaded ``selectors`` loop over the listening socket, every client
  connection, one pidfd per owner (``os.pidfd_open``: readable the moment the process
  exits, no polling, no pid-reuse race) and the signal wake-up pipe.  An owner's death
  removes its entries in the same loop iteration, well within the 50 ms the spec asks.
* Frames are 4-byte big-endian length + orjson (never pickle).  A request is
  ``[rid, op, *args]``; a reply ``[rid, 0, result]`` or ``[rid, 1, error-wire]``.  Every
  readable connection is drained, *all* complete frames in the buffer are handled, and
  their replies leave in one ``send``: clients may pipeline, and ``register_many`` carries
  many registrations in one frame.
* Every frame is decoded by ``runtime.wire.protocol.decode_value`` under ``LIMITS`` (16 MiB,
  depth left to the parser, integers of 64 bits, no duplicate keys, valid UTF-8).  A bad
  body gets a ``[null, 1, error]`` reply and the connection goes on (the framing is
  intact); a header over the limit gets the replies of the frames before it, then the
  refusal, then the connection is closed.  Every request runs under the boundary policy
  (``runtime.wire.boundary``): an AgoraError is its reply, anything else INTERNAL with an
  incident id; nothing a peer sends ends the partition.
* A write is acknowledged only after it is in the shared table, so a restarted partition
  that rebuilds from its table (``recover``) loses no acknowledged registration; it drops
  entries whose owner died meanwhile (``pidfd_open`` fails, or the pidfd is already
  readable).
* SIGTERM sets a flag and wakes the loop through ``signal.set_wakeup_fd``; it never raises
  into the middle of a table write.  The socket file is unlinked on start (stale) and on
  every exit the loop controls.
* ``emit(type, **fields)`` (optional) receives ``registry.owner_down``, ``registry.recovered``
  and one in ``lookup_sample`` round-trip lookups as ``registry.lookup``.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import orjson

from runtime.errors import AgoraError, InvalidInput, ProtocolError, ResourceExhausted, to_wire
from runtime.registry._local import Shard, owner_not_running, validate_registration
from runtime.registry.model import (
    Predicate,
    check_key,
    check_owner,
    check_query,
    order_and_limit,
)
from runtime.registry.partitioning import partition_of
from runtime.registry.table import TableWriter
from runtime.wire.boundary import error_wire
from runtime.wire.buffers import RECV_BYTES
from runtime.wire.protocol import PARSER_DEPTH, Limits, decode_value

__all__ = ["partition_main", "PartitionServer", "MAX_FRAME", "LIMITS", "encode_frame", "frame"]

MAX_FRAME = 16 << 20
LIMITS = Limits(max_frame=MAX_FRAME, max_depth=PARSER_DEPTH, max_int=2**64,
                max_string=MAX_FRAME, max_containers=1 << 22)
_LEN = struct.Struct(">I")
ACCEPT_PAUSE_S = 0.05  # a listener out of descriptors rests this long before accepting again
Emit = Callable[..., None]


def frame(body: bytes) -> bytes:
    """A length-prefixed frame around an already encoded body."""
    return _LEN.pack(len(body)) + body


def encode_frame(obj: Any) -> bytes:
    return frame(orjson.dumps(obj))


def partition_main(index: int, n: int, sock_path: str, table: Any, *,
                   emit: Emit | None = None, lookup_sample: int = 100,
                   ready: Callable[[], None] | None = None) -> None:
    """Serve partition ``index`` of ``n`` at ``sock_path`` until SIGTERM."""
    server = PartitionServer(index, n, sock_path, table, emit=emit, lookup_sample=lookup_sample)
    try:
        server.start()
        if ready is not None:
            ready()
        server.serve_until_stopped()
    finally:
        server.close()


class _Conn:
    __slots__ = ("sock", "inbuf", "outbuf", "writing", "closing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.inbuf, self.outbuf = sock, bytearray(), bytearray()
        self.writing = False  # registered for EVENT_WRITE
        self.closing = False  # refused a frame header: close once the replies are out


class PartitionServer:
    """The partition's state and its loop; :func:`partition_main` is the usual entry."""

    def __init__(self, index: int, n: int, sock_path: str, table: Any, *,
                 emit: Emit | None = None, lookup_sample: int = 100) -> None:
        self.index, self.n, self.sock_path = index, n, sock_path
        self.shard = Shard()
        self.table = TableWriter(table)
        self._emit = emit
        self._sample, self._lookups = max(1, lookup_sample), 0
        self._pidfds: dict[int, int] = {}
        self._sel = selectors.DefaultSelector()
        self._stopping = False
        self._listener: socket.socket | None = None
        self._accept_paused_until: float | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup: int | None = None
        self._ops: dict[str, Callable[..., Any]] = {
            "register": self._op_register, "register_many": self._op_register_many,
            "unregister": self._op_unregister, "lookup": self._op_lookup,
            "update": self._op_update, "select": self._op_select,
            "remove_owner": self._op_remove_owner, "clear": self._op_clear, "ping": self._op_ping,
        }

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        self._recover()
        self._listen()
        self._catch_sigterm()

    def serve_until_stopped(self) -> None:
        while not self._stopping:
            for key, mask in self._sel.select(self._resume_accept_in()):
                key.data(key, mask)

    def _resume_accept_in(self) -> float | None:
        """Seconds the listener still rests after an accept failed (None: it listens)."""
        if self._accept_paused_until is None:
            return None
        left = self._accept_paused_until - time.monotonic()
        if left > 0:
            return left
        self._accept_paused_until = None
        self._sel.register(self._listener, selectors.EVENT_READ, self._on_accept)
        return None

    def close(self) -> None:
        if self._old_wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for key in list(self._sel.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        self._sel.close()
        for fd in [*self._pidfds.values(), self._wake_r, self._wake_w]:
            os.close(fd)
        self._pidfds.clear()
        self._unlink_socket()

    def _listen(self) -> None:
        self._unlink_socket()  # a stale file from a killed predecessor
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.sock_path)
        sock.listen(128)
        sock.setblocking(False)
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ, self._on_accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)

    def _catch_sigterm(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self._stopping = True
        signal.signal(signal.SIGTERM, stop)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _unlink_socket(self) -> None:
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass

    def _recover(self) -> None:
        """Rebuild the shard from the table a predecessor left, minus dead owners."""
        entries, torn = self.table.recover()
        dead = 0
        for e in entries:
            if self._watch(e.owner):
                self.shard.load(e)
            else:
                self.table.delete(e.key)
                dead += 1
        self._reap_dead_watches()
        if entries or torn:
            self._event("registry.recovered", entries=len(self.shard), dead_owners=dead, torn=torn)

    # ------------------------------------------------------------------ events of the loop
    def _on_accept(self, key: Any, mask: int) -> None:
        try:
            sock, _ = key.fileobj.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:  # EMFILE/ENFILE: a flood of connections; rest, serve the others
            self._event("registry.accept_failed", partition=self.index, error=f"{type(e).__name__}: {e}"[:200])
            self._sel.unregister(key.fileobj)
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
            return
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ, _bind(self._on_conn, _Conn(sock)))

    def _on_conn(self, conn: _Conn, key: Any, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if mask & selectors.EVENT_READ and self._read(conn):
            self._handle_frames(conn)
            self._flush(conn)

    def _on_owner_exit(self, pid: int, key: Any, mask: int) -> None:
        removed = self._remove_owner(pid)
        self._event("registry.owner_down", partition=self.index, pid=pid, removed=removed)

    def _on_wake(self, key: Any, mask: int) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    # ------------------------------------------------------------------ connections
    def _read(self, conn: _Conn) -> bool:
        """Drain the socket into ``conn.inbuf``; False when the peer is gone.  A short read
        means the socket is empty (the selector is level-triggered: anything that arrives
        later is reported again), which spares a failing ``recv`` per request."""
        while True:
            try:
                chunk = conn.sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                chunk = b""
            if not chunk:
                self._drop(conn)
                return False
            conn.inbuf += chunk
            if len(chunk) < RECV_BYTES:
                return True

    def _handle_frames(self, conn: _Conn) -> None:
        buf, pos, replies = conn.inbuf, 0, []
        while len(buf) - pos >= 4:
            size = _LEN.unpack_from(buf, pos)[0]
            if size > MAX_FRAME:  # refused before the body: answer what came, then close
                err = ProtocolError(f"registry frame header announces {size} bytes, over the "
                                    f"{MAX_FRAME}-byte limit")
                replies.append(encode_frame([None, 1, to_wire(err)]))
                conn.closing = True
                pos = len(buf)
                break
            if len(buf) - pos - 4 < size:
                break
            replies.append(self._dispatch(bytes(buf[pos + 4: pos + 4 + size])))
            pos += 4 + size
        del buf[:pos]
        conn.outbuf += b"".join(replies)

    def _flush(self, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:
            return
        try:
            sent = conn.sock.send(conn.outbuf) if conn.outbuf else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(conn)
            return
        del conn.outbuf[:sent]
        if conn.closing and not conn.outbuf:
            self._drop(conn)
            return
        if bool(conn.outbuf) != conn.writing:  # wait for room only while a reply is pending
            conn.writing = not conn.writing
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.writing else 0)
            self._sel.modify(conn.sock, want, _bind(self._on_conn, conn))

    def _drop(self, conn: _Conn) -> None:
        if conn.sock.fileno() >= 0:
            self._sel.unregister(conn.sock)
            conn.sock.close()

    def _dispatch(self, body: bytes) -> bytes:
        """One request -> its reply frame, under the boundary policy (never raises)."""
        rid: Any = None
        try:
            req = decode_value(body, LIMITS)
            if not isinstance(req, list) or len(req) < 2 or not isinstance(req[1], str) \
                    or req[1] not in self._ops:
                raise ProtocolError(f"registry request must be [rid, op, *args] with a known op, "
                                    f"got {str(req)[:80]}")
            rid = req[0] if isinstance(req[0], int) and not isinstance(req[0], bool) else None
            return encode_frame([rid, 0, self._ops[req[1]](*req[2:])])
        except TypeError as exc:  # wrong number of arguments for the op (or of wrong types)
            err = ProtocolError(f"malformed registry request: {str(exc)[:200]}",
                                hint="this is a bug in the registry client")
            return encode_frame([rid, 1, to_wire(err)])
        except Exception as exc:  # noqa: BLE001 - the partition's boundary
            return encode_frame([rid, 1, error_wire(exc, f"registry.{self.index}", self._emit)])

    # ------------------------------------------------------------------ operations
    def _op_ping(self) -> list[int]:
        return [self.index, len(self.shard)]

    def _op_register(self, key: str, caps: Any, meta: Any, owner: Any) -> list[Any]:
        key, caps, meta, owner = validate_registration(
            key, {"capabilities": caps, "metadata": meta}, owner)
        self._check_route(key)
        if not self._watch(owner):
            raise owner_not_running(owner)
        entry, data = self.shard.register(key, caps, meta, owner)
        self._publish(entry, data)
        return [entry.key, entry.capabilities, entry.metadata, entry.version, entry.owner]

    def _op_register_many(self, items: list[Any]) -> list[list[Any]]:
        out = []
        for item in items:
            try:
                out.append([0, self._op_register(*item)])
            except AgoraError as exc:
                out.append([1, to_wire(exc)])
        return out

    def _op_unregister(self, key: str) -> bool:
        old = self.shard.unregister(check_key(key))
        if old is None:
            return False
        self.table.delete(key)
        self._unwatch_if_idle(old.owner)
        return True

    def _op_lookup(self, key: str) -> list[Any] | None:
        self._lookups += 1
        if self._lookups % self._sample == 0:
            self._event("registry.lookup", partition=self.index, key=key)
        e = self.shard.entries.get(check_key(key))
        return None if e is None else [e.key, e.capabilities, e.metadata, e.version, e.owner]

    def _op_update(self, key: str, patch: Any, expected: Any) -> list[Any]:
        entry, data = self.shard.update(check_key(key), patch, expected)
        self._publish(entry, data)
        return [entry.key, entry.capabilities, entry.metadata, entry.version, entry.owner]

    def _op_select(self, capability: Any, where: list[Any], order_by: Any, limit: Any
                   ) -> list[list[Any]]:
        check_query(order_by, limit)
        found = self.shard.select(capability, [Predicate.from_wire(w) for w in where])
        return [[e.key, e.capabilities, e.metadata, e.version, e.owner]
                for e in order_and_limit(found, order_by, limit)]

    def _op_remove_owner(self, pid: Any) -> int:
        return self._remove_owner(check_owner(pid))

    def _op_clear(self) -> int:
        keys = self.shard.clear()
        self.table.clear()
        for pid in list(self._pidfds):
            self._unwatch_if_idle(pid)
        return len(keys)

    # ------------------------------------------------------------------ helpers
    def _check_route(self, key: str) -> None:
        owner = partition_of(key, self.n)
        if owner != self.index:
            raise InvalidInput(f"key {key!r} belongs to partition {owner}, not {self.index}",
                               hint="the client and the partitions disagree on N; "
                                    "this is a bug in the registry client")

    def _publish(self, entry: Any, data: bytes) -> None:
        try:
            self.table.put(entry, data)
        except AgoraError:
            self.shard.unregister(entry.key)  # keep truth and table in step
            raise

    def _remove_owner(self, pid: int) -> int:
        keys = self.shard.remove_owner(pid)
        for k in keys:
            self.table.delete(k)
        self._unwatch(pid)
        return len(keys)

    def _watch(self, pid: int) -> bool:
        """Watch ``pid`` through a pidfd; False if it is not running."""
        if pid in self._pidfds:
            return True
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return False
            raise ResourceExhausted(f"registry partition {self.index} cannot watch owner pid "
                                    f"{pid}: {exc.strerror} ({len(self._pidfds)} owners watched)",
                                    hint="raise RLIMIT_NOFILE (one pidfd per owner process)"
                                    ) from exc
        self._pidfds[pid] = fd
        self._sel.register(fd, selectors.EVENT_READ, _bind(self._on_owner_exit, pid))
        return True

    def _reap_dead_watches(self) -> None:
        """Owners that exited before we watched them (zombies): drop them now."""
        for key, mask in self._sel.select(0):
            if key.fd in self._pidfds.values():
                key.data(key, mask)

    def _unwatch_if_idle(self, pid: int) -> None:
        if pid not in self.shard.by_owner:
            self._unwatch(pid)

    def _unwatch(self, pid: int) -> None:
        fd = self._pidfds.pop(pid, None)
        if fd is not None:
            self._sel.unregister(fd)
            os.close(fd)

    def _event(self, type_: str, **fields: Any) -> None:
        if self._emit is not None:
            self._emit(type_, **fields)


def _bind(fn: Callable[..., None], first: Any) -> Callable[[Any, int], None]:
    return lambda key, mask: fn(first, key, mask)

