"""Reading the event log back: filters for ``agora events`` and ``agora trace``.

The telemetry process writes ``events.jsonl`` (and rotated ``events.jsonl.1..N``); this
module only reads.  A line that is not valid JSON (a torn write after a crash) is skipped.

Every scan is written as a job (a generator: it ``yield``s after each unit of work, about
one ``CHUNK`` of the log or ``PARSE_UNIT`` parsed lines, and returns its answer), so that
the coordinator runs it in bounded slices between requests (runtime.coordinator.slices;
issue 15: a 256 MiB log was scanned inside one loop turn).  ``read_events``,
``find_trace_id`` and ``read_after`` run the same jobs to the end, for callers without a
loop (the CLI reading a stopped daemon's log, tests).  Memory is bounded by the answer
(``limit`` events) plus one chunk: the log is read in chunks, never whole.

A scan opens every log file when it starts and reads those open files: a rotation during
the scan renames files under it but cannot make it read a line twice or skip one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import orjson

from runtime.observability.telemetry import LOG_NAME

__all__ = ["read_events", "log_files", "find_trace_id", "read_after", "Cursor",
           "scan_events", "scan_trace_id", "scan_after", "CHUNK", "PARSE_UNIT"]

CHUNK = 1 << 20     # bytes read per unit (~0.3 ms of bytes search on this machine)
PARSE_UNIT = 256    # lines parsed per unit (~0.3 ms)
MAX_LINE = 64 << 20  # a "line" longer than this is no event: skipped, not buffered

#: A scan: yields between units of work, returns its answer.
Job = Generator[None, None, Any]


def _run(job: Job) -> Any:
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


def log_files(home: Path | str) -> list[Path]:
    """Oldest first."""
    base = Path(home) / LOG_NAME
    rotated = sorted(base.parent.glob(LOG_NAME + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [p for p in [*rotated, base] if p.exists()]


def _match(ev: dict[str, Any], type_prefix: str | None, agent: str | None, since: float | None,
           trace_id: str | None) -> bool:
    if type_prefix and not str(ev.get("type", "")).startswith(type_prefix):
        return False
    if agent and ev.get("agent") != agent and ev.get("source") != f"agent:{agent}":
        return False
    if since is not None and ev.get("ts", 0) < since:
        return False
    return not trace_id or ev.get("trace_id") == trace_id


def read_events(home: Path | str, type_prefix: str | None = None, agent: str | None = None,
                since: float | None = None, trace_id: str | None = None,
                limit: int | None = 200) -> list[dict[str, Any]]:
    """The last ``limit`` matching events (all of them with ``limit=None``), oldest first."""
    return _run(scan_events(home, type_prefix, agent, since, trace_id, limit))  # type: ignore[no-any-return]


def scan_events(home: Path | str, type_prefix: str | None = None, agent: str | None = None,
                since: float | None = None, trace_id: str | None = None,
                limit: int | None = 200) -> Job:
    """``read_events`` as a job."""
    out: deque[dict[str, Any]] = deque(maxlen=limit)
    needle = _prefilter(type_prefix, agent, trace_id)
    parsed = 0
    with ExitStack() as stack:
        for _, _, _, block in _blocks(_open_all(stack, home)):
            for line in _lines(block, needle):
                ev = _parse(line)
                if ev is not None and _match(ev, type_prefix, agent, since, trace_id):
                    out.append(ev)
                parsed += 1
                if parsed % PARSE_UNIT == 0:
                    yield
            yield
    return list(out)


def _prefilter(type_prefix: str | None, agent: str | None, trace_id: str | None) -> bytes | None:
    """Bytes every matching line holds (a bytes search is ~50x cheaper than a parse)."""
    if trace_id:
        return _needle("trace_id", trace_id)
    if type_prefix:
        return b'"type":' + orjson.dumps(type_prefix)[:-1]  # the value's opening, unclosed
    if agent:
        return orjson.dumps(agent)[1:-1]  # in "agent":"x" and in "source":"agent:x" alike
    return None


def _needle(key: str, value: str | None) -> bytes | None:
    """The exact bytes orjson writes for ``"key":"value"`` (it never adds spaces)."""
    return None if not value else b'"' + key.encode() + b'":' + orjson.dumps(value)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        ev = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a torn write after a crash
    return ev if isinstance(ev, dict) else None


def find_trace_id(home: Path | str, ident: str) -> str | None:
    """The trace of ``ident``: a trace id, or a task or pipeline id named by an event."""
    return _run(scan_trace_id(home, ident))  # type: ignore[no-any-return]


def scan_trace_id(home: Path | str, ident: str) -> Job:
    """``find_trace_id`` as a job."""
    needle = orjson.dumps(ident)
    with ExitStack() as stack:
        for _, _, _, block in _blocks(_open_all(stack, home)):
            for line in _lines(block, needle):
                ev = _parse(line)
                if ev is None or not ev.get("trace_id"):
                    continue
                if ident in (ev.get("trace_id"), ev.get("task_id"), ev.get("pipeline_id")):
                    return str(ev["trace_id"])
            yield
    return None


#: Where a follower stopped: (inode of the file being read, byte offset in it).
Cursor = tuple[int, int]


def read_after(home: Path | str, cursor: Cursor | None, limit: int = 1000
               ) -> tuple[list[dict[str, Any]], Cursor]:
    """Events appended after ``cursor`` (None: from the end now), in the order written.

    ``agora events --follow`` must follow by position, not by timestamp: batches from
    different processes arrive up to an emitter's batch age apart, so an event can be
    written after one with a later ``ts``.  A cursor into a file that has since rotated
    finds it by inode among the rotated files and goes on from there.
    """
    return _run(scan_after(home, cursor, limit))  # type: ignore[no-any-return]


def scan_after(home: Path | str, cursor: Cursor | None, limit: int = 1000) -> Job:
    """``read_after`` as a job: whole lines only (a partial last line is left for later)."""
    out: list[dict[str, Any]] = []
    with ExitStack() as stack:
        files = _open_all(stack, home)
        if not files:
            return [], cursor or (0, 0)
        if cursor is None:
            ino, f = files[-1]
            return [], (ino, os.fstat(f.fileno()).st_size)
        inodes = [ino for ino, _ in files]
        start, offset = (inodes.index(cursor[0]), cursor[1]) if cursor[0] in inodes else (0, 0)
        new: Cursor = (inodes[start], offset)
        parsed = 0
        for _, ino, pos, block in _blocks(files[start:], offset):
            new = (ino, pos)  # the block's start: the cursor while lines of it are unread
            for line in block.split(b"\n")[:-1]:
                if len(out) >= limit:
                    return out, new
                new = (ino, new[1] + len(line) + 1)
                ev = _parse(line)
                if ev is not None:
                    out.append(ev)
                parsed += 1
                if parsed % PARSE_UNIT == 0:
                    yield
            yield
        if len(out) < limit and new[0] != inodes[-1]:
            new = (inodes[-1], 0)  # read through: the newest file from its start
        return out, new


# -- reading in chunks ------------------------------------------------------------------------

def _open_all(stack: ExitStack, home: Path | str) -> list[tuple[int, IO[bytes]]]:
    """(inode, open file) of every log file, oldest first; a file rotated away between
    the listing and the open is skipped (its lines are in the next one's name now)."""
    out = []
    for path in log_files(home):
        try:
            f = stack.enter_context(open(path, "rb"))
        except FileNotFoundError:
            continue
        out.append((os.fstat(f.fileno()).st_ino, f))
    return out


def _blocks(files: list[tuple[int, IO[bytes]]], offset: int = 0
            ) -> Iterator[tuple[int, int, int, bytes]]:
    """(file index, inode, start offset, block of whole lines) for every ``CHUNK`` read;
    ``offset`` applies to the first file.  A last line without its newline is not given
    (a write in progress, or torn)."""
    for i, (ino, f) in enumerate(files):
        f.seek(offset)
        pos, carry = offset, b""
        while chunk := f.read(CHUNK):
            data = carry + chunk if carry else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data if len(data) <= MAX_LINE else b""  # an absurd line: dropped
                pos += 0 if carry else len(data)
                continue
            yield i, ino, pos, data[:cut]
            pos, carry = pos + cut, data[cut:]
        offset = 0


def _lines(block: bytes, needle: bytes | None) -> Iterator[bytes]:
    """The lines of ``block`` (which ends with a newline) that hold ``needle`` (all with
    None), found by a bytes search from match to match rather than line by line."""
    if needle is None:
        yield from block.split(b"\n")[:-1]
        return
    i = block.find(needle)
    while i >= 0:
        start = block.rfind(b"\n", 0, i) + 1
        end = block.find(b"\n", i)
        yield block[start:end]
        i = block.find(needle, end)
