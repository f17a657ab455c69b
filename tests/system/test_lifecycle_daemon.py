"""Work lifecycle through a real daemon (issue 16, item 9): a handler that ignores its
cancellation is killed within its pool's grace + 1 s and a replacement serves; a hung
handler past ``timeout_s`` is stopped (killed after the grace) and its task retried on
another agent.  (The scheduler-level cases, with a manual clock, are in
tests/runtime/tasks/test_lifecycle.py.)"""

from __future__ import annotations

import psutil
import pytest

from runtime.errors import DeadlineExceeded, NotFound
from tests.support.daemons import config, running_daemon
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
        assert c.call("cancel", id=tid)["outcome"] == "stopping"
        eventually(lambda: c.call("attempts", id=tid)[-1]["outcome"] == "crashed", "the attempt to end")
        attempt = c.call("attempts", id=tid)[-1]
        assert attempt["lost"] and attempt["error"]["code"] == "LOST", attempt
        # the promise, timed by the daemon's own events: stop asked -> agent dead <= grace + 1 s
        asked = eventually(lambda: [e for e in c.call("events", type="task.stop_requested")
                                    if e.get("task_id") == tid], "the stop request event")[0]["ts"]
        died = eventually(lambda: [e for e in c.call("events", type="agent.died")
                                   if e.get("agent") == victim], "the agent's death event")[0]["ts"]
        assert GRACE <= died - asked <= GRACE + 1.0, f"dead {died - asked:.2f} s after the stop request"
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


def cli_code(home, *argv) -> int:
    from runtime.cli.main import main
    return main(["--home", str(home), *argv])


def test_waits_are_bounded_and_cancel_retry_and_journal_stats_say_what_happened(agora_env, capsys):
    with running_daemon(agora_env, config(size=1)) as (c, _):
        assert cli_code(agora_env, "submit", "sleep", "--input", '{"s": 3}', "--wait",
                        "--timeout", "0.3") == 75  # EX_TEMPFAIL: the task goes on
        said = capsys.readouterr().err
        assert ("running" in said or "queued" in said) and "still not finished after waiting 0.3 s" in said, said
        tid = c.call("tasks", limit=1)[0]["id"]
        with pytest.raises(DeadlineExceeded):
            c.call("result", id=tid, wait=True, timeout_s=0.2)
        assert cli_code(agora_env, "cancel", tid) == 0
        assert cli_code(agora_env, "cancel", tid) == 1  # already ended: its state is printed
        assert "cancelled" in capsys.readouterr().out
        assert cli_code(agora_env, "cancel", "t-nosuchtask") == NotFound.exit_code
        dead = c.call("submit", task={"capability": "poison", "input": 0, "options": {"max_attempts": 1}})
        assert c.call("result", id=dead, wait=True, timeout_s=30)["state"] == "dead_lettered"
        assert dead in {r["id"] for r in c.call("tasks", state="dead_lettered")}
        assert cli_code(agora_env, "retry", dead) == 0
        again = c.call("result", id=dead, wait=True, timeout_s=30)
        assert again["state"] == "dead_lettered" and len(c.call("attempts", id=dead)) == 2  # history kept
        stats = c.call("journal_stats")
        assert stats["file_bytes"] > 0 and stats["rows"]["tasks"] >= 2, stats
        assert cli_code(agora_env, "journal", "stats") == 0


def test_a_graceful_stop_past_drain_s_does_not_burn_an_attempt(agora_env):
    cfg = config(size=1, daemon="drain_s = 0.3")
    with running_daemon(agora_env, cfg) as (c, _):
        tid = c.call("submit", task={"capability": "sleep", "input": {"s": 2},
                                     "options": {"max_attempts": 1}})
        eventually(lambda: c.call("result", id=tid)["state"] == "running", "the task to run")
    # `down` ran past drain_s with the attempt still running: on the next start the task
    # runs again instead of being dead-lettered as if its agent had crashed
    with running_daemon(agora_env, cfg) as (c, _):
        rec = c.call("result", id=tid, wait=True, timeout_s=30)
        assert rec["state"] == "succeeded", rec


FLAKY_MARKET = """
[daemon]
allocation = "market"
drain_s = 2.0
[pools.flaky]
agent = "tests.support.agents_market:Unreliable"
size = 2
max = 2
[pools.flaky.capabilities.work]
cost = 1.0
"""


def flaky_market_runs(home, runs: int, tasks: int = 20) -> None:
    """``runs`` batches through one daemon whose two agents fail 30 % of tasks: every task
    ends (succeeded or failed after its attempts), none is left queued, and the next batch
    is served too (the reputation gate does not exclude both agents for good)."""
    with running_daemon(home, FLAKY_MARKET) as (c, _):
        for run in range(runs):
            ids = [c.call("submit", task={"capability": "work", "options": {"max_attempts": 3},
                                          "input": {"salt": run, "fail_pct": 30, "fast_ms": 1, "n": i}})
                   for i in range(tasks)]
            counts = c.call("wait_all", ids=ids, timeout_s=120)
            assert sum(counts.values()) == tasks, f"run {run}: {counts}"
            assert set(counts) <= {"succeeded", "failed"}, f"run {run}: {counts}"
            assert counts.get("succeeded", 0) > 0, f"run {run}: nothing succeeded: {counts}"
        assert not c.call("tasks", state="queued"), "tasks left queued"
        assert c.call("ledger")["conserved"]


def test_the_flaky_pool_market_run_finishes_every_task(agora_env):
    flaky_market_runs(agora_env, runs=5)


@pytest.mark.slow
def test_the_flaky_pool_market_run_finishes_every_task_100_runs(agora_env):
    flaky_market_runs(agora_env, runs=100)
