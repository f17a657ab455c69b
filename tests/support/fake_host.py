"""A stand-in for the coordinator's loop services (asks, timers, events, the command
table) with a manual clock, driving the real Scheduler, Journal and Ledger turn by turn:
what the coordination services see of the coordinator, without processes.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from coordination.ledger import Ledger
from coordination.services.market import install
from runtime.tasks.journal import Journal
from runtime.tasks.scheduler import Scheduler
from runtime.tasks.task import parse_task
from tests.support.helpers import FakeClock

__all__ = ["FakeHost", "Loop", "bid", "conserved", "wait_for_event"]


class FakeHost:
    """The ``ServiceHost`` surface (runtime.coordinator.host) over a real Scheduler and
    Journal, with a manual clock, asks recorded for the test to answer and timers fired by
    ``turn``.  ``services`` are factories as the composition root gives them; with
    ``policy`` naming one of them, that service is the allocation policy."""

    def __init__(self, home: Any, services: tuple[Any, ...] = (), policy: int | None = None,
                 cfg: Any = None) -> None:
        self.clock = FakeClock(100.0)
        self.journal = Journal(home, retry_base=1e-6, retry_cap=1e-6)  # retries due at once
        self.events: list[tuple[str, Any, dict[str, Any]]] = []
        self.asks: list[tuple[str, dict[str, Any], Any]] = []
        self.timers: list[tuple[float, Any]] = []
        self.agent_listeners: list[Any] = []
        self.turn_hooks: list[Any] = []
        self.table: dict[str, Any] = {}
        self.agent_ops: dict[str, Any] = {}
        self.consensus_methods: set[str] = set()
        self.cfg = cfg or SimpleNamespace(allocation="market", market={}, pools=())
        self.run = self.registry = self.contexts = self.root = None
        self.stopping = False
        self.known_capabilities: set[str] = set()
        self.scheduler = Scheduler(self.journal, None, self.emit, self.clock)
        self.services = [make(self) for make in services]
        if policy is not None:
            self.scheduler.policy = self.services[policy]
        self.sent: dict[str, list[dict[str, Any]]] = {}

    # -- registration, as the coordinator does it
    def add_commands(self, table: dict[str, Any]) -> None:
        assert not set(table) & set(self.table), f"commands registered twice: {set(table) & set(self.table)}"
        self.table.update(table)

    def add_agent_ops(self, ops: dict[str, Any]) -> None:
        self.agent_ops.update(ops)

    def add_agent_listener(self, listener: Any) -> None:
        self.agent_listeners.append(listener)

    def add_turn_hook(self, fn: Any) -> None:
        self.turn_hooks.append(fn)

    def add_final_listener(self, fn: Any) -> None:
        self.scheduler.final_listeners.append(fn)

    def add_attempt_listener(self, fn: Any) -> None:
        self.scheduler.attempt_end_listeners.append(fn)

    def add_task_taker(self, fn: Any) -> None:
        self.scheduler.takers.append(fn)

    def add_consensus_methods(self, methods: Any) -> None:
        self.consensus_methods.update(methods)

    def wait_for(self, task_id: str, notify: Any) -> None:
        self.add_final_listener(lambda task, rec: notify(rec) if task.id == task_id else None)

    def command(self, name: str, args: dict[str, Any], trace: Any) -> Any:
        """``submit`` as the coordinator's (journal, then the scheduler's queue, in the
        caller's turn); any other name from the services' own table."""
        if name != "submit":
            return self.table[name](args, trace)
        from runtime.observability.trace_context import TraceContext
        from runtime.tasks.scheduler import TaskRun
        spec = parse_task(args["task"], now=time.time(), capabilities={"work"})  # what join() declares
        trace = trace or TraceContext.new_trace()
        tid = self.journal.submit_many([spec], trace_ids=[trace.trace_id])[0]
        rec = self.journal.get(tid)
        if rec.state == "queued" and tid not in self.scheduler.tasks:
            self.scheduler.enqueue(TaskRun(tid, spec.capability, spec.input, trace,
                                           max_attempts=rec.max_attempts, attempts=rec.attempts))
        return tid

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
            for hook in list(self.turn_hooks):
                hook()
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

    def submit(self, task_input: Any = None, **options: Any) -> str:
        spec = parse_task({"capability": "work", "input": {} if task_input is None else task_input,
                           "options": options}, now=time.time())

        def add() -> str:
            from runtime.observability.trace_context import TraceContext
            from runtime.tasks.scheduler import TaskRun
            tid = self.journal.submit_many([spec])[0]
            rec = self.journal.get(tid)
            deadline = self.clock() + options["deadline"] if "deadline" in options else None
            self.scheduler.enqueue(TaskRun(tid, "work", rec.input, TraceContext.new_trace(),
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


class Loop(FakeHost):
    """A FakeHost running the market as its allocation policy."""

    def __init__(self, home: Any) -> None:
        super().__init__(home, services=(install,), policy=0)
        self.market = self.services[0]


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
