"""Inputs and results apart from the tasks' rows (runtime.tasks.journal, "Blobs apart"):
a state change writes the small row only; every task has one input row and at most one
result row, none orphaned; a journal of the earlier layout is moved over when opened."""

from __future__ import annotations

import os
import sqlite3

import pytest

from runtime.tasks.journal import Journal
from runtime.tasks.task import TaskSpec

BIG = {"text": "x" * 50_000}

# The layout before the split (tasks held input and result), as a journal of an earlier
# version has it on disk.
OLD_SCHEMA = """
CREATE TABLE pipelines (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
    trace_id TEXT, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, pipeline_id TEXT REFERENCES pipelines(id), step_id TEXT,
    capability TEXT NOT NULL, input TEXT NOT NULL, options TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
    priority INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    deadline REAL, not_before REAL, trace_id TEXT, idempotency_key TEXT UNIQUE,
    deps TEXT, result TEXT, error TEXT);
CREATE INDEX tasks_by_state ON tasks(state, priority);
CREATE INDEX tasks_by_pipeline ON tasks(pipeline_id) WHERE pipeline_id IS NOT NULL;
CREATE TABLE attempts (
    task_id TEXT NOT NULL REFERENCES tasks(id), attempt INTEGER NOT NULL, agent TEXT NOT NULL,
    started REAL NOT NULL, ended REAL, outcome TEXT, error TEXT, revised INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)) WITHOUT ROWID;
"""


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "state", durability="normal")
    yield j
    j.close()


def _wal(j: Journal) -> int:
    return os.path.getsize(j.path + "-wal")


def _counts(j: Journal) -> tuple[int, int, int]:
    one = lambda sql: j.conn.execute(sql).fetchone()[0]  # noqa: E731
    return (one("SELECT count(*) FROM tasks"), one("SELECT count(*) FROM task_inputs"),
            one("SELECT count(*) FROM task_results"))


def test_a_state_change_does_not_rewrite_a_large_input(journal):
    journal.conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows: its size is what was written
    task_id = journal.submit(TaskSpec("w", BIG))
    before = _wal(journal)
    attempt = journal.start_attempt(task_id, "a")
    started = _wal(journal) - before
    journal.finish_attempt(task_id, attempt, "succeeded", result={"ok": 1})
    finished = _wal(journal) - before - started
    # The 50 KB input in the row made each of these rewrite it (about 52 KB of frames).
    assert started < 12_000, started
    assert finished < 12_000, finished
    rec = journal.get(task_id)
    assert rec.input == BIG and rec.result == {"ok": 1} and rec.state == "succeeded"


def test_every_task_has_one_input_and_at_most_one_result(journal):
    a = TaskSpec("w", 1, idempotency_key="k")
    ids = journal.submit_many([a, TaskSpec("w", 2), a])
    assert journal.submit(TaskSpec("w", 3, idempotency_key="k")) == ids[0]
    assert _counts(journal) == (2, 2, 0)  # the repeated key wrote no input of its own
    attempt = journal.start_attempt(ids[0], "a")
    assert journal.finish_attempt(ids[0], attempt, "succeeded", result="first").recorded
    assert not journal.finish_attempt(ids[0], attempt, "succeeded", result="again").recorded
    assert _counts(journal) == (2, 2, 1) and journal.get(ids[0]).result == "first"
    # the batch path: a result already recorded makes the batch fall back, writing nothing
    n2 = journal.start_attempt(ids[1], "b")
    assert journal.finish_successes([(ids[1], n2, "x"), (ids[0], attempt, "y")]) is None
    assert _counts(journal) == (2, 2, 1)
    assert [f.recorded for f in journal.finish_successes([(ids[1], n2, "x")])] == [True]
    assert journal.get(ids[1]).result == "x" and _counts(journal) == (2, 2, 2)


def test_compaction_takes_inputs_and_results_with_their_tasks(journal):
    ids = journal.submit_many([TaskSpec("w", i) for i in range(6)])
    for t in ids[:4]:
        journal.finish_attempt(t, journal.start_attempt(t, "a"), "succeeded", result=t)
    assert journal.compact(keep=1)["tasks"] == 3
    assert _counts(journal) == (3, 3, 1)
    assert {r.input for r in journal.list()} == {3, 4, 5}


