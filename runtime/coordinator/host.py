"""What a coordinator service sees of the coordinator: the ``ServiceHost`` protocol.

A service (the market, decisions, primitives, the scaler, observability) is built by a
factory the composition root hands the coordinator (``runtime.daemon.composition``)::

    factory(host: ServiceHost) -> service object

and touches the coordinator only through this surface.  It reads the shared parts
(``cfg``, ``journal``, ``scheduler``, ``registry``, ``contexts``, ``emit``, ``clock``), calls
``ask``/``call_later``/``wait_for``/``command``, and registers what it serves and what it listens to.
Every hook is a list of listeners, called in the order of registration, and listeners are
independent by contract (none relies on another having run first), so the order in which
services are installed never changes behaviour.  ``tests/support/fake_host.py`` is the one
fake of this surface.

Registration (each may be called once per service, at install time, before serving):

========================  ==========================================================
``add_commands(table)``    control-channel commands ``name -> fn(args, trace)``;
                           a name already taken is an error (no silent override)
``add_agent_ops(ops)``     operations agents call (``ctx.call(op, args)``):
                           ``op -> fn(agent_id, args, trace)``; same rule
``add_agent_listener(l)``  ``l.agent_joined(link)`` / ``l.agent_died(agent_id)``
``add_turn_hook(fn)``      ``fn()`` once per loop turn, inside the turn's transaction
``add_final_listener(fn)`` ``fn(task, record)`` when a task ends (any final state)
``add_attempt_listener``   ``fn(task, attempt, finish, crashed)`` when an attempt ends
``add_task_taker(fn)``     ``fn(task) -> bool``: True takes a queued task over before
                           the allocation policy sees it (a consensus step)
``add_consensus_methods``  method names a pipeline's consensus step may ask for
========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["ServiceHost", "AgentListener", "ServiceFactory", "Command"]

#: A control-channel command: ``fn(args, trace) -> JSON value | Deferred``.
Command = Callable[[dict[str, Any], Any], Any]


class AgentListener(Protocol):
    def agent_joined(self, link: Any) -> None: ...

    def agent_died(self, agent_id: str) -> None: ...


class ServiceHost(Protocol):
    """The coordinator as its services see it (``runtime.coordinator.loop.Coordinator``)."""

    cfg: Any            # runtime.config.Config
    run: Any            # runtime.config.RunPaths
    journal: Any        # runtime.tasks.journal.Journal (the ledger shares its database)
    scheduler: Any      # runtime.tasks.scheduler.Scheduler
    registry: Any       # a runtime.registry.model.Backend
    contexts: Any       # shm.context.ContextStore
    root: Any           # runtime.coordinator.root_link.RootLink
    emit: Callable[..., None]
    clock: Callable[[], float]

    @property
    def stopping(self) -> bool: ...

    @property
    def known_capabilities(self) -> set[str]: ...

    def ask(self, agent_id: str, kind: str, request: dict[str, Any],
            on_answer: Callable[[str | None, dict[str, Any]], None]) -> bool: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...

    def wait_for(self, task_id: str, notify: Callable[[Any], None]) -> None: ...

    def command(self, name: str, args: dict[str, Any], trace: Any) -> Any:
        """Run a control-channel command as a client would (a value, a Deferred, or a
        typed error): the economy submits a subcontracted task through ``submit``."""
        ...

    def add_commands(self, table: dict[str, Command]) -> None: ...

    def add_agent_ops(self, ops: dict[str, Callable[[str, dict[str, Any], Any], Any]]) -> None: ...

    def add_agent_listener(self, listener: AgentListener) -> None: ...

    def add_turn_hook(self, fn: Callable[[], None]) -> None: ...

    def add_final_listener(self, fn: Callable[[Any, Any], None]) -> None: ...

    def add_attempt_listener(self, fn: Callable[[Any, int, Any, bool], None]) -> None: ...

    def add_task_taker(self, fn: Callable[[Any], bool]) -> None: ...

    def add_consensus_methods(self, methods: Iterable[str]) -> None: ...


#: What the composition root hands the coordinator for each service.
ServiceFactory = Callable[[ServiceHost], Any]
