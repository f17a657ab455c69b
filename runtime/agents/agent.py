"""The agent API: what a user writes.

::

    from agora import Agent, capability

    class Summarizer(Agent):
        def setup(self, ctx):
            self.vocab = ctx.array("vocab")          # read-only view of shared memory, no copy

        @capability("summarize")
        def summarize(self, input, task):
            task.emit("summarize.tokens", n=len(input["text"].split()))
            return {"summary": input["text"][:80]}

        def bid(self, cfp):                           # optional: the market asks this
            return {"price": self.cost("summarize") * (1 + cfp["queue"])}

        def vote(self, ballot_request):               # optional: votes ask this
            return ballot_request["options"][0]

A handler takes ``(input, task)``: ``input`` is the task's JSON input (with payloads
above the arena threshold already mapped back), ``task`` a :class:`TaskHandle` with the
id, attempt, trace context, ``emit``, ``clock`` (the agent's vector clock stamp: each
event it emits carries one as ``vc``) and ``lock(name)`` (a lock held by this attempt,
released however it ends: ``runtime.agents.locks``), ``acquire(resource, limit=...)`` (a unit
of a resource bought in a sale auction), ``subcontract(capability, input, budget=...)`` and
``balance()`` (``runtime.agents.economy``).  It returns any JSON value.  An exception is a
failed attempt (the traceback is kept); the task's retry policy decides what follows.

Hooks called on the agent's *control path* (a thread separate from the one running
handlers), so a busy agent still answers: ``bid(cfp)`` returns ``{"price": ..., ...}``
or ``None`` to decline; ``vote(request)`` returns a ballot (the shape depends on the
method: an option, a list of options, or a ranking) or ``None`` to abstain;
``propose(request)`` returns compromise options for a negotiation round; ``sale_bid(offer)``
answers a round of an English or Dutch sale the agent bid in (True: stay / take).

Defaults: ``bid`` prices the declared cost of the capability scaled by the agent's
queue (an idle agent bids its cost; each queued task adds the cost again) and states
the declared quality; ``vote`` abstains (an agent with no opinion says so rather than
inventing one); ``propose`` proposes nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from runtime.observability.trace_context import TraceContext
from runtime.observability.vclock import LiveClock

__all__ = ["Agent", "capability", "TaskHandle", "AgentContext", "Fatal", "Cancelled", "current_task"]

#: The attempt the current thread or asyncio task is running (set by the agent's executor),
#: so that code called from a handler without the handle (a service's guards) can put its
#: events in that task's trace.
_CURRENT: contextvars.ContextVar[TaskHandle | None] = contextvars.ContextVar("agora_task", default=None)


def current_task() -> TaskHandle | None:
    """The :class:`TaskHandle` of the handler running here (thread or asyncio task), or None."""
    return _CURRENT.get()


class Fatal(Exception):
    """Raised by a handler for a failure that another attempt cannot fix (bad input, a
    refused request): the task fails at once, without retries.  ``raise agora.Fatal("...")``
    or ``raise agora.Fatal("...") from e`` to keep the cause."""


class Cancelled(Exception):
    """What a handler sees when its task was cancelled or its attempt ran past
    ``timeout_s``: raised by ``task.check()`` and ``task.emit()`` once the coordinator has
    asked the agent to stop (an ``async def`` handler gets ``asyncio.CancelledError``
    instead).  A handler that catches it should return promptly; one that does not stop
    within the pool's grace period has its agent process killed and replaced."""


def capability(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a method as the handler of capability ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"capability() expects a non-empty name, got {name!r}")

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__agora_capability__ = name  # type: ignore[attr-defined]
        return fn

    return mark


