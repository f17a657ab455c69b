"""The journal: the durable truth about tasks, attempts and pipelines (SQLite, WAL mode).

::

    client --submit--> coordinator --submit_many (one COMMIT)--> journal.db --ack ids--> client
                       coordinator --start_attempt / finish_many--> journal.db
    daemon start  --> journal.unfinished()  (running -> queued, attempt counted) --> dispatch

Promise (RELIABILITY.md): an accepted task is never lost, and its result is recorded
exactly once, even when an attempt ran twice.  How:

* **Commit before ack.**  ``submit_many`` returns ids only after its COMMIT.  Inside a
  caller's ``transaction()`` block the ids are durable when the block exits: ack after it.
* **Group commit.**  ``submit_many``, ``finish_many`` and ``transaction()`` put many writes
  under one COMMIT (one WAL fsync), which is what makes >= 10,000 submissions/s possible.
* **Exactly once.**  The result is written by ``INSERT INTO task_results ... WHERE the task
  is in a state that may succeed ON CONFLICT(id) DO NOTHING`` (one row per task at most: its
  primary key) and counted as recorded only when that inserted a row; the task's state moves
  in the same transaction.  A later finish of any attempt is written to ``attempts`` and
  never touches the result.  The guard lives in SQL, so it holds across connections and
  processes.

Durability (decision): ``journal_mode=WAL``; ``synchronous`` is ``NORMAL`` or ``FULL``
(``durability="normal"|"full"``; this class defaults to ``"full"``, the daemon to
``"normal"`` through ``[daemon] durability = "process"``, see docs/DECISIONS.md).  A
process kill (SIGKILL of the daemon) loses nothing committed with either: at COMMIT the
WAL frames are in the kernel's page cache, which outlives the process.  A power loss or
kernel crash keeps every committed transaction only with FULL (the WAL is fsynced at each
COMMIT); with NORMAL the last transactions before the power loss may be rolled back
(never corrupted).  With group commit FULL costs one fsync per batch (~0.3 ms measured
here).

Threading (decision): one ``Journal`` (one sqlite3 connection) per process, used from the
thread that opened it (sqlite3's ``check_same_thread`` enforces it).  The coordinator's
event loop owns the writing journal.  Other processes (the CLI, tests) may open their own
``Journal`` on the same file: WAL lets them read while the coordinator writes, and
``busy_timeout`` makes a second writer wait instead of failing.  The ledger creates its
own tables through ``journal.conn`` and should write inside ``journal.transaction()`` so
that a task's completion and its payment commit together.

Other decisions:

* Ids are time-sortable: ``t-`` (tasks) or ``p-`` (pipelines) + 12 hex digits of epoch
  milliseconds + 4 hex digits of sequence.  The generator never goes backwards (it starts
  after the largest id in the file), so ids are unique even if the wall clock steps back.
* A pipeline step waiting for its inputs is in state ``blocked`` (input = the template with
  ``$ref``s).  When a step succeeds, in the same transaction, every blocked step whose
  dependencies all succeeded gets its input resolved and becomes ``queued``; a step whose
  reference cannot be resolved fails with the error naming step and path; blocked steps
  downstream of a step that did not succeed are ``cancelled``.  A pipeline is
  ``succeeded`` when all steps succeeded, ``failed`` when all ended otherwise.
* An attempt's outcome (runtime.tasks.task.OUTCOMES) decides the next state through
  ``runtime.tasks.task.outcome_event``; only the task's *current* attempt can move it on a
  failure (a late failure of an old attempt is recorded, nothing else).  ``crashed`` is a
  presumption (the agent died, the lease expired): if that attempt later reports a real
  outcome, the attempt row is revised (``revised = 1``) and a success still counts.  A
  repeated report of an already observed outcome is a no-op (``recorded=False``).
* A failed attempt with attempts left waits ``retry_delay(attempt, retry_base, retry_cap)``
  (full jitter) in ``retry_wait``; ``promote_due(now)`` queues the due ones.
* Idempotency keys: a key already in the journal (or earlier in the same batch) returns the
  existing id; the content of the second submission is not compared.
* **Blobs apart.**  A task's input and result are rows of ``task_inputs`` and
  ``task_results``, not columns of ``tasks``: SQLite rewrites a whole row, its overflow
  pages included, whenever the row changes size, and every state change did (``queued`` ->
  ``running`` -> ``succeeded``), so a 25 KB input was written to the WAL four times per task
  and a checkpoint copied it all again.  Now a state change writes the small row only; the
  input is written at submission (and once more when a pipeline step's references are
  resolved), the result once.  Measured on a /tmp journal (25 KB inputs, 30 KB results, a
  pipeline step's four transactions): 164 -> 69 KiB of WAL and 0.45 -> 0.25 ms of CPU per
  task.  A journal of the earlier layout (input and result columns) is moved over when it
  is opened, in one transaction (``_split_blobs``).
* **Inputs by reference.**  A pipeline step's input is its template (the ``$ref``s as
  submitted) and, once its dependencies succeeded, its *sources* (``task_sources``: step id
  -> task id of each dependency); a read resolves the template against those results, which
  are written once and never change.  Writing the resolved input instead copied the
  previous step's result into ``task_inputs`` at every step (a document passed down a
  pipeline was journaled twice per step).  The template is still resolved when the step is
  unblocked, so that a reference that cannot be resolved fails the step then, as before.
  A journal written before this keeps its resolved inputs (no sources row: read as is).
  Measured (perf/pipeline_cost.py, WAL -26% per pipeline of its workload): docs/DECISIONS.md
  "Inputs by reference".
* Pages of 1 KiB (``PAGE_SIZE``), set when the file is created (an existing journal keeps
  its own).  A task's two COMMITs write about eight pages to the WAL, and SQLite copies and
  checksums every byte of each: with 4 KiB pages the journal took 84 us of CPU per task,
  with 1 KiB 69 us (inputs of 3 KB: 121 -> 92 us; 30 KB: 470-650 -> 380 us; /tmp
  harness, three interleaved runs).  The price is deeper B-trees in a journal of millions
  of tasks: one or two more page reads per lookup, from the page cache.
"""

from __future__ import annotations

import functools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from runtime.errors import BrokenError, Conflict, InvalidInput, NotFound, ResourceExhausted, Unavailable
from runtime.observability.trace_context import new_id
from runtime.tasks.pipeline import Pipeline, parse_pipeline, resolve_refs
from runtime.tasks.task import OUTCOMES, STATES, TERMINAL, TaskSpec, outcome_event, retry_delay, sources, transition

__all__ = ["Journal", "TaskRecord", "AttemptRecord", "PipelineRecord", "Finish", "next_id"]

