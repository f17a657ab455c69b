"""The agents' economy: balances agents own and subcontracts they pay for.

Every agent has a ledger account ``agent:<id>`` (coordination.services.market opens it at
its first join with a grant for bonds); what it earns by completing contracts lands
there, and it spends it on sale auctions (coordination.services.sales) and subcontracts::

    handler: task.subcontract("summarize", {...}, budget=3)
        agent --call economy.subcontract--> coordinator
            budget moved agent:<id> -> budget:<key>   (InsufficientCredits beyond the
                                                       balance: a typed error, nothing moves)
            child task submitted (the parent's trace id, a child span; options.budget = the
            budget's whole credits, the market's reserve price; the market pays its contracts from
            budget:<key>: escrow at award, release on completion, refund on breach)
        child ends -> what is left in budget:<key> goes back to agent:<id>, the call
            returns {"task_id", "state", "result", "error", "paid_mc", "refunded_mc"}
            (paid_mc < 0: a breached worker's penalty came to the parent)

Decisions where the spec is silent:

* The budget account is the subcontract's escrow: the market's contracts for the child
  task hold their price from it (``MarketPolicy.payers``, a map the composition root
  hands to both services), so the parent never pays more than its budget, whatever
  happens to the child (a breach refunds the contract into the budget account, a re-
  auction pays again from it).  Under an allocation other than the market nobody is
  paid for the child and the whole budget comes back.
* The remainder goes back one loop turn after the child ended (``call_later(0)``), so
  every final listener of that turn (the market's cancel refund) has settled first:
  the result does not depend on the order of services.
* A subcontract is named by ``(parent task, attempt, key)``: the agent side numbers its
  subcontracts per attempt, so the same call after a coordinator restart (the first one
  failed with UNAVAILABLE) finds the same child and pays nothing twice (the child's
  journal idempotency key is that name).  Durable: table ``econ_subcontracts``; a child
  that ended while the coordinator was down is settled at start.
* A child still under way when its parent attempt ends (the handler gave up waiting,
  raised, was cancelled or lost) is cancelled: nobody waits for its result any more, and
  a retry of the parent subcontracts again under its own key.
* The asking attempt must be running on the asking agent.  The call waits up to its
  ``timeout`` (default 60 s; then DEADLINE_EXCEEDED, the child goes on and still settles).
  A handler that subcontracts to its own capability on a pool with no free agent waits
  for that timeout: give the child another capability or the pool more room.
"""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace
from typing import Any

from coordination.ledger import MAX_AMOUNT, InsufficientCredits, Ledger
from coordination.services.primitives import running_attempt
from runtime.coordinator.command_kit import Deferred, arg, only
from runtime.coordinator.host import ServiceHost
from runtime.errors import DeadlineExceeded, InvalidInput, NotFound
from runtime.observability.trace_context import TraceContext
from runtime.tasks.task import TERMINAL

__all__ = ["Economy", "install", "BUDGET_PREFIX", "agent_account"]

BUDGET_PREFIX = "budget:"
DEFAULT_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS econ_subcontracts (key TEXT PRIMARY KEY, child TEXT NOT NULL,
    parent_agent TEXT NOT NULL, account TEXT NOT NULL, budget_mc INTEGER NOT NULL,
    state TEXT NOT NULL, paid_mc INTEGER, parent_task TEXT, parent_attempt INTEGER)
