"""Kill and replace an agent that did not stop a cancelled attempt within its grace.

::

    scheduler grace timer --kill_listeners(link, why)--> AgentReplacer.kill
        -> RootActions (helper thread): terminate_child(pool:P, agent:P.N)
        -> on the loop (turn hook collects): start_agent(P, N)   the same index and slot

The scheduler decides *that* an agent must go (``runtime.tasks.scheduler``: a cancel
frame, then ``cancel_grace_s``); this service only asks the root, asynchronously, through
the same ``RootActions`` the scaler uses (root calls block: the root stops the child
with SIGTERM, its shutdown time, then SIGKILL, and waits for it).  The agent's death
reaches the coordinator as EOF on its socket, which closes its attempts as LOST.  The
replacement takes the same index, so the pool keeps its size and the scaler's view of
its members stays true.  A failed root call is an ``agent.replace_error`` event.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import NotFound
from runtime.pools.specs import pool_path
from runtime.scaling.service import RootActions

__all__ = ["AgentReplacer", "install"]


class AgentReplacer:
    """Terminates the agents the scheduler gives up on and starts their replacements."""

    def __init__(self, coord: Any) -> None:
        self.coord = coord
        self.root = RootActions(coord.run.root_sock)
        self.replacing: set[str] = set()

    def kill(self, link: Any, why: str) -> None:
        if link.id in self.replacing:
            return
        self.replacing.add(link.id)
        pool, _, index = link.id.rpartition(".")
        self.coord.emit("agent.replacing", None, agent=link.id, pid=link.pid, why=why)
        self.root.submit("terminate_child", {"supervisor": pool_path(pool), "child": f"agent:{link.id}"},
                         lambda result, error: self._terminated(link.id, pool, int(index), error))

    def _terminated(self, agent_id: str, pool: str, index: int, error: Any) -> None:
        if error is not None and not isinstance(error, NotFound):  # NotFound: it died already
            self.replacing.discard(agent_id)
            self.coord.emit("agent.replace_error", None, agent=agent_id, action="terminate_child",
                            error=str(error))
            return
        self.root.submit("start_agent", {"pool": pool, "index": index},
                         lambda result, error: self._started(agent_id, error))

    def _started(self, agent_id: str, error: Any) -> None:
        self.replacing.discard(agent_id)
        if error is not None:
            self.coord.emit("agent.replace_error", None, agent=agent_id, action="start_agent",
                            error=str(error))
        else:
            self.coord.emit("agent.replaced", None, agent=agent_id)


def install(coord: Any) -> AgentReplacer:
    replacer = AgentReplacer(coord)
    coord.scheduler.kill_listeners.append(replacer.kill)
    coord.add_turn_hook(replacer.root.collect)
    return replacer
