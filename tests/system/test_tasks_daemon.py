"""Tasks and pipelines through a real daemon: rerouting, poison, retries, deadlines,
backpressure, validation, and acknowledged submissions surviving kill -9 of the daemon.
"""

from __future__ import annotations

import os
import random
import signal

import pytest

from runtime.errors import InvalidPipeline, MailboxFull, UnknownCapability
from runtime.wire.client import Client
from tests.support.daemons import config, kill_tree, running_daemon, spawn, stop, wait_up
from tests.support.helpers import eventually


def wait_state(c, tid, states, timeout=20.0):
    return eventually(lambda: (r := c.call("result", id=tid))["state"] in states and r,
                      f"task {tid} to reach {states}", timeout)


def test_agent_killed_mid_task_reroutes_with_one_result(agora_env, tmp_path):
    pid_file = tmp_path / "pids"
    with running_daemon(agora_env, config(size=2)) as (c, _):
        tid = c.call("submit", task={"capability": "sleep",
                                     "input": {"s": 0.5, "pid_file": str(pid_file)}})
        wait_state(c, tid, {"running"})
        line = eventually(lambda: pid_file.exists() and pid_file.read_text().strip(),
                          "the agent to write its pid")  # (the file exists before it is written)
        victim = int(line.split()[0])
        os.kill(victim, signal.SIGKILL)
        rec = c.call("result", id=tid, wait=True, timeout_s=30)
        assert rec["state"] == "succeeded" and rec["attempts"] == 2
        assert rec["result"]["pid"] != victim and rec["result"]["attempt"] == 2
        attempts = c.call("attempts", id=tid)
        assert [a["outcome"] for a in attempts] == ["crashed", "succeeded"]
        assert attempts[0]["error"]["code"] == "AGENT_DIED"
        eventually(lambda: any(e.get("task_id") == tid for e in c.call("events", type="task.rerouted")),
                   "the task.rerouted event")


def test_poison_task_is_dead_lettered_and_the_pool_keeps_serving(agora_env):
    with running_daemon(agora_env, config(size=2)) as (c, _):
        tid = c.call("submit", task={"capability": "poison", "input": 1, "options": {"max_attempts": 3}})
        rec = c.call("result", id=tid, wait=True, timeout_s=30)
        assert rec["state"] == "dead_lettered" and rec["attempts"] == 3
        assert rec["error"]["code"] == "DEAD_LETTERED" and "poison" in rec["error"]["message"]
        ok = c.call("submit", task={"capability": "add", "input": {"a": 1, "b": 2}})
        assert c.call("result", id=ok, wait=True, timeout_s=30)["result"] == 3


def test_handler_errors_retry_with_traceback_kept(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, _):
        tid = c.call("submit", task={"capability": "flaky", "input": {"succeed_on": 3}})
        rec = c.call("result", id=tid, wait=True, timeout_s=60)
        assert rec["state"] == "succeeded" and rec["result"] == {"attempt": 3}
        failed = [a for a in c.call("attempts", id=tid) if a["outcome"] == "failed"]
        assert len(failed) == 2 and "flaky failure on attempt 1" in failed[0]["error"]["traceback"]
        bad = c.call("submit", task={"capability": "flaky", "input": {"succeed_on": 9},
                                     "options": {"max_attempts": 2}})
        rec = c.call("result", id=bad, wait=True, timeout_s=60)
        assert rec["state"] == "failed" and rec["error"]["type"] == "RuntimeError"


def test_deadline_and_cancel(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, _):
        slow = c.call("submit", task={"capability": "sleep", "input": {"s": 2},
                                      "options": {"deadline": 0.3}})
        rec = c.call("result", id=slow, wait=True, timeout_s=30)
        assert rec["state"] == "deadline_exceeded"
        queued = c.call("submit", task={"capability": "sleep", "input": {"s": 0.1}})
        assert c.call("cancel", id=queued)["cancelled"] in (True, False)
        assert c.call("result", id=queued, wait=True, timeout_s=30)["state"] in ("cancelled", "succeeded")


def test_invalid_submissions_are_refused_with_the_step_named(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, _):
        with pytest.raises(UnknownCapability):
            c.call("submit", task={"capability": "nope", "input": 1})
        cases = {
            "cycle": {"steps": [{"id": "a", "capability": "echo", "input": {"$ref": "b"}},
                                {"id": "b", "capability": "echo", "input": {"$ref": "a"}}]},
            "dangling": {"steps": [{"id": "a", "capability": "echo", "input": {"$ref": "zz"}}]},
            "unknown capability": {"steps": [{"id": "a", "capability": "nope", "input": 1}]},
        }
        for name, spec in cases.items():
            with pytest.raises((InvalidPipeline, UnknownCapability)) as e:
                c.call("pipeline", spec={"name": name, **spec})
            assert "a" in str(e.value) or "zz" in str(e.value), (name, e.value)
        assert c.call("tasks") == []  # nothing was queued


def test_pipeline_runs_steps_with_references(agora_env):
    spec = {"name": "sum", "steps": [
        {"id": "one", "capability": "add", "input": {"a": 1, "b": 2}},
        {"id": "two", "capability": "add", "input": {"a": {"$ref": "one"}, "b": 10}},
        {"id": "three", "capability": "echo", "input": {"x": {"$ref": "two"}, "y": {"$ref": "one"}}}]}
    with running_daemon(agora_env, config(size=2)) as (c, _):
        p = c.call("pipeline", spec=spec)
        done = c.call("pipeline_result", id=p["id"], wait=True, timeout_s=30)
        assert done["state"] == "succeeded"
        by_step = {s["step_id"]: s for s in done["steps"]}
        assert by_step["two"]["result"] == 13
        assert by_step["three"]["result"]["echo"] == {"x": 13, "y": 3}
        assert len({s["trace_id"] for s in done["steps"]}) == 1  # one trace for the pipeline


