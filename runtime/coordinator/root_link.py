"""The coordinator's line to the root process (trusted, tree-internal): ``tree`` for
``status``/``ps``/``top``, ``shutdown`` for ``down``.

Two ways to call, because the loop must never wait on the root (issue 15, item 4: the
root forks agents one after the other, and a ``status`` during a fork storm held the
loop for as long as the storm lasted, up to the 30 s timeout):

* ``request(cmd, args, on_done)`` -- asynchronous, for the loop.  The request goes out on
  a socket of its own registered in the coordinator's selector (``attach``); the reply
  comes back on a later turn as ``on_done(result, None)`` or ``on_done(None, error)``
  (an ``AgoraError``: the root's typed error, or UNAVAILABLE when the root closed the line
  or did not answer within the timeout).  Requests are pipelined; the root answers them
  in order, each by id, and a reply that comes after its request timed out is dropped.
* ``call(cmd, **args)`` -- blocking, bounded by ``timeout``: for threads off the loop
  (the scaler's ``RootActions``) and for the shutdown path (``down``), where waiting is
  what the caller asked for.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

from runtime.errors import AgoraError, Unavailable, from_wire
from runtime.wire.protocol import recv_frame, send_frame

__all__ = ["RootLink", "ROOT_TIMEOUT_S"]

ROOT_TIMEOUT_S = 30.0  # the root answers from memory; only a wedged root takes this long

#: ``on_done(result, error)``: exactly one of them is None.
OnDone = Callable[[Any, "AgoraError | None"], None]


class RootLink:
    """The coordinator's line to the root process (trusted, tree-internal)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: Any = None
        self._rid = 0
        # the asynchronous side (attach): its own socket, a Conn of the loop's selector
        self._open: Callable[[socket.socket], Any] | None = None
        self._close: Callable[[Any], None] | None = None
        self._call_later: Callable[[float, Callable[[], None]], None] | None = None
        self._conn: Any = None
        self._pending: dict[int, tuple[str, OnDone]] = {}
        self._ids = itertools.count(1)

    def _frame(self, rid: int, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """One request frame (both ways of calling build it here)."""
        return {"v": 1, "id": rid, "cmd": cmd, "args": args}

    # -- blocking -----------------------------------------------------------------------

    def call(self, cmd: str, timeout: float = ROOT_TIMEOUT_S, **args: Any) -> Any:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(self.path)
        self._rid += 1
        deadline = time.monotonic() + timeout
        try:
            send_frame(self._sock, self._frame(self._rid, cmd, args), deadline)
            reply = recv_frame(self._sock, deadline)
        except OSError as e:
            self._sock.close()
            self._sock = None
            raise Unavailable(f"the root supervisor did not answer {cmd!r}: {e}") from e
        if reply is None or "error" in reply:
            raise from_wire((reply or {}).get("error") or {"code": Unavailable.code, "message": "root closed"})
        return reply["ok"]

    # -- asynchronous (the loop) --------------------------------------------------------

    def attach(self, open_conn: Callable[[socket.socket], Any], close_conn: Callable[[Any], None],
               call_later: Callable[[float, Callable[[], None]], None]) -> None:
        """The loop's part: ``open_conn(sock)`` wraps a connected socket in a Conn and
        registers it (its readable events come back as ``on_readable(conn)``),
        ``close_conn(conn)`` unregisters and closes it, ``call_later`` times requests out."""
        self._open, self._close, self._call_later = open_conn, close_conn, call_later

    def request(self, cmd: str, args: dict[str, Any], on_done: OnDone,
                timeout: float = ROOT_TIMEOUT_S) -> None:
        """Send ``cmd`` now; ``on_done`` runs on a later turn (at once if the root cannot
        be reached at all)."""
        if self._open is None or self._call_later is None:
            raise RuntimeError("RootLink.request before attach (the coordinator attaches it at start)")
        try:
            conn = self._connected()
        except OSError as e:
            on_done(None, Unavailable(f"cannot reach the root supervisor at {self.path} for {cmd!r}: {e}",
                                      hint="the daemon may be stopping; retry"))
            return
        rid = next(self._ids)
        self._pending[rid] = (cmd, on_done)
        self._call_later(timeout, lambda: self._expire(rid, timeout))
        conn.send(self._frame(rid, cmd, args))

    def _connected(self) -> Any:
        if self._conn is None or self._conn.closed:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)  # a full backlog is an error now, never a wait
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            assert self._open is not None
            self._conn = self._open(sock)
        return self._conn

    def on_readable(self, conn: Any) -> None:
        """Replies that arrived; EOF (or bytes that are no frame) fails every request."""
        try:
            frames = conn.read_frames()
        except AgoraError:
            frames = None
        if frames is None:
            self._broken(conn)
            return
        for reply in frames:
            self._answer(reply)

    def _answer(self, reply: Any) -> None:
        entry = self._pending.pop(reply.get("id"), None) if isinstance(reply, dict) else None
        if entry is None:
            return  # its request timed out already: its caller has its error
        if "error" in reply:
            entry[1](None, from_wire(reply["error"]))
        else:
            entry[1](reply.get("ok"), None)

    def _expire(self, rid: int, timeout: float) -> None:
        entry = self._pending.pop(rid, None)
        if entry is not None:
            entry[1](None, Unavailable(f"the root supervisor did not answer {entry[0]!r} within {timeout:g} s",
                                       hint="it may be wedged: `agora ps` from another shell, "
                                            "or stop the daemon (`agora down`)"))

    def _broken(self, conn: Any) -> None:
        if self._close is not None:
            self._close(conn)
        if self._conn is conn:
            self._conn = None
        pending, self._pending = self._pending, {}
        for cmd, on_done in pending.values():
            on_done(None, Unavailable(f"the root supervisor closed its line during {cmd!r}",
                                      hint="the daemon may be stopping; retry"))
