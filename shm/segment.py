"""Named POSIX shared-memory segments with one owner, and the manifest of a run's segments.

Names are ``agora.<run_id>.<purpose>.<n>`` (``/dev/shm/agora.4242-9f3a0c1d.ctx.7``); the
run id is ``<daemon pid>-<8 hex random>`` so a sweeper can tell from the name alone whose
segment it is and whether that process still lives (see ``shm._sweeper``).

Decisions (the spec is silent on these):

- **No resource tracker, anywhere.**  ``multiprocessing.shared_memory.SharedMemory`` on 3.11
  registers *every* instance, attached ones included, with the resource tracker, which then
  unlinks the segment or warns "leaked shared_memory objects" when the attaching process
  exits (gh-82300; ``track=False`` only exists from 3.13).  We call ``_posixshmem.shm_open``
  / ``shm_unlink`` (the same C functions SharedMemory uses) and ``mmap`` directly, so no
  process ever registers anything: attaching processes only ``close()``; the owner
  ``unlink()``s; a crashed owner's segments are removed by ``sweep()``.
- **Space first, then bytes.**  ``create`` checks ``statvfs(/dev/shm)`` and then reserves the
  whole size with ``posix_fallocate`` before mapping, so a full ``/dev/shm`` is a
  ``ResourceExhausted`` (RESOURCE_EXHAUSTED) at create time and never a SIGBUS on the first
  write to a sparse page (gh-114390).  Both functions are injectable for tests.  (A memory
  cgroup limit below the tmpfs size is not visible to statvfs; there fallocate itself fails
  or the OOM killer acts — still never a SIGBUS on a write.)
- **Intent before effect.**  The owner adds a name to the manifest *before* ``shm_open`` and
  removes it *after* ``shm_unlink``, so a crash at any point leaves the manifest listing a
  superset of what exists; cleanup of a superset is safe.
- **One writer per manifest file**: the process that owns the run's segments (the daemon
  root).  Another process the root names owner uses its own ``tag``.
- The manifest records the owner's pid *and* its start time (psutil ``create_time``) so a
  recycled pid does not keep a dead run's segments alive.
"""

from __future__ import annotations

import _posixshmem  # CPython's own binding of shm_open/shm_unlink (used by shared_memory)
import errno
import itertools
import json
import mmap
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from .errors import InvalidArgument, ReadOnlyView, ResourceExhausted, SegmentBusy, SegmentNotFound

__all__ = [
    "PREFIX", "SHM_DIR", "RunId", "Segment", "Manifest", "segment_name", "parse_segment_name",
    "process_start_time", "unlink_segment",
]

PREFIX = "agora"
SHM_DIR = "/dev/shm"
_PURPOSE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_NAME = re.compile(r"^agora\.(\d+)-([0-9a-f]{8})\.([a-z][a-z0-9_-]{0,31})\.(\d+)$")
_MIB = 1 << 20
_local_n = itertools.count()  # used when a segment is created without a manifest


@dataclass(frozen=True)
class RunId:
    """Identity of one daemon run: the owner's pid plus a random part (pids get reused)."""

    pid: int
    token: str

    @classmethod
    def new(cls, pid: int | None = None) -> RunId:
        return cls(os.getpid() if pid is None else pid, secrets.token_hex(4))

    @classmethod
    def parse(cls, text: str) -> RunId:
        pid, sep, token = text.partition("-")
        if not (sep and pid.isdigit() and re.fullmatch(r"[0-9a-f]{8}", token)):
            raise InvalidArgument(f"not a run id: {text!r}",
                                  hint="a run id looks like '<pid>-<8 hex digits>', e.g. '4242-9f3a0c1d'")
        return cls(int(pid), token)

    def __str__(self) -> str:
        return f"{self.pid}-{self.token}"


def segment_name(run: RunId, purpose: str, n: int) -> str:
    """``agora.<run>.<purpose>.<n>``; purpose is lower-case letters, digits, '_' or '-'."""
    if not _PURPOSE.match(purpose):
        raise InvalidArgument(f"bad segment purpose {purpose!r}",
                              hint="use 1-32 characters: a lower-case letter, then [a-z0-9_-]")
    return f"{PREFIX}.{run}.{purpose}.{n}"


