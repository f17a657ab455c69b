"""The scheduler without processes: a real journal, a local registry, agent links whose
``send`` records frames, and a fake clock."""

from __future__ import annotations

import os

import pytest

from runtime.observability.trace_context import TraceContext
from runtime.registry._local import LocalBackend
from runtime.tasks.journal import Journal
from runtime.tasks.scheduler import LeastLoadedPolicy, Scheduler, StaticPolicy
from runtime.tasks.task import parse_task
from tests.support.helpers import FakeClock


@pytest.fixture
def world(tmp_path):
    journal = Journal(tmp_path, retry_base=0.01, retry_cap=0.01)
    clock = FakeClock(1000.0)
    events = []
    finals = {}

    def make(policy):
        s = Scheduler(journal, policy, lambda t, *a, **k: events.append((t, k)), clock,
                      capacity=1, membership=LocalBackend())
        s.final_listeners.append(lambda task, rec: finals.__setitem__(task.id, rec))
        return s
    yield make, journal, clock, events, finals
    journal.close()


LIVE_PIDS = [os.getpid(), os.getppid(), 1]  # owners must be running processes, one each


def join(s, agent_id):
    sent = []
    pid = LIVE_PIDS[len(s.agents) % len(LIVE_PIDS)]
    s.agent_joined(agent_id, "p", pid, {"work": {}}, sent.append)
    return sent


def submit(s, journal, n=1, **opts):
    ids = []
    for i in range(n):
        spec = parse_task({"capability": "work", "input": i, "options": opts}, now=0)
        tid = journal.submit(spec)
        s.enqueue(s_task(s, journal, tid))
        ids.append(tid)
    return ids


def s_task(s, journal, tid):
    from runtime.tasks.scheduler import TaskRun
    rec = journal.get(tid)
    return TaskRun(rec.id, rec.capability, rec.input, TraceContext.new_trace(),
                   max_attempts=rec.max_attempts)


def flush(s):
    return {aid: [t["id"] for t in frames] for aid, frames in s.take_outbox().items()}


def test_static_fills_registry_order_least_loaded_spreads(world):
    make, journal, *_ = world
    s = make(StaticPolicy())
    for a in ("a2", "a1", "a3"):
        join(s, a)
    assert len({a.pid for a in s.agents.values()}) == 3
    submit(s, journal, 2)
    s.dispatch()
    assert sorted(flush(s)) == ["a1", "a2"]  # registry (key) order, capacity 1 each
    s2 = make(LeastLoadedPolicy())
    for a in ("b1", "b2"):
        join(s2, a)
    ids = submit(s2, journal, 2)
    s2.dispatch()
    assert {tuple(v) for v in flush(s2).values()} == {(ids[0],), (ids[1],)}


def test_death_reroutes_to_another_agent_with_attempt_plus_one(world):
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    (tid,) = submit(s, journal)
    s.dispatch()
    assert flush(s) == {"a1": [tid]}
    join(s, "a2")
    s.agent_died("a1")
    s.dispatch()
    assert flush(s) == {"a2": [tid]}
    assert s.tasks[tid].attempts == 2
    assert [t for t, _ in events].count("task.rerouted") == 1
    s.results("a2", [{"id": tid, "attempt": 2, "ok": 42}])
    assert finals[tid].state == "succeeded" and finals[tid].result == 42


def test_a_late_result_of_an_earlier_attempt_is_recorded_once(world):
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    join(s, "a2")
    (tid,) = submit(s, journal)
    s.dispatch()
    first = next(iter(flush(s)))
    other = "a2" if first == "a1" else "a1"
    s.agent_died(first)  # presumed dead...
    s.dispatch()
    assert flush(s) == {other: [tid]}
    s.results(first, [{"id": tid, "attempt": 1, "ok": "late"}])  # ...yet it answered
    s.results(other, [{"id": tid, "attempt": 2, "ok": "second"}])
    rec = journal.get(tid)
    assert rec.state == "succeeded" and rec.result in ("late", "second")
    assert [a.outcome for a in journal.attempts(tid)].count("succeeded") == 2
    assert list(finals) == [tid]  # one final, one recorded result


