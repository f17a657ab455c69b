"""runtime.tasks.journal: durability before ack, crash recovery, exactly-once results, pipelines.

Crash tests fork a child that writes to the journal and dies (os._exit, SIGKILL itself, or
SIGKILL from the parent mid-stream); the parent reopens the file and checks every id the
child acknowledged (wrote to the pipe after submit returned) is there.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import time

import pytest

from runtime.errors import InvalidInput, NotFound
from runtime.tasks.journal import PAGE_SIZE, WAL_LIMIT_BYTES, Journal, next_id
from runtime.tasks.pipeline import parse_pipeline
from runtime.tasks.task import IllegalTransition, TaskSpec, parse_task
from tests.support.helpers import FakeClock, eventually, fork_running, reap

WAIT = 20.0  # bound for any wait on a child; reached only on a deadlock


@pytest.fixture
def clock():
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def journal(tmp_path, clock):
    j = Journal(tmp_path / "state", clock=clock, rng=random.Random(1))
    yield j
    j.close()


def specs(n: int, **kw) -> list[TaskSpec]:
    return [TaskSpec("work", {"i": i}, **kw) for i in range(n)]


# -- child processes ----------------------------------------------------------------------

class LineReader:
    """Complete lines from a pipe, with bounded waits; keeps a partial line for later."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def lines(self, want: int | None = None) -> list[str]:
        """Lines until EOF, or until at least ``want`` complete lines arrived."""
        deadline = time.monotonic() + WAIT
        while want is None or self.buf.count(b"\n") < want:
            ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "child went silent: deadlock?"
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return [line.decode() for line in done]


def read_lines(fd: int, want: int | None = None) -> list[str]:
    return LineReader(fd).lines(want)


def write_line(fd: int, text: str) -> None:
    os.write(fd, (text + "\n").encode())


# -- durability ---------------------------------------------------------------------------

def test_submitted_task_is_visible_to_a_second_connection(journal, tmp_path):
    ids = journal.submit_many(specs(3, priority=4))
    raw = sqlite3.connect(tmp_path / "state" / "journal.db")
    try:
        rows = raw.execute("SELECT id, state, priority FROM tasks ORDER BY id").fetchall()
    finally:
        raw.close()
    assert rows == [(i, "queued", 4) for i in ids]
    with Journal(tmp_path / "state") as other:
        assert other.get(ids[1]).input == {"i": 1}


def test_wal_and_full_sync_are_set(journal):
    assert journal.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_new_journal_has_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    with Journal(tmp_path / "new") as j:
        assert j.conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    (tmp_path / "old").mkdir()
    raw = sqlite3.connect(tmp_path / "old" / "journal.db")  # a journal made with 4 KiB pages
    raw.execute("PRAGMA page_size=4096")
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("CREATE TABLE t (x)")
    raw.close()
    with Journal(tmp_path / "old") as j:
        assert j.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        tid = j.submit_many(specs(1))[0]
        assert j.get(tid).state == "queued"


def _submit_then(how: str, state_dir):
    def body(w: int) -> None:
        j = Journal(state_dir)
        ids = j.submit_many(specs(50))
        write_line(w, " ".join(ids))
        if how == "exit":
            os._exit(9)
        os.kill(os.getpid(), signal.SIGKILL)
    return body


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_acknowledged_ids_survive_death_right_after_ack(tmp_path, how):
    pid, r = fork_running(_submit_then(how, tmp_path / "s"))
    lines = read_lines(r)
    os.close(r)
    status = reap(pid)
    assert (os.WEXITSTATUS(status) == 9) if how == "exit" else (os.WTERMSIG(status) == signal.SIGKILL)
    acked = lines[0].split()
    with Journal(tmp_path / "s") as j:
        assert [j.get(i).state for i in acked] == ["queued"] * 50


