"""Agents of one capability ("work") with different speed and reliability, for the market
daemon tests and perf/allocation.py.  Each does real work (a sleep standing for the
service time) or a real failure; none fakes an answer.

* ``Fast``: ``input["fast_ms"]`` (default 5 ms) per task.
* ``Slow``: ``input["slow_ms"]`` (default 50 ms) per task.
* ``Unreliable``: fast, but fails the tasks whose id (salted with ``input["salt"]``)
  hashes (crc32, stable across processes) below ``input["fail_pct"]`` percent (default
  50): deterministic per task.
* ``Failing``: always raises.
* ``Decliner``: never bids.  ``Mute``: answers its bids only after 300 ms (outside any
  market window), so it is never in a round.
* ``Haggler``: fast, and answers English rounds with an explicit ``{"stay": ...}`` read off
  the announced price (its declared cost is its floor) instead of a plain bid.
"""

from __future__ import annotations

import os
import time
import zlib
from typing import Any

from agora import Agent, capability


class Fast(Agent):
    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        time.sleep(float(input.get("fast_ms", 5)) / 1000)
        return {"by": "fast", "pid": os.getpid(), "n": input.get("n")}


class Slow(Agent):
    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        time.sleep(float(input.get("slow_ms", 50)) / 1000)
        return {"by": "slow", "pid": os.getpid(), "n": input.get("n")}


class Unreliable(Agent):
    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        time.sleep(float(input.get("fast_ms", 5)) / 1000)
        key = f"{input.get('salt', 0)}:{task.id}".encode()
        if zlib.crc32(key) % 100 < int(input.get("fail_pct", 50)):
            raise RuntimeError(f"unreliable agent failed task {task.id}")
        return {"by": "unreliable", "pid": os.getpid(), "n": input.get("n")}


class Failing(Agent):
    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        raise RuntimeError("this agent always fails")


class Decliner(Agent):
    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        return {"by": "decliner"}

    def bid(self, cfp: dict[str, Any]) -> dict[str, Any] | None:
        return None


class Mute(Agent):
    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        return {"by": "mute"}

    def bid(self, cfp: dict[str, Any]) -> dict[str, Any] | None:
        time.sleep(0.3)  # on the control thread: the answer comes long after the window
        return super().bid(cfp)


class Haggler(Fast):
    def bid(self, cfp: dict[str, Any]) -> dict[str, Any] | None:
        if cfp.get("auction") == "english":  # KeyError if the round's price is missing
            return {"stay": cfp["price"] >= self.cost(cfp["capability"])}
        return super().bid(cfp)
