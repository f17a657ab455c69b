"""The in-process registry: :class:`Shard`, the pure store every backend keeps its truth
in, and :class:`LocalBackend`, a Shard behind a lock for tests and embedding.

A Shard is a dict ``key -> Entry`` plus two indexes kept in step with it:
``capability -> set of keys`` (so "who offers X" touches only X's entries) and
``owner pid -> set of keys`` (so an owner's death removes its entries without a scan).
It does no I/O and knows nothing of processes: the partition process
(``runtime.registry._partition``) wraps the same Shard and adds the shared table and
owner-liveness watching.  Every mutation returns what changed, so a wrapper can publish it.

LocalBackend checks that an owner is running when it registers (``/proc``), but nothing
watches owners afterwards: whoever embeds it calls ``remove_owner(pid)`` on a death (the
partitioned backend watches by itself).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runtime.errors import AgoraError, Conflict, InvalidInput, NotFound
from runtime.registry.model import (
    Entry,
    EntryLike,
    Predicate,
    check_key,
    check_owner,
    check_query,
    check_size,
    copy_entry,
    entry_fields,
    matches,
    merge_patch,
    order_and_limit,
    parse_filters,
    pid_alive,
)

__all__ = ["Shard", "LocalBackend"]


class Shard:
    """The entries of one registry shard and their indexes.  Not thread-safe; pure."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self.by_capability: dict[str, set[str]] = {}
        self.by_owner: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def register(self, key: str, caps: list[str], meta: dict[str, Any], owner: int
                 ) -> tuple[Entry, bytes]:
        """Insert or (same owner) replace; returns the committed entry and its encoding."""
        old = self.entries.get(key)
        if old is not None and old.owner != owner:
            raise Conflict(f"key {key!r} is registered by pid {old.owner}, not by pid {owner}",
                           hint="unregister it first, or register under another key")
        entry = Entry(key, caps, meta, old.version + 1 if old else 1, owner)
        data = check_size(entry)
        if old is not None:
            self._unindex(old)
        self._index(entry)
        return entry, data

    def load(self, entry: Entry) -> None:
        """Put back an entry recovered from a shared table (version kept)."""
        if entry.key in self.entries:
            self._unindex(self.entries[entry.key])
        self._index(entry)

    def unregister(self, key: str) -> Entry | None:
        old = self.entries.get(key)
        if old is not None:
            self._unindex(old)
        return old

    def update(self, key: str, patch: Mapping[str, Any], expected: int | None
               ) -> tuple[Entry, bytes]:
        old = self.entries.get(key)
        if old is None:
            raise NotFound(f"no registry entry for key {key!r}",
                           hint="it was never registered, was unregistered, or its owner died")
        if expected is not None and expected != old.version:
            raise Conflict(f"key {key!r} is at version {old.version}, not {expected}")
        entry = Entry(key, old.capabilities, merge_patch(old.metadata, patch), old.version + 1,
                      old.owner)
        data = check_size(entry)
        self.entries[key] = entry  # capabilities and owner unchanged: indexes stay valid
        return entry, data

    def remove_owner(self, pid: int) -> list[str]:
        keys = sorted(self.by_owner.get(pid, ()))
        for k in keys:
            self._unindex(self.entries[k])
        return keys

    def clear(self) -> list[str]:
        keys = sorted(self.entries)
        self.entries.clear()
        self.by_capability.clear()
        self.by_owner.clear()
        return keys

    def select(self, capability: str | None, where: Sequence[Predicate]) -> list[Entry]:
        """Matching entries, unordered; uses the capability index when one is named."""
        if capability is None:
            candidates: Iterable[Entry] = self.entries.values()
        else:
            candidates = (self.entries[k] for k in self.by_capability.get(capability, ()))
        return [e for e in candidates if matches(e, None, where)]

    def _index(self, e: Entry) -> None:
        self.entries[e.key] = e
        for c in e.capabilities:
            self.by_capability.setdefault(c, set()).add(e.key)
        self.by_owner.setdefault(e.owner, set()).add(e.key)

    def _unindex(self, e: Entry) -> None:
        del self.entries[e.key]
        for c in e.capabilities:
            _discard(self.by_capability, c, e.key)
        _discard(self.by_owner, e.owner, e.key)


def _discard(index: dict[Any, set[str]], name: Any, key: str) -> None:
    keys = index.get(name)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[name]


def validate_registration(key: str, entry: EntryLike, owner_pid: int
                          ) -> tuple[str, list[str], dict[str, Any], int]:
    """Checked (key, capabilities, metadata, owner) or ``InvalidInput``; shared by backends."""
    caps, meta = entry_fields(entry)
    return check_key(key), caps, meta, check_owner(owner_pid)


def owner_not_running(pid: int) -> InvalidInput:
    return InvalidInput(f"owner pid {pid} is not a running process",
                        hint="register on behalf of a live process (usually os.getpid())")


class LocalBackend:
    """An in-process registry (tests, embedding).  Thread-safe; entries returned are copies."""

    def __init__(self) -> None:
        self._shard = Shard()
        self._lock = threading.Lock()

    def register(self, key: str, entry: EntryLike, owner_pid: int) -> Entry:
        key, caps, meta, owner = validate_registration(key, entry, owner_pid)
        if not pid_alive(owner):
            raise owner_not_running(owner)
        with self._lock:
            return copy_entry(self._shard.register(key, caps, meta, owner)[0])

    def register_many(self, items: Iterable[tuple[str, EntryLike, int]]
                      ) -> list[Entry | AgoraError]:
        out: list[Entry | AgoraError] = []
        for key, entry, owner in items:
            try:
                out.append(self.register(key, entry, owner))
            except AgoraError as exc:
                out.append(exc)
        return out

    def unregister(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            return self._shard.unregister(key) is not None

    def lookup(self, key: str) -> Entry | None:
        check_key(key)
        with self._lock:
            e = self._shard.entries.get(key)
            return copy_entry(e) if e is not None else None

    def update(self, key: str, metadata_patch: Mapping[str, Any],
               expected_version: int | None = None) -> Entry:
        check_key(key)
        with self._lock:
            return copy_entry(self._shard.update(key, metadata_patch, expected_version)[0])

    def select(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
               order_by: str | None = None, limit: int | None = None) -> list[Entry]:
        preds = parse_filters(where)
        check_query(order_by, limit)
        with self._lock:
            found = [copy_entry(e) for e in self._shard.select(capability, preds)]
        return order_and_limit(found, order_by, limit)

    def count(self, capability: str | None = None, where: Iterable[Predicate | str] = ()) -> int:
        preds = parse_filters(where)
        with self._lock:
            return len(self._shard.select(capability, preds))

    def list(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
             limit: int | None = None) -> list[str]:
        return [e.key for e in self.select(capability, where, None, limit)]

    def remove_owner(self, pid: int) -> int:
        check_owner(pid)
        with self._lock:
            return len(self._shard.remove_owner(pid))

    def clear(self) -> int:
        with self._lock:
            return len(self._shard.clear())

    def close(self) -> None:
        """Nothing to release; present for the Backend protocol."""