def _old_journal(state_dir) -> str:
    """A journal file of the earlier layout: a succeeded task, a queued one, and a pipeline
    whose second step waits for the first."""
    os.makedirs(state_dir)
    path = os.path.join(state_dir, "journal.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(OLD_SCHEMA)
    row = ("INSERT INTO tasks (id, pipeline_id, step_id, capability, input, options, state, attempts, "
           "max_attempts, priority, created, updated, deps, result) VALUES (?, ?, ?, 'w', ?, ?, ?, ?, 3, 0, 1.0, 1.0, ?, ?)")
    opts = '{"max_attempts": 3}'
    conn.execute(row, ("t-000000000001-0001", None, None, '{"n": 1}', opts, "succeeded", 1, None, '"done"'))
    conn.execute("INSERT INTO attempts VALUES ('t-000000000001-0001', 1, 'a', 1.0, 2.0, 'succeeded', NULL, 0)")
    conn.execute(row, ("t-000000000001-0002", None, None, '{"n": 2}', opts, "queued", 0, None, None))
    spec = {"name": "p", "steps": [{"id": "s1", "capability": "w", "input": 1, "options": {}, "consensus": None},
                                   {"id": "s2", "capability": "w", "input": {"$ref": "s1"}, "options": {},
                                    "consensus": None}]}
    import json
    conn.execute("INSERT INTO pipelines VALUES ('p-000000000001-0003', 'p', ?, 'running', NULL, 1.0, 1.0)",
                 (json.dumps(spec),))
    step_opts = '{"max_attempts": 3, "consensus": null}'
    conn.execute(row, ("t-000000000001-0004", "p-000000000001-0003", "s1", "1", step_opts, "queued", 0, None, None))
    conn.execute(row, ("t-000000000001-0005", "p-000000000001-0003", "s2", '{"$ref": "s1"}', step_opts,
                       "blocked", 0, '["s1"]', None))
    conn.close()
    return path


def test_a_journal_of_the_earlier_layout_is_moved_over_when_opened(tmp_path):
    state = tmp_path / "state"
    _old_journal(str(state))
    with Journal(state, durability="normal") as j:
        columns = {r[1] for r in j.conn.execute("PRAGMA table_info(tasks)")}
        assert "input" not in columns and "result" not in columns
        assert _counts(j) == (4, 4, 1)
        done = j.get("t-000000000001-0001")
        assert (done.input, done.result, done.state) == ({"n": 1}, "done", "succeeded")
        queued = j.get("t-000000000001-0002")
        assert (queued.input, queued.result) == ({"n": 2}, None)
        # the moved tasks go on: the queued one runs, the pipeline's step unblocks the next
        n = j.start_attempt(queued.id, "a")
        assert j.finish_attempt(queued.id, n, "succeeded", result=7).recorded
        s1 = "t-000000000001-0004"
        j.finish_attempt(s1, j.start_attempt(s1, "a"), "succeeded", result={"v": 1})
        s2 = j.get("t-000000000001-0005")
        assert (s2.state, s2.input) == ("queued", {"v": 1})
    with Journal(state, durability="normal") as again:  # opening a moved journal is a no-op
        assert _counts(again) == (4, 4, 3)
        assert again.get("t-000000000001-0002").result == 7


def test_two_openers_of_an_earlier_layout_journal_move_it_once(tmp_path):
    # A daemon starting while `agora journal stats` reads the file: both find the old layout,
    # the second takes the write lock once the first has moved it, and must not move it again.
    from runtime.tasks.journal import _split_blobs
    state = tmp_path / "state"
    path = _old_journal(str(state))
    real = sqlite3.connect(path, isolation_level=None)
    real.executescript("CREATE TABLE task_inputs (id TEXT PRIMARY KEY, body TEXT NOT NULL);"
                       "CREATE TABLE task_results (id TEXT PRIMARY KEY, body TEXT NOT NULL);")

    class Racing:  # the first opener moves the journal between our look and our lock
        def execute(self, sql, *args):
            if sql == "BEGIN IMMEDIATE":
                Journal(state, durability="normal").close()
            return real.execute(sql, *args)

        def rollback(self):
            real.rollback()

    _split_blobs(Racing())  # type: ignore[arg-type]
    real.close()
    with Journal(state, durability="normal") as j:
        assert _counts(j) == (4, 4, 1)
        assert j.get("t-000000000001-0001").result == "done"
