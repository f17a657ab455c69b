"""Consensus pipeline steps (coordination.services.decisions.ConsensusSteps) on a real scheduler
and journal without processes: a step the turn's dispatch hands over starts in that same
dispatch when k agents have room; it does not wait for another event to wake the loop."""

from __future__ import annotations

import os
from types import SimpleNamespace

from coordination.services.decisions import ConsensusSteps
from runtime.observability.trace_context import TraceContext
from runtime.registry._local import LocalBackend
from runtime.tasks.journal import Journal
from runtime.tasks.scheduler import LeastLoadedPolicy, Scheduler, TaskRun
from tests.support.helpers import FakeClock

PIDS = [os.getpid(), os.getppid(), 1]


def _world(tmp_path):
    journal = Journal(tmp_path, retry_base=0.01, retry_cap=0.01)
    s = Scheduler(journal, LeastLoadedPolicy(), lambda *a, **k: None, FakeClock(1000.0), capacity=1,
                  membership=LocalBackend())
    for i, pid in enumerate(PIDS):
        s.agent_joined(f"a{i}", "p", pid, {"check": {}}, lambda m: None)
    timers: list = []  # candidate time-outs (not fired here)
    steps = ConsensusSteps(SimpleNamespace(scheduler=s, journal=journal, emit=lambda *a, **k: None,
                                           call_later=lambda delay, fn: timers.append((delay, fn))), None)
    s.takers.append(steps.take)
    return journal, s, steps


def _consensus_task(journal, s, input: object = None) -> TaskRun:
    pid, ids = journal.submit_pipeline({"name": "c", "steps": [
        {"id": "check", "capability": "check", "input": input or {"q": 1},
         "consensus": {"k": 3, "method": "plurality"}}]})
    rec = journal.get(ids["check"])
    task = TaskRun(rec.id, rec.capability, rec.input, TraceContext.new_trace(), pipeline_id=pid)
    s.enqueue(task)
    return task


def test_a_consensus_step_starts_in_the_dispatch_that_takes_it(tmp_path):
    journal, s, steps = _world(tmp_path)
    try:
        task = _consensus_task(journal, s)
        s.dispatch()  # no turn hook runs after this: the loop may sleep until the next event
        sent = {agent: [f["id"] for f in frames] for agent, frames in s.take_outbox().items()}
        assert sent == {"a0": [task.id], "a1": [task.id], "a2": [task.id]}
        assert task.id in steps.running and steps.pending == []
    finally:
        journal.close()


def test_a_consensus_step_without_room_waits_for_the_next_turns(tmp_path):
    journal, s, steps = _world(tmp_path)
    try:
        s.agents["a2"].inflight["busy"] = 1  # one of the three has no room
        task = _consensus_task(journal, s)
        s.dispatch()
        assert s.take_outbox() == {} and [t for t, _ in steps.pending] == [task]
        del s.agents["a2"].inflight["busy"]  # its result came in: the turn hook starts the step
        steps.turn()
        assert sorted(s.take_outbox()) == ["a0", "a1", "a2"] and steps.pending == []
    finally:
        journal.close()


def test_the_vote_request_carries_a_large_input_by_reference(tmp_path):
    """A step input beyond 16 KiB reaches the voters as ``{"$large": "input", ...}`` (as a
    large candidate does), a small one inline."""
    journal, s, steps = _world(tmp_path)
    asked: list = []
    steps.service = SimpleNamespace(open_vote=lambda *a, extra, **k: asked.append(extra) or SimpleNamespace())
    try:
        for given in ({"q": 1}, {"q": "x" * 20_000}):
            task = _consensus_task(journal, s, given)
            s.dispatch()
            s.take_outbox()
            run = steps.running[task.id]
            for agent in run.agents:
                steps._result(s.agents[agent], {"id": task.id, "attempt": run.attempt, "ok": {"v": agent}})
        small, large = asked
        assert small["input"] == {"q": 1}
        assert sorted(c["v"] for c in small["candidates"].values()) == ["a0", "a1", "a2"]  # inline
        assert large["input"]["$large"] == "input" and large["input"]["bytes"] == 20_008
        assert large["input"]["preview"].startswith('{"q":"xxx')
    finally:
        journal.close()
