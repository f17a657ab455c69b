"""Where breaker and limiter state lives: one process, or every process of the machine.

A guard's pure logic is a function of its state record; a ``StateStore`` runs that function
atomically (``update``) on the record of a key. Two stores:

- ``LocalStateStore``: a dict under a thread lock (tests, embedded use, one process);
- ``SharedStateStore``: records in a ``shm.guard_state.GuardStateTable`` segment, so that a
  breaker opened by one agent is open in all (the next ``update`` anywhere sees it) and one
  token bucket serves every agent on the machine.

Wiring (for the runtime, later): the daemon root creates one ``GuardStateTable`` per run
(``GuardStateTable.create(run, manifest=...)``, so it is swept with the run's other segments)
and hands its name to the agents; each agent process attaches it once and builds its
``Guards`` over ``SharedStateStore(table)``.

The record is encoded by a ``Codec`` (fixed layout, ``struct``). A record written by a guard
configured differently (its length or kind tag does not match) is treated as new: the first
configuration to write wins until the record is reset, which is what a restart with a new
agora.toml does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from shm.guard_state import GuardStateTable

__all__ = ["Codec", "StateStore", "LocalStateStore", "SharedStateStore"]

S = TypeVar("S")
R = TypeVar("R")


class Codec(Protocol[S]):
    """How one kind of state record is made, encoded and decoded."""

    def new(self) -> S: ...
    def pack(self, state: S) -> bytes: ...
    def unpack(self, data: bytes) -> S | None: ...  # None: not a record of this codec


class StateStore(Protocol):
    """Runs ``fn`` on the record of ``key`` atomically with respect to every other user."""

    def update(self, key: str, codec: Codec[S], fn: Callable[[S], R]) -> R: ...


class LocalStateStore:
    """Records as Python objects in this process (no encoding)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, object] = {}

    def update(self, key: str, codec: Codec[S], fn: Callable[[S], R]) -> R:
        with self._lock:
            state = self._records.get(key)
            if state is None:
                state = self._records[key] = codec.new()
            return fn(state)  # type: ignore[arg-type]  # one codec per key, by construction


class SharedStateStore(Generic[S]):
    """Records in a shared-memory table: machine-wide state (see ``shm.guard_state``)."""

    def __init__(self, table: GuardStateTable) -> None:
        self.table = table

    def update(self, key: str, codec: Codec[S], fn: Callable[[S], R]) -> R:
        with self.table.record(key) as view:
            state = codec.unpack(GuardStateTable.read(view))
            if state is None:
                state = codec.new()
            result = fn(state)
            GuardStateTable.write(view, codec.pack(state))
            return result
