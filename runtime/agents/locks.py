"""Locks as an agent's code sees them: ``task.lock(name)`` and ``ctx.lock(name)``.

::

    @capability("append")
    def append(self, input, task):
        with task.lock("ledger-file", ttl=10) as held:   # held by this attempt
            write(input, fence=held.token)

A lock is held by the task attempt that took it (``task.lock``: released by the
coordinator when the attempt ends, however it ends, even if the handler raised or its
agent died) or by the agent (``ctx.lock``: released when the agent dies).  Leaving the
``with`` block releases it either way.  ``held.token`` is the fencing token: it only ever
grows for a lock, across coordinator restarts too (coordination.services.primitives).

The coordinator answers a waiter by ``timeout``; the call itself waits ``timeout`` plus a
margin, so a grant never arrives at an agent that stopped waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HeldLock", "acquire_lock"]

CALL_MARGIN_S = 5.0  # the coordinator's own wait timeout always answers first


class HeldLock:
    """A granted lock: ``token``, ``renew()``, ``check()``, ``release()`` (idempotent)."""

    def __init__(self, call: Callable[..., Any], name: str, owner: dict[str, Any],
                 granted: dict[str, Any]) -> None:
        self._call, self.name, self._owner = call, name, owner
        self.token: int = granted["token"]
        self.ttl: float = granted["ttl"]
        self.released = False

    def _args(self, **more: Any) -> dict[str, Any]:
        return {"name": self.name, "token": self.token, **self._owner, **more}

    def renew(self, ttl: float | None = None) -> None:
        """Extend the lease from now (StaleFence if it was lost meanwhile)."""
        self._call("lock.renew", self._args(**({} if ttl is None else {"ttl": ttl})))

    def check(self) -> bool:
        """True while this grant is the lock's current, unexpired one."""
        return bool(self._call("lock.check", self._args()))

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._call("lock.release", self._args())

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_lock(call: Callable[..., Any], name: str, *, ttl: float = 30.0, timeout: float = 10.0,
                 task: dict[str, Any] | None = None) -> HeldLock:
    """Wait up to ``timeout`` s for lock ``name``; held for ``ttl`` s unless renewed."""
    owner = {} if task is None else {"task": task}
    granted = call("lock.acquire", {"name": name, "ttl": ttl, "timeout": timeout, **owner},
                   timeout=timeout + CALL_MARGIN_S)
    return HeldLock(call, name, owner, granted)