def test_a_pipeline_interrupted_by_kill_9_resumes_with_its_inputs_by_reference(agora_env, tmp_path):
    """The steps after a kill -9 of the daemon read their inputs from the results they
    reference (runtime.tasks.journal, "Inputs by reference"), a large one included."""
    big = "x" * 100_000  # through the arena too
    pid_file = tmp_path / "pids"
    spec = {"name": "resume", "steps": [
        {"id": "one", "capability": "echo", "input": {"blob": big}},
        {"id": "two", "capability": "sleep", "input": {"s": 1.0, "pid_file": str(pid_file), "carry": {"$ref": "one"}}},
        {"id": "three", "capability": "echo", "input": {"a": {"$ref": "one.echo.blob"}, "b": {"$ref": "two.slept"}}}]}
    proc = spawn(agora_env, config(size=2))
    try:
        wait_up(agora_env, proc)
        with Client(str(agora_env)) as c:
            pid = c.call("pipeline", spec=spec)["id"]
            eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), "step two to start")
        kill_tree(proc)  # step two running, three blocked on it
        proc = spawn(agora_env, None)
        wait_up(agora_env, proc)
        with Client(str(agora_env)) as c:
            done = c.call("pipeline_result", id=pid, wait=True, timeout_s=60)
            assert done["state"] == "succeeded", done
            by_step = {s["step_id"]: s for s in done["steps"]}
            assert by_step["two"]["attempts"] == 2
            assert by_step["three"]["result"]["echo"] == {"a": big, "b": 1.0}
    finally:
        stop(agora_env, proc)


def test_full_mailbox_pushes_back_then_admits(agora_env):
    cfg = config(size=1).replace("max = 4", "max = 4\nmailbox_messages = 2")
    with running_daemon(agora_env, cfg) as (c, _):
        blocker = c.call("submit", task={"capability": "sleep", "input": {"s": 1.0}})
        wait_state(c, blocker, {"running"})
        first = [c.call("submit", task={"capability": "add", "input": {"a": i, "b": 0}}) for i in range(2)]
        with pytest.raises(MailboxFull):
            c.call("submit", task={"capability": "add", "input": {"a": 9, "b": 0}}, wait_s=0.2)
        late = c.call("submit", task={"capability": "add", "input": {"a": 7, "b": 0}}, wait_s=20)
        results = [c.call("result", id=t, wait=True, timeout_s=30)["result"] for t in [*first, late]]
        assert results == [0, 1, 7]
        assert c.call("status")["tasks"]["succeeded"] == 4  # nothing dropped, nothing extra


def test_acknowledged_submissions_survive_kill_9_of_the_daemon(agora_env):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked: list[str] = []
    proc = spawn(agora_env, config(size=2))
    try:
        for _round in range(3):
            wait_up(agora_env, proc)
            with Client(str(agora_env)) as c:
                for i in range(rng.randrange(5, 30)):
                    acked.append(c.call("submit", task={"capability": "add", "input": {"a": i, "b": 1}}))
            kill_tree(proc)  # right after the last acknowledgement
            proc = spawn(agora_env, None)
        wait_up(agora_env, proc)
        with Client(str(agora_env)) as c:
            states = [c.call("result", id=t, wait=True, timeout_s=60)["state"] for t in acked]
        assert states == ["succeeded"] * len(acked), f"seed {seed}"
    finally:
        stop(agora_env, proc)


def test_large_inputs_and_results_travel_through_the_arena(agora_env):
    big = {"blob": "x" * 300_000, "n": list(range(1000))}
    with running_daemon(agora_env, config(size=1)) as (c, _):
        rec = c.call("submit", task={"capability": "echo", "input": big}, result=True)
        assert rec["state"] == "succeeded" and rec["result"]["echo"] == big
        small = c.call("submit", task={"capability": "add", "input": {"a": 1, "b": 1}}, result=True)
        assert small["result"] == 2
        stats = c.call("status")["payloads"]
        assert stats["sent_by_handle"] == 1 and stats["received_by_handle"] == 1, stats
        assert stats["inline_fallbacks"] == 0


def test_mailbox_is_bounded_in_bytes_too(agora_env):
    cfg = config(size=1).replace("max = 4", "max = 4\nmailbox_bytes = 50000")
    with running_daemon(agora_env, cfg) as (c, _):
        blocker = c.call("submit", task={"capability": "sleep", "input": {"s": 1.0}})
        wait_state(c, blocker, {"running"})
        first = c.call("submit", task={"capability": "echo", "input": "y" * 40_000})
        with pytest.raises(MailboxFull) as e:
            c.call("submit", task={"capability": "echo", "input": "z" * 20_000}, wait_s=0.2)
        assert e.value.details["queued_bytes"] >= 40_000
        late = c.call("submit", task={"capability": "echo", "input": "w" * 20_000}, wait_s=20)
        assert c.call("wait_all", ids=[first, late], timeout_s=30) == {"succeeded": 2}