def test_errors_wait_a_backoff_then_run_again(world):
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    (tid,) = submit(s, journal, max_attempts=2)
    s.dispatch()
    flush(s)
    s.results("a1", [{"id": tid, "attempt": 1, "error": {"type": "E", "message": "boom"}}])
    assert s.tasks[tid].state == "retry_wait"
    assert s.dispatch() == 0  # not before its backoff
    clock.t += 1.0
    import time
    time.sleep(0.02)  # the journal's retry clock is wall time (10 ms backoff here)
    s.fire_timers()
    s.dispatch()
    assert flush(s) == {"a1": [tid]}
    s.results("a1", [{"id": tid, "attempt": 2, "error": {"type": "E", "message": "boom"}}])
    assert finals[tid].state == "failed"


def test_poison_is_dead_lettered_after_max_attempts(world):
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    (tid,) = submit(s, journal, max_attempts=2)
    for n in range(2):
        join(s, f"a{n}")
        s.dispatch()
        flush(s)
        s.agent_died(f"a{n}")
    assert finals[tid].state == "dead_lettered"
    assert finals[tid].error["code"] == "DEAD_LETTERED"


def _run_short(s, journal, clock, agent, n):
    """``n`` tasks dispatched one at a time, each back within SHORT_TASK_S."""
    for tid in submit(s, journal, n):
        s.dispatch()
        assert flush(s) == {agent: [tid]}
        clock.t += 0.001
        s.results(agent, [{"id": tid, "attempt": 1, "ok": 1}])


def test_short_tasks_are_prefetched_after_a_streak_and_a_slow_one_ends_it(world):
    from runtime.tasks.scheduler import SHORT_PREFETCH, SHORT_STREAK, SHORT_TASK_S
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    _run_short(s, journal, clock, "a1", SHORT_STREAK - 1)
    ids = submit(s, journal, 2)
    s.dispatch()
    assert flush(s) == {"a1": ids[:1]}  # one short of the streak: no prefetch yet
    clock.t += 0.001
    s.results("a1", [{"id": ids[0], "attempt": 1, "ok": 1}])  # the streak is complete
    depth = s.prefetch_depth("work")
    assert 2 <= depth <= SHORT_PREFETCH
    ids = ids[1:] + submit(s, journal, depth + 1)
    s.dispatch()
    assert flush(s) == {"a1": ids[:depth]}  # prefetched, up to the depth
    clock.t += SHORT_TASK_S * 2  # ... and these came back slowly: the streak ends
    s.results("a1", [{"id": t, "attempt": 1, "ok": 1} for t in ids[:depth]])
    more = submit(s, journal, 1)
    s.dispatch()
    assert flush(s) == {"a1": ids[depth:depth + 1]}  # one at a time again
    assert more[0] in s.tasks and s.tasks[more[0]].state == "queued"


def test_prefetch_depth_follows_the_measured_run_time(world):
    """About PREFETCH_BUDGET_S of predicted work per agent: a 20 us handler gets the most,
    a 1 ms one 2, and the depth falls back once the runs get slower."""
    from runtime.tasks.scheduler import PREFETCH_BUDGET_S, SHORT_PREFETCH, SHORT_STREAK
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")

    def run(n, run_us):
        for tid in submit(s, journal, n):
            s.dispatch()
            for t in flush(s).get("a1", []):
                s.results("a1", [{"id": t, "attempt": 1, "ok": 1, "run_us": run_us}])
            assert tid not in s.tasks

    run(SHORT_STREAK, 20)
    assert s.prefetch_depth("work") == SHORT_PREFETCH
    ids = submit(s, journal, SHORT_PREFETCH + 3)
    s.dispatch()
    assert flush(s) == {"a1": ids[:SHORT_PREFETCH]}
    s.results("a1", [{"id": t, "attempt": 1, "ok": 1, "run_us": 20} for t in ids[:SHORT_PREFETCH]])
    s.dispatch()
    s.results("a1", [{"id": t, "attempt": 1, "ok": 1, "run_us": 20} for t in flush(s)["a1"]])
    run(60, 1000)  # 1 ms handlers: the mean follows, the depth shrinks
    assert s.prefetch_depth("work") == max(2, int(PREFETCH_BUDGET_S / 0.001))
    ids = submit(s, journal, 5)
    s.dispatch()
    assert len(flush(s)["a1"]) == s.prefetch_depth("work")


