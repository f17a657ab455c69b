"""Work lifecycle in the scheduler and journal (issue 16): cancel that stops work,
per-attempt time limits, the retry policy, graceful stops, pipelines, re-drive,
retention.  Real Scheduler and Journal, a manual clock, no processes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from runtime.errors import Conflict
from runtime.observability.trace_context import TraceContext
from runtime.tasks.scheduler import LeastLoadedPolicy, TaskRun
from runtime.tasks.task import error_outcome, parse_task
from tests.support.fake_host import FakeHost

POOL = SimpleNamespace(timeout_s=None, cancel_grace_s=2.0, retryable=(), fatal=())


def host(tmp_path, agents=("a", "b"), pool=POOL):
    h = FakeHost(tmp_path)
    h.scheduler.policy = LeastLoadedPolicy()
    h.scheduler.capacity = 1  # as the daemon runs it (agent_inflight = 1)
    h.scheduler.pools = {"p": pool}
    h.killed = []
    h.scheduler.kill_listeners.append(lambda link, why: h.killed.append(link.id))
    for a in agents:
        h.join(a)
    return h


def submit(h, **options):
    spec = parse_task({"capability": "work", "input": {}, "options": options}, now=time.time())

    def add():
        tid = h.journal.submit_many([spec])[0]
        h.scheduler.enqueue(TaskRun(tid, "work", {}, TraceContext.new_trace(), max_attempts=spec.max_attempts,
                                    timeout_s=spec.timeout_s, retryable=spec.retryable, fatal=spec.fatal))
        return tid
    return h.turn(add)


def report(h, agent, error=None):
    """The agent's oldest task ends (ok, or with ``error`` as the agent reports one)."""
    t = h.sent[agent].pop(0)
    r = {"id": t["id"], "attempt": t["attempt"], **({"error": error} if error else {"ok": 1})}
    h.turn(lambda: h.scheduler.results(agent, [r]))
    return t


def agents_of(h, tid):
    return [a.agent for a in h.journal.attempts(tid)]


def test_cancel_of_a_running_task_stops_it_and_keeps_the_agent_busy_until_it_ends(tmp_path):
    h = host(tmp_path, agents=("a",))
    tid = submit(h)
    assert h.sent["a"][0]["id"] == tid
    h.turn(lambda: h.scheduler.cancel(tid))
    assert h.state(tid) == "cancelled"
    assert h.scheduler.take_cancels() == {"a": [{"id": tid, "attempt": 1}]}
    other = submit(h)
    assert h.state(other) == "queued"  # the agent is not free: its attempt has not ended
    report(h, "a", {"type": "Cancelled", "code": "CANCELLED", "message": "stopped"})
    assert h.state(other) == "running" and h.sent["a"][0]["id"] == other
    assert h.journal.attempts(tid)[0].outcome == "failed"  # recorded; the task stays cancelled
    assert h.state(tid) == "cancelled" and h.killed == []


def test_an_agent_that_ignores_cancel_is_killed_after_grace_and_the_attempt_is_lost(tmp_path):
    h = host(tmp_path, agents=("a",))
    tid = submit(h)
    h.turn(lambda: h.scheduler.cancel(tid))
    h.later(1.9)
    assert h.killed == []
    h.later(0.2)
    assert h.killed == ["a"] and h.scheduler.agents["a"].draining
    h.die("a")
    a = h.journal.attempts(tid)[0]
    assert a.outcome == "crashed" and a.error["code"] == "LOST"
    assert h.journal.attempt_summary(tid) == {"lost": 1}


def test_timeout_s_stops_a_hung_attempt_and_retries_on_another_agent(tmp_path):
    h = host(tmp_path)
    tid = submit(h, timeout_s=1.0, max_attempts=3)
    first = h.sent["a"][0]["id"] == tid and "a" or "b"
    h.later(1.01)
    h.later(0.001)  # the retry's backoff (1 us in FakeHost's journal)
    assert h.journal.attempts(tid)[0].error["code"] == "TIMED_OUT"
    assert {first: [{"id": tid, "attempt": 1}]} == h.scheduler.take_cancels()
    assert agents_of(h, tid) == [first, "b" if first == "a" else "a"]
    h.later(2.1)
    assert h.killed == [first]  # the hung one never reported: killed and replaced


def test_fatal_errors_end_the_task_at_once(tmp_path):
    h = host(tmp_path)
    t1 = submit(h, max_attempts=3)
    report(h, h.journal.attempts(t1)[0].agent, {"type": "Fatal", "message": "bad input"})
    assert h.state(t1) == "failed" and h.journal.get(t1).attempts == 1
    t2 = submit(h, max_attempts=3, retryable=["OSError"])
    report(h, h.journal.attempts(t2)[0].agent, {"type": "TypeError", "message": "bad input"})
    assert h.state(t2) == "failed" and h.journal.get(t2).attempts == 1
    t3 = submit(h, max_attempts=3, fatal=["KeyError"])
    report(h, h.journal.attempts(t3)[0].agent, {"type": "KeyError", "message": "x"})
    assert h.state(t3) == "failed"