class AgentContext:
    """What ``setup(ctx)`` receives: identity, shared context, events."""

    def __init__(self, agent_id: str, pool: str, index: int, declared: dict[str, dict[str, float]],
                 contexts: Any, emit: Callable[..., None]) -> None:
        self.agent_id = agent_id
        self.pool = pool
        self.index = index
        self.declared = declared
        self._contexts = contexts
        self.emit = emit
        self.call: Callable[..., Any] = _not_connected
        self.guards: Any = None  # runtime.guards.Guards of [services.*], set by the agent process

    # ``call(op, args, timeout=30.0)`` asks the coordinator from any thread of the agent
    # (coordination primitives: ``ctx.call("lock.acquire", {"name": "db", "ttl": 5})``);
    # it is connected once the agent has said hello, i.e. after ``setup`` returns.

    def array(self, name: str) -> Any:
        """A read-only numpy view of shared context ``name`` (no copy)."""
        return self._contexts.array(name)

    def bytes(self, name: str) -> memoryview:
        return self._contexts.bytes(name)

    def lock(self, name: str, *, ttl: float = 30.0, timeout: float = 10.0) -> Any:
        """Lock ``name`` for this agent (released when it dies, or by ``release()``/the
        ``with`` block): a ``runtime.agents.locks.HeldLock`` with its fencing token."""
        from runtime.agents.locks import acquire_lock
        return acquire_lock(self.call, name, ttl=ttl, timeout=timeout)

    def acquire(self, resource: str, *, limit: float, price: float | None = None,
                timeout: float = 10.0) -> Any:
        """Buy a unit of ``resource`` in its sale auction for this agent (released when it
        dies, or by ``release()``/the ``with`` block): a ``runtime.agents.economy.HeldUnit``."""
        from runtime.agents.economy import acquire_unit
        return acquire_unit(self.call, resource, limit=limit, price=price, timeout=timeout)

    def balance(self) -> float:
        """This agent's ledger balance in credits (what it earned and may spend)."""
        from runtime.agents.economy import balance
        return balance(self.call)

    def service(self, name: str) -> Any:
        """The guarded ``runtime.guards.Service`` of ``[services.<name>]`` in agora.toml: its
        breaker and rate limiter are shared by every agent of the machine, its cache (with
        in-flight de-duplication) and batches by the tasks of this agent.  Use it as a
        decorator (``@svc``), ``svc.call(fn, ...)`` / ``await svc.acall(fn, ...)``, ``with
        svc.attempt():``, or ``svc.transport()`` / ``svc.async_transport()`` for httpx."""
        if self.guards is None:
            from runtime.errors import NotFound
            raise NotFound(f"no service named {name!r}: this agent runs without [services] tables",
                           hint=f"add a [services.{name}] table to agora.toml")
        return self.guards.service(name)


def _not_connected(*_: Any, **__: Any) -> Any:
    from runtime.errors import Unavailable
    raise Unavailable("the agent is not connected to the coordinator yet (setup() is still running)")


