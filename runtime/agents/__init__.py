"""Agents: the API a user writes (``agent``: ``Agent``, ``capability``, the task handle and
the agent's context; ``locks``: ``task.lock`` / ``ctx.lock``) and the agent process that runs it (``process``: a task path and a
control path over the coordinator's agent socket).

May import: ``runtime.errors``, ``runtime.config``, ``runtime.wire``, ``runtime.tasks``
(payloads), ``runtime.observability``, ``shm``.
"""

from runtime.agents.agent import Agent, AgentContext, TaskHandle, capability

__all__ = ["Agent", "AgentContext", "TaskHandle", "capability"]
