"""Fixed-size records shared by every process of the machine, each updated under a lock that
works across processes: the storage of the service guards' breaker and limiter state.

Layout of the segment (``agora.<run>.guards.<n>``)::

    header    magic "AGGUARD1" | u32 slots | u32 slot_size           (16 bytes)
    names     slots x 64 bytes, utf-8 key, zero padded                 (the directory)
    records   slots x slot_size bytes: u32 payload length | payload

Decisions:
- **The lock is a POSIX record lock (``fcntl.lockf``) on one byte of the segment's own file**
  (byte ``1 + i`` for record ``i``, byte 0 for the directory). The kernel drops it when its
  holder dies, so a killed agent never wedges the others; no lock file to clean up. POSIX
  locks are per process, so a ``threading.Lock`` per record orders the threads of one process
  first. (A POSIX lock is also dropped when the process closes *any* descriptor of the file:
  keep one ``GuardStateTable`` per segment per process.)
- **Visibility is immediate**: writes go straight into the shared mapping under the lock, and
  every reader takes the same lock, so what one process wrote is what the next reader sees:
  no polling interval, no cache (well under the 1 ms the guards promise).
- **Bounded waits**: the lock is tried without blocking, yielding then sleeping briefly, up
  to ``lock_timeout_s`` (default 2 s; a holder only runs a few microseconds of pure code), then
  ``SegmentBusy``.
- Records are allocated by key on first use; a full directory is ``ResourceExhausted``. The
  payload's meaning belongs to the caller (shm knows nothing of breakers).
- The owner creates and unlinks (through ``shm.segment``, so space is checked and the name is
  in the run's manifest); other processes ``attach`` and only ``close``.
"""

from __future__ import annotations

import _posixshmem
import fcntl
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import InvalidArgument, ResourceExhausted, SegmentBusy
from .segment import Manifest, RunId, Segment

__all__ = ["GuardStateTable", "KEY_BYTES"]

_MAGIC = b"AGGUARD1"
_HEADER = struct.Struct("<8sII")
KEY_BYTES = 64
_LEN = struct.Struct("<I")
_tables: weakref.WeakSet[GuardStateTable] = weakref.WeakSet()


def _renew_thread_locks() -> None:
    """After fork the child's thread locks may be copies of held ones (gh-6721 style): renew."""
    for table in list(_tables):
        table._renew_locks()


os.register_at_fork(after_in_child=_renew_thread_locks)


