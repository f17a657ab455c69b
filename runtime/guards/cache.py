"""Result cache: TTL, a size bound (least recently used goes first) and in-flight de-duplication.

``begin(key)`` says what the caller should do:

- ``Hit(value)``: a fresh cached result, return it;
- ``Join(future)``: the same call is running (started by another thread or task of this
  process): wait for its ``concurrent.futures.Future`` (sync ``result(timeout)``, async
  ``asyncio.wrap_future``) instead of calling again;
- ``Lead(future)``: nobody is computing it: call, then ``finish`` or ``fail``.

Decisions:
- Errors are not cached, but the callers who joined a flight get the leader's error (one
  failing call does not turn into N).
- ``ttl_s`` counts from the moment the result arrived; ``ttl_s = 0`` disables the cache
  (in-flight de-duplication included: a service that disables caching wants every call made).
- This cache and its flights are per process (results are arbitrary Python objects); a
  ``Service`` given a ``flights_dir`` (every agent of a daemon is) also shares answers
  across the agent processes of the machine once this cache says this process leads: a
  stored answer (runtime.guards.shared_cache), else an identical call in flight
  (runtime.guards.flights).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidInput

__all__ = ["ResultCache", "Hit", "Join", "Lead"]


@dataclass(frozen=True)
class Hit:
    value: Any


@dataclass(frozen=True)
class Join:
    future: Future


@dataclass(frozen=True)
class Lead:
    future: Future


class ResultCache:
    """Values by key with a TTL on the monotonic ``clock`` and at most ``size`` entries."""

    def __init__(self, *, ttl_s: float, size: int, clock: Callable[[], float]) -> None:
        if not (isinstance(ttl_s, (int, float)) and ttl_s >= 0):
            raise InvalidInput(f"cache ttl_s must be a number >= 0, got {ttl_s!r}", hint="0 disables the cache")
        if not (isinstance(size, int) and size >= 1):
            raise InvalidInput(f"cache size must be an int >= 1, got {size!r}")
        self.ttl_s, self.size, self.clock = ttl_s, size, clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[Any, tuple[Any, float]] = OrderedDict()
        self._flights: dict[Any, Future] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def begin(self, key: Any) -> Hit | Join | Lead:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                value, expires = entry
                if self.clock() < expires:
                    self._entries.move_to_end(key)
                    return Hit(value)
                del self._entries[key]
            flight = self._flights.get(key)
            if flight is not None:
                return Join(flight)
            flight = self._flights[key] = Future()
            flight.set_running_or_notify_cancel()
            return Lead(flight)

    def finish(self, key: Any, lead: Lead, value: Any) -> None:
        """Store the leader's result and hand it to the callers who joined."""
        with self._lock:
            self._entries[key] = (value, self.clock() + self.ttl_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            self._drop_flight(key, lead)
        lead.future.set_result(value)

    def fail(self, key: Any, lead: Lead, exc: BaseException) -> None:
        """Nothing stored; the joined callers get ``exc``."""
        with self._lock:
            self._drop_flight(key, lead)
        lead.future.set_exception(exc)

    def _drop_flight(self, key: Any, lead: Lead) -> None:
        if self._flights.get(key) is lead.future:
            del self._flights[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
