"""The ledger stays double-entry and conserved over random interleavings of contracts,
breaches, subcontracts, sale auctions (every format), agent deaths and coordinator
restarts (the services reopened from the same SQLite database), driven through the real
market, economy and sales services (tests/support/economy_host.py).

After every step: the sum over all accounts (mint included) is 0, every balance equals
the sum of its entries, no account is below its floor (no agent balance is negative), and
the credits in circulation never change (only the agents' first joins mint).  A failure
prints hypothesis' reproduction blob (``print_blob``) and the steps that led to it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordination.ledger import Ledger
from runtime.agents.economy import default_sale_bid
from tests.support.economy_host import EconHost

AGENTS = ("a", "b", "c")
KINDS = ("vickrey", "sealed-first", "english", "dutch")
OPS = ("task", "answer", "complete", "breach", "subcontract", "bid", "release", "time", "die", "restart",
       "answer", "complete", "subcontract", "task", "bid", "time")  # (the commoner ones twice)

step = st.tuples(st.sampled_from(OPS), st.integers(0, 2), st.integers(0, 10_000))


class World:
    def __init__(self, home: Path, kind: str) -> None:
        self.home, self.kind = home, kind
        self.keys = 0
        self.host = self._open()
        self.issued = Ledger(self.host.journal.conn).issued()

    def _open(self) -> EconHost:
        h = EconHost(self.home, resources={"gpu": {"quantity": 2, "auction": self.kind, "start": 20}},
                     market_cfg={"penalty_fraction": 0.5})
        h.resume()
        for agent in AGENTS:
            h.join(agent)
        return h

    def apply(self, op: str, i: int, n: int) -> None:
        h, agent = self.host, AGENTS[i]
        if op == "task":
            h.submit(max_attempts=2)
        elif op == "answer":  # every pending market ask: a price, or a decline
            for who, req, cb in list(h.asks):
                h.asks.remove((who, req, cb))
                if req.get("side") == "sale":
                    answer = default_sale_bid(req) if n % 5 else False
                else:
                    answer = None if n % 4 == 0 else {"price": 1 + (n + ord(who)) % 7}
                h.turn(lambda cb=cb, who=who, answer=answer: cb(who, {"answer": answer}))
        elif op in ("complete", "breach"):
            link = h.scheduler.agents.get(agent)
            if link is not None and link.inflight:
                tid, attempt = next(iter(link.inflight.items()))
                r = {"id": tid, "attempt": attempt}
                r.update({"ok": n} if op == "complete" else {"error": {"type": "RuntimeError", "message": "boom"}})
                h.turn(lambda: h.scheduler.results(agent, [r]))
        elif op == "subcontract":
            link = h.scheduler.agents.get(agent)
            if link is not None and link.inflight:
                tid, attempt = next(iter(link.inflight.items()))
                self.keys += 1
                budget = (n % 3000) / 100 + 1  # sometimes beyond the balance
                h.op(agent, "economy.subcontract", {"capability": "work", "input": {}, "budget": budget,
                                                    "task": {"id": tid, "attempt": attempt}, "key": self.keys,
                                                    "options": {"max_attempts": 2}, "timeout": 5})
        elif op == "bid" and agent in h.scheduler.agents:
            h.bid(agent, "gpu", (n % 2500) / 100 + 0.01, timeout=1 + n % 3)
        elif op == "release":
            for unit, held in list(h.sales.units.get("gpu", {}).items()):
                if held.agent == agent and held.holder == agent:
                    h.op(agent, "sale.release", {"resource": "gpu", "unit": unit, "token": held.token})
                    break
        elif op == "time":
            h.answer_sales()
            h.later((n % 200) / 1000)
        elif op == "die" and agent in h.scheduler.agents:
            h.die(agent)
            h.join(agent)  # a new incarnation under the same id (no new grant)
        elif op == "restart":
            h.journal.close()
            self.host = self._open()

    def check(self, trail: list[tuple[str, int, int]]) -> None:
        ledger = Ledger(self.host.journal.conn)
        report = ledger.check_conservation()
        assert report.ok, (report, trail)
        assert report.issued == self.issued, ("credits appeared or vanished", report, trail)
        negative = [a for a in ledger.accounts() if a["name"] != "mint" and a["balance_mc"] < 0]
        assert not negative, (negative, trail)
        open_ = {r[0] for r in self.host.journal.conn.execute(
            "SELECT account FROM econ_subcontracts WHERE state = 'open'")}
        stuck = [a for a in ledger.accounts() if a["name"].startswith("budget:") and a["name"] not in open_
                 and a["balance_mc"]]
        assert not stuck, (stuck, trail)  # a settled or refused subcontract leaves nothing behind


@settings(max_examples=40, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), steps=st.lists(step, min_size=5, max_size=45))
def test_credits_are_conserved_over_random_interleavings(kind, steps):
    with tempfile.TemporaryDirectory() as home:
        world = World(Path(home), kind)
        trail: list[tuple[str, int, int]] = []
        try:
            for s in steps:
                trail.append(s)
                world.apply(*s)
                world.check(trail)
            for k in range(40):  # drain: answer everything, finish the work, let timeouts pass
                world.apply("answer", 0, 1)
                world.apply("complete" if k % 3 else "breach", k % 3, k)
                world.apply("time", 0, 199)
                world.check(trail)
        finally:
            world.host.journal.close()