class GuardStateTable:
    """A segment of ``slots`` records of ``slot_size`` bytes, keyed by short strings."""

    def __init__(self, seg: Segment, fd: int, *, lock_timeout_s: float = 2.0) -> None:
        magic, slots, slot_size = _HEADER.unpack_from(seg.buf, 0)
        if magic != _MAGIC:
            os.close(fd)
            raise InvalidArgument(f"segment {seg.name} is not a guard state table (magic {magic!r})",
                                  hint="attach the name GuardStateTable.create returned")
        self.segment, self.name = seg, seg.name
        self.slots, self.slot_size = slots, slot_size
        self.lock_timeout_s = lock_timeout_s
        self._fd: int | None = fd
        self._names_at = _HEADER.size
        self._records_at = _HEADER.size + slots * KEY_BYTES
        self._index: dict[str, int] = {}
        self._renew_locks()
        _tables.add(self)

    # -- life ------------------------------------------------------------------------
    @classmethod
    def create(cls, run: RunId, *, slots: int = 64, slot_size: int = 2048,
               manifest: Manifest | None = None) -> GuardStateTable:
        """Create the segment (the owner: the daemon root or a test)."""
        if not (isinstance(slots, int) and 1 <= slots <= 4096):
            raise InvalidArgument(f"slots must be an int in 1..4096, got {slots!r}")
        if not (isinstance(slot_size, int) and 16 <= slot_size <= 1 << 20):
            raise InvalidArgument(f"slot_size must be an int in 16..1048576 bytes, got {slot_size!r}")
        size = _HEADER.size + slots * (KEY_BYTES + slot_size)
        seg = Segment.create(run, "guards", size, manifest=manifest)
        _HEADER.pack_into(seg.buf, 0, _MAGIC, slots, slot_size)
        return cls(seg, cls._open_fd(seg.name))

    @classmethod
    def attach(cls, name: str, *, lock_timeout_s: float = 2.0) -> GuardStateTable:
        """Map a table another process created (read-write: every agent updates records)."""
        seg = Segment.attach(name, readonly=False)
        return cls(seg, cls._open_fd(seg.name), lock_timeout_s=lock_timeout_s)

    @staticmethod
    def _open_fd(name: str) -> int:
        return _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)

    def _renew_locks(self) -> None:
        self._dir_lock = threading.Lock()
        self._locks = [threading.Lock() for _ in range(self.slots)]

    def close(self) -> None:
        """Unmap in this process (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.segment.close()

    def unlink(self) -> None:
        """Remove the name (owner only)."""
        self.segment.unlink()

    def __enter__(self) -> GuardStateTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records ---------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Keys allocated so far (any process)."""
        with self._locked_byte(self._dir_lock, 0):
            return [k for k in (self._key_at(i) for i in range(self.slots)) if k]

    @contextmanager
    def record(self, key: str) -> Iterator[memoryview]:
        """Lock record ``key`` (allocating it on first use) and yield its payload area.

        The payload area is ``slot_size - 4`` bytes; use ``read``/``write`` for the
        length-prefixed convention or the view directly.
        """
        i = self._slot(key)
        start = self._records_at + i * self.slot_size
        with self._locked_byte(self._locks[i], 1 + i):
            view = self.segment.buf[start:start + self.slot_size]
            try:
                yield view
            finally:
                view.release()

    @staticmethod
    def read(view: memoryview) -> bytes:
        """The payload last written into a locked record (b"" for a new record)."""
        (n,) = _LEN.unpack_from(view, 0)
        return bytes(view[_LEN.size:_LEN.size + min(n, len(view) - _LEN.size)])

    @staticmethod
    def write(view: memoryview, payload: bytes) -> None:
        """Store ``payload`` into a locked record."""
        if len(payload) > len(view) - _LEN.size:
            raise InvalidArgument(f"a guard record holds {len(view) - _LEN.size} bytes, got {len(payload)}",
                                  hint="create the table with a larger slot_size or shrink the window")
        view[_LEN.size:_LEN.size + len(payload)] = payload
        _LEN.pack_into(view, 0, len(payload))

    # -- internals -------------------------------------------------------------------
    def _key_at(self, i: int) -> str:
        at = self._names_at + i * KEY_BYTES
        return bytes(self.segment.buf[at:at + KEY_BYTES]).rstrip(b"\0").decode("utf-8", "replace")

    def _slot(self, key: str) -> int:
        if key in self._index:
            return self._index[key]
        raw = key.encode("utf-8")
        if not raw or len(raw) > KEY_BYTES or b"\0" in raw:
            raise InvalidArgument(f"guard state key must be 1..{KEY_BYTES} utf-8 bytes without NUL, got {key!r}")
        with self._locked_byte(self._dir_lock, 0):
            i = self._find_or_allocate(key, raw)
        self._index[key] = i
        return i

    def _find_or_allocate(self, key: str, raw: bytes) -> int:
        free = None
        for i in range(self.slots):
            existing = self._key_at(i)
            if existing == key:
                return i
            if not existing and free is None:
                free = i
        if free is None:
            raise ResourceExhausted(f"guard state table {self.name} has all {self.slots} records in use",
                                    hint="create it with more slots (one per service and guard kind)")
        at = self._names_at + free * KEY_BYTES
        self.segment.buf[at:at + KEY_BYTES] = raw.ljust(KEY_BYTES, b"\0")
        return free

    @contextmanager
    def _locked_byte(self, tlock: threading.Lock, byte: int) -> Iterator[None]:
        if not tlock.acquire(timeout=self.lock_timeout_s):
            raise SegmentBusy(f"guard record lock {byte} of {self.name} not acquired in {self.lock_timeout_s} s "
                              f"by a thread of pid {os.getpid()}", hint="a thread holds it without releasing: a bug")
        try:
            self._lock_fd(byte)
            try:
                yield
            finally:
                fcntl.lockf(self._require_fd(), fcntl.LOCK_UN, 1, byte, os.SEEK_SET)
        finally:
            tlock.release()

    def _require_fd(self) -> int:
        if self._fd is None:
            raise SegmentBusy(f"guard state table {self.name} is closed in pid {os.getpid()}", hint="attach it again")
        return self._fd

    def _lock_fd(self, byte: int) -> None:
        fd, deadline, spins = self._require_fd(), None, 0
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, byte, os.SEEK_SET)
                return
            except (BlockingIOError, PermissionError):
                pass  # EAGAIN / EACCES: another process holds it for a few microseconds
            spins += 1
            deadline = deadline or time.monotonic() + self.lock_timeout_s
            if time.monotonic() > deadline:
                raise SegmentBusy(f"guard record lock {byte} of {self.name} held by another process "
                                  f"for over {self.lock_timeout_s} s", hint="a process is stopped holding it")
            if spins < 50:
                os.sched_yield()
            else:
                time.sleep(0.0001)
