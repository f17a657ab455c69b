"""One control-channel connection with many requests in flight, matched by request id.

::

    caller threads ──send(frame)──▶ socket ──▶ coordinator (answers each id, in any order)
         ▲                                        │
         └── Pending.callback(reply) ◀── reader thread ◀──┘   (one per Connection)

The coordinator echoes each request's ``id`` in its reply and answers deferred requests
(``result --wait``, ``submit`` with ``result``, votes) when they are ready, not in order,
so one socket carries any number of outstanding waits.  A caller gets a :class:`Pending`
for each request: a blocking ``wait(timeout)``, or a ``callback`` that the reader thread
runs with the :class:`~runtime.wire.protocol.Reply` (futures are completed that way: no
thread per request).

* Connecting, the peer check and the "not running" error are the :class:`Client`'s own
  (this class is built on it); its ``call`` keeps its meaning (send, wait, raise).
* Every wait is bounded: ``call`` by the connection's or the call's ``timeout``
  (``DeadlineExceeded``; the late reply, if any, is dropped when it comes).
* The daemon closing the socket (EOF, a reset, half a frame) fails every pending request
  with ``Unavailable``; the next request reconnects.
* Thread-safe: sends are serialised by a lock, the reader owns the receiving side.
* Streams (``events --follow``) are not multiplexed: use :meth:`Connection.stream`, which
  opens a private :class:`Client` for the stream's lifetime.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Generator
from typing import Any

from runtime.errors import AgoraError, ClosedError, DeadlineExceeded, ProtocolError, Unavailable, from_wire
from runtime.observability.trace_context import TraceContext
from runtime.wire.client import DEFAULT_TIMEOUT, Client
from runtime.wire.protocol import FrameReader, Reply, encode_frame, make_request, parse_reply
from runtime.wire.spin import spin_until_readable

__all__ = ["Connection", "Pending", "reply_value"]

RECV_BYTES = 1 << 18
#: Seconds the reader polls for a due reply before it blocks (runtime.wire.spin: waking a
#: sleeping thread costs about as much as the daemon's work for a trivial task).
SPIN_S = 0.0005


def reply_value(reply: Reply) -> Any:
    """The "ok" value of ``reply``, or its typed error raised."""
    if reply.kind == "error":
        raise from_wire(reply.value)
    if reply.kind == "more":
        raise ProtocolError("a stream frame arrived for a plain request",
                            hint="streaming commands go through Connection.stream()")
    return reply.value


class Pending:
    """One request in flight: the reply, or the error that ended the wait."""

    __slots__ = ("rid", "cmd", "callback", "reply", "error", "_event")

    def __init__(self, rid: int, cmd: str, callback: Callable[[Pending], None] | None) -> None:
        self.rid, self.cmd, self.callback = rid, cmd, callback
        self.reply: Reply | None = None
        self.error: AgoraError | None = None
        self._event = threading.Event() if callback is None else None

    def finish(self, reply: Reply | None, error: AgoraError | None = None) -> None:
        self.reply, self.error = reply, error
        if self._event is not None:
            self._event.set()
        else:
            assert self.callback is not None
            self.callback(self)

    def value(self) -> Any:
        """The "ok" value (raises the daemon's typed error or the connection's)."""
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return reply_value(self.reply)

    def wait(self, timeout: float) -> Any:
        assert self._event is not None, "a request with a callback is not waited on"
        if not self._event.wait(timeout):
            raise DeadlineExceeded(f"`{self.cmd}` (request {self.rid}) got no reply within {timeout:g} s",
                                   hint="raise the timeout, or check the daemon with `agora status`")
        return self.value()


class Connection(Client):
    """A multiplexed connection to the daemon of ``home`` (see the module docstring)."""

    def __init__(self, home: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(home, timeout=timeout, spin_us=0)
        self._lock = threading.Lock()          # pending, sending, (re)connecting
        self._pending: dict[int, Pending] = {}
        self._reader: threading.Thread | None = None
        self._start_reader()

    # --- requests --------------------------------------------------------------------

    def send(self, cmd: str, args: dict[str, Any] | None = None, *,
             callback: Callable[[Pending], None] | None = None,
             trace: TraceContext | None = None) -> Pending:
        """Send one request now; its reply goes to ``callback`` (in the reader thread) or
        to :meth:`Pending.wait`."""
        with self._lock:
            sock = self._socket_locked()
            rid = next(self._ids)
            frame = encode_frame(make_request(rid, cmd, args, trace), self.limits)
            pending = self._pending[rid] = Pending(rid, cmd, callback)
            try:
                sock.sendall(frame)
            except OSError as e:
                self._pending.pop(rid, None)
                raise self._gone(cmd, rid, e) from e
        return pending

    def send_many(self, requests: list[tuple[str, dict[str, Any], Callable[[Pending], None]]]) -> list[Pending]:
        """Several requests (command, args, callback) in one write: a pipelined batch."""
        with self._lock:
            sock = self._socket_locked()
            out, parts = [], []
            for cmd, args, callback in requests:
                rid = next(self._ids)
                parts.append(encode_frame(make_request(rid, cmd, args), self.limits))
                out.append(Pending(rid, cmd, callback))
                self._pending[rid] = out[-1]
            try:
                sock.sendall(b"".join(parts))
            except OSError as e:
                for p in out:
                    self._pending.pop(p.rid, None)
                raise self._gone(requests[0][0], out[0].rid, e) from e
        return out

    def request(self, cmd: str, args: dict[str, Any] | None = None, *,
                trace: TraceContext | None = None, timeout: float | None = None) -> Any:
        """Send and wait for the reply, bounded by ``timeout`` (default: the connection's)."""
        pending = self.send(cmd, args, trace=trace)
        try:
            return pending.wait(self.timeout if timeout is None else timeout)
        finally:
            with self._lock:
                self._pending.pop(pending.rid, None)

    def stream(self, cmd: str, /, *, trace: TraceContext | None = None,
               timeout: float | None = None, **args: Any) -> Generator[Any, None, Any]:
        """A streaming command on a private Client (closed when the stream ends)."""
        with Client(self.home, timeout=self.timeout) as c:
            return (yield from c.stream(cmd, trace=trace, timeout=timeout, **args))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # --- the socket and its reader ------------------------------------------------------

    def _socket_locked(self) -> socket.socket:
        if self._closed:
            raise ClosedError(f"this connection to {self.path} was closed")
        if self._sock is None:  # the last one broke: a fresh socket, a fresh reader
            self._sock = self._connect()
            self._start_reader()
        return self._sock

    def _start_reader(self) -> None:
        assert self._sock is not None
        self._sock.settimeout(None)  # the reader blocks; callers' waits are bounded instead
        self._reader = threading.Thread(target=self._read_loop, args=(self._sock,),
                                        name=f"agora-conn-{self.path.name}", daemon=True)
        self._reader.start()

    def _read_loop(self, sock: socket.socket) -> None:
        reader = FrameReader(self.limits)
        why: BaseException | None = None
        try:
            while True:
                if self._pending:  # a reply is due: poll a little before sleeping in recv
                    spin_until_readable(sock, SPIN_S)
                data = sock.recv(RECV_BYTES)
                if not data:
                    reader.feed_eof()
                    break
                for obj in reader.feed(data):
                    self._dispatch(parse_reply(obj))
        except (OSError, AgoraError) as e:
            why = e
        self._broken(sock, why)

    def _dispatch(self, reply: Reply) -> None:
        if reply.kind == "more":  # an interim frame (submit's ack): the request goes on
            pending = self._pending.get(reply.id) if reply.id is not None else None
            if pending is not None and pending.callback is not None:
                pending.reply = reply
                pending.callback(pending)
            return
        with self._lock:
            pending = self._pending.pop(reply.id, None) if reply.id is not None else None
        if pending is None:
            if reply.id is None and reply.kind == "error":  # the daemon refused our stream
                raise from_wire(reply.value)
            return  # a reply its caller stopped waiting for (timed out)
        pending.finish(reply)

    def _broken(self, sock: socket.socket, why: BaseException | None) -> None:
        """The socket ended: every request on it fails; the next send reconnects."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
            failed, self._pending = self._pending, {}
        sock.close()
        for p in failed.values():
            err = ClosedError(f"the connection to {self.path} was closed") if self._closed \
                else self._gone(p.cmd, p.rid, why)
            p.finish(None, err)

    def close(self) -> None:
        """Close the socket; requests still in flight fail with ``ClosedError``."""
        with self._lock:
            self._closed = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, which closes it
            except OSError:
                pass
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(5.0)

    def __enter__(self) -> Connection:
        return self

