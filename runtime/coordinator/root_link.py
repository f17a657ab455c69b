"""The coordinator's line to the root process (trusted, tree-internal): ``tree`` for
``status``/``ps``/``top``, ``shutdown`` for ``down``.
"""

from __future__ import annotations

import time
from typing import Any

from runtime.errors import Unavailable, from_wire
from runtime.wire.protocol import recv_frame, send_frame

__all__ = ["RootLink"]


class RootLink:
    """The coordinator's blocking line to the root process (trusted, tree-internal)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: Any = None
        self._rid = 0

    def call(self, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
        import socket
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(self.path)
        self._rid += 1
        deadline = time.monotonic() + timeout
        try:
            send_frame(self._sock, {"v": 1, "id": self._rid, "cmd": cmd, "args": args}, deadline)
            reply = recv_frame(self._sock, deadline)
        except OSError as e:
            self._sock.close()
            self._sock = None
            raise Unavailable(f"the root supervisor did not answer {cmd!r}: {e}") from e
        if reply is None or "error" in reply:
            raise from_wire((reply or {}).get("error") or {"code": Unavailable.code, "message": "root closed"})
        return reply["ok"]
