"""One control-channel connection with many requests in flight, matched by request id.

::

    caller threads ──send(frame)──▶ socket ──▶ coordinator (answers each id, in any order)
         ▲                                        │
         └── Pending.callback(reply) ◀── whoever reads ◀──┘

The coordinator echoes each request's ``id`` in its reply and answers deferred requests
(``result --wait``, ``submit`` with ``result``, votes) when they are ready, not in order,
so one socket carries any number of outstanding waits.  A caller gets a :class:`Pending`
for each request: a blocking ``wait(timeout)``, or a ``callback`` run with each
:class:`~runtime.wire.protocol.Reply` (futures are completed that way).

Who reads: the receiving side belongs to one thread at a time (``_rlock``).  A thread that
waits for a reply (``Pending.wait``, a future's ``result``) reads the socket itself and
dispatches every frame that comes, its own and others': a synchronous round trip then
costs no hand-over between threads (waking a sleeping thread costs about as much as the
daemon's work for a trivial task, see ``runtime.wire.spin``).  When nobody waits but
replies are due and wanted (``add_done_callback``, ``await``, ``agora.wait``,
``as_completed`` say so: ``want_reader``), the connection's one background thread reads
(and at least every ``SLICE_S`` while replies are due); a caller that starts waiting wakes
it out of its poll (a pipe) and it steps aside.  No thread per request, one thread per connection.

* Connecting, the peer check and the "not running" error are the :class:`Client`'s own
  (this class is built on it).
* Every wait is bounded: ``request`` by the connection's or the call's ``timeout``
  (``DeadlineExceeded``; the late reply, if any, is dropped when it comes).
* The daemon closing the socket (EOF, a reset, half a frame) fails every pending request
  with ``Unavailable``; the next request reconnects.
* Thread-safe: sends are serialised by a lock.  A callback runs in whichever thread reads:
  it must not block on another reply of the same connection.
* Streams (``events --follow``) are not multiplexed: use :meth:`Connection.stream`, which
  opens a private :class:`Client` for the stream's lifetime.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from runtime.errors import AgoraError, ClosedError, DeadlineExceeded, ProtocolError, from_wire
from runtime.observability.trace_context import TraceContext
from runtime.wire.client import DEFAULT_TIMEOUT, Client
from runtime.wire.protocol import FrameReader, Reply, encode_frame, make_request, parse_reply
from runtime.wire.spin import Spinner

__all__ = ["Connection", "Pending", "reply_value"]

RECV_BYTES = 1 << 18
#: Seconds a reader polls for a due reply before it blocks (runtime.wire.spin: waking a
#: sleeping thread costs about as much as the daemon's work for a trivial task).
SPIN_S = 0.001  # (the raw Client spins as long: runtime.wire.client.SPIN_US)
#: The longest one blocking read lasts before the reader looks around again (closed? a
#: waiter's deadline?): a bound on reaction time, not on any wait.
SLICE_S = 0.05


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


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

    __slots__ = ("rid", "cmd", "callback", "reply", "error", "_event", "conn")

    def __init__(self, rid: int, cmd: str, callback: Callable[[Pending], None] | None,
                 conn: Connection | None = None) -> None:
        self.rid, self.cmd, self.callback, self.conn = rid, cmd, callback, conn
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
        ev = self._event
        done = ev.wait(0) or (self.conn.wait_until(ev.is_set, ev.wait, timeout) if self.conn is not None
                              else ev.wait(timeout))
        if not done:
            raise DeadlineExceeded(f"`{self.cmd}` (request {self.rid}) got no reply within {timeout:g} s",
                                   hint="raise the timeout, or check the daemon with `agora status`")
        return self.value()


class Connection(Client):
    """A multiplexed connection to the daemon of ``home`` (see the module docstring)."""

    def __init__(self, home: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(home, timeout=timeout, spin_us=0)
        self._lock = threading.Lock()          # pending, sending, (re)connecting
        self._pending: dict[int, Pending] = {}
        self._rlock = threading.Lock()         # the receiving side: socket reads, dispatch
        self._reading: int | None = None       # the thread that holds it
        self._frames = FrameReader(self.limits)
        self._spinner = Spinner(SPIN_S)        # (spin_us=0 above: the raw client's own is off)
        self._waiters = 0                      # threads waiting for a reply (they read)
        self._wanted = False                   # replies are awaited by callbacks: read them
        self._bg_reading = False               # the background reader holds the socket
        self._cond = threading.Condition()     # the background reader's: waiters, pending
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        assert self._sock is not None
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._background, name=f"agora-conn-{self.path.name}",
                                        daemon=True)
        self._reader.start()

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
            pending = self._pending[rid] = Pending(rid, cmd, callback, self)
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
                out.append(Pending(rid, cmd, callback, self))
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

    # --- the socket and who reads it ------------------------------------------------------

    def _socket_locked(self) -> socket.socket:
        if self._closed:
            raise ClosedError(f"this connection to {self.path} was closed")
        if self._sock is None:  # the last one broke: a fresh socket and frame reader
            self._sock = self._connect()
            self._sock.settimeout(None)
            self._frames = FrameReader(self.limits)
        return self._sock

    def want_reader(self) -> None:
        """Someone needs replies read without waiting for them (a done callback, ``await``,
        ``as_completed``): the background reader reads while no caller does.  (Without
        this it still reads every ``SLICE_S``: EOF is seen, forgotten futures complete.)"""
        with self._cond:
            self._wanted = True
            self._cond.notify()

    def wait_until(self, done: Callable[[], bool], sleep: Callable[[float], Any], timeout: float | None) -> bool:
        """Wait for ``done()`` (bounded by ``timeout``; None: no bound), reading the socket
        in this thread meanwhile when no other thread does; ``sleep(t)`` waits for the
        completion otherwise.  False if the time ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
        if self._bg_reading:
            self._wake()  # the background reader in its poll steps aside
        try:
            while not done():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                slice_s = SLICE_S if left is None else min(left, SLICE_S)
                if self._rlock.acquire(timeout=0.001):  # (a woken background reader lets go at once)
                    try:
                        self._read_some(slice_s, done)
                    finally:
                        self._reading = None
                        self._rlock.release()
                else:  # another thread reads (and dispatches our reply too)
                    sleep(min(slice_s, 0.002))
            return True
        finally:
            with self._cond:
                self._waiters -= 1
                if self._wanted and not self._waiters:  # (no wake-up on a plain round trip)
                    self._cond.notify()

    def _read_some(self, seconds: float, done: Callable[[], bool] = lambda: False, spin: bool = True) -> None:
        """With ``_rlock`` held: wait up to ``seconds`` for bytes (spinning first if
        ``spin``), read and dispatch what came; a wake (a new waiter) ends the wait."""
        self._reading = threading.get_ident()
        sock = self._sock
        if done():
            return
        if sock is None:  # broken and not reconnected: nothing will come on it
            time.sleep(min(seconds, 0.01))
            return
        if not (spin and self._spinner.wait(sock)):
            ready, _, _ = select.select([sock, self._wake_r], [], [], seconds)
            if self._wake_r in ready:
                _drain(self._wake_r)
            if sock not in ready:
                return
        self._read_once(sock)

    def _read_once(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(RECV_BYTES)
            if not data:
                self._frames.feed_eof()
                return self._broken(sock, None)
            for obj in self._frames.feed(data):
                self._dispatch(parse_reply(obj))
        except (OSError, AgoraError) as e:
            self._broken(sock, e)
        return None

    def _background(self) -> None:
        """Read for nobody-in-particular: only while replies are due and no one waits."""
        while not self._closed:
            with self._cond:
                idle = False  # a whole slice without a reader while replies were due
                while not self._closed and (self._waiters or not self._pending or self._sock is None
                                            or not (self._wanted or idle)):
                    due = bool(self._pending) and not self._waiters
                    idle = not self._cond.wait(SLICE_S) and due
            if self._closed:
                return
            if not self._waiters and self._rlock.acquire(timeout=SLICE_S):
                self._bg_reading = True  # (before the check: a waiter now wakes us)
                try:
                    if not self._waiters:
                        self._read_some(SLICE_S, spin=False)
                finally:
                    self._bg_reading = False
                    self._reading = None
                    self._rlock.release()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):
            pass  # full (a wake is pending anyway) or closed

    def on_reading_thread(self) -> bool:
        """True inside a callback: this thread is dispatching (it must not wait on us)."""
        return self._reading == threading.get_ident()

    def _dispatch(self, reply: Reply) -> None:
        if reply.kind == "more":  # an interim frame (submit's ack): the request goes on
            pending = self._pending.get(reply.id) if reply.id is not None else None
            if pending is not None and pending.callback is not None:
                pending.reply = reply
                pending.callback(pending)
            return
        with self._lock:
            pending = self._pending.pop(reply.id, None) if reply.id is not None else None
            if not self._pending:
                self._wanted = False  # (set again by the next callback or await)
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
        try:
            sock.close()
        except OSError:
            pass
        for p in failed.values():
            err = ClosedError(f"the connection to {self.path} was closed") if self._closed \
                else self._gone(p.cmd, p.rid, why)
            p.finish(None, err)

    def close(self) -> None:
        """Close the socket; requests still in flight fail with ``ClosedError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            sock = self._sock
        with self._cond:
            self._cond.notify_all()
        self._wake()
        if self._reader is not threading.current_thread():
            self._reader.join(5.0)
        if sock is not None:
            with self._rlock:  # (no one reads now: the reader left, waiters see _closed)
                self._broken(sock, None)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> Connection:
        return self

