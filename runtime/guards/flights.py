"""In-flight de-duplication across the processes of the machine: two agents asking the same
question at once make one call.

::

    agent A (leader)                 board "flights:<service>"            agent B (follower)
    begin(d) -> LEAD  ------------>  [d: pid A, running, waiters 0]
                                     [d: pid A, running, waiters 1]  <--- begin(d) -> FOLLOW
    call ... value
    write <dir>/<service>-<d>.res    (atomic: a temporary file, then rename)
    finish(d) ------------------->   [d: done]                        ---> wait(d): reads the file,
                                     (removed, file unlinked, by whoever leaves last)  left(d)

The board is one record of the guards' ``StateStore`` (``SharedStateStore``: the machine-wide
``shm.guard_state`` table the breaker and limiter use, updated under its cross-process lock).
A result crosses processes as a file in ``directory`` (the run's private socket directory);
the local ``ResultCache`` still de-duplicates the threads and tasks of one process first, and
only its leader consults the board.

Decisions:
- **Values are encoded with ``marshal``** (exact for None, bool, int, float, str, bytes,
  tuples, lists, dicts, sets: what an HTTP replay or a parsed JSON answer is made of). A value
  it cannot encode is not shared: the followers call themselves. The files are written and
  read only by processes of this daemon's tree, in a 0700 directory (nothing from a client).
- **A failed or vanished leader frees its followers to call themselves** (the entry leaves the
  board; a leader whose pid is gone is purged by the next update): within one process the
  joiners get the leader's error, across processes they retry, since an error object does not
  cross. Waits are bounded by the service's ``wait_bound_s``.
- **No file outlives its readers**: the leader writes one, marks the entry done, and the last
  of leader and followers to leave removes both; a follower that died waiting is purged with
  its file after ``linger_s``, by the next caller of its shard (what no caller purges goes
  with the run directory at stop).
- **The board is ``SHARDS`` records** (``flights/<k>:<service>``, a question's flight in the
  record its digest's first byte names), each of at most ``MAX_FLIGHTS`` entries: 256
  questions in flight per service.  One record of 64 was full in perf/pipelines.py's burst of
  150 pipelines (6 agents running 32 handlers each), and every call beyond it went ahead
  unshared: a consensus step's 3 identical candidate calls became 3 requests.  Shards also
  split the record lock among callers of different questions.
- A shard holds ``MAX_FLIGHTS`` entries; when it is full a call simply goes ahead (``ALONE``:
  de-duplicated in its own process only) and publishes nothing to the board: its answer
  must not touch the file of a flight of the same question that another process registered
  meanwhile.  (It did: an unregistered leader wrote and then unlinked the registered
  leader's result file, whose follower then polled a flight that was done with no file
  until its wait bound, 248 s with perf/pipelines.py's guards; a consensus candidate timed
  out at 60 s in one of ~25 saturation bursts.  A follower that finds a flight done and its
  file gone now calls itself, whatever removed the file.)
- ``begin``/``finish``/``fail``/``left`` are pure functions of the board (tested on a fake
  clock and a fake ``alive``); :class:`SharedFlights` is the thin I/O around them.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .state import StateStore

__all__ = ["Flight", "Board", "BoardCodec", "SharedFlights", "LeaderGone", "LEAD", "FOLLOW", "ALONE",
           "MAX_FLIGHTS", "SHARDS", "begin", "finish", "fail", "left"]

LEAD, FOLLOW, ALONE = "lead", "follow", "alone"
RUNNING, DONE = 1, 2
MAX_FLIGHTS = 64  # per shard: 31-byte entries in a 2 KiB record of the guard table
SHARDS = 4
_TAG = b"F1"
_ENTRY = struct.Struct("<16sIBHd")  # digest, leader pid, state, waiters, since (wall clock)


@dataclass
class Flight:
    digest: bytes
    pid: int
    state: int
    waiters: int
    since: float


Board = list[Flight]


class BoardCodec:
    """The board as one fixed-layout record (``StateStore`` codec)."""

    def new(self) -> Board:
        return []

    def pack(self, board: Board) -> bytes:
        return _TAG + b"".join(_ENTRY.pack(f.digest, f.pid, f.state, f.waiters, f.since) for f in board)

    def unpack(self, data: bytes) -> Board | None:
        if not data.startswith(_TAG) or (len(data) - len(_TAG)) % _ENTRY.size:
            return None
        body = data[len(_TAG):]
        return [Flight(*_ENTRY.unpack_from(body, i)) for i in range(0, len(body), _ENTRY.size)]


class LeaderGone(Exception):
    """The flight this caller followed ended without a shared result: call yourself."""


# ---------------------------------------------------------------- pure board updates
def _find(board: Board, digest: bytes) -> Flight | None:
    return next((f for f in board if f.digest == digest), None)


def purge(board: Board, now: float, alive: Callable[[int], bool], linger_s: float) -> list[bytes]:
    """Drop flights whose leader died and done ones older than ``linger_s`` (a follower died
    before reading); returns their digests (their files, if any, should go)."""
    stale = [f for f in board if (f.state == RUNNING and not alive(f.pid))
             or (f.state == DONE and now - f.since > linger_s)]
    for f in stale:
        board.remove(f)
    return [f.digest for f in stale]


def begin(board: Board, digest: bytes, pid: int, now: float) -> str:
    """LEAD (this caller calls, its flight on the board), FOLLOW (wait for another process's)
    or ALONE (the board is full: call, and publish nothing to the board)."""
    f = _find(board, digest)
    if f is not None and f.pid != pid:
        f.waiters += 1
        return FOLLOW
    if f is None:
        if len(board) >= MAX_FLIGHTS:
            return ALONE
        board.append(Flight(digest, pid, RUNNING, 0, now))
    return LEAD


def owns(board: Board, digest: bytes, pid: int) -> bool:
    """True when the board's flight of ``digest`` is ``pid``'s (its result file is its to write)."""
    f = _find(board, digest)
    return f is not None and f.pid == pid


def finish(board: Board, digest: bytes, pid: int, now: float) -> bool:
    """The leader's result file is written; True when nobody waits for it (remove it now).
    A flight of another process is not touched (False: its file is not this leader's)."""
    f = _find(board, digest)
    if f is None:
        return True
    if f.pid != pid:
        return False
    if f.waiters == 0:
        board.remove(f)
        return True
    f.state, f.since = DONE, now
    return False


def fail(board: Board, digest: bytes, pid: int) -> None:
    """The leader has no shareable result: its followers call themselves."""
    f = _find(board, digest)
    if f is not None and f.pid == pid:
        board.remove(f)


def left(board: Board, digest: bytes) -> bool:
    """A follower is done with the flight; True when it was the last reader of a done one."""
    f = _find(board, digest)
    if f is None:
        return False
    f.waiters = max(0, f.waiters - 1)
    if f.state == DONE and f.waiters == 0:
        board.remove(f)
        return True
    return False


def status(board: Board, digest: bytes, alive: Callable[[int], bool]) -> str:
    """What a waiting follower sees: "running", "done" or "gone"."""
    f = _find(board, digest)
    if f is None or (f.state == RUNNING and not alive(f.pid)):
        return "gone"
    return "done" if f.state == DONE else "running"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------- the I/O around them
class SharedFlights:
    """The machine-wide flights of one service (board in ``store``, results in ``directory``)."""

    POLL_S = (0.001, 0.02)  # a follower polls from 1 ms, doubling to 20 ms

    def __init__(self, service: str, store: StateStore, directory: str, *, linger_s: float = 10.0,
                 clock: Callable[[], float] = time.time, alive: Callable[[int], bool] = _alive,
                 pid: Callable[[], int] = os.getpid) -> None:
        self.service, self.store, self.directory = service, store, directory
        self.keys = [f"flights/{k}:{service}" for k in range(SHARDS)]  # a service name is <= 48 bytes
        self.codec = BoardCodec()
        self.linger_s, self.clock, self.alive, self._pid = linger_s, clock, alive, pid
        self.pid = pid()
        os.makedirs(directory, mode=0o700, exist_ok=True)

    @staticmethod
    def digest(key: Any) -> bytes | None:
        """16 bytes naming a cache key, or None for a key that is not bytes or str (not shared)."""
        if isinstance(key, str):
            key = key.encode()
        if not isinstance(key, bytes):
            return None
        return hashlib.blake2b(key, digest_size=16).digest()

    def _path(self, digest: bytes) -> str:
        return os.path.join(self.directory, f"{self.service}-{digest.hex()}.res")

    def _update(self, digest: bytes, fn: Callable[[Board], Any]) -> Any:
        """``fn`` applied to the shard of the board that holds ``digest``'s flight."""
        return self.store.update(self.keys[digest[0] % SHARDS], self.codec, fn)

    def begin(self, digest: bytes) -> str:
        self.pid = self._pid()  # (a fork after construction leads under its own pid)

        def step(board: Board) -> tuple[str, list[bytes]]:
            gone = purge(board, self.clock(), self.alive, self.linger_s)
            return begin(board, digest, self.pid, self.clock()), gone
        role, gone = self._update(digest, step)
        for d in gone:
            self._unlink(d)
        return role

    def finish(self, digest: bytes, value: Any) -> None:
        """Publish the leader's value (unshareable values: the followers call themselves).
        Only to a flight of this process: the path is the question's, not the leader's."""
        if not self._update(digest, lambda b: owns(b, digest, self.pid)):
            return
        try:
            data = marshal.dumps(value)
        except ValueError:
            self.fail(digest)
            return
        path = self._path(digest)
        tmp = f"{path}.{self.pid}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError:  # a full disk, the directory gone: the leader keeps its answer, the
            self._unlink_path(tmp)  # followers call themselves
            self.fail(digest)
            return
        if self._update(digest, lambda b: finish(b, digest, self.pid, self.clock())):
            self._unlink(digest)

    def fail(self, digest: bytes) -> None:
        self._update(digest, lambda b: fail(b, digest, self.pid))

    def poll(self, digest: bytes) -> tuple[bool, Any]:
        """(True, value) once the leader's result is there; (False, None) while it runs;
        LeaderGone when it ended without one."""
        try:
            with open(self._path(digest), "rb") as f:
                value = marshal.loads(f.read())
        except FileNotFoundError:
            # "done" without its file: removed by mistake; waiting could never end, so call
            if self._update(digest, lambda b: status(b, digest, self.alive)) in ("gone", "done"):
                self._leave(digest)
                raise LeaderGone(f"the {self.service!r} call this one followed ended without a result") from None
            return False, None
        self._leave(digest)
        return True, value

    def abandon(self, digest: bytes) -> None:
        """A follower stops waiting (timed out, cancelled)."""
        self._leave(digest)

    def _leave(self, digest: bytes) -> None:
        if self._update(digest, lambda b: left(b, digest)):
            self._unlink(digest)

    def _unlink(self, digest: bytes) -> None:
        self._unlink_path(self._path(digest))

    @staticmethod
    def _unlink_path(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # never written, or another reader removed it first