def test_no_prefetch_onto_an_agent_holding_another_capability_or_with_agent_inflight_set(world):
    from runtime.tasks.scheduler import SHORT_STREAK
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    sent = []
    s.agent_joined("a1", "p", os.getpid(), {"work": {}, "slow": {}}, sent.append)
    _run_short(s, journal, clock, "a1", SHORT_STREAK)
    slow = journal.submit(parse_task({"capability": "slow", "input": 0}, now=0))
    from runtime.tasks.scheduler import TaskRun
    s.enqueue(TaskRun(slow, "slow", 0, TraceContext.new_trace()))
    s.dispatch()
    assert flush(s) == {"a1": [slow]}
    submit(s, journal, 1)
    s.dispatch()
    assert flush(s) == {}  # a1 holds a task of an unmeasured capability: it waits
    s.capacity = 2  # agent_inflight set by the user: exactly that, no adaptive prefetch
    s.dispatch()
    assert len(flush(s)["a1"]) == 1
    submit(s, journal, 1)
    s.dispatch()
    assert flush(s) == {}


def test_the_agents_own_run_time_decides_the_streak_when_it_sends_one(world):
    from runtime.tasks.scheduler import SHORT_STREAK, SHORT_TASK_S
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    _run_short(s, journal, clock, "a1", SHORT_STREAK)
    assert s.short_streak["work"] == SHORT_STREAK
    (tid,) = submit(s, journal, 1)
    s.dispatch()
    flush(s)
    clock.t += SHORT_TASK_S * 10  # a slow loop turn, yet the handler itself was quick
    s.results("a1", [{"id": tid, "attempt": 1, "ok": 1, "run_us": 50}])
    assert s.short_streak["work"] == SHORT_STREAK + 1
    (tid,) = submit(s, journal, 1)
    s.dispatch()
    flush(s)
    s.results("a1", [{"id": tid, "attempt": 1, "ok": 1, "run_us": int(SHORT_TASK_S * 2e6)}])
    assert s.short_streak["work"] == 0  # the handler took long, whatever the clock says


def test_least_loaded_ranks_by_the_share_of_an_agents_slots_not_raw_inflight(world):
    """An agent running 4 of its 8 slots is less loaded than one running 1 of 1: the next
    task goes to the wide agent even though it holds more attempts."""
    make, journal, *_ = world
    s = make(LeastLoadedPolicy())
    s.agent_joined("a1", "p", LIVE_PIDS[0], {"work": {}}, lambda m: None, concurrency=1)
    s.agent_joined("a2", "p", LIVE_PIDS[1], {"work": {}}, lambda m: None, concurrency=8)
    s.agents["a1"].inflight["busy"] = 1
    for i in range(4):
        s.agents["a2"].inflight[f"busy{i}"] = 1
    policy = LeastLoadedPolicy()
    assert policy.choose(None, [s.agents["a1"], s.agents["a2"]]).id == "a2"
    (tid,) = submit(s, journal)
    s.dispatch()
    assert flush(s) == {"a2": [tid]}
    s.agents["a2"].inflight.update({f"more{i}": 1 for i in range(4)})  # 9 on 8 slots: above a1's 1 on 1
    assert policy.choose(None, [s.agents["a1"], s.agents["a2"]]).id == "a1"


def test_a_batch_of_successes_is_one_journal_write_and_a_mixed_one_goes_item_by_item(world, monkeypatch):
    """``results`` takes a prefetched batch of plain successes through
    ``Journal.finish_successes``; a batch holding an error, one by one; the outcome is the
    same either way."""
    from runtime.tasks.scheduler import SHORT_STREAK
    make, journal, clock, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    _run_short(s, journal, clock, "a1", SHORT_STREAK)
    calls = []
    real = journal.finish_successes
    monkeypatch.setattr(journal, "finish_successes", lambda items: calls.append(len(items)) or real(items))
    ids = submit(s, journal, 2)  # the streak's 1 ms runs: a depth of 2
    s.dispatch()
    assert flush(s) == {"a1": ids}
    s.results("a1", [{"id": t, "attempt": 1, "ok": n, "run_us": 10} for n, t in enumerate(ids)])
    assert calls == [2]
    assert [finals[t].result for t in ids] == [0, 1] and not s.agents["a1"].inflight
    ids = submit(s, journal, 2)
    s.dispatch()
    flush(s)
    s.results("a1", [{"id": ids[0], "attempt": 1, "ok": "x", "run_us": 10},
                     {"id": ids[1], "attempt": 1, "error": {"type": "ValueError", "message": "no"}}])
    assert calls == [2]  # not the batch path
    assert finals[ids[0]].result == "x" and journal.get(ids[1]).state == "retry_wait"
    assert not s.agents["a1"].inflight
