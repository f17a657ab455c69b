"""Agents for the durable-primitives system tests (tests/system/test_primitives_restart.py).

``Holder`` takes leases and locks through the coordinator and records what it was granted,
retrying a call the coordinator could not answer because it was being killed (bounded:
``RETRY_S``), as a real agent would.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agora import Agent, capability
from runtime.errors import Unavailable

__all__ = ["Holder"]

RETRY_S = 20.0


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Holder(Agent):
    def _call(self, op: str, args: dict[str, Any]) -> Any:
        """``ctx.call`` retried while the coordinator restarts (UNAVAILABLE), bounded."""
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                return self.ctx.call(op, args, timeout=10)
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @capability("hold")
    def hold(self, input: Any, task: Any) -> Any:
        """Take lease ``name`` for this agent (it outlives the task) and say who holds it."""
        got = self._call("lease.acquire", {"name": input["name"], "ttl": input.get("ttl", 120)})
        return {**got, "agent": self.ctx.agent_id, "pid": os.getpid()}

    @capability("churn")
    def churn(self, input: Any, task: Any) -> Any:
        """Take and release lease ``name`` ``n`` times, and step down and back up in election
        ``group``; every token and term seen is appended to ``file``."""
        name, path = input["name"], input["file"]
        self._call("election.join", {"group": input["group"]})
        for _ in range(int(input.get("n", 5))):
            got = self._call("lease.acquire", {"name": name, "ttl": 30, "wait": True, "timeout": 5})
            _append(path, f"token {got['token']}\n")
            try:
                self._call("lease.release", {"name": name, "token": got["token"]})
            except Exception:  # noqa: BLE001 - lost across a restart: its TTL ends it
                pass
            left = self._call("election.leave", {"group": input["group"]})
            _append(path, f"term {left['term']}\n")
            joined = self._call("election.join", {"group": input["group"]})
            _append(path, f"term {joined['term']}\n")
            time.sleep(float(input.get("pause_s", 0)))  # so that a kill lands mid-churn
        return {"agent": self.ctx.agent_id}

    @capability("lock_and_raise")
    def lock_and_raise(self, input: Any, task: Any) -> Any:
        """Take a task-held lock and raise without releasing it: the attempt's end must."""
        held = task.lock(input["name"], ttl=120, timeout=5)
        _append(input["file"], f"{held.token}\n")
        raise RuntimeError(f"failing while holding {input['name']!r} (token {held.token})")

    @capability("lock_briefly")
    def lock_briefly(self, input: Any, task: Any) -> Any:
        with task.lock(input["name"], ttl=30, timeout=input.get("timeout", 5)) as held:
            return {"token": held.token, "agent": self.ctx.agent_id}

    @capability("hold_past_ttl")
    def hold_past_ttl(self, input: Any, task: Any) -> Any:
        """A task-held lock whose TTL ends while the attempt still runs."""
        held = task.lock(input["name"], ttl=input["ttl"], timeout=5)
        time.sleep(input["sleep"])
        return {"token": held.token}

    @capability("impatient")
    def impatient(self, input: Any, task: Any) -> Any:
        """Queue for a lock with a raw call that gives up before the coordinator's wait ends."""
        try:
            got = self.ctx.call("lock.acquire", {"name": input["name"], "ttl": 30, "timeout": 10},
                                timeout=input["give_up_s"])
        except Unavailable:
            return {"gave_up": True, "agent": self.ctx.agent_id}
        return {"gave_up": False, "token": got["token"], "agent": self.ctx.agent_id}