def test_acknowledged_ids_survive_sigkill_mid_stream(tmp_path):
    """The parent kills the child at a random point while it submits batch after batch."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    state_dir = tmp_path / "s"

    def body(w: int) -> None:
        j = Journal(state_dir)
        for n in range(10**6):
            for task_id in j.submit_many([TaskSpec("work", {"n": n, "k": k}) for k in range(20)]):
                write_line(w, task_id)

    pid, r = fork_running(body)
    reader = LineReader(r)
    acked = reader.lines(want=rng.randrange(20, 2000))
    os.kill(pid, signal.SIGKILL)
    acked += reader.lines()  # everything else the child acknowledged before it died
    os.close(r)
    assert os.WTERMSIG(reap(pid)) == signal.SIGKILL
    with Journal(state_dir) as j:
        missing = [i for i in acked if _missing(j, i)]
        assert not missing, f"seed={seed}: {len(missing)} acknowledged ids lost"
        assert j.counts()["queued"] >= len(acked), f"seed={seed}"


def _missing(j: Journal, task_id: str) -> bool:
    try:
        j.get(task_id)
    except NotFound:
        return True
    return False


def test_unfinished_after_crash_mid_attempt(tmp_path):
    state_dir = tmp_path / "s"
    with Journal(state_dir) as j:
        task_id = j.submit(TaskSpec("work", 1))

    def body(w: int) -> None:
        j = Journal(state_dir)
        write_line(w, str(j.start_attempt(task_id, "agent.1")))
        os.kill(os.getpid(), signal.SIGKILL)

    pid, r = fork_running(body)
    assert read_lines(r) == ["1"]
    os.close(r)
    reap(pid)
    with Journal(state_dir) as j:
        assert j.get(task_id).state == "running"
        resumed = j.unfinished()
        assert [t.id for t in resumed] == [task_id]
        assert resumed[0].state == "queued" and resumed[0].attempts == 1
        lost = j.attempts(task_id)[0]
        assert lost.outcome == "crashed" and lost.ended is not None and lost.error["code"] == "LOST"
        assert j.start_attempt(task_id, "agent.2") == 2


def test_unfinished_dead_letters_when_no_attempt_is_left(journal):
    poison, ok = journal.submit_many([TaskSpec("work", 1, max_attempts=1), TaskSpec("work", 2)])
    journal.start_attempt(poison, "a")
    waiting = journal.submit(TaskSpec("work", 3))
    resumed = journal.unfinished()
    assert {t.id for t in resumed} == {ok, waiting}
    dead = journal.get(poison)
    assert dead.state == "dead_lettered" and dead.error["code"] == "DEAD_LETTERED"
    assert "poison" in dead.error["message"]


def test_unfinished_orders_by_priority_then_age(journal, clock):
    low = journal.submit(TaskSpec("w", priority=0))
    clock.t += 1
    high = journal.submit(TaskSpec("w", priority=5))
    clock.t += 1
    low2 = journal.submit(TaskSpec("w", priority=0))
    assert [t.id for t in journal.unfinished()] == [high, low, low2]


# -- exactly once -------------------------------------------------------------------------

def _two_attempts(j: Journal) -> str:
    """A task whose attempt 1 was presumed crashed and whose attempt 2 is running."""
    task_id = j.submit(TaskSpec("work", 1))
    assert j.start_attempt(task_id, "a") == 1
    assert j.finish_attempt(task_id, 1, "crashed", error="lease expired").state == "queued"
    assert j.start_attempt(task_id, "b") == 2
    return task_id


def test_a_failed_single_submission_inside_a_turn_leaves_the_turn_s_other_writes(journal):
    # One task inside an open transaction is one INSERT with no savepoint of its own:
    # a failure of that statement must undo nothing but itself.
    kept = journal.submit_many(specs(1))[0]
    with journal.transaction():
        before = journal.submit_many(specs(1))[0]
        last = journal._last_id
        journal._last_id = (last[0], last[1] - 1)  # the next id collides with ``before``
        with pytest.raises(sqlite3.IntegrityError):
            journal.submit_many(specs(1))
        journal._last_id = last
        after = journal.submit_many(specs(1))[0]
    assert [r.id for r in journal.list()] == [after, before, kept]


def test_first_success_wins_and_later_success_is_only_an_attempt(journal):
    task_id = _two_attempts(journal)
    first = journal.finish_attempt(task_id, 2, "succeeded", result={"by": "b"})
    late = journal.finish_attempt(task_id, 1, "succeeded", result={"by": "a"})
    assert (first.recorded, first.state) == (True, "succeeded")
    assert (late.recorded, late.state) == (False, "succeeded")
    rec = journal.get(task_id)
    assert rec.result == {"by": "b"} and rec.state == "succeeded" and rec.attempts == 2
    # the recorded finish carries the row (its input unread) with the result it wrote
    assert first.record == journal.get(task_id, with_input=False) and late.record is None
    assert first.record.result == {"by": "b"}
    a1, a2 = journal.attempts(task_id)
    assert (a1.outcome, a1.revised, a1.agent) == ("succeeded", True, "a")
    assert (a2.outcome, a2.revised, a2.agent) == ("succeeded", False, "b")


def test_late_success_of_presumed_crash_counts_if_first(journal):
    task_id = _two_attempts(journal)
    assert journal.finish_attempt(task_id, 1, "succeeded", result="from a").recorded
    assert not journal.finish_attempt(task_id, 2, "succeeded", result="from b").recorded
    assert journal.get(task_id).result == "from a"


def test_repeated_report_of_same_attempt_is_a_no_op(journal):
    task_id = journal.submit(TaskSpec("work"))
    journal.start_attempt(task_id, "a")
    assert journal.finish_attempt(task_id, 1, "succeeded", result=1).recorded
    again = journal.finish_attempt(task_id, 1, "succeeded", result=2)
    assert not again.recorded and journal.get(task_id).result == 1


def test_null_result_is_a_recorded_result(journal):
    task_id = _two_attempts(journal)
    assert journal.finish_attempt(task_id, 2, "succeeded", result=None).recorded
    assert not journal.finish_attempt(task_id, 1, "succeeded", result="late").recorded
    assert journal.get(task_id).result is None


def test_exactly_once_when_two_processes_finish_at_once(tmp_path):
    """Two processes, each with its own connection, race to finish attempts 1 and 2."""
    state_dir = tmp_path / "s"
    with Journal(state_dir) as j:
        tasks = [_two_attempts(j) for _ in range(20)]
    go_r, go_w = os.pipe()

    def racer(attempt: int):
        def body(w: int) -> None:
            j = Journal(state_dir)
            write_line(w, "ready")
            assert os.read(go_r, 1) == b"g"
            for task_id in tasks:
                f = j.finish_attempt(task_id, attempt, "succeeded", result=attempt)
                write_line(w, f"{task_id} {int(f.recorded)}")
        return body

    children = [fork_running(racer(1)), fork_running(racer(2))]
    for _, r in children:
        assert read_lines(r, want=1) == ["ready"]
    os.write(go_w, b"gg")
    results = {}
    for pid, r in children:
        lines = read_lines(r)  # the 'ready' line was consumed above
        os.close(r)
        assert os.WEXITSTATUS(reap(pid)) == 0
        results[pid] = dict(line.split() for line in lines)
    os.close(go_r)
    os.close(go_w)
    (p1, r1), (p2, r2) = results.items()
    with Journal(state_dir) as j:
        for task_id in tasks:
            assert int(r1[task_id]) + int(r2[task_id]) == 1, task_id
            winner = 1 if r1[task_id] == "1" else 2
            assert j.get(task_id).result == winner
            assert [a.outcome for a in j.attempts(task_id)] == ["succeeded", "succeeded"]


# -- failures and retries -----------------------------------------------------------------

def test_failure_waits_with_backoff_then_is_promoted(journal, clock):
    task_id = journal.submit(TaskSpec("work", max_attempts=2))
    journal.start_attempt(task_id, "a")
    f = journal.finish_attempt(task_id, 1, "failed", error={"type": "ValueError"})
    rec = journal.get(task_id)
    assert f.state == "retry_wait" and rec.error == {"type": "ValueError"}
    assert clock.t <= rec.not_before <= clock.t + journal.retry_base
    assert journal.promote_due(clock.t - 1) == []
    clock.t = rec.not_before
    assert journal.promote_due() == [task_id]
    journal.start_attempt(task_id, "b")
    assert journal.finish_attempt(task_id, 2, "failed", error="again").state == "failed"


def test_crashes_requeue_then_dead_letter(journal):
    task_id = journal.submit(TaskSpec("work", max_attempts=2))
    for n, expected in [(1, "queued"), (2, "dead_lettered")]:
        assert journal.start_attempt(task_id, f"agent.{n}") == n
        assert journal.finish_attempt(task_id, n, "crashed", error="SIGKILL").state == expected
    err = journal.get(task_id).error
    assert err["last_error"] == "SIGKILL" and "2 of 2" in err["message"]


def test_fatal_is_not_retried(journal):
    task_id = journal.submit(TaskSpec("work"))
    journal.start_attempt(task_id, "a")
    assert journal.finish_attempt(task_id, 1, "fatal", error="bad input").state == "failed"


def test_late_failure_of_old_attempt_does_not_move_task(journal):
    task_id = _two_attempts(journal)
    f = journal.finish_attempt(task_id, 1, "failed", error="late")
    assert f.state == "running" and not f.recorded
    assert journal.attempts(task_id)[0].outcome == "failed"


def test_illegal_and_unknown_operations(journal):
    task_id = journal.submit(TaskSpec("work"))
    with pytest.raises(NotFound):
        journal.start_attempt("t-nope", "a")
    with pytest.raises(NotFound):
        journal.finish_attempt(task_id, 1, "succeeded")
    with pytest.raises(InvalidInput):
        journal.finish_attempt(task_id, 1, "exploded")
    journal.start_attempt(task_id, "a")
    with pytest.raises(IllegalTransition):
        journal.start_attempt(task_id, "b")  # already running
    journal.finish_attempt(task_id, 1, "succeeded", result=1)
    with pytest.raises(IllegalTransition) as info:
        journal.start_attempt(task_id, "c")
    assert "succeeded" in info.value.message
    with pytest.raises(NotFound):
        journal.get("t-000000000000000")


def test_cancel_and_late_success(journal):
    task_id = journal.submit(TaskSpec("work"))
    journal.start_attempt(task_id, "a")
    assert journal.cancel(task_id, "user asked")
    assert not journal.cancel(task_id)
    late = journal.finish_attempt(task_id, 1, "succeeded", result=1)
    assert (late.recorded, late.state) == (False, "cancelled")
    assert journal.get(task_id).result is None
    with pytest.raises(NotFound):
        journal.cancel("t-missing")


def test_expire_due(journal, clock):
    soon, later, done = journal.submit_many([TaskSpec("w", deadline=clock.t + 5),
                                             TaskSpec("w", deadline=clock.t + 50),
                                             TaskSpec("w", deadline=clock.t + 1)])
    journal.start_attempt(done, "a")
    journal.finish_attempt(done, 1, "succeeded", result=0)
    clock.t += 10
    assert journal.expire_due() == [soon]
    assert journal.get(soon).error["code"] == "DEADLINE_EXCEEDED"
    assert journal.get(later).state == "queued" and journal.get(done).state == "succeeded"


# -- idempotency, ids, reads --------------------------------------------------------------

def test_idempotency_keys(journal, tmp_path):
    a = TaskSpec("w", 1, idempotency_key="order-1")
    b = TaskSpec("w", 2, idempotency_key="order-2")
    ids = journal.submit_many([a, b, a, TaskSpec("w"), TaskSpec("w")])
    assert ids[0] == ids[2] and len(set(ids)) == 4
    assert journal.submit(TaskSpec("w", 99, idempotency_key="order-1")) == ids[0]
    assert journal.get(ids[0]).input == 1
    with Journal(tmp_path / "state") as reopened:
        assert reopened.submit(b) == ids[1]
        assert sum(reopened.counts().values()) == 4


def test_ids_sort_by_creation_and_never_repeat_when_clock_steps_back(tmp_path, clock):
    with Journal(tmp_path / "s", clock=clock) as j:
        first = j.submit_many(specs(5))
    clock.t -= 3600
    with Journal(tmp_path / "s", clock=clock) as j:
        second = j.submit_many(specs(5))
    assert first + second == sorted(first + second) and len(set(first + second)) == 10


def test_next_id_rolls_over_sequence():
    text, last = next_id("t-", (1000, 0xFFFF), 1.0)
    assert last == (1001, 0) and text == "t-0000000003e90000"


def test_list_counts_and_submit_checks(journal):
    ids = journal.submit_many(specs(4))
    journal.start_attempt(ids[0], "a")
    assert [t.id for t in journal.list(limit=2)] == ids[::-1][:2]
    assert [t.id for t in journal.list("running")] == [ids[0]]
    counts = journal.counts()
    assert counts["queued"] == 3 and counts["running"] == 1 and counts["failed"] == 0
    with pytest.raises(InvalidInput):
        journal.list("sleeping")
    with pytest.raises(InvalidInput):
        journal.submit_many([{"capability": "w"}])  # type: ignore[list-item]
    with pytest.raises(InvalidInput):
        journal.submit_many(specs(2), trace_ids=["t1"])


def test_trace_ids_kept_or_made(journal):
    given, made = journal.submit_many(specs(2), trace_ids=["abc", None])
    assert journal.get(given).trace_id == "abc"
    assert len(journal.get(made).trace_id) == 16


def test_parse_then_submit_keeps_options(journal, clock):
    spec = parse_task({"capability": "w", "input": [1], "options": {"deadline": 5, "budget": 3}},
                      now=clock.t)
    rec = journal.get(journal.submit(spec))
    assert rec.deadline == clock.t + 5 and rec.options["budget"] == 3 and rec.max_attempts == 3


# -- transactions -------------------------------------------------------------------------

def test_transaction_groups_and_rolls_back(journal):
    with pytest.raises(RuntimeError):
        with journal.transaction():
            journal.submit_many(specs(3))
            raise RuntimeError("boom")
    assert sum(journal.counts().values()) == 0
    with journal.transaction():
        kept = journal.submit(TaskSpec("w"))
        with pytest.raises(NotFound):
            with journal.transaction():
                journal.submit(TaskSpec("w"))
                journal.finish_attempt(kept, 1, "succeeded")  # no such attempt
    assert [t.id for t in journal.list()] == [kept]


def test_finish_many_is_one_all_or_nothing_batch(journal):
    ids = journal.submit_many(specs(3))
    for i in ids:
        journal.start_attempt(i, "a")
    with pytest.raises(NotFound):
        journal.finish_many([(ids[0], 1, "succeeded", 0, None), (ids[1], 7, "succeeded", 1, None)])
    assert journal.get(ids[0]).state == "running"
    done = journal.finish_many([(i, 1, "succeeded", n, None) for n, i in enumerate(ids)])
    assert [f.recorded for f in done] == [True] * 3
    assert [journal.get(i).result for i in ids] == [0, 1, 2]



def test_finish_successes_records_a_batch_exactly_once(journal):
    ids = journal.submit_many(specs(4))
    nums = journal.start_attempts([(i, "a") for i in ids])
    done = journal.finish_successes([(i, n, {"r": k, "s": "x\"y"}) for k, (i, n) in enumerate(zip(ids, nums))])
    assert [(f.task_id, f.recorded, f.state) for f in done] == [(i, True, "succeeded") for i in ids]
    assert [f.record.result for f in done] == [{"r": k, "s": 'x"y'} for k in range(4)]
    assert [journal.get(i).result for i in ids] == [{"r": k, "s": 'x"y'} for k in range(4)]
    assert all(journal.attempts(i)[0].outcome == "succeeded" for i in ids)
    assert journal.finish_successes([]) == []


@pytest.mark.parametrize("case", ["ended", "twice", "unknown", "cancelled"])
def test_finish_successes_outside_the_usual_case_writes_nothing(journal, case):
    """None, and the whole batch rolled back: the caller then finishes one by one."""
    ids = journal.submit_many(specs(3))
    journal.start_attempts([(i, "a") for i in ids])
    batch = [(ids[0], 1, "ok0"), (ids[1], 1, "ok1")]
    if case == "ended":
        journal.finish_attempt(ids[2], 1, "succeeded", result="first")
        batch.append((ids[2], 1, "again"))
    elif case == "twice":
        batch.append((ids[0], 1, "dup"))
    elif case == "unknown":
        batch.append(("t-nope", 1, "x"))
    else:
        journal.cancel(ids[2])
        batch.append((ids[2], 1, "late"))
    assert journal.finish_successes(batch) is None
    assert [journal.get(i).state for i in ids[:2]] == ["running", "running"]
    assert [journal.attempts(i)[0].ended for i in ids[:2]] == [None, None]
    assert [f.recorded for f in (journal.finish_attempt(t, a, "succeeded", result=r) for t, a, r in batch[:2])] == [True, True]


def test_finish_successes_advances_pipelines(journal, clock):
    pid, steps = journal.submit_pipeline(parse_pipeline(PIPE, now=clock.t))
    nums = journal.start_attempts([(steps["a"], "x"), (steps["side"], "y")])
    done = journal.finish_successes([(steps["a"], nums[0], {"vec": [10, 20]}), (steps["side"], nums[1], {"n": 5})])
    assert [f.recorded for f in done] == [True, True]
    b = journal.get(steps["b"])
    assert b.state == "queued" and b.input == {"v": 20}


# -- pipelines ----------------------------------------------------------------------------

PIPE = {"name": "p", "steps": [
    {"id": "a", "capability": "x", "input": {"q": 1}},
    {"id": "b", "capability": "x", "input": {"v": {"$ref": "a.vec.1"}}},
    {"id": "side", "capability": "x", "input": 2},
    {"id": "c", "capability": "x", "input": [{"$ref": "b"}, {"$ref": "side.n"}],
     "consensus": {"k": 3, "method": "borda"}},
]}


def run(j: Journal, task_id: str, result) -> bool:
    n = j.start_attempt(task_id, "agent")
    return j.finish_attempt(task_id, n, "succeeded", result=result).recorded


def test_pipeline_runs_to_success(journal, clock):
    pid, steps = journal.submit_pipeline(parse_pipeline(PIPE, now=clock.t))
    state = {s: journal.get(t).state for s, t in steps.items()}
    assert state == {"a": "queued", "b": "blocked", "side": "queued", "c": "blocked"}
    assert journal.get(steps["c"]).options["consensus"] == {"k": 3, "method": "borda"}
    assert {t.step_id for t in journal.unfinished()} == {"a", "b", "side", "c"}
    run(journal, steps["a"], {"vec": [10, 20]})
    assert journal.get(steps["b"]).state == "queued" and journal.get(steps["b"]).input == {"v": 20}
    run(journal, steps["b"], "B")
    assert journal.get(steps["c"]).state == "blocked"
    run(journal, steps["side"], {"n": None})
    c = journal.get(steps["c"])
    assert c.state == "queued" and c.input == ["B", None]
    assert journal.get_pipeline(pid).state == "running"
    run(journal, steps["c"], "done")
    rec = journal.get_pipeline(pid)
    assert rec.state == "succeeded" and rec.steps == steps and rec.name == "p"
    assert len({journal.get(t).trace_id for t in steps.values()} | {rec.trace_id}) == 1


def test_pipeline_missing_output_path_fails_step_naming_it(journal, clock):
    pid, steps = journal.submit_pipeline(PIPE)
    run(journal, steps["a"], {"vec": [1]})
    b = journal.get(steps["b"])
    assert b.state == "failed" and b.error["step"] == "b" and "'vec.1'" in b.error["message"]
    assert journal.get(steps["c"]).state == "cancelled"
    assert "'b'" in journal.get(steps["c"]).error["message"]
    assert journal.get_pipeline(pid).state == "running"  # 'side' is still queued
    run(journal, steps["side"], {"n": 1})
    assert journal.get_pipeline(pid).state == "failed"


def test_pipeline_upstream_dead_letter_cancels_downstream(journal):
    pid, steps = journal.submit_pipeline(PIPE)
    assert not journal.dead_letter(steps["a"], {"message": "poison"})  # queued: not legal
    journal.start_attempt(steps["a"], "agent")
    assert journal.dead_letter(steps["a"], {"message": "poison"})
    assert journal.get(steps["b"]).state == "cancelled"
    assert journal.get(steps["c"]).state == "cancelled"
    journal.cancel(steps["side"])
    assert journal.get_pipeline(pid).state == "failed"


def test_pipeline_survives_reopen(tmp_path, clock):
    with Journal(tmp_path / "s", clock=clock) as j:
        pid, steps = j.submit_pipeline(PIPE)
        run(j, steps["a"], {"vec": [0, 5]})
    with Journal(tmp_path / "s", clock=clock) as j:
        assert j.get(steps["b"]).input == {"v": 5}
        assert j.get_pipeline(pid).spec["steps"][3]["deps"] == ["b", "side"]
        assert {t.step_id for t in j.unfinished()} == {"b", "side", "c"}


# --- checkpoints off the writer's path ------------------------------------------------------

def test_commits_no_longer_checkpoint_once_a_checkpointer_owns_it(tmp_path):
    with Journal(tmp_path / "s", durability="normal") as j:
        cp = j.checkpoint_in_background(interval=3600)  # the thread never gets to run
        assert j.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for _ in range(400):  # well past the 1000 pages at which a COMMIT would checkpoint
            j.submit_many(specs(5))
        wal = os.path.getsize(j.path + "-wal")
        assert (wal - 32) // (PAGE_SIZE + 24) > 1000  # frames: nothing was copied back, it only grew
        conn = sqlite3.connect(j.path)
        busy, log, done = cp.run_once(conn)
        conn.close()
        assert (busy, done) == (0, log) and log > 1000  # one PASSIVE round copies it all


def test_the_checkpointer_thread_keeps_the_wal_copied_and_stops_with_the_journal(tmp_path):
    j = Journal(tmp_path / "s", durability="normal")
    cp = j.checkpoint_in_background(interval=0.01)
    for _ in range(50):
        j.submit_many(specs(5))
    # the thread's own report: a round found frames in the WAL and copied every one
    last = eventually(lambda: cp.last if cp.last and cp.last[1] > 0 and cp.last[1] == cp.last[2]
                      else None, "a checkpoint round that copied the WAL back")
    assert last[0] == 0 and cp.errors == 0
    j.close()
    assert not cp._thread.is_alive()


def test_states_reads_many_ids_in_chunks_and_names_an_unknown_one(journal):
    ids = journal.submit_many(specs(1203))  # more than two chunks of 500
    n = journal.start_attempt(ids[7], "a1")
    journal.finish_attempt(ids[7], n, "succeeded", result=1)
    got = journal.states(ids + ids[:3])  # repeats are fine
    assert len(got) == 1203 and got[ids[7]] == "succeeded"
    assert {got[t] for t in ids if t != ids[7]} == {"queued"}
    with pytest.raises(NotFound, match="t-nope"):
        journal.states([*ids[:600], "t-nope"])



def test_the_wal_has_a_size_limit(tmp_path):
    """journal_size_limit is set: SQLite cuts a WAL that grew in a burst back to it once checkpointed."""
    j = Journal(tmp_path / "state")
    try:
        assert j.conn.execute("PRAGMA journal_size_limit").fetchone()[0] == WAL_LIMIT_BYTES
    finally:
        j.close()
