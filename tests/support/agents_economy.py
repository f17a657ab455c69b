"""Agents for the economy system tests (tests/system/test_economy_daemon.py): a manager
that subcontracts, workers it pays, buyers that bid for a resource, and an occupier that
holds the one unit until the test lets it go (so every bid is waiting before the auction)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agora import Agent, capability

__all__ = ["Worker", "Manager", "Occupier", "BuyerA", "BuyerB", "BuyerC"]

WAIT_S = 60.0


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {WAIT_S} s")
        time.sleep(0.02)


class Worker(Agent):
    @capability("double")
    def double(self, input: Any, task: Any) -> Any:
        if input.get("wait_file"):
            Path(input["started_file"]).touch()
            _wait_for(input["wait_file"])
        return {"y": 2 * input["x"], "trace_id": task.trace.trace_id if task.trace else None,
                "agent": self.ctx.agent_id}


class Manager(Agent):
    @capability("manage")
    def manage(self, input: Any, task: Any) -> Any:
        before = task.balance()
        sub = task.subcontract("double", input["sub"], budget=input["budget"], timeout=90)
        return {"sub": sub, "before": before, "after": task.balance(), "agent": self.ctx.agent_id,
                "trace_id": task.trace.trace_id if task.trace else None}


class Occupier(Agent):
    @capability("occupy")
    def occupy(self, input: Any, task: Any) -> Any:
        with task.acquire(input["resource"], limit=1, timeout=30) as unit:
            _wait_for(input["release_file"])
            return {"token": unit.token, "price": unit.price}


class _Buyer(Agent):
    def buy(self, input: Any, task: Any) -> Any:
        before = task.balance()
        with task.acquire(input["resource"], limit=input["limit"], timeout=90) as unit:
            got = {"unit": unit.unit, "token": unit.token, "price": unit.price}
        return {**got, "before": before, "after": task.balance(), "agent": self.ctx.agent_id}


class BuyerA(_Buyer):
    @capability("buy_a")
    def buy_a(self, input: Any, task: Any) -> Any:
        return self.buy(input, task)


class BuyerB(_Buyer):
    @capability("buy_b")
    def buy_b(self, input: Any, task: Any) -> Any:
        return self.buy(input, task)


class BuyerC(_Buyer):
    @capability("buy_c")
    def buy_c(self, input: Any, task: Any) -> Any:
        return self.buy(input, task)