class TaskHandle:
    """The running attempt, as a handler sees it."""

    def __init__(self, task_id: str, attempt: int, capability: str, trace: TraceContext | None,
                 emit: Callable[..., None], call: Callable[..., Any] | None = None,
                 clock: LiveClock | None = None) -> None:
        self._call = call or _not_connected  # the agent's coordinator call (ctx.call)
        self._clock = clock  # the agent's own vector clock (runtime.observability.vclock)
        self.id = task_id
        self.attempt = attempt
        self.capability = capability
        self.trace = trace
        self._emit = emit
        self.cancelled = False  # True once the coordinator asked this attempt to stop
        self.cancel_reason = ""
        self.on_cancel: Callable[[], None] | None = None  # the executor's (an async handler's task)
        self._subcontracts = 0  # numbers this attempt's subcontracts (their idempotency keys)

    def emit(self, type_: str, **fields: Any) -> None:
        """An event in this task's trace (a child span of the attempt); raises
        :class:`Cancelled` once the attempt was cancelled (from any thread or the loop)."""
        self.check()
        if self._clock is not None:
            fields["vc"] = self._clock.tick()  # an event of this agent: its own stamp
        self._emit(type_, self.trace, task_id=self.id, **fields)

    @property
    def clock(self) -> dict[str, int]:
        """The agent's current vector clock stamp (``{node: counter}``); compare two stamps
        with ``agora.compare_clocks``.  Empty outside an agent process."""
        return self._clock.now if self._clock is not None else {}

    def lock(self, name: str, *, ttl: float = 30.0, timeout: float = 10.0) -> Any:
        """Lock ``name`` for this attempt: released when the ``with`` block ends and, by the
        coordinator, when the attempt ends however it ends (a raise, a cancel, a crash).
        Returns a ``runtime.agents.locks.HeldLock`` (``token``, ``renew``, ``release``)."""
        from runtime.agents.locks import acquire_lock
        return acquire_lock(self._call, name, ttl=ttl, timeout=timeout,
                            task={"id": self.id, "attempt": self.attempt})

    def acquire(self, resource: str, *, limit: float, price: float | None = None,
                timeout: float = 10.0) -> Any:
        """Bid up to ``limit`` credits (from this agent's balance) for a unit of
        ``resource`` in its sale auction; the unit is held by this attempt (released by the
        ``with`` block and, however the attempt ends, by the coordinator).  Returns a
        ``runtime.agents.economy.HeldUnit`` (``unit``, ``token``, ``price``, ``release``)."""
        from runtime.agents.economy import acquire_unit
        return acquire_unit(self._call, resource, limit=limit, price=price, timeout=timeout,
                            task={"id": self.id, "attempt": self.attempt})

    bid_for = acquire

    def subcontract(self, capability: str, input: Any, *, budget: float, timeout: float = 60.0,
                    options: dict[str, Any] | None = None) -> Any:
        """Run ``capability(input)`` through the market, paid from this agent's balance (at
        most ``budget`` credits; the rest comes back), in this task's trace; returns its
        result or raises ``runtime.agents.economy.SubcontractFailed``."""
        from runtime.agents.economy import subcontract
        self._subcontracts += 1
        return subcontract(self._call, {"id": self.id, "attempt": self.attempt}, self._subcontracts,
                           capability, input, budget=budget, timeout=timeout, options=options)

    async def asubcontract(self, capability: str, input: Any, *, budget: float, timeout: float = 60.0,
                           options: dict[str, Any] | None = None) -> Any:
        """:meth:`subcontract` for an ``async def`` handler: the wait runs in a thread, so the
        agent's other asyncio tasks go on meanwhile."""
        import asyncio
        return await asyncio.to_thread(self.subcontract, capability, input, budget=budget, timeout=timeout,
                                       options=options)

    def balance(self) -> float:
        """The agent's ledger balance in credits."""
        from runtime.agents.economy import balance
        return balance(self._call)

    def check(self) -> None:
        """Raise :class:`Cancelled` if the coordinator asked this attempt to stop; a long
        synchronous handler calls it between steps (it is cheap: one attribute read)."""
        if self.cancelled:
            raise Cancelled(f"task {self.id} attempt {self.attempt} was cancelled"
                            + (f" ({self.cancel_reason})" if self.cancel_reason else ""))

    def cancel(self, reason: str = "") -> None:
        """Mark the attempt cancelled (the agent's control path calls it on a cancel frame)."""
        if self.cancelled:
            return
        self.cancel_reason = reason
        self.cancelled = True
        hook = self.on_cancel
        if hook is not None:
            hook()


class Agent:
    """Base class of user agents; see the module docstring."""

    handlers: dict[str, str] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        found = dict(getattr(cls, "handlers", {}))
        for attr, fn in vars(cls).items():
            cap = getattr(fn, "__agora_capability__", None)
            if cap is not None:
                found[cap] = attr
        cls.handlers = found

    def __init__(self) -> None:
        self.ctx: AgentContext | None = None
        self.queue_len = 0

    def setup(self, ctx: AgentContext) -> None:
        """Called once in the agent process before any task; map shared context here."""

    def handler(self, capability_name: str) -> Callable[[Any, TaskHandle], Any]:
        return getattr(self, self.handlers[capability_name])

    def cost(self, capability_name: str) -> float:
        declared = self.ctx.declared if self.ctx else {}
        return float(declared.get(capability_name, {}).get("cost", 1.0))

    def quality(self, capability_name: str) -> float:
        declared = self.ctx.declared if self.ctx else {}
        return float(declared.get(capability_name, {}).get("quality", 0.5))

    def bid(self, cfp: dict[str, Any]) -> dict[str, Any] | None:
        cap = cfp["capability"]
        if cap not in self.handlers:
            return None
        queued = int(cfp.get("queue", self.queue_len))
        # the answer depends on nothing but the capability and the queue: it stands (the
        # market reuses it for cfps of the same terms instead of asking again)
        return {"price": self.cost(cap) * (1 + queued), "quality": self.quality(cap), "stands_ms": 30_000}

    def vote(self, request: dict[str, Any]) -> Any:
        return None

    def sale_bid(self, offer: dict[str, Any]) -> Any:
        """A round of an English or Dutch sale this agent bid in (``offer``: resource,
        auction, round, price, limit, bid_id, in credits): True stays / takes.  Default:
        while the price is within the limit its handler gave."""
        from runtime.agents.economy import default_sale_bid
        return default_sale_bid(offer)

    def propose(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        return []
