"""Vector clocks carried by agora's messages, with real agents: two agents' independent
tasks get concurrent stamps; a pipeline's next step, dispatched after the coordinator
merged the previous step's result, or a handler's ctx.call that reached the coordinator after
another agent's call, gets a stamp after it (task.clock in the handler, the
``vc`` of the task.succeeded events, the ``vc`` of the handlers' own events); a restarted
coordinator's stamps come after the ones before its SIGKILL."""

from __future__ import annotations

import os
import signal

import pytest

import agora
from runtime.wire.client import Client
from tests.support.daemons import config, coordinator_pid, running_daemon, serves, spawn, stop, wait_up
from tests.support.helpers import eventually

pytestmark = pytest.mark.timeout(180)

POOLS = """
[pools.left]
agent = "tests.support.agents_clocks:Left"
size = 1
[pools.right]
agent = "tests.support.agents_clocks:Right"
size = 1
[pools.stamp]
agent = "tests.support.agents_clocks:Stamp"
size = 2
"""


def succeeded_vc(c, task_id):
    """The stamp of a task's result, as its task.succeeded event keeps it."""
    def found():
        return next((e["vc"] for e in c.call("events", type="task.succeeded", limit=1000)
                     if e.get("task_id") == task_id and "vc" in e), None)
    return eventually(found, f"the task.succeeded event of {task_id}")


def stamped_events(c, type_, n):
    """The ``type_`` events that carry a stamp, once there are ``n`` (agents flush theirs)."""
    got = [e for e in c.call("events", type=type_, limit=1000) if "vc" in e]
    return got if len(got) >= n else None


def test_independent_tasks_are_concurrent_and_pipeline_steps_ordered(agora_env, tmp_path):
    with running_daemon(agora_env, config(size=1, extra=POOLS)) as (c, _), agora.connect(agora_env) as s:
        eventually(lambda: {a["pool"] for a in c.call("agents")} >= {"left", "right", "stamp"}, "the pools")
        meet = {"dir": str(tmp_path)}
        fl = s.submit("left", {**meet, "me": "l", "other": "r"})
        fr = s.submit("right", {**meet, "me": "r", "other": "l"})
        left, right = fl.result(timeout=60)["clock"], fr.result(timeout=60)["clock"]
        assert agora.compare_clocks(left, right) == "concurrent", (left, right)
        vl, vr = succeeded_vc(c, fl.task_id), succeeded_vc(c, fr.task_id)
        assert agora.compare_clocks(vl, vr) == "concurrent", (vl, vr)
        assert agora.compare_clocks(left, vl) == "before"  # the result is the agent's next event
        met = eventually(lambda: stamped_events(c, "clock.met", 2), "the handlers' events")
        assert len(met) == 2 and agora.compare_clocks(met[0]["vc"], met[1]["vc"]) == "concurrent"
        # a stamp names only the nodes that ticked: the coordinator and the left agent
        assert len(vl) == 2 and "coordinator" in vl, vl

        # through ctx.call: the second agent's call reaches the coordinator after the first's
        turns = {"dir": str(tmp_path / "turns")}
        os.mkdir(turns["dir"])
        fl = s.submit("left", {**turns, "me": "l", "other": "r", "turn": "first"})
        fr = s.submit("right", {**turns, "me": "r", "other": "l", "turn": "second"})
        first, second = fl.result(timeout=60), fr.result(timeout=60)
        assert agora.compare_clocks(first["before_call"], second["after_call"]) == "before", (first, second)
        # (their results are not checked for concurrency: the first's result may reach the
        # coordinator before the second's call, which then orders them, rightly)

        p = s.pipeline({"steps": [{"id": "a", "capability": "stamp", "input": {}},
                                  {"id": "b", "capability": "stamp", "input": {"prev": {"$ref": "a"}}}]})
        out = p.result(timeout=60)
        assert agora.compare_clocks(out["a"]["clock"], out["b"]["clock"]) == "before", out
        va, vb = succeeded_vc(c, p.steps["a"]), succeeded_vc(c, p.steps["b"])
        assert agora.compare_clocks(va, vb) == "before", (va, vb)
        # the coordinator merged the left result before it dispatched step a (the client
        # read that result, then submitted the pipeline): ordered through agora
        assert agora.compare_clocks(vl, va) == "before", (vl, va)


ONE_STAMP = """
[pools.stamp]
agent = "tests.support.agents_clocks:Stamp"
size = 1
"""


def test_a_restarted_coordinator_resumes_its_clock_past_what_agents_saw(agora_env):
    """The coordinator's clock is not persisted: the agents' hellos carry their clocks and the
    new coordinator merges them, so its next frames are after everything before the kill."""
    proc = spawn(agora_env, config(size=1, extra=ONE_STAMP))
    try:
        wait_up(agora_env, proc)
        with Client(str(agora_env), timeout=30) as c:
            eventually(lambda: any(a["pool"] == "stamp" for a in c.call("agents")), "the stamp agent")
            before = [stamp_of(c) for _ in range(5)][-1]
        old = coordinator_pid(proc.pid)
        os.kill(old, signal.SIGKILL)
        eventually(lambda: coordinator_pid(proc.pid) not in (None, old) and serves(agora_env),
                   "service after the coordinator's SIGKILL", 30)
        with Client(str(agora_env), timeout=30) as c:
            eventually(lambda: any(a["pool"] == "stamp" for a in c.call("agents")), "the agent back")
            after = stamp_of(c)
        assert agora.compare_clocks(before, after) == "before", (before, after)
        assert after["coordinator"] > before["coordinator"], (before, after)
    finally:
        stop(agora_env, proc)


def stamp_of(c):
    tid = c.call("submit", task={"capability": "stamp", "input": {}})
    rec = c.call("result", id=tid, wait=True, timeout_s=30)
    assert rec["state"] == "succeeded", rec
    return rec["result"]["clock"]
