"""The errors a guard raises, placed in ``runtime.errors``' hierarchy so the wire codes hold.

``retryable`` says whether the guard's own retry loop may try again; ``retry_after`` (seconds,
or None) is the earliest useful moment, taken from the service or from the breaker.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable

__all__ = ["CircuitOpen", "CallTimeout", "Throttled", "ServiceError", "is_retryable", "retry_after_of"]


class CircuitOpen(Unavailable):
    """The breaker refuses the call: the service failed too often just now.

    Not retried by the guard itself (failing fast is the breaker's point); a task-level retry
    after ``retry_after`` may succeed.
    """

    code = "CIRCUIT_OPEN"
    retryable = False

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        kw.setdefault("hint", "the service is failing; retry after the breaker's open time, or check the service")
        super().__init__(message, **kw)
        self.retry_after = retry_after


class CallTimeout(DeadlineExceeded):
    """One attempt ran past the service's ``timeout_s``; retryable (a slow attempt may be a blip)."""

    code = "CALL_TIMEOUT"
    retryable = True
    retry_after: float | None = None
    default_hint = "raise [services.<name>].timeout_s if the service is legitimately slow"


class Throttled(ResourceExhausted):
    """The rate limiter would make the caller wait longer than it allows (``max_wait``)."""

    code = "THROTTLED"
    retryable = False

    def __init__(self, message: str, *, retry_after: float, **kw: Any) -> None:
        kw.setdefault("hint", "lower the call rate, raise [services.<name>].rate / tokens_per_s, or wait longer")
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServiceError(Unavailable):
    """A failed answer of the service itself (e.g. an HTTP 5xx or 429), marked retryable or not."""

    code = "SERVICE_ERROR"

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


def is_retryable(exc: BaseException) -> bool:
    """An explicit ``retryable`` attribute decides; else transient kinds of error are retryable.

    Transient: ``Unavailable``, ``TimeoutError`` and ``ConnectionError`` (the standard library's
    own markers of "try again"); everything else (bad input, bugs) is not.
    """
    marked = getattr(exc, "retryable", None)
    if isinstance(marked, bool):
        return marked
    return isinstance(exc, (Unavailable, TimeoutError, ConnectionError))


def retry_after_of(exc: BaseException) -> float | None:
    """The ``retry_after`` seconds an error carries, None if it carries none."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None