"""


def agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"  # the market's accounts (coordination.services.market)


class Economy:
    """Subcontracts in flight (child task -> its budget account) and the balance op."""

    def __init__(self, coord: Any, payers: dict[str, str] | None = None) -> None:
        self.coord = coord
        self.conn = coord.journal.conn
        self.conn.execute(_SCHEMA)
        self.ledger = Ledger(self.conn, nested=True)
        self.payers: dict[str, str] = {} if payers is None else payers
        self.callers: dict[str, list[Deferred]] = {}   # child task id -> calls waiting for it

    def restore(self) -> None:
        """Open subcontracts of the previous run: the market pays the live ones from their
        budget account; one whose child ended meanwhile is settled now."""
        rows = self.conn.execute("SELECT key, child, account FROM econ_subcontracts "
                                 "WHERE state = 'open'").fetchall()
        for _key, child, account in rows:
            self.payers[child] = account
            if self._state(child) in TERMINAL:
                self._settle(child)

    def _state(self, child: str) -> str:
        """The child's state; a task the journal no longer has (compacted) counts as ended."""
        try:
            return str(self.coord.journal.get(child).state)
        except NotFound:
            return "failed"

    def agent_ops(self) -> dict[str, Any]:
        return {"economy.subcontract": self.subcontract, "economy.balance": self.balance}

    def balance(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        only(args, "trace")
        account = agent_account(agent)
        try:
            mc = self.ledger.balance(account)
        except NotFound:
            mc = 0
        return {"account": account, "balance_mc": mc, "balance": mc / 1000}

    # -- subcontracts ----------------------------------------------------------------------

    def subcontract(self, agent: str, args: dict[str, Any], wire: Any) -> Any:
        """``{"capability", "input", "budget", "task": {"id", "attempt"}, "key", "options"?,
        "timeout"?}``: a Deferred resolved when the child task ends."""
        only(args, "capability", "input", "budget", "task", "key", "options", "timeout", "trace")
        parent = self._parent(agent, arg(args, "task", dict))
        key = arg(args, "key", int)
        budget = arg(args, "budget", (int, float))
        budget_mc = round(budget * 1000) if math.isfinite(budget) else 0
        if isinstance(budget, bool) or not 1000 <= budget_mc <= MAX_AMOUNT:
            raise InvalidInput(f"a subcontract's budget must be a number of credits >= 1, got {budget!r:.40}",
                               field="budget", hint="the market's reserve price (options.budget) is whole credits")
        timeout = float(arg(args, "timeout", (int, float), DEFAULT_TIMEOUT_S))
        if not 0 < timeout <= 3600:
            raise InvalidInput(f"argument 'timeout' must be within (0, 3600] s, got {timeout}", field="timeout")
        name = f"sub:{parent[0]}:{parent[1]}:{key}"
        given = TraceContext.from_wire(args.get("trace")) or TraceContext.from_wire(wire)
        trace = given.child() if given else TraceContext.new_trace()
        row = self.conn.execute("SELECT child FROM econ_subcontracts WHERE key = ?", (name,)).fetchone()
        if row is not None:  # the same call again (the coordinator restarted under the first)
            return self._wait(row[0], timeout)
        options = dict(arg(args, "options", dict, None) or {})
        options.update(budget=int(budget), idempotency_key=name)  # the reserve: whole credits
        task = {"capability": arg(args, "capability", str), "input": args.get("input"), "options": options}
        account = BUDGET_PREFIX + name
        payer = agent_account(agent)
        self._fund(payer, account, budget_mc, trace)  # last: whatever raises from here gives it back
        try:
            out = self.coord.command("submit", {"task": task, "wait_s": 5.0}, trace)
        except Exception:
            self._refund(account, payer, trace, "the subcontract was refused at submit")
            raise
        d = Deferred()
        if isinstance(out, Deferred):  # parked for mailbox room
            out.bind(lambda msg: self._started(name, msg["ok"], agent, account, budget_mc, trace, d, timeout)
                     if "ok" in msg else self._refused(account, payer, trace, d, msg))
        else:
            self._started(name, out, agent, account, budget_mc, trace, d, timeout)
        return d

    def _parent(self, agent: str, task: dict[str, Any]) -> tuple[str, int]:
        tid, attempt = running_attempt(self.coord.scheduler.agents, agent, task,
                                       "subcontract from the attempt's own handler (task.subcontract)")
        return tid, attempt

    def _fund(self, payer: str, account: str, budget_mc: int, trace: TraceContext) -> None:
        try:
            self.ledger.open_account(account)
            self.ledger.transfer(payer, account, budget_mc, None, trace.trace_id, reason="subcontract budget")
        except NotFound as e:
            raise InsufficientCredits(f"{payer!r} has no ledger account to pay a subcontract from",
                                      hint="agents get one when they join the market", account=payer) from e
        self.coord.emit("economy.budget", trace, account=account, payer=payer, amount_mc=budget_mc)

    def _refund(self, account: str, payer: str, trace: TraceContext, why: str) -> int:
        left = self.ledger.balance(account)
        if left:
            self.ledger.transfer(account, payer, left, None, trace.trace_id, reason="subcontract refund")
        self.coord.emit("economy.refund", trace, account=account, payee=payer, amount_mc=left, why=why)
        return left

    def _refused(self, account: str, payer: str, trace: TraceContext, d: Deferred, msg: dict[str, Any]) -> None:
        self._refund(account, payer, trace, "the subcontract was refused at submit")
        d._finish(msg)

    def _started(self, name: str, child: str, agent: str, account: str, budget_mc: int,
                 trace: TraceContext, d: Deferred, timeout: float) -> None:
        known = self.conn.execute("SELECT 1 FROM econ_subcontracts WHERE child = ?", (child,)).fetchone()
        if known:  # cannot happen with fresh keys; never let two budgets pay one child
            self._refund(account, agent_account(agent), trace, f"task {child} is already subcontracted")
        else:
            _, parent_task, parent_attempt, _n = name.rsplit(":", 3)
            self.conn.execute("INSERT INTO econ_subcontracts VALUES (?, ?, ?, ?, ?, 'open', NULL, ?, ?)",
                              (name, child, agent, account, budget_mc, parent_task, int(parent_attempt)))
            self.payers[child] = account
        self.coord.emit("economy.subcontract", trace, child=child, parent_agent=agent, account=account,
                        budget_mc=budget_mc)
        self._wait(child, timeout, d)

    def _wait(self, child: str, timeout: float, d: Deferred | None = None) -> Deferred:
        d = d or Deferred()
        state = self._state(child)
        open_ = self.conn.execute("SELECT 1 FROM econ_subcontracts WHERE child = ? AND state = 'open'",
                                  (child,)).fetchone()
        if state in TERMINAL and not open_:
            d.resolve(self._outcome(child))
            return d
        self.callers.setdefault(child, []).append(d)
        self.coord.call_later(timeout, partial(self._timed_out, child, d, timeout))
        return d

    def _timed_out(self, child: str, d: Deferred, timeout: float) -> None:
        if not d.done:
            waiting = self.callers.get(child, [])
            if d in waiting:
                waiting.remove(d)
            d.fail(DeadlineExceeded(f"subcontracted task {child} did not finish within {timeout} s",
                                    hint="it goes on and still settles its budget; raise the timeout"))

    def attempt_ended(self, task: Any, attempt: int, fin: Any, crashed: bool) -> None:
        """The parent attempt ended (its handler returned, raised, was cancelled or lost)
        with a child still under way: nobody is waiting for that result any more, so the
        child is cancelled (a retry of the parent subcontracts anew, under its own key);
        its budget comes back when it ends."""
        rows = self.conn.execute("SELECT child FROM econ_subcontracts WHERE parent_task = ? AND "
                                 "parent_attempt = ? AND state = 'open'", (task.id, attempt)).fetchall()
        for (child,) in rows:
            if self._state(child) not in TERMINAL and self.coord.scheduler.cancel(child):
                self.coord.emit("economy.child_cancelled", task.trace, child=child, parent_task=task.id,
                                attempt=attempt)

    def task_final(self, task: Any, rec: Any) -> None:
        if task.id in self.payers:
            self.coord.call_later(0.0, partial(self._settle, task.id))

    def _settle(self, child: str) -> None:
        """The child ended: the rest of its budget back to the parent agent, callers told."""
        row = self.conn.execute("SELECT parent_agent, account, budget_mc, state FROM econ_subcontracts "
                                "WHERE child = ?", (child,)).fetchone()
        if row is None or row[3] != "open":
            return
        agent, account, budget_mc, _ = row
        rec = self._record(child)
        trace = TraceContext(rec.trace_id, rec.trace_id[:16]) if rec.trace_id else None
        left = self._refund(account, agent_account(agent), trace or TraceContext.new_trace(),
                            f"task {child} ended {rec.state}")
        self.conn.execute("UPDATE econ_subcontracts SET state = 'settled', paid_mc = ? WHERE child = ?",
                          (budget_mc - left, child))
        self.payers.pop(child, None)
        self.coord.emit("economy.settled", trace, child=child, parent_agent=agent, state=rec.state,
                        paid_mc=budget_mc - left, refunded_mc=left)
        for d in self.callers.pop(child, []):
            d.resolve(self._outcome(child))

    def _record(self, child: str) -> Any:
        try:
            return self.coord.journal.get(child)
        except NotFound:  # compacted by retention: what is left to say
            return SimpleNamespace(state="failed", result=None, trace_id=None,
                                   error={"code": "NOT_FOUND", "message": f"task {child} is no longer in the journal"})

    def _outcome(self, child: str) -> dict[str, Any]:
        rec = self._record(child)
        row = self.conn.execute("SELECT budget_mc, paid_mc FROM econ_subcontracts WHERE child = ?",
                                (child,)).fetchone()
        budget_mc, paid = (row[0], row[1]) if row else (0, 0)
        return {"task_id": child, "state": rec.state, "result": rec.result, "error": rec.error,
                "trace_id": rec.trace_id, "budget_mc": budget_mc, "paid_mc": paid,
                "refunded_mc": None if paid is None else budget_mc - paid}

    def cmd_subcontracts(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "limit")
        limit = arg(args, "limit", int, 50)
        rows = self.conn.execute("SELECT key, child, parent_agent, account, budget_mc, state, paid_mc "
                                 "FROM econ_subcontracts ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
        cols = ("key", "child", "parent_agent", "account", "budget_mc", "state", "paid_mc")
        return [dict(zip(cols, r)) for r in rows]


def install(coord: ServiceHost, payers: dict[str, str] | None = None) -> Economy:
    economy = Economy(coord, payers)
    economy.restore()
    coord.add_final_listener(economy.task_final)
    coord.add_attempt_listener(economy.attempt_ended)
    coord.add_agent_ops(economy.agent_ops())
    coord.add_commands({"subcontracts": economy.cmd_subcontracts})
    return economy
