"""The machine-wide result cache of one service: an answer one agent got is a hit for all.

Each agent process keeps its own ``ResultCache`` (any Python object, LRU, in memory); behind
it, for keys that are bytes or str and values ``marshal`` can encode (what an HTTP replay or
a parsed JSON answer is made of), this cache keeps one file per answer in the run's private
directory (0700, beside the in-flight de-duplication's files, runtime.guards.flights)::

    <directory>/<service>-<32 hex of the key's digest>.hit    8-byte expiry (wall clock) + marshal

    a call: local cache -> this (hit: scope "machine") -> in-flight board (lead / follow) -> the call
    the leader's answer: -> this (put) -> the flight's followers -> the local cache

Decisions:
- **Why files**: the answers of an LLM or search API are kilobytes to megabytes, of any
  number; the guards' shared table (``shm.guard_state``) holds small fixed records.  A
  file in the page cache costs an open and a read (~20-40 us for 30 KB here) against a
  call of hundreds of ms, and the daemon's stop removes the directory with its sockets
  (no leak; a crashed daemon's is removed by the next start, as the sockets are).
- **Writes are atomic** (a temporary file, then rename): a reader sees a whole answer or
  none.  A file that does not decode (a torn write cannot happen; a foreign file can) is
  removed and counts as a miss.
- **TTL and size**: the expiry is written into the file (``cache_ttl_s`` from the moment
  the answer arrived, as the local cache counts it); an expired file is removed by the
  reader that finds it.  ``cache_size`` bounds the files of the service: every
  ``size // 16`` writes a process removes the expired files and then the oldest written
  beyond ``size``, so the directory holds at most about ``size`` + (processes x
  ``size // 16``) answers between trims.  Oldest written goes first (not least recently
  used: a hit does not rewrite its file).
- Errors are never stored (as in the local cache).  The cache never fails a call: a file
  it cannot write (a full disk, the directory removed by a stopping daemon) or read is a
  miss, and the caller keeps the answer it got.
"""

from __future__ import annotations

import marshal
import os
import struct
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SharedResults"]

_EXPIRY = struct.Struct("<d")
_SUFFIX = ".hit"


class SharedResults:
    """The answers of service ``service`` shared by every process of the machine."""

    def __init__(self, service: str, directory: str, ttl_s: float, size: int, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.service, self.directory, self.ttl_s, self.size, self.clock = service, directory, ttl_s, size, clock
        self.prefix = f"{service}-"
        self.trim_every = max(1, size // 16)
        self._writes = 0
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def _path(self, digest: bytes) -> str:
        return os.path.join(self.directory, f"{self.prefix}{digest.hex()}{_SUFFIX}")

    def get(self, digest: bytes) -> tuple[bool, Any]:
        """(True, answer) for a fresh stored answer, else (False, None)."""
        path = self._path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:  # none stored (or the directory is gone: the daemon is stopping)
            return False, None
        try:
            (expires,) = _EXPIRY.unpack_from(data)
            if expires <= self.clock():
                raise LookupError("expired")
            return True, marshal.loads(memoryview(data)[_EXPIRY.size:])
        except (LookupError, struct.error, EOFError, ValueError, TypeError):
            _unlink(path)
            return False, None

    def put(self, digest: bytes, value: Any) -> bool:
        """Store an answer (False: ``marshal`` cannot encode it; it stays local)."""
        try:
            data = marshal.dumps(value)
        except ValueError:
            return False
        path, now = self._path(digest), self.clock()
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_EXPIRY.pack(now + self.ttl_s))
                f.write(data)
            os.utime(tmp, (now, now))  # trim() orders and expires by it, on this cache's clock
            os.replace(tmp, path)
        except OSError:  # a full disk, the directory gone: the caller has its answer anyway
            _unlink(tmp)
            return False
        self._writes += 1
        if self._writes % self.trim_every == 0:
            self.trim()
        return True

    def trim(self) -> int:
        """Remove the expired answers, then the oldest written beyond ``size``; how many went."""
        now, files = self.clock(), []
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    if e.name.startswith(self.prefix) and e.name.endswith(_SUFFIX):
                        try:
                            files.append((e.stat().st_mtime, e.path))
                        except FileNotFoundError:
                            continue  # another process removed it
        except FileNotFoundError:
            return 0  # the directory went with the daemon's stop
        files.sort()
        doomed = [p for m, p in files if m + self.ttl_s <= now]
        alive = [p for m, p in files if m + self.ttl_s > now]
        doomed += alive[:max(0, len(alive) - self.size)]
        for p in doomed:
            _unlink(p)
        return len(doomed)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another reader or trimmer was first
