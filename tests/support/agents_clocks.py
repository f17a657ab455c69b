"""Agents for the vector clock system test (tests/system/test_vector_clocks.py).

``Left`` and ``Right`` (one capability each, so each task lands in its own pool) meet
outside agora: each writes its file and waits (bounded) for the other's, so both tasks
are running at once and no agora message orders one before the other (unless they take
``turn``s calling the coordinator: then the second call is after the first).  ``Stamp``
returns its clock, for pipelines whose next step reads the previous step's result.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agora import Agent, capability

__all__ = ["Left", "Right", "Stamp"]

MEET_S = 30.0


def _wait_for(path: str) -> None:
    deadline = time.monotonic() + MEET_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def meet(input: dict[str, Any], task: Any, ctx: Any) -> dict[str, Any]:
    """Meet the other task; with ``turn``, the "first" calls the coordinator and then says
    so (a file), the "second" waits for that and then calls too."""
    with open(os.path.join(input["dir"], input["me"]), "w") as f:
        f.write(task.id)
    _wait_for(os.path.join(input["dir"], input["other"]))
    out: dict[str, Any] = {}
    called = os.path.join(input["dir"], "called")
    if input.get("turn") == "first":
        out["before_call"] = task.clock
        ctx.call("counter.add", {"name": "clocks"})
        open(called, "w").close()
    elif input.get("turn") == "second":
        _wait_for(called)
        ctx.call("counter.get", {"name": "clocks"})
        out["after_call"] = task.clock
    task.emit("clock.met", who=input["me"])
    return {"clock": task.clock, **out}


class Left(Agent):
    @capability("left")
    def left(self, input: dict[str, Any], task: Any) -> dict[str, Any]:
        return meet(input, task, self.ctx)


class Right(Agent):
    @capability("right")
    def right(self, input: dict[str, Any], task: Any) -> dict[str, Any]:
        return meet(input, task, self.ctx)


class Stamp(Agent):
    @capability("stamp")
    def stamp(self, input: dict[str, Any], task: Any) -> dict[str, Any]:
        return {"clock": task.clock, "agent": self.ctx.agent_id if self.ctx else None}