JOURNAL_FILE = "journal.db"
_CHUNK = 500  # host parameters per IN (...) query
PAGE_SIZE = 1024  # bytes, for new journal files (see the module docstring)
WAL_LIMIT_BYTES = 64 << 20  # the WAL is cut back to this after a checkpoint
_DOOMED = TERMINAL - {"succeeded"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    trace_id TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, pipeline_id TEXT REFERENCES pipelines(id), step_id TEXT,
    capability TEXT NOT NULL, options TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    priority INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    deadline REAL, not_before REAL, trace_id TEXT, idempotency_key TEXT UNIQUE,
    deps TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks(state, priority);
CREATE INDEX IF NOT EXISTS tasks_by_pipeline ON tasks(pipeline_id) WHERE pipeline_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_inputs (
    id TEXT PRIMARY KEY REFERENCES tasks(id), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS task_results (
    id TEXT PRIMARY KEY REFERENCES tasks(id), body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS task_sources (
    id TEXT PRIMARY KEY REFERENCES tasks(id), sources TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    task_id TEXT NOT NULL REFERENCES tasks(id), attempt INTEGER NOT NULL, agent TEXT NOT NULL,
    started REAL NOT NULL, ended REAL, outcome TEXT, error TEXT, revised INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)) WITHOUT ROWID;
"""

# The tasks table's own columns (what INSERT writes), and a record's columns as a SELECT or
# RETURNING list: the input and the result live in tables of their own (see "Blobs apart"
# in the module docstring), read back by their task id; last, a pipeline step's sources
# (see "Inputs by reference").
_TASK_COLUMNS = ("id, pipeline_id, step_id, capability, options, state, attempts, max_attempts, "
                 "priority, created, updated, deadline, not_before, trace_id, idempotency_key, deps, error")
_INPUT = "(SELECT body FROM task_inputs WHERE task_inputs.id = tasks.id)"
_SOURCES = "(SELECT sources FROM task_sources WHERE task_sources.id = tasks.id)"


_RESULT_BODY = "(SELECT body FROM task_results WHERE task_results.id = tasks.id)"


def _record_columns(input_col: str, sources_col: str, result_col: str = _RESULT_BODY) -> str:
    return (f"tasks.id, pipeline_id, step_id, capability, {input_col}, options, state, attempts, "
            "max_attempts, priority, created, updated, deadline, not_before, trace_id, idempotency_key, "
            f"deps, {result_col}, tasks.error, {sources_col}")


_RECORD = _record_columns(_INPUT, _SOURCES)
_RECORD_NO_INPUT = _record_columns("NULL", "NULL")  # ``Journal.get(with_input=False)``
# a success's RETURNING: no input, and no read of the result just written (``TaskRecord.finished``)
_RECORD_FINISHED = _record_columns("NULL", "NULL", "NULL")
_INSERT_TASK = (f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ({', '.join('?' * 17)}) "
                "ON CONFLICT(idempotency_key) DO NOTHING")
# a task's input; with an idempotency key, written only when its row was (a known key
# inserts nothing)
_INSERT_INPUT_NEW = "INSERT INTO task_inputs (id, body) VALUES (?, ?)"
_INSERT_INPUT = "INSERT INTO task_inputs (id, body) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?1)"
_KEY_AT = _TASK_COLUMNS.split(", ").index("idempotency_key")


def _in(states: Iterable[str]) -> str:
    """A SQL list literal of state names (from our own constants, never from input)."""
    return "(" + ", ".join(f"'{s}'" for s in states) + ")"


@functools.cache
def _legal_from(event: str) -> str:
    """``_in`` of the states from which ``event`` is legal, built once per event."""
    return _in(sources(event))


# The guarded statements every task runs, built once (not per call).  Recording a result
# is two: the result's row (at most one per task: its primary key, and only while the task
# may succeed), then the task's state, returning the record.
_START = (f"UPDATE tasks SET state = 'running', attempts = attempts + 1, updated = ?, "
          f"not_before = NULL WHERE id = ? AND state IN {_legal_from('start')} RETURNING attempts")
_RESULT = (f"INSERT INTO task_results (id, body) SELECT ?1, ?2 WHERE EXISTS (SELECT 1 FROM tasks "
           f"WHERE id = ?1 AND state IN {_legal_from('succeed')}) ON CONFLICT(id) DO NOTHING")
_SUCCEED = (f"UPDATE tasks SET error = NULL, state = 'succeeded', updated = ?, not_before = NULL "
            f"WHERE id = ? AND state IN {_legal_from('succeed')} "
            f"RETURNING {_RECORD_FINISHED}")  # the record, with no read after the write


# ``finish_successes``: the same two for a batch, its results as a JSON array of
# [task id, result's JSON text] pairs (the same guards, row by row).
_RESULT_MANY = (f"INSERT INTO task_results (id, body) SELECT j.value ->> 0, j.value ->> 1 "
                f"FROM json_each(?) AS j JOIN tasks ON tasks.id = j.value ->> 0 "
                f"WHERE +tasks.state IN {_legal_from('succeed')} "  # (+: the id index, never a scan of the state index)
                f"ON CONFLICT(id) DO NOTHING")
_SUCCEED_MANY = (f"UPDATE tasks SET error = NULL, state = 'succeeded', "
                 f"updated = ?, not_before = NULL FROM json_each(?) AS j "
                 f"WHERE tasks.id = j.value ->> 0 AND +tasks.state IN {_legal_from('succeed')} "
                 f"RETURNING {_RECORD_FINISHED}")


def _split_blobs(conn: sqlite3.Connection) -> None:
    """Move a journal of the earlier layout (``input`` and ``result`` columns of ``tasks``)
    to ``task_inputs`` / ``task_results``, in one transaction (a crash midway leaves the old
    layout, moved again at the next open).  A no-op on a journal of this layout.  The layout
    is read again under the write lock: two processes opening an old journal at once (a
    daemon starting, ``agora journal stats``) move it once."""
    def old_layout() -> bool:
        return "input" in {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    if not old_layout():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not old_layout():  # moved by the other opener meanwhile
            conn.execute("COMMIT")
            return
        conn.execute("INSERT INTO task_inputs (id, body) SELECT id, input FROM tasks")
        conn.execute("INSERT INTO task_results (id, body) SELECT id, result FROM tasks WHERE result IS NOT NULL")
        conn.execute("ALTER TABLE tasks DROP COLUMN input")
        conn.execute("ALTER TABLE tasks DROP COLUMN result")
        conn.execute("COMMIT")
    except BaseException:
        conn.rollback()
        raise


class _NotUsual(Exception):
    """Internal: a batch of ``finish_successes`` left the usual case (it is rolled back)."""


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def next_id(prefix: str, last: tuple[int, int], now: float) -> tuple[str, tuple[int, int]]:
    """A sortable id after ``last`` = (ms, seq); returns (id, new last).  Pure."""
    ms, seq = max(int(now * 1000), last[0]), 0
    if ms == last[0]:
        seq = last[1] + 1
        if seq > 0xFFFF:
            ms, seq = ms + 1, 0
    return f"{prefix}{ms:012x}{seq:04x}", (ms, seq)


def _parse_id(text: str | None) -> tuple[int, int]:
    if not text or len(text) != 18:
        return (0, -1)
    return (int(text[2:14], 16), int(text[14:], 16))


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: str
    pipeline_id: str | None
    step_id: str | None
    capability: str
    input: Any
    options: dict[str, Any]
    state: str
    attempts: int
    max_attempts: int
    priority: int
    created: float
    updated: float
    deadline: float | None
    not_before: float | None
    trace_id: str | None
    idempotency_key: str | None
    deps: list[str] | None
    result: Any
    error: Any

    @classmethod
    def from_row(cls, row: Sequence[Any], conn: sqlite3.Connection) -> TaskRecord:
        """A record from a ``_RECORD`` row; ``conn`` reads the sources of a step whose input
        is stored by reference (see "Inputs by reference" in the module docstring)."""
        r = list(row[:19])
        r[4], r[5], r[16], r[17], r[18] = (_loads(r[4]), _loads(r[5]), _loads(r[16]),
                                           _loads(r[17]), _loads(r[18]))
        if row[19] is not None:
            r[4] = _resolve_stored(conn, r[0], r[2], r[4], _loads(row[19]))
        return cls(*r)

    @classmethod
    def finished(cls, row: Sequence[Any], result_text: str) -> TaskRecord:
        """The record a success returns (a ``_RECORD_FINISHED`` row): its input unread
        (``None``, as ``Journal.get(with_input=False)``; the scheduler's TaskRun holds it)
        and its result decoded from the text just written, not read back."""
        r = list(row[:19])
        r[4], r[5], r[16], r[17], r[18] = None, _loads(r[5]), _loads(r[16]), _loads(result_text), _loads(r[18])
        return cls(*r)


def _resolve_stored(conn: sqlite3.Connection, task_id: str, step_id: str, template: Any,
                    sources: dict[str, str]) -> Any:
    """The input of a step stored by reference: its template resolved against the results
    of ``sources`` (step id -> task id), each recorded once and never changed."""
    if not sources:
        return resolve_refs(step_id, template, {})
    marks = ", ".join("?" * len(sources))
    bodies = dict(conn.execute(f"SELECT id, body FROM task_results WHERE id IN ({marks})",
                               list(sources.values())).fetchall())
    missing = [step for step, tid in sources.items() if tid not in bodies]
    if missing and conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
        # another process's reader (the CLI): retention took the finished pipeline between
        # this record's read and its sources' (the coordinator reads inside its turn)
        raise NotFound(f"task {task_id!r} was removed by retention while it was read",
                       hint="`agora tasks` lists the known ids")
    if missing:
        raise BrokenError(f"task {task_id!r}: the result of step {missing[0]!r} its input references "
                          "is not in the journal", hint="this is a bug in agora's journal (or the file "
                          "was edited by hand)")
    return resolve_refs(step_id, template, {step: _loads(bodies[tid]) for step, tid in sources.items()})


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    task_id: str
    attempt: int
    agent: str
    started: float
    ended: float | None
    outcome: str | None
    error: Any
    revised: bool


@dataclass(frozen=True, slots=True)
class PipelineRecord:
    id: str
    name: str
    state: str
    trace_id: str | None
    created: float
    updated: float
    steps: dict[str, str]  # step id -> task id
    spec: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Finish:
    """What ``finish_attempt`` did: ``recorded`` is True only for the one result that counts."""

    task_id: str
    attempt: int
    recorded: bool
    state: str
    # the task as this finish left it, when recorded: its input unread (``TaskRecord.finished``)
    record: TaskRecord | None = None


def _classify(exc: sqlite3.Error, what: str) -> Exception:
    """Map a sqlite3 error to agora's hierarchy with facts, cause and what to do."""
    code = getattr(exc, "sqlite_errorname", "")
    if code.startswith("SQLITE_FULL"):
        return ResourceExhausted(f"journal {what} failed: the disk is full ({exc})",
                                 hint="free space on the state directory's file system")
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return Unavailable(f"journal {what} failed: the database is locked by another writer ({exc})",
                           hint="retryable; only the coordinator should write the journal")
    return BrokenError(f"journal {what} failed: {exc}",
                       hint="check the state directory (permissions, disk) and the daemon log")


class _Transaction:
    """``Journal.transaction()``: a context manager written out rather than made with
    ``contextlib.contextmanager`` (a generator per block; there are several per task)."""

    __slots__ = ("journal", "savepoint")

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.savepoint: str | None = None

    def __enter__(self) -> Journal:
        j = self.journal
        if j._depth:
            self.savepoint = f"sp{j._depth}"
            j.conn.execute(f"SAVEPOINT {self.savepoint}")
            j._depth += 1
        else:
            j._begin()
            j._depth = 1
        return j

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        j = self.journal
        if self.savepoint is not None:
            j._depth -= 1
            if kind is not None:
                j.conn.execute(f"ROLLBACK TO {self.savepoint}")
            j.conn.execute(f"RELEASE {self.savepoint}")
            return
        j._depth = 0
        if kind is None:
            j._commit()
            return
        j.conn.rollback()
        if isinstance(exc, sqlite3.Error):
            raise _classify(exc, "write (nothing of this transaction was saved)") from exc


class Checkpointer:
    """Copies the WAL into the database file on a thread of its own.

    By default SQLite checkpoints inside the COMMIT that takes the WAL past 1000 pages: a
    copy plus two fsyncs (synchronous=NORMAL) that a task commit pays about once in 35
    here, which doubled the p99 of a task's round trip (2.4 ms against 1.1-1.5 ms without
    it, perf/dispatch.py's workload).  This thread runs ``wal_checkpoint(PASSIVE)`` every
    ``interval`` seconds on its own connection: PASSIVE never blocks the writer, SQLite
    releases the GIL while it works, and the writer's COMMITs stay short.  Durability is
    unchanged (a commit is durable in the WAL); an error is counted and retried on the
    next round, the WAL growing meanwhile.
    """

    def __init__(self, path: str, durability: str, interval: float = 0.1) -> None:
        self.path, self.durability, self.interval = path, durability, interval
        self.runs = self.errors = 0
        self.last: tuple[int, int, int] | None = None  # the last round's (busy, log, done)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agora-journal-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
        try:
            conn.execute(f"PRAGMA synchronous={self.durability.upper()}")
            while not self._stop.wait(self.interval):
                self.run_once(conn)
        finally:
            conn.close()

    def run_once(self, conn: sqlite3.Connection) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint: (busy, frames in the WAL, frames copied), None on error."""
        try:
            busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.errors += 1
            self.last_error = str(exc)
            return None
        self.runs += 1
        self.last = (busy, log, done)
        return self.last


class Journal:
    """One connection to ``<state_dir>/journal.db``.  Not thread-safe: one per thread."""

    def __init__(self, state_dir: str | os.PathLike[str], *, clock: Callable[[], float] = time.time,
                 durability: str = "full", busy_timeout: float = 5.0,
                 rng: random.Random | None = None, retry_base: float = 0.5,
                 retry_cap: float = 60.0) -> None:
        if durability not in ("full", "normal"):
            raise InvalidInput(f"durability must be 'full' or 'normal', got {durability!r}")
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self.path = os.path.join(os.fspath(state_dir), JOURNAL_FILE)
        self.clock, self.rng = clock, rng or random.Random()
        self.retry_base, self.retry_cap = retry_base, retry_cap
        self._depth = 0
        self.durability = durability
        self.checkpointer: Checkpointer | None = None
        self.conn = self._connect(durability, busy_timeout)
        self._last_id = max(_parse_id(self._one("SELECT max(id) FROM tasks")),
                            _parse_id(self._one("SELECT max(id) FROM pipelines")))

    def _connect(self, durability: str, busy_timeout: float) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout)
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a no-op once the file has pages
            conn.execute("PRAGMA journal_mode=WAL")
            # a burst grows the WAL; once checkpointed it is truncated back to this
            # (without a limit the file keeps its largest size for the daemon's life)
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
            conn.execute(f"PRAGMA synchronous={durability.upper()}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            _split_blobs(conn)
        except sqlite3.Error as exc:
            raise _classify(exc, f"open of {self.path}") from exc
        return conn

    def checkpoint_in_background(self, interval: float = 0.1) -> Checkpointer:
        """Stop checkpointing inside COMMITs and leave it to a :class:`Checkpointer`
        thread (the coordinator calls this once; ``close`` stops the thread)."""
        if self.checkpointer is None:
            self.conn.execute("PRAGMA wal_autocheckpoint=0")
            self.checkpointer = Checkpointer(self.path, self.durability, interval)
            self.checkpointer.start()
        return self.checkpointer

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.conn.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------

    def transaction(self) -> _Transaction:
        """Group writes under one COMMIT.  Nested blocks are savepoints: an error inside
        one undoes that block only (and propagates); the outermost block commits."""
        return _Transaction(self)

    def _begin(self) -> None:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _classify(exc, "begin") from exc

    def _commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.rollback()
            raise _classify(exc, "commit (nothing of this transaction was saved)") from exc

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _new_id(self, prefix: str, now: float) -> str:
        text, self._last_id = next_id(prefix, self._last_id, now)
        return text

    # -- submission -----------------------------------------------------------------------

    def submit(self, spec: TaskSpec, *, trace_id: str | None = None) -> str:
        return self.submit_many([spec], trace_ids=[trace_id] if trace_id else None)[0]

    def submit_many(self, specs: Sequence[TaskSpec], *,
                    trace_ids: Sequence[str | None] | None = None) -> list[str]:
        """Insert tasks in ONE transaction; return their ids (existing ids for known keys).

        Durable when this returns, unless called inside ``transaction()`` (then: when the
        outer block exits).  Tasks without a trace id get a new trace each.
        """
        now = self.clock()
        traces = list(trace_ids) if trace_ids is not None else [None] * len(specs)
        if len(traces) != len(specs):
            raise InvalidInput(f"submit_many got {len(specs)} specs but {len(traces)} trace ids")
        rows = [self._task_row(spec, trace or new_id(), now) for spec, trace in zip(specs, traces)]
        keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
        if len(rows) == 1 and self._depth:
            # One task inside an open transaction (the coordinator's turn): its two
            # statements need no savepoint of their own.  SQLite undoes a failed statement by
            # itself, and the input's can only fail with the file (the turn rolls back).
            self._insert_tasks(rows)
            existing = self._ids_by_key(keys)
        else:
            with self.transaction():
                self._insert_tasks(rows)
                existing = self._ids_by_key(keys)
        return [existing.get(spec.idempotency_key, row[0]) if spec.idempotency_key else row[0]
                for spec, (row, _) in zip(specs, rows)]

    def _task_row(self, spec: TaskSpec, trace_id: str, now: float, *, state: str = "queued",
                  pipeline_id: str | None = None, step_id: str | None = None,
                  options: dict[str, Any] | None = None, deps: Any = None) -> tuple[tuple[Any, ...], str]:
        """(the tasks row, the input's JSON text)."""
        if not isinstance(spec, TaskSpec):
            raise InvalidInput(f"submit needs TaskSpec objects (from runtime.tasks.task.parse_task), "
                               f"got {type(spec).__name__}")
        return ((self._new_id("t-", now), pipeline_id, step_id, spec.capability,
                 _dumps(options or spec.options()), state, 0, spec.max_attempts, spec.priority,
                 now, now, spec.deadline, None, trace_id, spec.idempotency_key,
                 None if deps is None else _dumps(deps), None), _dumps(spec.input))

    def _insert_tasks(self, rows: Sequence[tuple[tuple[Any, ...], str]]) -> None:
        """Tasks rows and their inputs (inside a transaction).  Only a row with an
        idempotency key can have been left out (a known key), so only its input asks."""
        self.conn.executemany(_INSERT_TASK, [row for row, _ in rows])
        new: list[tuple[str, str]] = []
        keyed: list[tuple[str, str]] = []
        for row, text in rows:
            (new if row[_KEY_AT] is None else keyed).append((row[0], text))
        if new:
            self.conn.executemany(_INSERT_INPUT_NEW, new)
        if keyed:
            self.conn.executemany(_INSERT_INPUT, keyed)

    def _ids_by_key(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            sql = f"SELECT idempotency_key, id FROM tasks WHERE idempotency_key IN ({', '.join('?' * len(chunk))})"
            found.update(self.conn.execute(sql, chunk).fetchall())
        return found

    def submit_pipeline(self, pipeline: Pipeline | dict[str, Any], *,
                        trace_id: str | None = None) -> tuple[str, dict[str, str]]:
        """Store a pipeline and its steps (one transaction); return (pipeline id, step -> task id).

        Steps without references are ``queued``, the others ``blocked``.  A dict is parsed
        with ``parse_pipeline`` (no capability check: parse it yourself to get one).
        """
        now = self.clock()
        if not isinstance(pipeline, Pipeline):
            pipeline = parse_pipeline(pipeline, now=now)
        spec, trace_id = pipeline.to_json(), trace_id or new_id()
        pid = self._new_id("p-", now)
        rows = [self._task_row(step.spec, trace_id, now, state="blocked" if step.deps else "queued",
                               pipeline_id=pid, step_id=step.id, options=self._step_options(js),
                               deps=step.deps)
                for step, js in zip(pipeline.steps, spec["steps"])]
        with self.transaction():
            self.conn.execute("INSERT INTO pipelines VALUES (?, ?, ?, 'running', ?, ?, ?)",
                              (pid, pipeline.name, _dumps(spec), trace_id, now, now))
            self._insert_tasks(rows)
        return pid, {row[2]: row[0] for row, _ in rows}

    @staticmethod
    def _step_options(step_json: dict[str, Any]) -> dict[str, Any]:
        return {**step_json["options"], "consensus": step_json["consensus"]}

    # -- attempts -------------------------------------------------------------------------

    def start_attempt(self, task_id: str, agent: str) -> int:
        """Mark the task running and record a new attempt; return its number (1-based)."""
        return self.start_attempts([(task_id, agent)])[0]

    def start_attempts(self, pairs: Sequence[tuple[str, str]]) -> list[int]:
        """``start_attempt`` for each (task_id, agent), all or nothing, one transaction
        (the coordinator starts every attempt of a dispatch turn at once)."""
        now = self.clock()
        numbers = []
        with self.transaction():
            for task_id, _agent in pairs:
                row = self.conn.execute(_START, (now, task_id)).fetchone()
                if row is None:
                    self._raise_illegal(task_id, "start")
                numbers.append(int(row[0]))
            self.conn.executemany(
                "INSERT INTO attempts (task_id, attempt, agent, started) VALUES (?, ?, ?, ?)",
                [(t, n, a, now) for (t, a), n in zip(pairs, numbers)])
        return numbers

    def _raise_illegal(self, task_id: str, event: str) -> None:
        state = self._one("SELECT state FROM tasks WHERE id = ?", (task_id,))
        if state is None:
            raise NotFound(f"no task {task_id!r} in the journal", hint="`agora tasks` lists the known ids")
        transition(state, event)  # raises IllegalTransition naming state and event
        raise BrokenError(f"task {task_id!r} in state {state!r} should take {event!r} but the update "
                          "matched nothing", hint="this is a bug in agora's journal")

    def finish_attempt(self, task_id: str, attempt: int, outcome: str,
                       result: Any = None, error: Any = None) -> Finish:
        """Record how an attempt ended and move the task on (see the module docstring).

        The first success of any attempt records ``result`` (``Finish.recorded``); every
        other finish is recorded in ``attempts`` only.
        """
        now = self.clock()
        if outcome not in OUTCOMES:
            raise InvalidInput(f"unknown attempt outcome {outcome!r}", hint=f"outcomes are {', '.join(OUTCOMES)}")
        with self.transaction():
            if not self._end_attempt(task_id, attempt, outcome, error, now):
                return Finish(task_id, attempt, False, self._state(task_id))
            if outcome == "succeeded":
                record = self._record_result(task_id, result, now)
                if record is not None:  # the hot path: no further reads
                    if record.pipeline_id is not None:
                        self._advance_pipeline(record.pipeline_id, now)
                    return Finish(task_id, attempt, True, "succeeded", record)
            else:
                self._apply_failure(task_id, attempt, outcome, error, now)
            self._advance_pipeline_of(task_id, now)
            return Finish(task_id, attempt, False, self._state(task_id))

    def finish_many(self, items: Iterable[tuple[str, int, str, Any, Any]]) -> list[Finish]:
        """``finish_attempt`` for each (task_id, attempt, outcome, result, error), one COMMIT.

        All or nothing: the first item that raises (unknown task or attempt) aborts the
        batch and nothing of it is saved; the caller may retry the others.
        """
        with self.transaction():
            return [self.finish_attempt(*item) for item in items]

    def finish_successes(self, items: Sequence[tuple[str, int, Any]]) -> list[Finish] | None:
        """Successful (task_id, attempt, result) of several open attempts of running tasks,
        in three statements instead of about 2 + 4 per item: the agents' prefetched
        batches (runtime.tasks.scheduler).  The same exactly-once guards as
        ``finish_attempt``; when any item does not fit the usual case (an attempt already
        ended, a result already recorded, a task not running, an id twice) nothing of the
        batch is written and None says: finish them one by one.  Measured (a /tmp journal,
        batches of 16): 27-28 -> 15-16 us of CPU per task."""
        if not items:
            return []
        now = self.clock()
        try:
            with self.transaction():
                cur = self.conn.executemany(
                    "UPDATE attempts SET ended = ?, outcome = 'succeeded', error = NULL, revised = 0 "
                    "WHERE task_id = ? AND attempt = ? AND ended IS NULL",
                    [(now, t, a) for t, a, _ in items])
                if cur.rowcount != len(items):
                    raise _NotUsual
                texts = {t: _dumps(r) for t, _, r in items}
                batch = _dumps([[t, texts[t]] for t, _, _ in items])
                if self.conn.execute(_RESULT_MANY, (batch,)).rowcount != len(items):
                    raise _NotUsual
                rows = self.conn.execute(_SUCCEED_MANY, (now, batch)).fetchall()
                if len(rows) != len(items):
                    raise _NotUsual
                records = {r[0]: TaskRecord.finished(r, texts[r[0]]) for r in rows}
                for pid in dict.fromkeys(rec.pipeline_id for rec in records.values() if rec.pipeline_id):
                    self._advance_pipeline(pid, now)
        except _NotUsual:
            return None
        return [Finish(t, a, True, "succeeded", records[t]) for t, a, _ in items]

    def _end_attempt(self, task_id: str, attempt: int, outcome: str, error: Any, now: float) -> bool:
        """Close the attempt row; False if this outcome was already observed (a repeat)."""
        err = None if error is None else _dumps(error)
        if self.conn.execute("UPDATE attempts SET ended = ?, outcome = ?, error = ?, revised = 0 "
                             "WHERE task_id = ? AND attempt = ? AND ended IS NULL",
                             (now, outcome, err, task_id, attempt)).rowcount:
            return True  # the usual case: the attempt was open (one statement, no read)
        prev = self.conn.execute("SELECT ended, outcome FROM attempts WHERE task_id = ? AND attempt = ?",
                                 (task_id, attempt)).fetchone()
        if prev is None:
            raise NotFound(f"task {task_id!r} has no attempt {attempt}",
                           hint="finish only attempts that start_attempt returned")
        if prev[0] is not None and (prev[1] != "crashed" or outcome == "crashed"):
            return False
        self.conn.execute("UPDATE attempts SET ended = ?, outcome = ?, error = ?, revised = 1 "
                          "WHERE task_id = ? AND attempt = ?", (now, outcome, err, task_id, attempt))
        return True

    def _record_result(self, task_id: str, result: Any, now: float) -> TaskRecord | None:
        """The task with its result, or None when not recorded: the guarded UPDATE is the
        exactly-once point."""
        text = _dumps(result)
        if not self.conn.execute(_RESULT, (task_id, text)).rowcount:
            return None
        row = self.conn.execute(_SUCCEED, (now, task_id)).fetchone()
        if row is None:  # the INSERT above saw the same state in the same transaction
            raise BrokenError(f"task {task_id!r}: its result was recorded but its state did not move",
                              hint="this is a bug in agora's journal")
        return TaskRecord.finished(row, text)

    def _apply_failure(self, task_id: str, attempt: int, outcome: str, error: Any, now: float) -> None:
        row = self.conn.execute("SELECT state, attempts, max_attempts FROM tasks WHERE id = ?",
                                (task_id,)).fetchone()
        if row[0] != "running" or row[1] != attempt:
            return  # a late failure of an old attempt: recorded in attempts, nothing else
        event = outcome_event(outcome, self._charged(task_id, attempt), row[2])
        state = transition("running", event)
        not_before = (now + retry_delay(attempt, self.retry_base, self.retry_cap, self.rng)
                      if state == "retry_wait" else None)
        if event == "dead_letter":
            error = {"code": "DEAD_LETTERED", "last_error": error,
                     "message": f"attempt {attempt} of {row[2]} did not finish (the agent died or "
                                "its lease expired each time): the task is treated as poison",
                     "hint": "inspect `agora task ID` attempts; fix the handler, then resubmit"}
        self.conn.execute("UPDATE tasks SET state = ?, error = ?, not_before = ?, updated = ? "
                          "WHERE id = ? AND state = 'running' AND attempts = ?",
                          (state, _dumps(error), not_before, now, task_id, attempt))

    def _charged(self, task_id: str, attempts: int) -> int:
        """Attempts that count against max_attempts: all but those a graceful stop
        interrupted (one indexed read, on the failure path only)."""
        spared = self._one("SELECT count(*) FROM attempts WHERE task_id = ? AND outcome = 'interrupted'",
                           (task_id,))
        return attempts - int(spared or 0)

    def interrupt_running(self, reason: str = "the daemon stopped (graceful stop past drain_s)") -> list[str]:
        """A graceful stop gives up the attempts still running: each is closed as
        ``interrupted`` and its task goes back to ``queued`` uncharged (the next start
        runs it again without burning an attempt).  Returns the task ids."""
        error = {"code": "INTERRUPTED", "message": reason}
        with self.transaction():
            rows = self.conn.execute(
                "SELECT t.id, a.attempt FROM tasks t JOIN attempts a ON a.task_id = t.id "
                "AND a.attempt = t.attempts WHERE t.state = 'running' AND a.ended IS NULL").fetchall()
            for task_id, attempt in rows:
                self.finish_attempt(task_id, attempt, "interrupted", error=error)
        return [r[0] for r in rows]

    def attempt_summary(self, task_id: str) -> dict[str, int]:
        """Attempts per outcome (``crashed`` shown as ``lost``; ``open`` still running)."""
        rows = self.conn.execute("SELECT coalesce(outcome, 'open'), count(*) FROM attempts "
                                 "WHERE task_id = ? GROUP BY 1", (task_id,)).fetchall()
        return {("lost" if k == "crashed" else k): n for k, n in rows}

    def redrive(self, task_id: str) -> TaskRecord:
        """Queue a dead-lettered or failed task again with ``max_attempts`` fresh attempts
        (its original budget); its attempt history stays.  Pipeline steps are refused:
        their downstream steps were already settled (resubmit the pipeline)."""
        now = self.clock()
        with self.transaction():
            rec = self.get(task_id)
            if rec.pipeline_id is not None:
                raise Conflict(f"task {task_id} is step {rec.step_id!r} of pipeline {rec.pipeline_id}: "
                               "its downstream steps have already been settled",
                               hint="resubmit the pipeline (`agora pipeline FILE`)", field="id")
            transition(rec.state, "redrive")  # IllegalTransition names the state
            fresh = int((rec.options or {}).get("max_attempts") or rec.max_attempts)
            self.conn.execute("UPDATE tasks SET state = 'queued', max_attempts = ?, error = NULL, "
                              "not_before = NULL, updated = ? WHERE id = ? AND state IN "
                              f"{_legal_from('redrive')}", (rec.attempts + fresh, now, task_id))
            return self.get(task_id)

    def cancel_pipeline(self, pipeline_id: str, reason: str = "pipeline cancelled by request") -> list[str]:
        """Cancel every unfinished step and mark the pipeline ``cancelled``; returns the
        ids of the steps this cancelled (empty if it had ended)."""
        now = self.clock()
        with self.transaction():
            self.get_pipeline(pipeline_id)  # NotFound names it
            rows = self.conn.execute(
                f"UPDATE tasks SET state = 'cancelled', error = ?, updated = ?, not_before = NULL "
                f"WHERE pipeline_id = ? AND state IN {_legal_from('cancel')} RETURNING id",
                (_dumps({"code": "CANCELLED", "message": reason}), now, pipeline_id)).fetchall()
            self.conn.execute("UPDATE pipelines SET state = 'cancelled', updated = ? "
                              "WHERE id = ? AND state = 'running'", (now, pipeline_id))
        return sorted(r[0] for r in rows)

    # -- other state changes --------------------------------------------------------------

    def cancel(self, task_id: str, reason: str = "cancelled by request") -> bool:
        """Cancel an unfinished task; False if it had already ended."""
        return self._mark(task_id, "cancel", {"code": "CANCELLED", "message": reason})

    def reject(self, task_id: str, error: Any) -> bool:
        """Fail a task that never started and cannot (NO_AWARD); False if it had moved on."""
        return self._mark(task_id, "reject", error)

    def dead_letter(self, task_id: str, error: Any) -> bool:
        """Dead-letter a running or waiting task (the coordinator's poison verdict)."""
        return self._mark(task_id, "dead_letter", error)

    def mark_deadline(self, task_id: str) -> bool:
        return self._mark(task_id, "deadline", self._deadline_error())

    def _mark(self, task_id: str, event: str, error: Any) -> bool:
        now = self.clock()
        with self.transaction():
            cur = self.conn.execute(
                f"UPDATE tasks SET state = ?, error = ?, updated = ?, not_before = NULL "
                f"WHERE id = ? AND state IN {_legal_from(event)}",
                (transition(sources(event)[0], event), _dumps(error), now, task_id))
            if cur.rowcount == 0 and self._state(task_id) is None:
                raise NotFound(f"no task {task_id!r} in the journal", hint="`agora tasks` lists the known ids")
            self._advance_pipeline_of(task_id, now)
        return cur.rowcount == 1

    @staticmethod
    def _deadline_error() -> dict[str, str]:
        return {"code": "DEADLINE_EXCEEDED", "message": "the task's deadline passed before it succeeded",
                "hint": "give it a longer options.deadline or make the capability faster"}

    def expire_due(self, now: float | None = None) -> list[str]:
        """Move every unfinished task whose deadline is <= now to deadline_exceeded."""
        now = self.clock() if now is None else now
        with self.transaction():
            rows = self.conn.execute(
                f"UPDATE tasks SET state = 'deadline_exceeded', error = ?, updated = ?, not_before = NULL "
                f"WHERE deadline <= ? AND state IN {_legal_from('deadline')} RETURNING id, pipeline_id",
                (_dumps(self._deadline_error()), now, now)).fetchall()
            for pid in {p for _, p in rows if p}:
                self._advance_pipeline(pid, now)
        return sorted(r[0] for r in rows)

    def promote_due(self, now: float | None = None) -> list[str]:
        """Queue every task in retry_wait whose backoff has elapsed; return their ids."""
        now = self.clock() if now is None else now
        with self.transaction():
            rows = self.conn.execute(
                "UPDATE tasks SET state = 'queued', not_before = NULL, updated = ? "
                "WHERE state = 'retry_wait' AND not_before <= ? RETURNING id", (now, now)).fetchall()
        return sorted(r[0] for r in rows)

    def unfinished(self) -> list[TaskRecord]:
        """Recover after a restart and return what to resume (highest priority first).

        Call once at start, before any attempt starts: a ``running`` task then is a
        leftover of a dead process.  Its open attempt is closed as ``crashed`` and the task
        goes back to ``queued`` (the attempt stays counted), or to ``dead_lettered`` if it
        has no attempt left.  Returns queued, retry_wait and blocked tasks.
        """
        now = self.clock()
        lost = {"code": "LOST", "message": "the daemon stopped while this attempt ran"}
        with self.transaction():
            for task_id, attempt in self.conn.execute(
                    "SELECT t.id, a.attempt FROM tasks t JOIN attempts a ON a.task_id = t.id "
                    "AND a.attempt = t.attempts WHERE t.state = 'running'").fetchall():
                self.finish_attempt(task_id, attempt, "crashed", error=lost)
            self.conn.execute("UPDATE attempts SET ended = ?, outcome = 'crashed', error = ? "
                              "WHERE ended IS NULL", (now, _dumps(lost)))  # of cancelled tasks
            rows = self.conn.execute(
                f"SELECT {_RECORD} FROM tasks WHERE state IN ('queued', 'retry_wait', 'blocked') "
                "ORDER BY priority DESC, id").fetchall()
        return [TaskRecord.from_row(r, self.conn) for r in rows]

    # -- pipelines ------------------------------------------------------------------------

    def _advance_pipeline_of(self, task_id: str, now: float) -> None:
        pid = self._one("SELECT pipeline_id FROM tasks WHERE id = ?", (task_id,))
        if pid is not None:
            self._advance_pipeline(pid, now)

    def _advance_pipeline(self, pid: str, now: float) -> None:
        """Unblock steps whose inputs exist, cancel doomed ones, settle the pipeline state.
        An output is read and decoded only when a step about to be unblocked references
        it, once per call (reading every finished step's result at each step's end made a
        6-step pipeline of 35 KB documents decode 21 results instead of 5)."""
        steps = self.conn.execute("SELECT id, step_id, state, deps FROM tasks "
                                  "WHERE pipeline_id = ?", (pid,)).fetchall()
        state = {s[1]: s[2] for s in steps}
        ids = {s[1]: s[0] for s in steps}
        outputs: dict[str, Any] = {}  # step id -> decoded output, filled on first use
        for task_id, step_id, st, deps in steps:
            if st == "blocked":
                state[step_id] = self._unblock_or_cancel(task_id, step_id, _loads(deps), state,
                                                         (ids, outputs), now)
        self._settle_pipeline(pid, list(state.values()), now)

    def _unblock_or_cancel(self, task_id: str, step_id: str, deps: list[str], state: dict[str, str],
                           known: tuple[dict[str, str], dict[str, Any]], now: float) -> str:
        doomed = [d for d in deps if state[d] in _DOOMED]
        if doomed:
            error = {"code": "UPSTREAM_FAILED", "message": f"step {step_id!r} cannot run: step "
                     f"{doomed[0]!r} ended {state[doomed[0]]}", "step": step_id}
            return self._set_state(task_id, "cancelled", now, error=error)
        if not all(state[d] == "succeeded" for d in deps):
            return "blocked"
        ids, outputs = known
        for d in deps:  # the references' sources are exactly the deps (runtime.tasks.pipeline)
            if d not in outputs:
                outputs[d] = _loads(self._one("SELECT body FROM task_results WHERE id = ?", (ids[d],)))
        template = _loads(self._one("SELECT body FROM task_inputs WHERE id = ?", (task_id,)))
        try:  # resolved here only to fail the step now if a reference cannot be
            resolve_refs(step_id, template, outputs)
        except InvalidInput as exc:
            return self._set_state(task_id, "failed", now, error={
                "code": exc.code, "message": exc.message, "hint": exc.hint, "step": step_id})
        return self._set_state(task_id, "queued", now, sources={d: ids[d] for d in deps})

    def _set_state(self, task_id: str, state: str, now: float, *, error: Any = None,
                   sources: dict[str, str] | None = None) -> str:
        """Move a blocked step on; a queued step keeps its template and gets its sources
        (its input by reference: "Inputs by reference" in the module docstring)."""
        sets, params = "state = ?, updated = ?", [state, now]
        if error is not None:
            sets, params = sets + ", error = ?", params + [_dumps(error)]
        moved = self.conn.execute(f"UPDATE tasks SET {sets} WHERE id = ? AND state = 'blocked'",
                                  params + [task_id]).rowcount
        if moved and state == "queued":
            self.conn.execute("INSERT OR REPLACE INTO task_sources (id, sources) VALUES (?, ?)",
                              (task_id, _dumps(sources or {})))
        return state

    def _settle_pipeline(self, pid: str, states: list[str], now: float) -> None:
        if not all(s in TERMINAL for s in states):
            return
        final = "succeeded" if all(s == "succeeded" for s in states) else "failed"
        self.conn.execute("UPDATE pipelines SET state = ?, updated = ? WHERE id = ? AND state = 'running'",
                          (final, now, pid))

    # -- reads ----------------------------------------------------------------------------

    def _state(self, task_id: str) -> str | None:
        return self._one("SELECT state FROM tasks WHERE id = ?", (task_id,))

    def options(self, task_id: str) -> dict[str, Any]:
        """A task's options (what ``TaskRecord.options`` holds) without decoding its input
        and result: a consensus step asks at each dispatch (35 KB documents, 6 per pipeline)."""
        text = self._one("SELECT options FROM tasks WHERE id = ?", (task_id,))
        if text is None:
            raise NotFound(f"no task {task_id!r} in the journal", hint="`agora tasks` lists the known ids")
        return _loads(text)

    def get(self, task_id: str, *, with_input: bool = True) -> TaskRecord:
        """The task's record; ``with_input=False`` leaves its input unread (``None``): a
        pipeline's result shows its steps without inputs, and a step's input by reference
        costs a read and a decode of the results it references."""
        row = self.conn.execute(f"SELECT {_RECORD if with_input else _RECORD_NO_INPUT} FROM tasks WHERE id = ?",
                                (task_id,)).fetchone()
        if row is None:
            raise NotFound(f"no task {task_id!r} in the journal", hint="`agora tasks` lists the known ids")
        return TaskRecord.from_row(row, self.conn)

    def states(self, task_ids: Sequence[str]) -> dict[str, str]:
        """Task id -> state for every id given, read in chunks of ``_CHUNK`` (no record is
        decoded: ``wait_all`` of 10,000 ids took 21-27 us per id through ``get``, 3 us
        here); NotFound names the first unknown id, as ``get`` would."""
        found: dict[str, str] = {}
        for i in range(0, len(task_ids), _CHUNK):
            chunk = list(task_ids[i:i + _CHUNK])
            found.update(self.conn.execute(
                f"SELECT id, state FROM tasks WHERE id IN ({', '.join('?' * len(chunk))})", chunk).fetchall())
        if len(found) < len(set(task_ids)):
            missing = next(t for t in task_ids if t not in found)
            raise NotFound(f"no task {missing!r} in the journal", hint="`agora tasks` lists the known ids")
        return found

    def list(self, state: str | None = None, limit: int = 100, *, with_input: bool = True) -> list[TaskRecord]:
        """Tasks, newest first, optionally in one state (``with_input``: as for ``get``)."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"unknown task state {state!r}", hint=f"states are {', '.join(STATES)}")
        where, params = ("WHERE state = ?", [state]) if state else ("", [])
        rows = self.conn.execute(f"SELECT {_RECORD if with_input else _RECORD_NO_INPUT} FROM tasks {where} "
                                 "ORDER BY id DESC LIMIT ?",
                                 params + [limit]).fetchall()
        return [TaskRecord.from_row(r, self.conn) for r in rows]

    def attempts(self, task_id: str) -> list[AttemptRecord]:
        rows = self.conn.execute("SELECT task_id, attempt, agent, started, ended, outcome, error, revised "
                                 "FROM attempts WHERE task_id = ? ORDER BY attempt", (task_id,)).fetchall()
        return [AttemptRecord(*r[:6], _loads(r[6]), bool(r[7])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of tasks per state (every state present, zeros included)."""
        found = dict(self.conn.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall())
        return {s: found.get(s, 0) for s in STATES}

    def get_pipeline(self, pipeline_id: str) -> PipelineRecord:
        row = self.conn.execute("SELECT id, name, state, trace_id, created, updated, spec FROM pipelines "
                                "WHERE id = ?", (pipeline_id,)).fetchone()
        if row is None:
            raise NotFound(f"no pipeline {pipeline_id!r} in the journal")
        steps = dict(self.conn.execute("SELECT step_id, id FROM tasks WHERE pipeline_id = ?",
                                       (pipeline_id,)).fetchall())
        return PipelineRecord(*row[:6], steps, _loads(row[6]))

    # -- retention ------------------------------------------------------------------------

    def compact(self, *, max_age_s: float | None = None, keep: int | None = None,
                now: float | None = None, batch: int = 5000) -> dict[str, int]:
        """Delete finished work: standalone tasks that ended more than ``max_age_s`` ago or
        beyond the ``keep`` most recent finished ones, their attempts, and finished
        pipelines (with their steps) by the same two rules.  Live tasks, running pipelines
        and their steps are never touched.  At most ``batch`` tasks per call, so a turn
        of the coordinator stays short; call again while it returns ``tasks == batch``.

        SQLite reuses the freed pages, so the file stops growing at its high-water mark
        (it does not shrink: ``VACUUM`` would lock the writer for seconds).  An
        idempotency key of a deleted task no longer deduplicates (decision: retention
        is also the key's lifetime)."""
        now = self.clock() if now is None else now
        done = _in(TERMINAL)
        with self.transaction():
            ids = self._expired_tasks(done, max_age_s, keep, now, batch)
            pids = self._expired_pipelines(max_age_s, keep, now, max(1, batch // 10))
            ids += [r[0] for p in pids for r in self.conn.execute(
                "SELECT id FROM tasks WHERE pipeline_id = ?", (p,)).fetchall()]
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                self.conn.execute(f"DELETE FROM attempts WHERE task_id IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM task_inputs WHERE id IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM task_results WHERE id IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM task_sources WHERE id IN ({marks})", chunk)
                self.conn.execute(f"DELETE FROM tasks WHERE id IN ({marks})", chunk)
            self.conn.executemany("DELETE FROM pipelines WHERE id = ?", [(p,) for p in pids])
        return {"tasks": len(ids), "pipelines": len(pids)}

    def _expired_tasks(self, done: str, max_age_s: float | None, keep: int | None,
                       now: float, batch: int) -> list[str]:
        found: list[str] = []
        if max_age_s is not None:
            found += [r[0] for r in self.conn.execute(
                f"SELECT id FROM tasks WHERE pipeline_id IS NULL AND state IN {done} AND updated < ? "
                "LIMIT ?", (now - max_age_s, batch)).fetchall()]
        if keep is not None and len(found) < batch:
            found += [r[0] for r in self.conn.execute(
                f"SELECT id FROM tasks WHERE pipeline_id IS NULL AND state IN {done} "
                "ORDER BY id DESC LIMIT ? OFFSET ?", (batch - len(found), keep)).fetchall()]
        return list(dict.fromkeys(found))

    def _expired_pipelines(self, max_age_s: float | None, keep: int | None, now: float,
                           batch: int) -> list[str]:
        found: list[str] = []
        if max_age_s is not None:
            found += [r[0] for r in self.conn.execute(
                "SELECT id FROM pipelines WHERE state != 'running' AND updated < ? LIMIT ?",
                (now - max_age_s, batch)).fetchall()]
        if keep is not None:
            found += [r[0] for r in self.conn.execute(
                "SELECT id FROM pipelines WHERE state != 'running' ORDER BY id DESC LIMIT ? OFFSET ?",
                (batch, keep)).fetchall()]
        return list(dict.fromkeys(found))[:batch]

    def stats(self) -> dict[str, Any]:
        """Sizes for `agora journal stats`: files, pages, rows per table, tasks per state."""
        def size(path: str) -> int:
            try:
                return os.path.getsize(path)
            except OSError:
                return 0
        tables = [r[0] for r in self.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()]
        rows = {t: int(self._one(f'SELECT count(*) FROM "{t}"')) for t in tables}
        page = int(self._one("PRAGMA page_size"))
        return {"path": self.path, "file_bytes": size(self.path), "wal_bytes": size(self.path + "-wal"),
                "page_size": page, "pages": int(self._one("PRAGMA page_count")),
                "free_pages": int(self._one("PRAGMA freelist_count")), "rows": rows,
                "tasks_by_state": self.counts(),
                "oldest_finished": self._one(f"SELECT min(updated) FROM tasks WHERE state IN {_in(TERMINAL)}")}
