"""The scheduler's vector clock (runtime.observability.vclock), without processes: a real
journal, a local registry, an agent link whose ``send`` records frames, a fake clock."""

from __future__ import annotations

import os

import pytest

from runtime.observability.trace_context import TraceContext
from runtime.registry._local import LocalBackend
from runtime.tasks.journal import Journal
from runtime.tasks.scheduler import LeastLoadedPolicy, Scheduler, TaskRun
from runtime.tasks.task import parse_task
from tests.support.helpers import FakeClock


@pytest.fixture
def world(tmp_path):
    journal = Journal(tmp_path, retry_base=0.01, retry_cap=0.01)
    events, finals = [], {}

    def make(policy):
        s = Scheduler(journal, policy, lambda t, *a, **k: events.append((t, k)), FakeClock(1000.0),
                      capacity=1, membership=LocalBackend())
        s.final_listeners.append(lambda task, rec: finals.__setitem__(task.id, rec))
        return s
    yield make, journal, None, events, finals
    journal.close()


def join(s, agent_id):
    s.agent_joined(agent_id, "p", os.getpid(), {"work": {}}, lambda m: None)


def submit(s, journal, n=1):
    ids = []
    for i in range(n):
        tid = journal.submit(parse_task({"capability": "work", "input": i}, now=0))
        rec = journal.get(tid)
        s.enqueue(TaskRun(rec.id, rec.capability, rec.input, TraceContext.new_trace(),
                          max_attempts=rec.max_attempts))
        ids.append(tid)
    return ids


def test_frames_carry_the_coordinators_clock_and_results_merge_the_agents(world):
    """Each task frame is a send of the coordinator's clock; a result's stamp is merged and
    kept on task.succeeded; a bad stamp is dropped and said (the result still counts)."""
    make, journal, _, events, finals = world
    s = make(LeastLoadedPolicy())
    join(s, "a1")
    ids = submit(s, journal, 2)
    s.dispatch()
    (frame,) = s.take_outbox()["a1"]
    assert frame["vc"] == {"coordinator": 1}
    s.results("a1", [{"id": frame["id"], "attempt": 1, "ok": 1, "vc": {"coordinator": 1, "a1": 2}}])
    assert s.vclock.now == {"coordinator": 2, "a1": 2}
    done = [k for t, k in events if t == "task.succeeded"]
    assert done[-1]["task_id"] == ids[0] and done[-1]["vc"] == {"coordinator": 1, "a1": 2}
    s.dispatch()
    (frame,) = s.take_outbox()["a1"]
    assert frame["vc"] == {"coordinator": 3, "a1": 2}  # after the result it merged
    s.results("a1", [{"id": frame["id"], "attempt": 1, "ok": 2, "vc": {"a1": -1}}])
    assert ("agent.bad_clock" in [t for t, _ in events]) and ids[1] in finals
    assert "vc" not in [k for t, k in events if t == "task.succeeded"][-1]
