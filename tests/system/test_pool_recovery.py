"""Pool recovery through a real daemon (issue 16, item 5): a pool whose agents crash at
start gives up, `agora pools` shows it failed with its last exits, submissions for its
capabilities are refused UNAVAILABLE (or parked, per pool), `agora scale` on it is an
error, `agora pools restart` brings it back at once and the root brings it back by itself
after its backoff; parked tasks then run, and a parked task's deadline kept running.
"""

from __future__ import annotations

import pytest

from runtime.cli.main import main
from runtime.errors import Conflict, Unavailable
from tests.support.agents_recovery import crash_flag
from tests.support.daemons import config, running_daemon
from tests.support.helpers import eventually

FRAGILE = """
[pools.fragile]
agent = "tests.support.agents_recovery:Fragile"
size = 1
max = 1
restart_backoff_s = {base}
restart_backoff_max_s = {cap}
when_down = "{when_down}"
[pools.fragile.capabilities.work]
cost = 1.0
"""


def fragile(when_down: str, base: float, cap: float) -> str:
    return config(size=1, extra=FRAGILE.format(when_down=when_down, base=base, cap=cap))


def pool(c, name="fragile"):
    return next(r for r in c.call("pools") if r["pool"] == name)


def crash_the_pool(c, home):
    """Agents of `fragile` now fail at start; kill the running one: the pool gives up."""
    crash_flag(home).touch()
    c.call("submit", task={"capability": "die", "input": 0, "options": {"max_attempts": 1}})
    return eventually(lambda: (r := pool(c))["state"] == "failed" and r, "the pool to give up")


def test_failed_pool_refuses_then_restarts_on_request(agora_env, capsys):
    with running_daemon(agora_env, fragile("refuse", base=60.0, cap=60.0)) as (c, _):
        ok = c.call("submit", task={"capability": "work", "input": 1})
        assert c.call("result", id=ok, wait=True, timeout_s=30)["state"] == "succeeded"
        row = crash_the_pool(c, agora_env)
        assert row["retry_in_s"] is not None and 0 < row["retry_in_s"] <= 60
        assert any("crash flag" in e["reason"] for e in row["last_exits"]), row
        assert main(["--home", str(agora_env), "pools"]) == 0
        printed = capsys.readouterr().out
        assert "failed (retry in" in printed and "crash flag" in printed, printed
        with pytest.raises(Unavailable) as refused:
            c.call("submit", task={"capability": "work", "input": 2})
        assert "fragile" in refused.value.message
        with pytest.raises(Unavailable):
            c.call("submit_many", tasks=[{"capability": "echo", "input": 1},
                                         {"capability": "die", "input": 1}])
        with pytest.raises(Unavailable):
            c.call("scale", pool="fragile", size=1)
        assert main(["--home", str(agora_env), "scale", "fragile", "1"]) == Unavailable.exit_code
        with pytest.raises(Unavailable):  # the cause is still there: it does not start
            c.call("pool_restart", pool="fragile")
        echo = c.call("submit", task={"capability": "echo", "input": 3})  # other pools serve
        assert c.call("result", id=echo, wait=True, timeout_s=30)["state"] == "succeeded"
        crash_flag(agora_env).unlink()
        assert main(["--home", str(agora_env), "pools", "restart", "fragile"]) == 0
        assert pool(c)["state"] == "running"
        with pytest.raises(Conflict):
            c.call("pool_restart", pool="fragile")
        again = c.call("submit", task={"capability": "work", "input": 4})
        assert c.call("result", id=again, wait=True, timeout_s=30)["result"]["done"] == 4
        eventually(lambda: {"pool.failed", "pool.restarted", "pool.down", "pool.up"}
                   <= {e["type"] for e in c.call("events", type="pool.")},
                   "the pool events (the root's flush on a timer)")


def test_parked_tasks_wait_visibly_and_run_after_the_automatic_restart(agora_env, capsys):
    with running_daemon(agora_env, fragile("park", base=0.5, cap=2.0)) as (c, _):
        crash_the_pool(c, agora_env)
        parked = c.call("submit", task={"capability": "work", "input": "later"})
        doomed = c.call("submit", task={"capability": "work", "input": "never",
                                        "options": {"deadline": 0.5}})
        row = c.call("result", id=parked)
        assert row["state"] == "queued" and "fragile" in row["waiting_for"], row
        listed = {r["id"]: r for r in c.call("tasks", state="queued")}
        assert "waiting_for" in listed[parked]
        assert main(["--home", str(agora_env), "tasks", "--state", "queued"]) == 0  # the human line says why
        assert f"(waiting: {listed[parked]['waiting_for']})" in capsys.readouterr().out
        assert "work" in c.call("status")["waiting"]
        eventually(lambda: pool(c)["queued"] >= 1, "agora pools to count the parked task")
        assert c.call("result", id=doomed, wait=True, timeout_s=30)["state"] == "deadline_exceeded"
        crash_flag(agora_env).unlink()  # the root retries by itself within its backoff
        done = c.call("result", id=parked, wait=True, timeout_s=30)
        assert done["state"] == "succeeded" and done["result"]["done"] == "later"
        eventually(lambda: pool(c)["state"] == "running", "the pool to be running")
        restarted = eventually(lambda: c.call("events", type="pool.restarted"),
                               "the root's pool.restarted event")  # (its events flush on a timer)
        assert restarted[-1]["why"] == "backoff", restarted
