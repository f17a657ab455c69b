"""Agents for the vector clock system test (tests/system/test_vector_clocks.py).

``Left`` and ``Right`` (one capability each, so each task lands in its own pool) meet
outside agora: each writes its file and waits (bounded) for the other's, so both tasks
are running at once and no agora message orders one before the other.  ``Stamp``
returns its clock, for pipelines whose next step reads the previous step's result.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agora import Agent, capability

__all__ = ["Left", "Right", "Stamp"]

MEET_S = 30.0


def meet(input: dict[str, Any], task: Any) -> dict[str, Any]:
    here, there = os.path.join(input["dir"], input["me"]), os.path.join(input["dir"], input["other"])
    with open(here, "w") as f:
        f.write(task.id)
    deadline = time.monotonic() + MEET_S
    while not os.path.exists(there):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{input['other']} never came")
        time.sleep(0.01)
    task.emit("clock.met", who=input["me"])
    return {"clock": task.clock}


class Left(Agent):
    @capability("left")
    def left(self, input: dict[str, Any], task: Any) -> dict[str, Any]:
        return meet(input, task)


class Right(Agent):
    @capability("right")
    def right(self, input: dict[str, Any], task: Any) -> dict[str, Any]:
        return meet(input, task)


class Stamp(Agent):
    @capability("stamp")
    def stamp(self, input: dict[str, Any], task: Any) -> dict[str, Any]:
        return {"clock": task.clock, "agent": self.ctx.agent_id if self.ctx else None}