def test_pool_lists_are_part_of_the_policy(tmp_path):
    pool = SimpleNamespace(timeout_s=None, cancel_grace_s=2.0, retryable=(), fatal=("ValueError",))
    h = host(tmp_path, pool=pool)
    tid = submit(h, max_attempts=3)
    report(h, h.journal.attempts(tid)[0].agent, {"type": "ValueError", "message": "x"})
    assert h.state(tid) == "failed"


def test_error_outcome_rules():
    assert error_outcome({"type": "RuntimeError"}) == "failed"
    assert error_outcome({"type": "X", "code": "FATAL"}) == "fatal"
    assert error_outcome({"type": "OSError"}, retryable=("OSError",)) == "failed"
    assert error_outcome({"type": "OSError"}, fatal=("OSError",), retryable=("OSError",)) == "fatal"


def test_a_retry_goes_to_an_agent_that_has_not_run_the_task(tmp_path):
    h = host(tmp_path)
    tid = submit(h, max_attempts=3)
    first = agents_of(h, tid)[0]
    report(h, first, {"type": "RuntimeError", "message": "flaky"})
    h.later(0.001)
    second = agents_of(h, tid)[1]
    assert second != first  # under least-loaded both were idle: registry order would say `first`
    report(h, second, {"type": "RuntimeError", "message": "flaky"})
    h.later(0.001)
    assert len(agents_of(h, tid)) == 3  # everyone tried: any free agent will do


def test_a_graceful_stop_never_burns_an_attempt(tmp_path):
    h = host(tmp_path, agents=("a",))
    tid = submit(h, max_attempts=1)
    assert h.journal.interrupt_running() == [tid]
    assert h.state(tid) == "queued"
    assert [r.id for r in h.journal.unfinished()] == [tid]  # not dead-lettered by the restart
    h.journal.start_attempt(tid, "a")
    fin = h.journal.finish_attempt(tid, 2, "failed", error={"type": "RuntimeError"})
    assert fin.state == "failed"  # its one charged attempt, used now
    assert h.journal.attempt_summary(tid) == {"interrupted": 1, "failed": 1}


def test_cancel_of_a_pipeline_cancels_every_step_and_stops_the_running_one(tmp_path):
    h = host(tmp_path, agents=("a",))
    spec = {"name": "p", "steps": [{"id": "s1", "capability": "work", "input": 1},
                                   {"id": "s2", "capability": "work", "input": {"$ref": "s1"}}]}
    pid, steps = h.journal.submit_pipeline(spec)
    rec = h.journal.get(steps["s1"])
    h.turn(lambda: h.scheduler.enqueue(TaskRun(rec.id, "work", 1, TraceContext.new_trace())))
    assert h.state(steps["s1"]) == "running"
    h.turn(lambda: h.scheduler.cancel_pipeline(pid))
    assert {h.state(t) for t in steps.values()} == {"cancelled"}
    assert h.journal.get_pipeline(pid).state == "cancelled"
    assert h.scheduler.take_cancels() == {"a": [{"id": steps["s1"], "attempt": 1}]}


def test_the_deadline_of_a_running_task_stops_its_attempt(tmp_path):
    h = host(tmp_path, agents=("a",))
    spec = parse_task({"capability": "work", "options": {"deadline": 5}}, now=time.time())

    def add():
        tid = h.journal.submit_many([spec])[0]
        h.scheduler.enqueue(TaskRun(tid, "work", None, TraceContext.new_trace(), deadline=h.clock() + 5))
        return tid
    tid = h.turn(add)
    h.later(5.1)
    assert h.state(tid) == "deadline_exceeded"
    assert h.scheduler.take_cancels() == {"a": [{"id": tid, "attempt": 1}]}


def test_dead_letters_are_redriven_with_their_history(tmp_path):
    h = host(tmp_path, agents=("a",))
    tid = submit(h, max_attempts=1)
    h.die("a")
    assert h.state(tid) == "dead_lettered"
    rec = h.journal.redrive(tid)
    assert rec.state == "queued" and rec.max_attempts == 2
    h.join("b")
    h.turn(lambda: h.scheduler.enqueue(TaskRun(tid, "work", {}, TraceContext.new_trace(),
                                               max_attempts=rec.max_attempts, attempts=rec.attempts)))
    report(h, "b")
    assert h.state(tid) == "succeeded" and agents_of(h, tid) == ["a", "b"]
    with pytest.raises(Conflict):
        h.journal.redrive(tid)  # succeeded: nothing to re-drive


def test_compact_keeps_live_work_and_the_newest_finished(tmp_path):
    h = host(tmp_path, agents=("a",))
    done = []
    for _ in range(30):
        done.append(submit(h))
        report(h, "a")
    live = submit(h)
    pid, _ = h.journal.submit_pipeline({"name": "p", "steps": [{"id": "s", "capability": "work"}]})
    out = h.journal.compact(keep=10)
    assert out == {"tasks": 20, "pipelines": 0}
    assert {r.id for r in h.journal.list(limit=1000)} >= set(done[-10:]) | {live}
    assert h.journal.counts()["succeeded"] == 10
    assert h.journal.get_pipeline(pid).state == "running"  # running pipelines are kept
    assert h.journal.compact(max_age_s=0.0, now=time.time() + 1)["tasks"] == 10
    stats = h.journal.stats()
    assert stats["rows"]["attempts"] == 1 and stats["file_bytes"] > 0
