"""Coordinator restarts that cannot wedge and do not cascade (issue 15, items 5 and 6).

* a SIGKILLed coordinator is restarted alone: the agents (same pids) keep running their
  tasks, reconnect, and a long task finishes with one attempt and one result;
* two coordinator deaths close together (gaps 0.05-0.5 s) never wedge the root: every kill
  is followed by service within 2 s, and ``down`` works afterwards;
* a restart storm escalates: the core gives up and the daemon exits 1, the reason in its log;
* SIGTERM during a restart ends the daemon, bounded.

Waits are bounded polls of real state (the control socket, the process table).
"""

from __future__ import annotations

import os
import random
import signal
import time

import psutil
import pytest

from runtime.wire.client import Client
from tests.support.daemons import config, coordinator_pid, serves, spawn, stop, wait_up

SERVICE_S = 2.0  # every kill is followed by service within this bound


def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    delay = 0.005
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def _agent_pids(root: int) -> set[int]:
    out = set()
    for p in psutil.Process(root).children():
        try:
            if p.name().startswith("agora:echo."):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_coordinator_restart_keeps_agents_and_their_task(agora_env, tmp_path):
    proc = spawn(agora_env, config(size=2))
    try:
        wait_up(agora_env, proc)
        agents = _agent_pids(proc.pid)
        assert len(agents) == 2
        pid_file = tmp_path / "ran"
        with Client(str(agora_env)) as c:
            tid = c.call("submit", task={"capability": "sleep", "input": {"s": 1.5, "pid_file": str(pid_file)}})
        _until(pid_file.exists, 10, "the task started")
        old = coordinator_pid(proc.pid)
        _kill(old)
        t0 = time.monotonic()
        _until(lambda: serves(agora_env), SERVICE_S, "service after the coordinator's SIGKILL")
        print(f"service back after {time.monotonic() - t0:.3f} s")
        with Client(str(agora_env), timeout=30) as c:
            rec = c.call("result", id=tid, wait=True, timeout_s=20)
        assert rec["state"] == "succeeded", rec
        assert rec["attempts"] == 1, rec
        assert pid_file.read_text().count("\n") == 1  # the handler ran once
        assert _agent_pids(proc.pid) == agents  # the same agents: none restarted
        assert coordinator_pid(proc.pid) != old
    finally:
        stop(agora_env, proc)


@pytest.mark.parametrize("gap", [0.05, 0.15, 0.3, 0.5])
def test_two_coordinator_deaths_close_together_never_wedge(agora_env, gap):
    seed = random.randrange(1 << 30)
    print(f"seed {seed} gap {gap}")
    rng = random.Random(seed)
    proc = spawn(agora_env, config(size=2))
    try:
        wait_up(agora_env, proc)
        first = coordinator_pid(proc.pid)
        _kill(first)
        time.sleep(gap * rng.uniform(0.8, 1.2))  # the fault timing under test
        second = _until(lambda: coordinator_pid(proc.pid, not_pid=first), SERVICE_S,
                        "a new coordinator process")
        _kill(second)
        t0 = time.monotonic()
        _until(lambda: serves(agora_env), SERVICE_S, "service after the second SIGKILL")
        print(f"service back {time.monotonic() - t0:.3f} s after the second kill")
        with Client(str(agora_env), timeout=10) as c:
            tid = c.call("submit", task={"capability": "echo", "input": 1})
            assert c.call("result", id=tid, wait=True, timeout_s=5)["state"] == "succeeded"
            c.call("down")
        assert proc.wait(15) == 0
    finally:
        stop(agora_env, proc)


def test_restart_storm_escalates_and_the_daemon_exits_nonzero(agora_env):
    proc = spawn(agora_env, config(size=1))
    try:
        wait_up(agora_env, proc)
        last = None
        for _ in range(6):  # core intensity: 5 restarts in 10 s
            pid = _until(lambda last=last: proc.poll() is not None or coordinator_pid(proc.pid, not_pid=last),
                         SERVICE_S, "a coordinator to kill")
            if pid is True:
                break
            _kill(pid)
            last = pid
        assert proc.wait(15) == 1
        log = (agora_env / "agora.log").read_text()
        assert "gave up" in log and "coordinator" in log, log[-2000:]
    finally:
        stop(agora_env, proc)


def test_sigterm_while_the_coordinator_restarts(agora_env):
    proc = spawn(agora_env, config(size=2))
    try:
        wait_up(agora_env, proc)
        _kill(coordinator_pid(proc.pid))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop(agora_env, proc)
