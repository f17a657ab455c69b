"""``ctx.service(name)`` in an agent: the guards of ``[services.NAME]``, machine-wide.

Every agent process builds one :class:`MachineGuards` over the daemon's shared state table
(``RunResources.guard_table``, made by the root before it forks), so a breaker opened by one
agent is open in all of them at their next call and one token bucket meters every agent of the
machine.  What a guard decides becomes an event:

- in the trace of the task whose handler made the call (``agora.current_task()``: the thread or
  asyncio task running it), or a system event outside any handler;
- named ``service.<decision>`` (``service.cache_hit``, ``service.throttle_wait``,
  ``service.batch_join``, ``service.retry``, ...) with ``service=NAME``; a breaker transition is
  ``breaker.transition`` with ``breaker=NAME`` and ``state`` (the new state), which is what the
  telemetry's metrics read (``agora_breaker_state``, ``agora_breaker_transitions_total``);
  the others feed ``agora_service_decisions_total{service, decision}``
  (runtime.observability.metrics).

Decisions:
- Each agent process caches results in memory (any Python object); behind it the answers
  are machine-wide: one agent's answer is a hit in every other (runtime.guards.shared_cache:
  a file per answer in the run's private directory, for values ``marshal`` encodes), and two
  identical calls in flight at once, in one agent or in two, make one request
  (runtime.guards.flights: a board in the shared table, the leader's result handed over as
  a file).  Breaker and limiter state, which is small and fixed-size, is machine-wide.
- ``transport()`` / ``async_transport()`` need httpx (the ``agora[http]`` extra), imported only
  when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from runtime.agents.agent import current_task
from runtime.errors import NotFound
from runtime.guards.service import Guards, Service
from runtime.guards.state import LocalStateStore, SharedStateStore, StateStore

__all__ = ["MachineService", "MachineGuards", "guard_event_sink", "agent_guards"]


class MachineService(Service):
    """A ``Service`` that also makes httpx transports of itself."""

    def transport(self, **kw: Any) -> Any:
        """An ``httpx`` transport (sync) that guards every request: ``httpx.Client(transport=...)``."""
        from runtime.guards.http import GuardedTransport
        return GuardedTransport(self, **kw)

    def async_transport(self, **kw: Any) -> Any:
        """The asyncio version, for ``httpx.AsyncClient(transport=...)``."""
        from runtime.guards.http import AsyncGuardedTransport
        return AsyncGuardedTransport(self, **kw)


class MachineGuards(Guards):
    """``Guards`` whose services are :class:`MachineService` objects."""

    def service(self, name: str) -> MachineService:
        if name not in self._services:
            if name not in self._configs:
                raise NotFound(f"no service named {name!r} is configured",
                               hint=f"add a [services.{name}] table to agora.toml; configured: {sorted(self._configs)}")
            self._services[name] = MachineService(name, self._configs[name], store=self._store, **self._kw)
        return self._services[name]  # type: ignore[return-value]


def guard_event_sink(emit: Callable[..., None]) -> Callable[..., None]:
    """``on_event`` for the guards: each decision an event in the calling task's trace."""

    def on_event(decision: str, **fields: Any) -> None:
        handle = current_task()
        trace = handle.trace if handle is not None else None
        if handle is not None:
            fields["task_id"] = handle.id
        if decision == "breaker_transition":
            fields["state"] = fields.get("new")
            emit("breaker.transition", trace, **fields)
        else:
            emit(f"service.{decision}", trace, **fields)
    return on_event


def agent_guards(services: Mapping[str, Mapping[str, Any]], table: Any, emit: Callable[..., None],
                 **kw: Any) -> MachineGuards | None:
    """The guards of an agent process: over ``table`` (machine-wide) or, without one (an
    embedded runtime, a test), over this process's own store.  None without services."""
    if not services:
        return None
    store: StateStore = SharedStateStore(table) if table is not None else LocalStateStore()
    return MachineGuards(services, store=store, on_event=guard_event_sink(emit), **kw)
