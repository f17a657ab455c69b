"""A stand-in for the coordinator's loop services (asks, timers, events, the command
table) with a manual clock, driving the real Scheduler, Journal and Ledger turn by turn:
what the coordination services see of the coordinator, without processes.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from coordination.ledger import Ledger
from coordination.services.market import MarketPolicy, install
from runtime.tasks.journal import Journal
from runtime.tasks.scheduler import Scheduler
from runtime.tasks.task import parse_task
from tests.support.helpers import FakeClock

__all__ = ["Loop", "bid", "conserved", "wait_for_event"]


class Loop:
    """The coordinator services MarketPolicy uses, driven by hand."""

    def __init__(self, home: Any) -> None:
        self.clock = FakeClock(100.0)
        self.journal = Journal(home, retry_base=1e-6, retry_cap=1e-6)  # retries due at once
        self.events: list[tuple[str, Any, dict[str, Any]]] = []
        self.asks: list[tuple[str, dict[str, Any], Any]] = []
        self.timers: list[tuple[float, Any]] = []
        self.agent_listeners: list[Any] = []
        self.table: dict[str, Any] = {}
        self.commands = SimpleNamespace(extend=self.table.update)
        self.cfg = SimpleNamespace(allocation="market", market={})
        self.scheduler = Scheduler(self.journal, MarketPolicy(self), self.emit, self.clock)
        self.market = install(self)
        self.sent: dict[str, list[dict[str, Any]]] = {}

    def emit(self, type_: str, trace: Any = None, **fields: Any) -> None:
        self.events.append((type_, trace, fields))

    def ask(self, agent_id: str, kind: str, request: dict[str, Any], on_answer: Any) -> bool:
        if agent_id not in self.scheduler.agents:
            return False
        self.asks.append((agent_id, request, on_answer))
        return True

    def call_later(self, delay: float, fn: Any) -> None:
        self.timers.append((self.clock() + delay, fn))

    # one coordinator turn: something happens, timers fire, dispatch, commit
    def turn(self, action: Any = None) -> Any:
        with self.journal.transaction():
            out = action() if action else None
            due = [t for t in self.timers if t[0] <= self.clock()]
            self.timers = [t for t in self.timers if t[0] > self.clock()]
            for _, fn in due:
                fn()
            self.scheduler.fire_timers()
            self.scheduler.dispatch()
        for agent, tasks in self.scheduler.take_outbox().items():
            self.sent.setdefault(agent, []).extend(tasks)
        return out

    def join(self, agent_id: str, cost: float = 1.0, quality: float = 0.8) -> None:
        def hello() -> None:
            link = self.scheduler.agent_joined(agent_id, "p", 1, {"work": {"cost": cost, "quality": quality}},
                                               lambda m: None)
            for listener in self.agent_listeners:
                listener.agent_joined(link)
        self.turn(hello)

    def die(self, agent_id: str) -> None:
        def dead() -> None:
            self.scheduler.agent_died(agent_id)
            for listener in self.agent_listeners:
                listener.agent_died(agent_id)
        self.turn(dead)

    def submit(self, **options: Any) -> str:
        spec = parse_task({"capability": "work", "input": {}, "options": options}, now=time.time())

        def add() -> str:
            from runtime.observability.trace_context import TraceContext
            from runtime.tasks.scheduler import TaskRun
            tid = self.journal.submit_many([spec])[0]
            rec = self.journal.get(tid)
            deadline = self.clock() + options["deadline"] if "deadline" in options else None
            self.scheduler.enqueue(TaskRun(tid, "work", {}, TraceContext.new_trace(),
                                           max_attempts=rec.max_attempts, deadline=deadline))
            return tid
        return self.turn(add)

    def answer(self, agent_id: str, answer: Any, error: str | None = None) -> None:
        """The agent's pending ask gets ``answer`` (a bid dict or None)."""
        for i, (aid, _req, cb) in enumerate(self.asks):
            if aid == agent_id:
                del self.asks[i]
                msg = {"answer": answer, **({"error": error} if error else {})}
                self.turn(lambda cb=cb, msg=msg: cb(agent_id, msg))
                return
        raise AssertionError(f"no pending ask for {agent_id}")

    def result(self, agent_id: str, ok: bool = True) -> None:
        task = self.sent[agent_id].pop(0)
        r = {"id": task["id"], "attempt": task["attempt"]}
        r.update({"ok": 1} if ok else {"error": {"type": "RuntimeError", "message": "boom"}})
        self.turn(lambda: self.scheduler.results(agent_id, [r]))

    def later(self, seconds: float) -> None:
        self.clock.t += seconds
        self.turn()

    def types(self) -> list[str]:
        return [e[0] for e in self.events if e[0].startswith("market.")]

    def state(self, tid: str) -> str:
        return self.journal.get(tid).state


def bid(price: float, quality: float | None = None) -> dict[str, Any]:
    return {"price": price, **({"quality": quality} if quality is not None else {})}


def conserved(loop: Loop) -> bool:
    return Ledger(loop.journal.conn).check_conservation().ok


def wait_for_event(c: Any, type_: str, timeout: float = 10.0) -> dict[str, Any]:
    """The first event of ``type_`` in the log (events reach it asynchronously): bounded poll."""
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        found = c.call("events", type=type_, limit=1)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {type_} event within {timeout} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
