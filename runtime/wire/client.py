"""The Python client of the agora daemon: one Unix-socket connection, calls and streams.

    with Client() as c:                      # home: --home / AGORA_HOME / XDG default
        c.call("ping")                       # -> the reply's "ok" value
        for event in c.stream("events", follow=True):
            ...

Behaviour (the CLI is a thin layer over this class):

* The constructor connects to ``paths.control_socket(home)`` at once.  No socket file or
  nobody listening (ENOENT / ECONNREFUSED) -> ``DaemonNotRunning`` naming the path, with
  the hint to run ``agora up``.  The listening process's SO_PEERCRED uid must be ours,
  else ``PermissionDenied``: we never send a request to another user's process.
* ``call`` returns the "ok" value or raises the typed error the daemon sent
  (``runtime.errors.from_wire``); unknown codes arrive as ``RemoteError``.
* Every wait is bounded: ``timeout`` (per client, overridable per call) covers the send
  and the whole reply of a call, or the gap between two frames of a stream.  Time up ->
  ``DeadlineExceeded``.  A call that asks the daemon to wait (a ``timeout_s`` argument:
  ``result``/``pipeline_result`` with ``wait``, ``wait_all``) waits for the reply at least
  that long plus ``WAIT_MARGIN_S`` unless the call gives its own ``timeout``: a client
  deadline shorter than the wait it asked for would give up on a daemon that is keeping its
  word (a ``wait_all`` of 120 s died at the client's 30 s).  A daemon that dies mid-call (EOF, ECONNRESET, EPIPE, half a
  frame) -> ``Unavailable``; never a hang.
* After any failure mid-request the connection is out of step, so it is dropped; the next
  call reconnects (and gets ``DaemonNotRunning`` if the daemon is still down).  A request
  that failed with ``Unavailable`` may or may not have been executed.
* Requests carry a trace context only when the caller passes one (``trace=``); without
  one the daemon starts the trace (or marks the work a system event).
* ``stream`` is a generator: the request is sent on the first ``next()``; it yields each
  "more" item and returns the final "ok" value (``StopIteration.value``).  Leaving it
  early closes the connection, which tells the daemon to stop streaming.
* A call waits for its reply by spinning up to ``spin_us`` (default 1 ms) before it
  sleeps: most replies come within that, and waking a sleeping process here costs about
  as much as the daemon's work (``runtime.wire.spin``).  ``spin_us=0`` never spins; after
  a few replies in a row that outlasted the spin it stops spinning, and probes now and
  then (``runtime.wire.spin.Spinner``).
* Not thread-safe: use one Client per thread.  One stream at a time per Client.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from runtime.errors import (
    AgoraError,
    ClosedError,
    DaemonNotRunning,
    DeadlineExceeded,
    InvalidInput,
    PermissionDenied,
    ProtocolError,
    Unavailable,
    from_wire,
)
from runtime.observability.trace_context import TraceContext
from runtime.wire import paths
from runtime.wire.protocol import (
    Limits,
    Reply,
    TruncatedFrame,
    make_request,
    parse_reply,
    peer_cred,
    recv_frame,
    send_frame,
)
from runtime.wire.spin import Spinner

__all__ = ["Client", "DEFAULT_TIMEOUT"]

#: Seconds a call may take (send + reply) unless the Client or the call says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Seconds beyond a call's own ``timeout_s`` (a server-side wait) that its reply may take.
WAIT_MARGIN_S = 10.0
#: Microseconds a call spins for its reply before it sleeps (runtime.wire.spin); 0 = never.
SPIN_US = 1000.0


def _our_uid() -> int:
    return os.getuid()


class Client:
    """A connection to the daemon of ``home`` (see the module docstring)."""

    def __init__(self, home: str | os.PathLike[str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT, limits: Limits | None = None,
                 spin_us: float = SPIN_US) -> None:
        self.home: Path = paths.home_dir(home)
        self.path: Path = paths.control_socket(self.home)
        self.timeout = timeout
        self.limits = limits
        self.spin_s = max(0.0, spin_us) * 1e-6
        self._spinner = Spinner(self.spin_s)
        self._ids = itertools.count(1)
        self._closed = False
        self._streaming = False
        self._sock: socket.socket | None = self._connect()

    # --- connection ------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(os.fspath(self.path))
            self._check_peer(sock)
        except OSError as e:
            sock.close()
            raise self._connect_error(e) from e
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect_error(self, e: OSError) -> AgoraError:
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            return DaemonNotRunning(f"no agora daemon is listening on {self.path} "
                                    f"({e.strerror or e})")
        if isinstance(e, PermissionError):
            return PermissionDenied(f"cannot connect to {self.path}: {e.strerror}",
                                    hint="the socket or its directory is not yours; check "
                                         "AGORA_RUNTIME_DIR and the directory's owner")
        return Unavailable(f"cannot connect to {self.path}: {e}",
                           hint="the daemon may be overloaded or starting; retry shortly")

    def _check_peer(self, sock: socket.socket) -> None:
        pid, uid, _ = peer_cred(sock)
        if uid != _our_uid():
            raise PermissionDenied(
                f"the process listening on {self.path} (pid {pid}) runs as uid {uid}, "
                f"not as you (uid {_our_uid()}); refusing to talk to it",
                hint="someone else owns this socket: remove it if stale, or set "
                     "AGORA_RUNTIME_DIR to a directory only you can write")

    def _live_socket(self) -> socket.socket:
        if self._closed:
            raise ClosedError(f"this Client ({self.path}) was closed")
        if self._streaming:
            raise InvalidInput("a stream is in progress on this Client",
                               hint="finish or close the stream first, or use a second Client")
        if self._sock is None:
            self._sock = self._connect()
        return self._sock

    def _drop(self) -> None:
        """Forget a connection that is out of step (closed, timed out, half-read)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._drop()
        self._closed = True

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests --------------------------------------------------------------------

    def call(self, cmd: str, /, *, trace: TraceContext | None = None,
             timeout: float | None = None, **args: Any) -> Any:
        """Run ``cmd`` with keyword ``args``; the "ok" value, or the daemon's typed error."""
        return self.request(cmd, args, trace=trace, timeout=timeout)

    def request(self, cmd: str, args: dict[str, Any] | None = None, *,
                trace: TraceContext | None = None, timeout: float | None = None) -> Any:
        """Like ``call`` with ``args`` as a dict (for argument names such as "timeout")."""
        seconds = self.timeout if timeout is None else timeout
        wait = (args or {}).get("timeout_s") if timeout is None else None
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 <= wait < float("inf"):
            seconds = max(seconds, wait + WAIT_MARGIN_S)  # the daemon was asked to wait that long
        deadline = time.monotonic() + seconds
        rid = self._send(cmd, args, trace, deadline)
        reply = self._receive(cmd, rid, deadline, seconds)
        if reply.kind == "more":
            self._drop()
            raise ProtocolError(f"`{cmd}` answers with a stream of frames",
                                hint="use Client.stream() for this command")
        return self._result(reply)

    def stream(self, cmd: str, /, *, trace: TraceContext | None = None,
               timeout: float | None = None, **args: Any) -> Generator[Any, None, Any]:
        """Yield each "more" item of ``cmd``; return its final "ok" value."""
        seconds = self.timeout if timeout is None else timeout
        rid = self._send(cmd, args, trace, time.monotonic() + seconds)
        self._streaming, finished = True, False
        try:
            while True:
                reply = self._receive(cmd, rid, time.monotonic() + seconds, seconds)
                if reply.kind != "more":
                    finished = True
                    return self._result(reply)
                yield reply.value
        finally:
            self._streaming = False
            if not finished:
                self._drop()

    # --- steps -----------------------------------------------------------------------

    def _send(self, cmd: str, args: dict[str, Any] | None, trace: TraceContext | None,
              deadline: float) -> int:
        sock = self._live_socket()
        rid = next(self._ids)
        msg = make_request(rid, cmd, args, trace)
        try:
            send_frame(sock, msg, deadline, self.limits)
        except ProtocolError:
            raise  # refused while encoding: nothing was sent, the connection is fine
        except DeadlineExceeded:
            self._drop()
            raise
        except OSError as e:
            self._drop()
            raise self._gone(cmd, rid, e) from e
        return rid

    def _receive(self, cmd: str, rid: int, deadline: float, seconds: float) -> Reply:
        try:
            reply = self._read_reply(cmd, rid, deadline)
        except DeadlineExceeded as e:
            self._drop()
            raise DeadlineExceeded(f"`{cmd}` (request {rid}) got no reply within {seconds:g} s",
                                   hint="raise the timeout, or check the daemon with "
                                        "`agora status`") from e
        except BaseException:
            self._drop()
            raise
        if reply.id not in (rid, None):
            self._drop()
            raise ProtocolError(f"reply to request {reply.id} arrived while waiting for {rid}")
        return reply

    def _read_reply(self, cmd: str, rid: int, deadline: float) -> Reply:
        assert self._sock is not None
        self._spinner.wait(self._sock)  # then block, if it was not enough (or spinning does not pay)
        try:
            obj = recv_frame(self._sock, deadline, self.limits)
        except (OSError, TruncatedFrame) as e:
            raise self._gone(cmd, rid, e) from e
        if obj is None:
            raise self._gone(cmd, rid, None)
        return parse_reply(obj)

    def _gone(self, cmd: str, rid: int, cause: BaseException | None) -> Unavailable:
        why = f": {cause}" if cause is not None else ""
        return Unavailable(
            f"the daemon at {self.path} closed the connection during `{cmd}` "
            f"(request {rid}){why}",
            hint="it may have crashed or been stopped (`agora status`); retry once it is "
                 "back - the request may or may not have been carried out")

    @staticmethod
    def _result(reply: Reply) -> Any:
        if reply.kind == "error":
            raise from_wire(reply.value)
        return reply.value
