"""Call timeouts: a ``Deadline`` on an injected clock, and the sync and async ways to apply it.

- **async**: ``asyncio.timeout`` cancels the awaited call at the deadline (``run_async``).
- **sync**: Python cannot interrupt a running sync function, so the deadline is *published*
  (``current_deadline()``, a context variable) for the call to honour, as the httpx transport
  does by lowering the request's own timeouts to what remains; a sync call that still returns
  late raises ``CallTimeout`` and its late result is dropped, so the caller's bound holds
  and the breaker counts the slow attempt as a failure.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import CallTimeout

__all__ = ["Deadline", "current_deadline", "run_sync", "run_async"]

T = TypeVar("T")
_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("agora_guard_deadline", default=None)


class Deadline:
    """An absolute moment on ``clock`` (a monotonic ``() -> float``)."""

    def __init__(self, clock: Callable[[], float], timeout_s: float, what: str = "call") -> None:
        self.clock = clock
        self.timeout_s = timeout_s
        self.at = clock() + timeout_s
        self.what = what

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.at

    def error(self) -> CallTimeout:
        return CallTimeout(f"{self.what} took longer than its timeout of {self.timeout_s:g} s",
                           timeout_s=self.timeout_s)


def current_deadline() -> Deadline | None:
    """The deadline of the guarded call running in this context (thread or task), if any."""
    return _current.get()


def run_sync(fn: Callable[[], T], deadline: Deadline | None) -> T:
    """Run ``fn`` with ``deadline`` published; raise ``CallTimeout`` if it came back late."""
    if deadline is None:
        return fn()
    token = _current.set(deadline)
    try:
        result = fn()
    finally:
        _current.reset(token)
    if deadline.expired():
        raise deadline.error()
    return result


async def run_async(fn: Callable[[], Awaitable[T]], deadline: Deadline | None) -> T:
    """Await ``fn()`` cancelled at ``deadline`` (``asyncio.timeout``); a timeout is ``CallTimeout``."""
    if deadline is None:
        return await fn()
    token = _current.set(deadline)
    scope = asyncio.timeout(deadline.remaining())
    try:
        async with scope:
            return await fn()
    except TimeoutError as e:
        if not scope.expired():
            raise  # the call's own TimeoutError, not our deadline: keep it as it is
        raise deadline.error() from e
    finally:
        _current.reset(token)
