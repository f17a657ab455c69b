"""PartitionedBackend: the registry as seen from any process of the tree.

* **Reads** (``lookup``, ``select``, ``count``, ``list``) come from the partitions' shared
  tables: no round trip, no partition CPU.  A slot that stays mid-write through the
  table's bounded retries falls back to asking the owning partition.  While a partition
  is down its table still answers with the last committed state (owners that die during
  the outage are removed when it restarts).  ``fast_reads=False`` (or no tables) sends
  every read to the partitions instead (benchmarks, processes without the tables).
* **Writes** go to the key's owning partition (``crc32(key) % N``) over a lazily opened
  Unix stream connection, one per partition per process (a fork child opens its own:
  an inherited stream would interleave with the parent's).  A connection whose partition
  restarted fails on send with EPIPE/ECONNRESET before anything was delivered; it is
  reopened and the request sent once more.  A partition that is down, or silent past
  the deadline, gives ``Unavailable`` (retryable), never a hang: the deadline is
  ``timeout`` (default 0.25 s) plus 100 us per item of a batch.
* **Round trips**: ``register``/``update``/``unregister`` cost one round trip each;
  ``register_many`` groups its items by partition, sends one frame to every partition
  involved before reading any reply, so a batch costs one round trip *in parallel* to
  each partition involved; ``remove_owner``/``clear``/``select`` over RPC likewise.
* **Validation of a batch** (decision): ``register_many`` checks here only what routing
  and the wire need (key, owner, the entry's two fields and no unknown ones) and leaves
  the entry's contents to the partition, which must check them anyway and answers a bad
  item alone.  A partition's batch that does not encode as JSON, or encodes larger than
  its items may be, is checked item by item here first, so a bad item still fails alone
  and never takes its neighbours' frame down.  Checking every item on both sides was
  about 40% of a client's CPU per registration; without it N=4 partitions with 2 clients
  went from 0.91x to 1.04x N=1 (perf/registry.py's workload, 20 interleaved runs).
  ``register`` still checks before its round trip.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from zlib import crc32

import orjson

from runtime.errors import AgoraError, BrokenError, InvalidInput, Unavailable, from_wire
from runtime.registry._local import validate_registration
from runtime.registry._partition import frame
from runtime.registry.model import (
    ENTRY_FIELDS,
    MAX_ENTRY_BYTES,
    MAX_KEY_BYTES,
    Entry,
    EntryLike,
    Predicate,
    check_key,
    check_owner,
    check_query,
    check_size,
    matches,
    order_and_limit,
    parse_filters,
)
from runtime.registry.partitioning import key_hash
from runtime.registry.table import TableReader, TornRead
from runtime.wire.buffers import RECV_BYTES
from runtime.wire.spin import spin_until_readable

__all__ = ["PartitionedBackend"]

_LEN = struct.Struct(">I")
_PER_ITEM_S = 100e-6
SPIN_US = 100.0  # how long a caller spins for a reply before it sleeps in poll()
_RESENDABLE = (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN)


class _Link:
    """One process's connection to one partition.

    The socket is non-blocking.  A reply is first waited for by spinning for up to
    ``spin_s`` (``runtime.wire.spin``), then by ``poll`` until the deadline: a registry reply
    usually arrives within tens of microseconds, and on a virtual machine waking a
    sleeping process costs about as much again.
    """

    def __init__(self, index: int, path: str, timeout: float, spin_s: float) -> None:
        self.index, self.path, self.spin_s = index, path, spin_s
        self.buf = bytearray()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError as exc:
            self.sock.close()
            raise self.unavailable(f"cannot connect: {exc.strerror or exc}") from exc
        self.sock.setblocking(False)

    def unavailable(self, why: str) -> Unavailable:
        return Unavailable(f"registry partition {self.index} ({self.path}) is unavailable: {why}",
                           hint="retryable: the partition is down or restarting; the supervisor "
                                "restarts it, try again shortly")

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes, deadline: float) -> None:
        """All of ``data``; ``OSError`` from the socket, ``Unavailable`` past the deadline."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                self._wait(select.POLLOUT, deadline)

    def recv_reply(self, deadline: float) -> list[Any]:
        """The next reply frame, decoded; ``Unavailable`` on EOF or past the deadline."""
        while True:
            if len(self.buf) >= 4:
                size = _LEN.unpack_from(self.buf)[0]
                if len(self.buf) >= 4 + size:
                    body = bytes(self.buf[4: 4 + size])
                    del self.buf[: 4 + size]
                    return orjson.loads(body)  # type: ignore[no-any-return]
            if time.monotonic() > deadline:  # (a reply trickling in forever)
                raise self.unavailable("no reply before the deadline")
            self._fill(deadline)

    def _fill(self, deadline: float) -> None:
        spun = False
        while True:
            try:
                chunk = self.sock.recv(RECV_BYTES)
                break
            except BlockingIOError:
                if spun or not spin_until_readable(self.sock, self.spin_s):
                    self._wait(select.POLLIN, deadline)
                spun = True
            except OSError as exc:
                raise self.unavailable(f"connection failed: {exc.strerror or exc}") from exc
        if not chunk:
            raise self.unavailable("the partition closed the connection (it died?)")
        self.buf += chunk

    def _wait(self, event: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(self.sock, event)
        if left <= 0 or not poller.poll(left * 1000):
            raise self.unavailable("no reply before the deadline")


class PartitionedBackend:
    """Client of N partition processes; see the module docstring."""

    def __init__(self, sock_paths: Sequence[str | os.PathLike[str]],
                 tables: Sequence[Any] | None = None, *, timeout: float = 0.25,
                 fast_reads: bool = True, spin_us: float = SPIN_US) -> None:
        if not sock_paths:
            raise InvalidInput("expected at least one partition socket path, got none")
        if tables is not None and len(tables) != len(sock_paths):
            raise InvalidInput(f"got {len(tables)} tables for {len(sock_paths)} partitions",
                               hint="pass one table per partition, in partition order")
        self._paths = [os.fspath(p) for p in sock_paths]
        self._n = len(self._paths)
        self._readers = [TableReader(t) for t in tables] if tables is not None else None
        self._fast = fast_reads and self._readers is not None
        self._timeout = timeout
        self._spin_s = max(0.0, spin_us) * 1e-6
        self._links: dict[int, _Link] = {}
        self._pid = os.getpid()
        self._rid = 0

    # ------------------------------------------------------------------ writes
    def register(self, key: str, entry: EntryLike, owner_pid: int) -> Entry:
        key, caps, meta, owner = _validated(key, entry, owner_pid)
        return Entry(*self._call(key_hash(key) % self._n, "register", key, caps, meta, owner))

    def register_many(self, items: Iterable[tuple[str, EntryLike, int]]
                      ) -> list[Entry | AgoraError]:
        out: list[Entry | AgoraError | None] = []
        batches: dict[int, list[tuple[int, list[Any]]]] = {}
        for key, entry, owner in items:
            try:
                key, caps, meta, owner = _routed(key, entry, owner)
            except AgoraError as exc:
                out.append(exc)
                continue
            batches.setdefault(key_hash(key) % self._n, []).append(
                (len(out), [key, caps, meta, owner]))
            out.append(None)
        requests: dict[int, list[Any]] = {}
        for p, batch in list(batches.items()):
            encoded = _encoded_within_slots(batch)
            if encoded is None:
                batches[p] = batch = _checked(batch, out)
                if not batch:
                    del batches[p]
                    continue
                encoded = orjson.dumps([item for _, item in batch])
            requests[p] = [b'"register_many",' + encoded]  # the frame's tail, encoded once
        for p, replies in self._exchange_each(requests, len(out)).items():
            for (pos, _), answer in zip(batches[p], _per_item(replies, len(batches[p]))):
                out[pos] = answer
        return out  # type: ignore[return-value]

    def unregister(self, key: str) -> bool:
        return bool(self._call(key_hash(check_key(key)) % self._n, "unregister", key))

    def update(self, key: str, metadata_patch: Mapping[str, Any],
               expected_version: int | None = None) -> Entry:
        if not isinstance(metadata_patch, Mapping):
            raise InvalidInput(f"metadata patch must be a mapping, got {metadata_patch!r}")
        p = key_hash(check_key(key)) % self._n
        return Entry(*self._call(p, "update", key, dict(metadata_patch), expected_version))

    def remove_owner(self, pid: int) -> int:
        return sum(self._call_all("remove_owner", check_owner(pid)))

    def clear(self) -> int:
        return sum(self._call_all("clear"))

    # ------------------------------------------------------------------ reads
    def lookup(self, key: str) -> Entry | None:
        if type(key) is not str or not key or len(key) > 32:  # <= 32 chars: <= 128 bytes
            check_key(key)
        h = crc32(key.encode())  # key_hash, inlined: this is the hot path
        p = h % self._n
        if self._fast:
            try:
                return self._readers[p].lookup(key, h)  # type: ignore[index]
            except TornRead:
                pass  # the slot stayed mid-write: ask the partition, which serialises writes
        found = self._call(p, "lookup", key)
        return None if found is None else Entry(*found)

    def select(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
               order_by: str | None = None, limit: int | None = None) -> list[Entry]:
        preds = parse_filters(where)
        check_query(order_by, limit)
        if self._fast:
            found = [e for r in self._readers for e in r.scan(capability)  # type: ignore[union-attr]
                     if matches(e, None, preds)]
        else:
            wire = [p.to_wire() for p in preds]
            parts = self._call_all("select", capability, wire, order_by, limit)
            found = [Entry(*e) for part in parts for e in part]
        return order_and_limit(found, order_by, limit)

    def count(self, capability: str | None = None, where: Iterable[Predicate | str] = ()) -> int:
        return len(self.select(capability, where))

    def list(self, capability: str | None = None, where: Iterable[Predicate | str] = (),
             limit: int | None = None) -> list[str]:
        return [e.key for e in self.select(capability, where, None, limit)]

    def ping(self, index: int) -> list[int]:
        """[index, entries] of one partition: a round trip that proves it is serving."""
        return self._call(index, "ping")  # type: ignore[no-any-return]

    def close(self) -> None:
        for link in self._links.values():
            link.close()
        self._links.clear()
        for r in self._readers or ():
            r.close()

    def __enter__(self) -> PartitionedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ round trips
    def _call(self, p: int, op: str, *args: Any) -> Any:
        return self._exchange({p: [[op, *args]]})[p][0]

    def _call_all(self, op: str, *args: Any) -> list[Any]:
        replies = self._exchange({p: [[op, *args]] for p in range(self._n)})
        return [replies[p][0] for p in range(self._n)]

    def _exchange(self, requests: dict[int, list[list[Any]]], items: int = 1
                  ) -> dict[int, list[Any]]:
        """Results of every request, pipelined; raises the first error (Unavailable too)."""
        out = {}
        for p, replies in self._exchange_each(requests, items).items():
            if isinstance(replies, AgoraError):
                raise replies
            for flag, value in replies:
                if flag:
                    raise from_wire(value)
            out[p] = [v for _, v in replies]
        return out

    def _exchange_each(self, requests: dict[int, list[Any]], items: int
                       ) -> dict[int, list[tuple[int, Any]] | AgoraError]:
        """Send every partition its requests, then read every reply: per partition the
        (flag, value) replies, or the error that made that partition unreachable."""
        deadline = time.monotonic() + self._timeout + _PER_ITEM_S * items
        out: dict[int, list[tuple[int, Any]] | AgoraError] = {}
        sent = {}
        for p, reqs in requests.items():
            try:
                sent[p] = self._send(p, reqs, deadline)
            except Unavailable as exc:
                out[p] = exc
        for p, rids in sent.items():
            try:
                out[p] = self._collect(p, rids, deadline)
            except (Unavailable, BrokenError) as exc:
                out[p] = exc
        return out

    def _send(self, p: int, reqs: list[Any], deadline: float) -> list[int]:
        rids = []
        frames = []
        for req in reqs:
            self._rid += 1
            rids.append(self._rid)
            # a request is [op, *args], or bytes: those already encoded, without brackets
            frames.append(frame(b"[%d,%s]" % (self._rid, req) if isinstance(req, bytes)
                                else orjson.dumps([self._rid, *req])))
        data = b"".join(frames)
        try:
            self._link(p).send(data, deadline)
        except OSError as exc:
            self._forget(p)
            if exc.errno not in _RESENDABLE:
                raise self._unavailable(p, exc) from exc
            self._resend(p, data, deadline)
        except Unavailable:
            self._forget(p)  # part of a frame may be out: the stream is no longer usable
            raise
        return rids

    def _resend(self, p: int, data: bytes, deadline: float) -> None:
        """The partition restarted under an old connection: nothing was delivered."""
        try:
            self._link(p).send(data, deadline)
        except OSError as exc:
            self._forget(p)
            raise self._unavailable(p, exc) from exc
        except Unavailable:
            self._forget(p)
            raise

    def _collect(self, p: int, rids: list[int], deadline: float) -> list[tuple[int, Any]]:
        link = self._link(p)
        out = []
        try:
            for rid in rids:
                got, flag, value = link.recv_reply(deadline)
                if got != rid:
                    raise BrokenError(f"registry partition {p} answered request {got}, "
                                      f"expected {rid}", hint="this is a bug; the connection "
                                      "was dropped, retry")
                out.append((flag, value))
        except (Unavailable, BrokenError):
            self._forget(p)  # late replies must not be read as answers to later requests
            raise
        return out

    def _link(self, p: int) -> _Link:
        if os.getpid() != self._pid:  # forked: the parent's streams are not ours to use
            for link in self._links.values():
                link.close()
            self._links, self._pid = {}, os.getpid()
        link = self._links.get(p)
        if link is None:
            link = self._links[p] = _Link(p, self._paths[p], self._timeout, self._spin_s)
        return link

    def _forget(self, p: int) -> None:
        link = self._links.pop(p, None)
        if link is not None:
            link.close()

    def _unavailable(self, p: int, exc: OSError) -> Unavailable:
        return Unavailable(f"registry partition {p} ({self._paths[p]}) is unavailable: "
                           f"{exc.strerror or exc}", hint="retryable: try again shortly")


def _routed(key: Any, entry: EntryLike, owner_pid: Any) -> tuple[str, Any, Any, int]:
    """What routing and the wire need of one ``register_many`` item: the partition
    checks the entry's contents (see "Validation of a batch" above)."""
    if type(entry) is dict and entry.keys() <= ENTRY_FIELDS:
        return check_key(key), entry.get("capabilities", []), entry.get("metadata"), check_owner(owner_pid)
    return _validated(key, entry, owner_pid)  # Entry objects, other mappings: checked here


def _encoded_within_slots(batch: list[tuple[int, list[Any]]]) -> bytes | None:
    """The items as JSON, or None if they do not encode or are larger than valid entries
    can be (then they are checked one by one)."""
    try:
        data = orjson.dumps([item for _, item in batch])
    except (TypeError, orjson.JSONEncodeError):
        return None
    return data if len(data) <= len(batch) * (MAX_ENTRY_BYTES + MAX_KEY_BYTES) else None


def _checked(batch: list[tuple[int, list[Any]]], out: list[Any]) -> list[tuple[int, list[Any]]]:
    """The items of ``batch`` that pass the full check; the others' errors go to ``out``."""
    good = []
    for pos, (key, caps, meta, owner) in batch:
        try:
            good.append((pos, list(_validated(key, {"capabilities": caps, "metadata": meta}, owner))))
        except AgoraError as exc:
            out[pos] = exc
    return good


def _validated(key: str, entry: EntryLike, owner_pid: int
               ) -> tuple[str, list[str], dict[str, Any], int]:
    """Checked here too, so a bad item fails alone and before any round trip (the
    partition checks again: it is the one that must never publish a bad entry)."""
    key, caps, meta, owner = validate_registration(key, entry, owner_pid)
    check_size(Entry(key, caps, meta, 1, owner))
    return key, caps, meta, owner


def _per_item(replies: list[tuple[int, Any]] | AgoraError, n: int) -> list[Entry | AgoraError]:
    """One result per item of a register_many frame (the partition's error for them all)."""
    if isinstance(replies, AgoraError):
        return [replies] * n
    (flag, answers), = replies
    if flag:
        return [from_wire(answers)] * n
    if len(answers) != n:
        raise BrokenError(f"register_many got {len(answers)} answers for {n} items",
                          hint="this is a bug in the registry partition")
    return [from_wire(v) if flag else Entry(*v) for flag, v in answers]
