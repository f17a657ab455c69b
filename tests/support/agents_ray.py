"""Agents for the Ray engine tests: they say on which Ray node they run."""

from __future__ import annotations

import time
from typing import Any

from agora import Agent, capability


def node_id() -> str:
    import ray
    return ray.get_runtime_context().get_node_id()


class NodeEcho(Agent):
    @capability("where")
    def where(self, input: Any, task: Any) -> Any:
        """The node this actor runs on; with ``mark``, written to that file first, then a
        wait of ``s`` seconds (the test removes the node meanwhile)."""
        here = node_id()
        if input.get("mark"):
            with open(input["mark"], "a") as f:
                f.write(here + "\n")
        time.sleep(float(input.get("s", 0)))
        return {"node": here, "attempt": task.attempt}