def parse_segment_name(name: str) -> tuple[RunId, str, int] | None:
    """(run, purpose, n) for one of our names, None for anything else."""
    m = _NAME.match(name.lstrip("/"))
    if m is None:
        return None
    return RunId(int(m.group(1)), m.group(2)), m.group(3), int(m.group(4))


def process_start_time(pid: int) -> float | None:
    """The process's start time (seconds since the epoch), None if it does not exist."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def write_json_atomically(path: str, obj: Any) -> None:
    """tmp + rename: readers see the old file or the new one, never half of one.

    No fsync: what we guard against is a *process* crash (the page cache survives it); after
    a machine crash /dev/shm is empty anyway, so a stale manifest only lists absent names.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


class Manifest:
    """The list of a run's live segments, kept as ``<state_dir>/shm.<run>[.<tag>].json``."""

    def __init__(self, state_dir: str | os.PathLike[str], run: RunId, *, tag: str = "") -> None:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        suffix = f".{tag}" if tag else ""
        self.path = os.path.join(os.fspath(state_dir), f"shm.{run}{suffix}.json")
        self.run = run
        previous = self._same_run(Manifest.read(self.path))
        self._names = [n for n in previous.get("segments", []) if isinstance(n, str)]
        last = max((p[2] for p in map(parse_segment_name, self._names) if p), default=-1)
        recorded = previous.get("next")
        self._next = max(last + 1, recorded if isinstance(recorded, int) else 0)
        self._started = process_start_time(run.pid)
        self._state = "live"
        self._save()

    def _same_run(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        """What a previous owner of this run (e.g. crashed, restarted) left; {} otherwise."""
        return previous if previous and previous.get("run") == str(self.run) else {}

    def next_name(self, purpose: str) -> str:
        self._next += 1
        return segment_name(self.run, purpose, self._next - 1)

    def add(self, name: str) -> None:
        self._names.append(name)
        self._save()

    def remove(self, name: str) -> None:
        if name in self._names:
            self._names.remove(name)
            self._save()

    def names(self) -> list[str]:
        return list(self._names)

    def mark_closed(self) -> None:
        """Say the run ended on purpose: a sweeper may remove whatever is still listed."""
        self._state = "closed"
        self._save()

    def delete(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass  # already removed by a sweeper: the goal (no file) holds

    def _save(self) -> None:
        write_json_atomically(self.path, {
            "run": str(self.run), "pid": self.run.pid, "started": self._started,
            "state": self._state, "next": self._next, "segments": self._names})

    @staticmethod
    def read(path: str) -> dict[str, Any] | None:
        """A manifest's content, None if it is gone or unreadable (then only pids decide)."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def unlink_segment(name: str) -> bool:
    """Remove a segment name, whoever made it (sweepers, an owner's successor).

    True if this call removed it, False if it was already gone.
    """
    try:
        _posixshmem.shm_unlink("/" + name.lstrip("/"))
        return True
    except FileNotFoundError:
        return False  # the owner or another sweeper removed it meanwhile: the goal holds


def _check_free_space(name: str, size: int, st: os.statvfs_result) -> None:
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise ResourceExhausted(
            f"cannot create shared segment {name} of {size / _MIB:.1f} MiB: "
            f"{SHM_DIR} has {free / _MIB:.1f} MiB free of {st.f_blocks * st.f_frsize / _MIB:.1f} MiB",
            hint=f"free space in {SHM_DIR} (`df -h {SHM_DIR}`; dead runs are swept at start), "
                 "publish less, or remount it larger (mount -o remount,size=...)",
            requested=size, free=free)


class Segment:
    """One mapping of a named segment: the owner's (read-write) or an attachment."""

    def __init__(self, name: str, mm: mmap.mmap, *, readonly: bool, owner: bool,
                 manifest: Manifest | None = None) -> None:
        self.name = name
        self.size = len(mm)
        self.readonly = readonly
        self.owner = owner
        self._mm: mmap.mmap | None = mm
        self._buf: memoryview | None = memoryview(mm)
        self._manifest = manifest

    # -- creation and attachment ------------------------------------------------------
    @classmethod
    def create(cls, run: RunId, purpose: str, size: int, *, manifest: Manifest | None = None,
               statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
               reserve: Callable[[int, int, int], None] = os.posix_fallocate) -> Segment:
        """Create, reserve and map a new segment (owner side)."""
        if not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"segment size must be a positive int, got {size!r}")
        name = manifest.next_name(purpose) if manifest else segment_name(run, purpose, next(_local_n))
        _check_free_space(name, size, statvfs(SHM_DIR))
        fd, name = cls._open_exclusive(run, purpose, name, manifest)
        try:
            cls._reserve(fd, name, size, reserve)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            unlink_segment(name)
            if manifest:
                manifest.remove(name)
            raise
        finally:
            os.close(fd)
        return cls(name, mm, readonly=False, owner=True, manifest=manifest)

    @classmethod
    def _open_exclusive(cls, run: RunId, purpose: str, name: str,
                        manifest: Manifest | None) -> tuple[int, str]:
        for _ in range(64):  # another owner in the same run may hold this n: take the next one
            if manifest:
                manifest.add(name)  # intent first: a crash after shm_open leaves it listed
            try:
                return _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600), name
            except FileExistsError:
                if manifest:
                    manifest.remove(name)
                name = manifest.next_name(purpose) if manifest else segment_name(run, purpose, next(_local_n))
        raise ResourceExhausted(f"64 segment names for run {run}/{purpose} were all taken",
                                hint="two owners share one run id and manifest; give each its own tag")

    @staticmethod
    def _reserve(fd: int, name: str, size: int, reserve: Callable[[int, int, int], None]) -> None:
        try:
            reserve(fd, 0, size)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.ENOMEM):
                raise ResourceExhausted(
                    f"cannot reserve {size / _MIB:.1f} MiB for shared segment {name}: {SHM_DIR} is full "
                    f"({e.strerror})",
                    hint=f"free space in {SHM_DIR} (`df -h {SHM_DIR}`) or publish less",
                    requested=size) from e
            raise

    @classmethod
    def attach(cls, name: str, *, readonly: bool = True) -> Segment:
        """Map an existing segment; never registers with a resource tracker, never unlinks."""
        name = name.lstrip("/")
        if not name or "/" in name:
            raise InvalidArgument(f"bad segment name {name!r}", hint="pass a name like agora.<run>.<purpose>.<n>")
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDONLY if readonly else os.O_RDWR, mode=0o600)
        except FileNotFoundError as e:
            raise SegmentNotFound(f"shared segment {name} does not exist") from e
        try:
            size = os.fstat(fd).st_size
            if size == 0:  # between the owner's shm_open and its posix_fallocate
                raise SegmentNotFound(f"shared segment {name} is empty (still being created)",
                                      hint="attach names the owner has published, not ones it is creating")
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=prot)
        finally:
            os.close(fd)
        return cls(name, mm, readonly=readonly, owner=False)

    @classmethod
    def adopt(cls, name: str, manifest: Manifest) -> Segment:
        """Take over a segment a previous owner of this run created (read-only mapping)."""
        seg = cls.attach(name, readonly=True)
        seg.owner, seg._manifest = True, manifest
        return seg

    # -- use -------------------------------------------------------------------------
    @property
    def buf(self) -> memoryview:
        """The whole mapping (read-only for read-only attachments)."""
        if self._buf is None:
            raise SegmentNotFound(f"segment {self.name} is closed in this process",
                                  hint="attach it again")
        return self._buf

    @property
    def mmap(self) -> mmap.mmap:
        if self._mm is None:
            raise SegmentNotFound(f"segment {self.name} is closed in this process", hint="attach it again")
        return self._mm

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if self.readonly:
            raise ReadOnlyView(f"segment {self.name} is attached read-only in pid {os.getpid()}")
        self.buf[offset:offset + len(data)] = data

    def close(self) -> None:
        """Unmap in this process (idempotent).  Raises SegmentBusy while views still exist."""
        if self._mm is None:
            return
        try:
            if self._buf is not None:
                self._buf.release()
                self._buf = None
            self._mm.close()
        except BufferError as e:
            raise SegmentBusy(f"segment {self.name} still has live views in pid {os.getpid()}") from e
        self._mm = None

    def unlink(self) -> None:
        """Remove the name (owner only).  Existing mappings stay valid until they close."""
        if not self.owner:
            raise ReadOnlyView(f"pid {os.getpid()} attached segment {self.name} and may not unlink it",
                               hint="only the owner (the process that created it) unlinks")
        unlink_segment(self.name)  # False = a sweeper got there first: the goal holds
        if self._manifest:
            self._manifest.remove(self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self.owner else ("ro" if self.readonly else "rw")
        return f"<Segment {self.name} {self.size} bytes {role}>"
