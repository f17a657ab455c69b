"""A FakeHost running the market (as the allocation policy), the economy and the sales
services wired as the composition root wires them (one shared payers map), with helpers
to bid, answer sale rounds as default agents do, and reopen everything from the same
database (a coordinator restart)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any

from coordination.ledger import Ledger
from coordination.services import economy, market, sales
from runtime.agents.economy import default_sale_bid
from tests.support.fake_host import FakeHost

__all__ = ["EconHost", "Call"]


class Call:
    """What an agent op answered: ``value``, ``error`` (the wire error), or still ``pending``."""

    def __init__(self, out: Any) -> None:
        self.msg: dict[str, Any] | None = None
        if hasattr(out, "bind"):
            out.bind(self._done)
        else:
            self.msg = {"ok": out}

    def _done(self, msg: dict[str, Any]) -> None:
        self.msg = msg

    @property
    def pending(self) -> bool:
        return self.msg is None

    @property
    def value(self) -> Any:
        assert self.msg is not None and "ok" in self.msg, self.msg
        return self.msg["ok"]

    @property
    def error(self) -> str | None:
        return None if self.msg is None or "error" not in self.msg else self.msg["error"]["code"]


class EconHost(FakeHost):
    def __init__(self, home: Any, resources: dict[str, dict[str, Any]] | None = None,
                 market_cfg: dict[str, Any] | None = None) -> None:
        payers: dict[str, str] = {}
        cfg = SimpleNamespace(allocation="market", market=market_cfg or {}, pools=(), resources=resources or {})
        super().__init__(home, services=(partial(market.install, payers=payers),
                                         partial(economy.install, payers=payers), sales.install),
                         policy=0, cfg=cfg)
        self.market, self.economy, self.sales = self.services
        self.ledger = Ledger(self.journal.conn)

    def op(self, agent: str, name: str, args: dict[str, Any], trace: Any = None) -> Call:
        """An agent's ``ctx.call(name, args)``, in a turn of its own."""
        holder: list[Call] = []

        def call() -> None:
            try:
                holder.append(Call(self.agent_ops[name](agent, args, trace)))
            except Exception as e:  # noqa: BLE001 - the test reads the typed error
                from runtime.errors import to_wire
                c = Call(None)
                c.msg = {"error": to_wire(e)}
                holder.append(c)
        self.turn(call)
        return holder[0]

    def resume(self) -> None:
        """What a restarted coordinator does first (runtime.coordinator.loop.resume, as after a
        daemon start): running attempts closed as crashed, unfinished tasks queued again."""
        from runtime.observability.trace_context import TraceContext
        from runtime.tasks.scheduler import TaskRun

        def requeue() -> None:
            for rec in self.journal.unfinished():
                if rec.state == "queued" and rec.id not in self.scheduler.tasks:
                    trace = TraceContext(rec.trace_id, rec.trace_id[:16]) if rec.trace_id else TraceContext.new_trace()
                    self.scheduler.enqueue(TaskRun(rec.id, rec.capability, rec.input, trace,
                                                   max_attempts=rec.max_attempts, attempts=rec.attempts))
        self.turn(requeue)

    def bid(self, agent: str, resource: str, limit: float, **more: Any) -> Call:
        return self.op(agent, "sale.bid", {"resource": resource, "limit": limit, **more})

    def sale_asks(self) -> list[tuple[str, dict[str, Any], Any]]:
        return [a for a in self.asks if a[1].get("side") == "sale"]

    def answer_sales(self, hook: Any = default_sale_bid) -> int:
        """Answer every pending sale ask with ``hook(offer)``; how many were answered."""
        asks = self.sale_asks()
        for a in asks:
            self.asks.remove(a)
        for agent, offer, cb in asks:
            self.turn(lambda cb=cb, agent=agent, offer=offer: cb(agent, {"answer": hook(offer)}))
        return len(asks)

    def run_sales(self, hook: Any = default_sale_bid, steps: int = 400, dt: float = 0.005) -> None:
        """Let time pass in small steps, answering sale rounds, until nothing is open or waiting."""
        for _ in range(steps):
            self.answer_sales(hook)
            if not self.sales.open and not any(self.sales.waiting.values()) and not self.sales.scheduled:
                return
            self.later(dt)

    def balance(self, agent: str) -> int:
        return self.ledger.balance(f"agent:{agent}")
