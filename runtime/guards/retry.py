"""Retry policy: full-jitter exponential backoff that honours ``Retry-After``.

Pure: the caller supplies the attempt number, the error and (for HTTP dates) the wall clock;
the policy says how long to wait or that it is time to give up.

Decisions:
- Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): the delay before retry
  ``k`` is uniform in ``[0, min(cap_s, base_s * 2**(k-1))]``; it spreads a herd of callers best.
- A ``Retry-After`` the service sent is a floor: the delay is ``max(retry_after, jitter)``. A
  ``Retry-After`` above ``max_retry_after_s`` (default 60 s) gives up at once: waiting that long
  inside one call is worse than failing and letting the task be retried later.
- Only errors ``is_retryable`` accepts are retried (see ``errors``); ``CircuitOpen`` never is.
- ``Retry-After`` is parsed as delta-seconds (decimals accepted, for fake services that run
  faster than real time) or as an HTTP-date; anything else is ignored (None).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from runtime.bounds import MAX_WAIT_S, check_number

from .errors import is_retryable, retry_after_of

__all__ = ["RetryPolicy", "parse_retry_after"]


@dataclass
class RetryPolicy:
    """``max_attempts`` counts the first try (1 = no retry)."""

    max_attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 5.0
    max_retry_after_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)
    retryable: Callable[[BaseException], bool] = is_retryable

    def __post_init__(self) -> None:
        check_number("retry max_attempts", self.max_attempts, 1, 1000, integer=True,
                     hint="retries = 0 means one attempt; retries = 2 means three")
        for name in ("base_s", "cap_s", "max_retry_after_s"):
            check_number(f"retry {name}", getattr(self, name), 0, MAX_WAIT_S)

    def backoff(self, attempt: int) -> float:
        """Full-jitter delay after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** (attempt - 1)))
        return self.rng.uniform(0.0, ceiling)

    def next_delay(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; None means give up and raise ``exc``."""
        if attempt >= self.max_attempts or not self.retryable(exc):
            return None
        floor = retry_after_of(exc)
        if floor is not None and floor > self.max_retry_after_s:
            return None
        jitter = self.backoff(attempt)
        return jitter if floor is None else max(floor, jitter)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds from ``now_wall`` (a time.time() value) that a ``Retry-After`` header asks for."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        return _from_http_date(text, now_wall)
    return seconds if seconds >= 0 and seconds == seconds else None  # NaN != NaN


def _from_http_date(text: str, now_wall: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None  # RFC 9110 dates are GMT; a date without a zone is not one of them
    return max(0.0, when.timestamp() - now_wall)
