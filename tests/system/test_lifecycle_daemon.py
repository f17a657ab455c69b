"""Work lifecycle through a real daemon (issue 16, item 9): a handler that ignores its
cancellation is killed within its pool's grace + 1 s and a replacement serves; a hung
handler past ``timeout_s`` is stopped (killed after the grace) and its task retried on
another agent.  (The scheduler-level cases, with a manual clock, are in
tests/runtime/tasks/test_lifecycle.py.)"""

from __future__ import annotations

import time

import psutil

from tests.support.daemons import running_daemon
from tests.support.helpers import eventually

STUBBORN = """
[daemon]
drain_s = 2.0
[pools.stubborn]
agent = "tests.support.agents_recovery:Stubborn"
size = {size}
max = 4
cancel_grace_s = {grace}
"""

GRACE = 1.0


def test_a_handler_that_ignores_cancel_is_killed_within_grace_and_replaced(agora_env):
    with running_daemon(agora_env, STUBBORN.format(size=1, grace=GRACE)) as (c, _):
        tid = c.call("submit", task={"capability": "ignore", "input": {"s": 60}})
        eventually(lambda: c.call("result", id=tid)["state"] == "running", "the task to run")
        victim = eventually(lambda: [a for a in c.call("attempts", id=tid)][-1]["agent"], "its agent")
        pid = next(a["pid"] for a in c.call("agents") if a["id"] == victim)
        asked = time.monotonic()
        assert c.call("cancel", id=tid)["outcome"] == "stopping"
        eventually(lambda: c.call("attempts", id=tid)[-1]["outcome"] == "crashed", "the attempt to end",
                   timeout=GRACE + 10)
        took = time.monotonic() - asked
        attempt = c.call("attempts", id=tid)[-1]
        assert attempt["lost"] and attempt["error"]["code"] == "LOST", attempt
        assert took <= GRACE + 1.0 + 1.0, f"killed {took:.2f} s after the cancel"  # +1 s: loaded CI
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert c.call("result", id=tid)["state"] == "cancelled"
        after = c.call("submit", task={"capability": "whoami", "input": {}})  # the replacement
        done = c.call("result", id=after, wait=True, timeout_s=30)
        assert done["state"] == "succeeded" and done["result"]["pid"] != pid
        eventually(lambda: {"agent.kill", "agent.replaced"} <= {e["type"] for e in c.call("events", limit=2000)},
                   "the kill and replacement events")


def test_a_hung_handler_past_timeout_s_is_killed_and_retried_on_another_agent(agora_env):
    with running_daemon(agora_env, STUBBORN.format(size=2, grace=GRACE)) as (c, _):
        tid = c.call("submit", task={"capability": "hang_once", "input": {},
                                     "options": {"timeout_s": 0.5, "max_attempts": 3}})
        rec = c.call("result", id=tid, wait=True, timeout_s=30)
        assert rec["state"] == "succeeded" and rec["result"]["attempt"] == 2, rec
        attempts = c.call("attempts", id=tid)
        assert attempts[0]["error"]["code"] == "TIMED_OUT", attempts
        assert attempts[0]["agent"] != attempts[1]["agent"], attempts
        eventually(lambda: any(e.get("agent") == attempts[0]["agent"]
                               for e in c.call("events", type="agent.kill")),
                   "the hung agent to be killed after its grace")
        eventually(lambda: any(e.get("agent") == attempts[0]["agent"]
                               for e in c.call("events", type="agent.replaced")),
                   "its replacement")
        again = c.call("submit", task={"capability": "whoami", "input": {}})
        assert c.call("result", id=again, wait=True, timeout_s=30)["state"] == "succeeded"
