"""Market allocation in the running coordinator: contract net over live agents, with
any of the four auction kinds of coordination.auction driven live.

::

    dispatch ── choose(task, candidates) ──> MarketPolicy ── returns TAKEN (task leaves its queue)
                                              │  the kind's driver opens its pure auction and asks:
                                              │  coord.ask(agent, "bid", cfp) -> the agent's bid() hook
                                              │  timers: coord.call_later(until, wake) (window, round, tick)
    agent control threads ── answers ───────> on_bid -> driver.answer + driver.step
                                              │  (submit to the auction; next round / take / close)
                              close ── result -> [(bid, price to pay)] best first
                                              │  award: escrow (ledger.hold) + contract + scheduler.assign
    scheduler.follow ── on_attempt_end ─────> completion -> pay, reputation up
                                              breach (failed, agent died, timeout) -> refund + penalty,
                                              reputation down, agent excluded from this task's re-auction
    scheduler final listener ───────────────> cancel / task deadline while under contract

Everything runs on the coordinator's one thread, inside the turn's journal transaction:
the ledger writes through the journal's connection in SAVEPOINTs (``Ledger(nested=True)``),
so a payment commits together with the task state it pays for.  Nothing here blocks: an
agent that does not answer in time is simply not in the round.  The auctions are the pure
state machines of coordination.auction fed with the coordinator's monotonic clock; the
drivers below (one per kind, ``_SealedDriver`` / ``_EnglishDriver`` / ``_DutchDriver``)
only translate answers into ``submit`` calls and arm a timer for the auction's next
deadline.

Auction kinds (``MarketConfig.auction``, per daemon; ``market_config auction=...`` changes
it at run time for auctions opened afterwards), all procurement (agents offer to do the task)::

    sealed-first   one ask; bids within the window; the best evaluated bid wins and is paid
                   its own price (the default)
    sealed-second  Vickrey, second-*score*: same round; the winner is paid its critical price,
                   the price at which its evaluated score would equal the best rival's
                   (coordination.auction.SecondPriceAuction, evaluation.Scoring has the
                   formula; with equal quality, load and reputation it is the runner-up's
                   price), never less than its own bid nor past the budget; alone: the
                   budget (its own price without a budget)
    english        reverse English: round r asks the agents still in at price
                   start - r x decrement ({"auction": "english", "round", "price", ...});
                   {"stay": true} or a bid stays, silence / null / {"stay": false} drops;
                   ends when <= 1 stays; the last one is paid that round's price
    dutch          a live clock: round (tick) k offers floor + k x step ({"auction": "dutch",
                   "round", "price", "step", "tick_ms", "ceiling"}) to every invited agent;
                   {"take": true} or a bid at most the offer takes, anything else passes; the
                   first agent to take wins at that round's price; a round ends after
                   ``tick_ms`` (20 ms) or once every agent answered it; the clock stops at the
                   ceiling (no taker: no award).  In procurement the offered *payment* rises
                   (the reverse of a sale's falling price, coordination.auction)

How a default agent (``Agent.bid()`` answering ``{"price", "quality", "stands_ms"}``) takes
part: its price is its *reservation price*.  English: it stays while the announced price is
at least its price; Dutch: it takes the first offer at least its price (asked every round;
the default hook ignores the round's fields, a custom one may read ``cfp["price"]`` and
answer ``{"stay": ...}`` / ``{"take": ...}``).  Sealed kinds: a bid with ``stands_ms``
*stands*: the market reuses it, for that long (at most ``bid_cache_ms``, 30 s), for cfps of
the same capability and budget while the agent holds the same number of tasks, instead of
asking again (the default bid depends on nothing else); an auction all of whose bids stand
is decided inside the dispatch that opened it, so over default agents a sealed auction
costs no round trip.  An agent is invited to no more open auctions than it has free room.

Events (all in the task's trace: the auction is a child span of the task's span, its bids
and rounds share it, the contract is a child span of the auction, transfers children of
the contract)::

    market.cfp (kind and its terms)  market.bid (english: round, price, stay; dutch: round,
    price, take)  market.round (english: each round's price, stayed, dropped; dutch: took,
    passed)  market.award (price paid, own bid)
    market.contract  market.transfer (hold, pay, penalty, refund)  market.completion
    market.breach  market.cancel  market.reputation (before/after)  market.no_award
    market.unfunded  market.bid_invalid  market.abandoned  market.exclusions_lifted

Decisions where the spec is silent
    * Sealed kinds rank by the evaluation score (coordination.evaluation) rather than price
      alone; if the winner cannot take the contract (gone, full, its bond unfunded) the next
      ranked bid is offered it at the price the kind's rule gives against the bids after it
      (``payment``).  Clock kinds award only their winner at the clock's price (there is no
      ranking to go down: the task goes back to wait for room and a new auction).  Quality,
      load and reputation do not enter clock auctions (the reliability gate still does).
    * A task's ``budget`` option (credits) is the reserve price: sealed bids above it are
      rejected; it is the English start price and the Dutch clock's ceiling.  Without a
      budget the clocks span ``ceiling_factor`` (4) x the dearest declared cost among the
      invited agents (at least 1 credit).
    * Clock moves: about ``clock_steps`` (50) over the range, i.e. English decrement =
      max(``min_decrement`` (0.01 credits), ceiling / 50) and Dutch step = ceiling / 50
      (>= 1 mc), so an auction takes at most ~50 rounds or ticks whatever the prices.
      English rounds wait ``round_ms`` (50 ms) for answers but end as soon as every agent
      still in has answered; Dutch rounds likewise, ``tick_ms`` (20 ms).
    * English: when the last agents all drop in the same round, the earliest "stay" of the
      round before wins at that round's price (coordination.auction's rule).  An agent that
      dies mid-round has dropped.
    * Evaluation weights (market defaults): price 0.25, quality 0.15, load 0.4, reputation
      0.2.  "Load" is the expected completion time of one more task, (held + 1) x the
      agent's observed service time (an EWMA of its completed contracts' durations),
      relative to the round's best: the bid price already carries the agent's queue, but
      not its speed, and a buyer waiting for results cares about both.
    * Window (sealed): 5 ms by default (``market_config`` changes it at run time); the round
      closes as soon as every invited agent has answered, so over idle local agents it
      costs one round trip, not the window.
    * Reliability gate: an agent with at least ``min_observations`` contracts for the
      capability and a decayed success signal below ``min_success`` is not invited while
      any other capable agent is alive (even busy: the task then waits for room).  Scores
      alone trade a known failure rate against a lower price; a gate keeps first-try
      success high.  A gated agent is invited again when it is the only one left.
    * Probation (issue 16): the gate is a half-open breaker per (agent, capability)
      (coordination.reputation.Probation): a failure that leaves the decayed success
      signal below ``min_success`` (with at least ``min_observations`` of decayed
      evidence weight) gates the agent for a cooldown (5 s, doubling per failed trial up
      to 5 min); after it, the agent may win one task; its success re-admits it, its
      failure gates it again, longer.  When every live capable agent that may take the
      task (those excluded for it may not) is gated, the task goes to the best of them by
      reputation (it runs rather than waits forever).
    * Head of line: a task no free agent can be invited for (all free ones gated or
      excluded for it) is parked with the auction backoff instead of blocking its queue:
      the tasks behind it are still auctioned.
    * NO_AWARD: after ``MAX_NO_AWARD_ROUNDS`` (10) auctions in a row that no offer could
      win (every bid over the budget, or no bid), the task ends ``failed`` with error
      ``NO_AWARD`` naming the best offer seen and the budget.  With the backoff (50 ms
      doubling to 1 s) that is about 5 s of trying.
    * Accounts: ``client`` pays for every task (granted ``client_grant_mc`` once, when the
      ledger first sees it) but a subcontracted one, which its budget account pays
      (``payers``, coordination.services.economy); each agent has ``agent:<id>`` (granted
      ``agent_grant_mc`` at its first join) from which it posts its bond (the penalty) at award.  Only these grants
      mint.  Amounts are milli-credits; bids and budgets on the wire are credits.  The price
      held in escrow and paid is the auction's price (Vickrey: the second price).
    * Contract deadline: the task's deadline, else ``contract_timeout_s`` (60 s) after the
      award; a contract past it is breached (timeout) and its attempt given up as
      ``crashed`` (the journal still records a late result of that attempt exactly once).
    * A cancelled task refunds its contract without penalty (contracts.cancel).  A task
      whose every capable agent has breached on it gets its exclusions cleared (its
      max_attempts still bounds the retries).
    * An auction without an award and without offers puts the task back after a backoff
      (50 ms doubling to 1 s).
    * Escrows still held at start (the coordinator stopped mid-contract) are refunded
      without penalty; the journal resumes their tasks.
    * Reputation and service-time estimates are durable in the journal database
      (``coordination.services.store.MarketMemory``: loaded at start, written as learned);
      so is the ledger.  The auction kind and knobs live in memory too:
      ``MarketConfig`` defaults, then agora.toml's ``[market]`` table (``MARKET_KNOBS``,
      checked at load time by the composition root), then ``agora market-config``.
    * Quality (issue 18 item 6): a success of an agent whose pool declares a grader is
      settled when its grade is in (``coordination.services.grading``; events
      market.grading, market.graded, market.grade_failed, market.quality_capped); below
      the pool's ``min_quality`` it is a quality breach.  Without a grader the delivered
      quality is None (unknown), never 1.0, and a bid's claim is capped by the agent's
      graded mean once it has ``coordination.grading.MIN_MEASURED`` grades.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import replace
from functools import partial
from typing import Any

from coordination import contracts as K
from coordination.auction import (
    ActionKind,
    Bid,
    FirstPriceAuction,
    SecondPriceAuction,
)
from coordination.evaluation import Offer, Weights
from coordination.ledger import MAX_AMOUNT, InsufficientCredits, Ledger
from coordination.reputation import Probation, Reputation, observation_from_contract
from coordination.services.grading import Grading
from coordination.services.store import MarketMemory, Store
from coordination.services._auction_drivers import (
    AUCTION_KINDS,
    MarketConfig,
    _auction_kind,
    _DutchDriver,
    _EnglishDriver,
    _Open,
    _Round,
    _SealedDriver,
    clock_terms,
    parse_bid,
    parse_stay,
)
from runtime.bounds import check_number
from runtime.coordinator.command_kit import arg, only
from runtime.coordinator.host import ServiceHost
from runtime.errors import InvalidInput, NotFound
from runtime.observability.trace_context import TraceContext
from runtime.tasks.scheduler import TAKEN, AgentLink, TaskRun

__all__ = ["MarketConfig", "MarketPolicy", "install", "configure", "MARKET_KNOBS", "parse_bid", "parse_stay", "PAYER",
           "agent_account", "AUCTION_KINDS", "clock_terms"]

PAYER = "client"
#: Auctions in a row without an award and without a usable offer before a task ends NO_AWARD.
MAX_NO_AWARD_ROUNDS = 10
#: The kinds decided in one round (their standing bids can settle an auction at once).
SEALED = ("sealed-first", "sealed-second")
#: How often old ledger transfers are folded into the checkpoint (retention).
FOLD_EVERY_S = 60.0


def agent_account(agent_id: str) -> str:
    return f"agent:{agent_id}"


class MarketPolicy:
    """The ``market`` allocation policy and the market service around it."""

    name = "market"

    def __init__(self, coord: Any, config: MarketConfig | None = None,
                 payers: dict[str, str] | None = None) -> None:
        self.coord = coord
        # task id -> the account that pays for it (a subcontract's budget account, filled by
        # coordination.services.economy); every other task is paid by PAYER
        self.payers: dict[str, str] = {} if payers is None else payers
        self.sched = coord.scheduler
        self.config = config or MarketConfig()
        self.ledger = Ledger(coord.journal.conn, nested=True)
        self.reputation = Reputation()
        self.service_s: dict[tuple[str, str], float] = {}  # (agent, capability) -> EWMA seconds
        self.memory = MarketMemory(Store(coord.journal.conn), coord.clock)  # issue 18: durable
        self.memory.load(self.reputation, self.service_s)
        self.probation = Probation()
        self.grading = Grading(coord)  # issue 18 item 6: graders score results (services.grading)
        self.no_award: dict[str, int] = {}           # task id -> auctions in a row without award
        self.best_offer: dict[str, int] = {}         # task id -> lowest price offered (mc)
        self.rounds: dict[str, _Round] = {}          # auction id -> open round
        self.open: dict[str, _Open] = {}             # task id -> contract under way
        self.auctions_of: dict[str, int] = {}        # task id -> auctions so far
        self.backoff: dict[str, float] = {}
        self._rep_memo: dict[tuple[str, str], tuple[float, Any, float, float]] = {}
        self.promised: dict[str, int] = {}            # agent -> open auctions it is invited to
        self.bid_cache: dict[tuple[str, str, int, int | None], tuple[float, dict[str, Any]]] = {}
        self.recent_auctions: deque[dict[str, Any]] = deque(maxlen=self.config.history)
        self.recent_contracts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._sweeping = False
        self.drivers: dict[str, Any] = {
            "sealed-first": _SealedDriver(self, FirstPriceAuction),
            "sealed-second": _SealedDriver(self, SecondPriceAuction),
            "english": _EnglishDriver(self), "dutch": _DutchDriver(self)}
        self._ensure_account(PAYER, self.config.client_grant_mc, "the payer of every task")
        self._refund_stale()
        self.retention_s = float(getattr(coord.cfg, "retention_age_s", 7 * 86400.0))

    def _refund_stale(self) -> None:
        """Contracts open when the previous coordinator stopped: their attempts were closed
        as crashed by the journal and the tasks resume; their escrow goes back without
        penalty (nobody can tell whose fault the stop was)."""
        for e in self.ledger.held():
            self.ledger.refund(e.contract_id, 0)
            self.coord.emit("market.cancel", None, contract_id=e.contract_id, agent=e.payee,
                            why="the coordinator restarted while the contract was open")

    # -- wiring ------------------------------------------------------------------------

    def attach(self) -> None:
        """Hook into the scheduler, agent membership and the command table."""
        self.sched = self.coord.scheduler
        self.coord.add_attempt_listener(self.on_attempt_end)
        self.coord.add_final_listener(self.on_final)
        self.coord.add_agent_listener(self)
        self.coord.add_commands({"market": self.cmd_market, "ledger": self.cmd_ledger,
                                    "reputation": self.cmd_reputation,
                                    "market_config": self.cmd_config})

    def fold_ledger(self) -> None:
        """Retention: fold ledger transfers older than ``retention_age_s`` into the
        checkpoint (Ledger.fold), every FOLD_EVERY_S."""
        import time
        out = self.ledger.fold(time.time() - self.retention_s)
        if out["transfers"]:
            self.coord.emit("market.ledger_folded", None, **out)
        self.coord.call_later(FOLD_EVERY_S, self.fold_ledger)

    def _ensure_account(self, account: str, grant: int, why: str) -> None:
        try:
            self.ledger.balance(account)
        except NotFound:
            self.ledger.grant(account, grant, f"start-up grant: {why}")

    def agent_joined(self, link: AgentLink) -> None:
        self._ensure_account(agent_account(link.id), self.config.agent_grant_mc,
                             f"bond money of agent {link.id}")

    def agent_died(self, agent_id: str) -> None:
        """Its contracts were breached through on_attempt_end already; here: open rounds
        stop waiting for its answer."""
        now = self.coord.clock()
        self.bid_cache = {k: v for k, v in self.bid_cache.items() if k[0] != agent_id}
        for r in list(self.rounds.values()):
            if self.rounds.get(r.aid) is r and agent_id in (r.auction.invited or ()):
                driver = self.drivers[r.kind]
                driver.gone(r, agent_id, now)
                driver.step(r, now)

    # -- choose: open an auction -------------------------------------------------------

    def choose(self, task: TaskRun, candidates: list[AgentLink]) -> Any:
        if not candidates:
            candidates = self._lift_exclusions(task)
        free = [a for a in candidates if self._free(a) > 0]
        if candidates and not free:
            return None  # every agent with room is promised to open auctions: they wake us
        invited = self._gate(task, free)
        if not invited:
            if not self.sched.candidates(task.capability):
                return None  # nobody has room: wait for it (a result or a join wakes the loop)
            # someone free could serve the tasks behind this one: park it, do not block them
            self.coord.emit("market.parked", task.trace, task_id=task.id,
                            why="no free agent may be invited for it (gated or excluded)")
            self._requeue_later(task)
            return TAKEN
        r = self._open_round(task, invited)
        if r.kind in SEALED and self.rounds.get(r.aid) is r \
                and r.auction.next_action(self.coord.clock()).kind is ActionKind.CLOSE:
            return self._award_in_dispatch(r) or TAKEN
        return TAKEN

    def _award_in_dispatch(self, r: _Round) -> AgentLink | None:
        """Every bid is in already (standing bids): close now and hand the winner to the
        dispatch that asked (no extra loop turn, the attempt starts in this turn's batch).
        Anything but a plain award is left to ``_award`` on the next turn."""
        self.rounds.pop(r.aid)
        self._promise(r.auction.invited or (), -1)
        now = self.coord.clock()
        result, offers = self.drivers[r.kind].result(r, now)
        took_ms = max(0.0, now - r.auction.opened_at) * 1000
        self._remember_auction(r, result, took_ms)
        bidders = len({b.bidder for b in result.bids})
        for i, (bid, price) in enumerate(offers):
            if self._usable(bid.bidder, r.task) is None:
                continue
            if self._try_contract(r, bid, price, took_ms, bidders, assign=False) == "awarded":
                self.no_award.pop(r.task.id, None)
                return self.sched.agents[bid.bidder]
            offers = offers[i + 1:]
            break
        self.coord.call_later(0.0, partial(self._award, r, offers, took_ms, result.reason, bidders))
        return None

    def _free(self, link: AgentLink) -> int:
        """Room not yet promised: an agent is invited to at most as many open auctions as
        it could take tasks from (else every queued task's auction invites the one free
        agent, and all but one end without an award and start over)."""
        return self.sched.room(link) - len(link.inflight) - len(link.side) - self.promised.get(link.id, 0)

    def _promise(self, ids: Any, delta: int) -> None:
        for aid in ids:
            n = self.promised.get(aid, 0) + delta
            if n > 0:
                self.promised[aid] = n
            else:
                self.promised.pop(aid, None)

    def _lift_exclusions(self, task: TaskRun) -> list[AgentLink]:
        """Every live capable agent has breached on this task: let them bid again."""
        live = [a for a in self.sched.capable(task.capability) if a in self.sched.agents]
        if not task.excluded or not live or not set(live) <= task.excluded:
            return []
        self.coord.emit("market.exclusions_lifted", task.trace, task_id=task.id,
                        agents=sorted(task.excluded))
        task.excluded.clear()
        return self.sched.candidates(task.capability)

    def _below_gate(self, agent_id: str, capability: str, now: float) -> bool:
        """A known bad success record: enough decayed evidence, success below the gate."""
        _, signals, weight = self._rep(agent_id, capability, now)
        return weight >= self.config.min_observations and signals[0] < self.config.min_success

    def _rep(self, agent_id: str, capability: str, now: float) -> tuple[float, tuple[float, float, float], float]:
        """(score, signals, decayed weight) of an agent's reputation.  Each reading of
        Reputation is a pass over up to ``window`` observations and an auction reads them
        several times per bidder, so one reading is taken when the record changes and
        carried forward exactly: every observation decays by the same factor
        0.5 ** (dt / half_life), so the decayed sums scale by it and the prior does not.  A
        time up to 1 s before the reading (callers' clocks read a moment apart) is given
        the reading itself: against the 1 h half-life that is below 0.02% of decay."""
        key = (agent_id, capability)
        hit = self._rep_memo.get(key)
        if hit is None or now < hit[0] - 1.0:
            r = self.reputation
            hit = (now, r.signals(agent_id, capability, now), r.weight(agent_id, capability, now),
                   r.quality_weight(agent_id, capability, now))
            if len(self._rep_memo) >= 4096:
                self._rep_memo.clear()
            self._rep_memo[key] = hit
        at, signals, weight, graded = hit
        c = self.reputation.config
        if now > at:  # (now <= at: the reading as it is)
            f = 0.5 ** ((now - at) / c.half_life)
            base = c.prior_weight * c.prior
            # quality averages the graded observations only: its own evidence weight
            signals = tuple((base + f * (x * (c.prior_weight + w) - base)) / (c.prior_weight + f * w)
                            for x, w in zip(signals, (weight, weight, graded)))
            weight *= f
        score = sum(w * p for w, p in zip(c.weights, signals)) / sum(c.weights)
        return score, signals, weight

    def _gated(self, agent_id: str, capability: str, now: float) -> bool:
        return not self.probation.admits(agent_id, capability, now)

    def _gate(self, task: TaskRun, candidates: list[AgentLink]) -> list[AgentLink]:
        """Candidates minus gated agents; if every live capable agent that may take this
        task (one excluded for it may not) is gated, the best of the candidates by
        reputation (the task runs rather than waits forever).  Counting an excluded agent
        as one that could serve parked a task for good: its one other agent gated, the
        agent that had failed it excluded, and neither rule letting go."""
        now, capability = self.coord.clock(), task.capability
        good = [a for a in candidates if not self._gated(a.id, capability, now)]
        if good:
            return good
        live = [aid for aid in self.sched.capable(capability)
                if aid in self.sched.agents and aid not in task.excluded]
        if any(not self._gated(aid, capability, now) for aid in live) or not candidates:
            return []
        best = max(candidates, key=lambda a: (self._rep(a.id, capability, now)[0], -a.order))
        self.coord.emit("market.all_gated", None, capability=capability, chosen=best.id)
        return [best]

    def _reserve_mc(self, task: TaskRun) -> int | None:
        budget = (self.coord.journal.get(task.id).options or {}).get("budget")
        return None if budget is None else min(MAX_AMOUNT, int(budget) * 1000)

    def _ceiling_mc(self, task: TaskRun, invited: list[AgentLink], reserve: int | None) -> int:
        """The highest price a clock auction may reach: the budget, else ``ceiling_factor``
        x the dearest declared cost among the invited (at least 1 credit)."""
        if reserve is not None:
            return reserve
        costs = [float(a.caps.get(task.capability, {}).get("cost", 1.0)) for a in invited]
        dearest = self.config.ceiling_factor * max(costs, default=1.0) * 1000
        return min(MAX_AMOUNT, max(1000, round(dearest)))

    def _open_round(self, task: TaskRun, invited: list[AgentLink]) -> _Round:
        n = self.auctions_of[task.id] = self.auctions_of.get(task.id, 0) + 1
        aid, now, reserve = f"{task.id}.a{n}", self.coord.clock(), self._reserve_mc(task)
        kind, ids = self.config.auction, [a.id for a in invited]
        driver = self.drivers[kind]
        auction = driver.build(aid, reserve, self._ceiling_mc(task, invited, reserve))
        auction.open(now, invited=ids)
        self._promise(ids, +1)
        r = self.rounds[aid] = _Round(auction, kind, task, task.trace.child(), budget_mc=reserve)
        self.coord.emit("market.cfp", r.span, task_id=task.id, auction_id=aid, kind=kind,
                        capability=task.capability, invited=ids, reserve_mc=reserve, **driver.terms(r))
        driver.start(r, ids, now)
        return r

    # -- the protocol layer shared by the drivers ------------------------------------------

    def ask(self, r: _Round, agent_id: str, extra: dict[str, Any], round_no: int) -> bool:
        """Send one call for proposals (a round's price, a clock's schedule) to an agent's
        ``bid()``; False if the agent is gone."""
        cfp = {"capability": r.task.capability, "task_id": r.task.id, "auction_id": r.aid,
               "auction": r.kind, "budget": None if r.budget_mc is None else r.budget_mc / 1000,
               "reputation": self._rep(agent_id, r.task.capability, self.coord.clock())[0],
               **extra}
        link = self.sched.agents.get(agent_id)
        r.held[agent_id] = len(link.inflight) if link is not None else 0
        return bool(self.coord.ask(agent_id, "bid", cfp, partial(self.on_bid, r.aid, round_no)))

    def _bid_key(self, r: _Round, agent_id: str, held: int) -> tuple[str, str, int, int | None]:
        return agent_id, r.task.capability, held, r.budget_mc

    def standing(self, r: _Round, agent_id: str, now: float) -> dict[str, Any] | None:
        """The agent's answer to a sealed cfp of the same terms (capability, budget, tasks
        it holds), if it said the bid stands (``"stands_ms"``) and that time has not passed."""
        link = self.sched.agents.get(agent_id)
        if link is None or self.config.bid_cache_ms <= 0:
            return None
        hit = self.bid_cache.get(self._bid_key(r, agent_id, len(link.inflight)))
        return hit[1] if hit is not None and hit[0] > now else None

    def _cache_bid(self, r: _Round, agent_id: str, msg: dict[str, Any], now: float) -> None:
        answer = msg.get("answer")
        stands = answer.get("stands_ms") if isinstance(answer, dict) and not msg.get("error") else None
        if r.kind not in SEALED or isinstance(stands, bool) \
                or not isinstance(stands, (int, float)) or not stands > 0:
            return
        if len(self.bid_cache) >= 4096:  # bounded: drop the expired, else everything
            self.bid_cache = {k: v for k, v in self.bid_cache.items() if v[0] > now}
            if len(self.bid_cache) >= 4096:
                self.bid_cache.clear()
        ttl = min(float(stands), self.config.bid_cache_ms) / 1000
        key = self._bid_key(r, agent_id, r.held.get(agent_id, 0))
        self.bid_cache[key] = (now + ttl, {"answer": answer})

    def on_bid(self, aid: str, round_no: int, agent_id: str | None, msg: dict[str, Any]) -> None:
        r = self.rounds.get(aid)
        if r is None or agent_id is None:
            return  # the auction closed already: a late answer is not in it
        now, driver = self.coord.clock(), self.drivers[r.kind]
        self._note_offer(r.task.id, msg)
        self._cache_bid(r, agent_id, msg, now)
        driver.answer(r, agent_id, round_no, msg, now)
        driver.step(r, now)

    def _note_offer(self, task_id: str, msg: dict[str, Any]) -> None:
        """The lowest price any agent asked for this task (for a NO_AWARD error)."""
        try:
            parsed = parse_bid(msg.get("answer")) if not msg.get("error") else None
        except InvalidInput:
            return
        if parsed is not None:
            self.best_offer[task_id] = min(parsed[0], self.best_offer.get(task_id, parsed[0]))

    def parse(self, r: _Round, agent_id: str, msg: dict[str, Any], parser: Any) -> Any:
        """``parser(answer)``; None for a hook error or junk (told as market.bid_invalid)."""
        if msg.get("error"):
            return None
        try:
            return parser(msg.get("answer"))
        except InvalidInput as e:
            self.coord.emit("market.bid_invalid", r.span, auction_id=r.aid, agent=agent_id,
                            error=e.message)
            return None

    def arm(self, r: _Round, until: float, now: float) -> None:
        """Wake the round's driver at ``until`` (once per distinct time)."""
        if r.timer_at != until:
            r.timer_at = until
            self.coord.call_later(max(0.0, until - now), partial(self._wake, r.aid, until))

    def _wake(self, aid: str, until: float) -> None:
        r = self.rounds.get(aid)
        if r is None:
            return
        if r.timer_at == until:
            r.timer_at = None  # a wake a hair early (float rounding) re-arms instead of stalling
        self.drivers[r.kind].step(r, self.coord.clock())

    # -- close, evaluate, award --------------------------------------------------------

    def close_round(self, aid: str, at: float | None = None) -> None:
        """Close the auction (at ``at`` on its clock, default now) and award its result."""
        r = self.rounds.pop(aid, None)
        if r is None:
            return
        self._promise(r.auction.invited or (), -1)
        now = self.coord.clock() if at is None else at
        result, offers = self.drivers[r.kind].result(r, now)
        took_ms = max(0.0, self.coord.clock() - r.auction.opened_at) * 1000
        self._remember_auction(r, result, took_ms)
        self._award(r, offers, took_ms, result.reason, len({b.bidder for b in result.bids}))

    def offers(self, r: _Round, now: float) -> list[Offer]:
        cap, bids = r.task.capability, r.auction.bids()
        etas = self._etas(cap, [b.bidder for b in bids])
        best, out = min(etas.values(), default=0.0), []
        for bid in bids:
            link = self.sched.agents.get(bid.bidder)
            declared = (link.caps.get(cap, {}) if link else {}).get("quality", 0.5)
            quality = min(1.0, max(0.0, r.qualities.get(bid.bidder, declared)))
            quality = self.grading.cap(self.reputation, bid.bidder, cap, quality, r.span, r.aid)
            load = 1.0 - best / etas[bid.bidder] if etas[bid.bidder] > 0 else 0.0
            out.append(Offer(bid.bidder, bid.price, quality, load,
                             self._rep(bid.bidder, cap, now)[0]))
        return out

    def _etas(self, capability: str, bidders: list[str]) -> dict[str, float]:
        """Expected completion time of one more task per bidder: (held + 1) x its observed
        service time; an agent not measured yet is assumed as fast as the fastest known
        (so that new agents get tried)."""
        known = [self.service_s[(b, capability)] for b in bidders if (b, capability) in self.service_s]
        default = min(known, default=1.0)
        out = {}
        for b in bidders:
            link = self.sched.agents.get(b)
            held = len(link.inflight) if link else self.sched.capacity
            out[b] = (held + 1) * self.service_s.get((b, capability), default)
        return out

    def _measure(self, o: _Open, now: float) -> None:
        """A completed contract's duration, per task it waited behind, into the EWMA."""
        sample = max(0.0, now - o.contract.awarded_at) / (o.ahead + 1)
        key, a = (o.contract.agent, o.capability), self.config.speed_alpha
        self.service_s[key] = sample if key not in self.service_s else (1 - a) * self.service_s[key] + a * sample
        self.memory.measured(*key, self.service_s[key])

    def _award(self, r: _Round, offers: list[tuple[Bid, int]], took_ms: float, reason: str | None,
               bidders: int) -> None:
        """Offer the contract down ``offers`` ((bid, price to pay), best first) until one
        can take it."""
        task = r.task
        if not self._still_waiting(task):
            self.coord.emit("market.abandoned", r.span, task_id=task.id, auction_id=r.aid,
                            state=task.state)
            return
        for bid, price in offers:
            outcome = self._try_contract(r, bid, price, took_ms, bidders)
            if outcome == "awarded":
                self.no_award.pop(task.id, None)
                return
            if outcome == "unfunded":
                self._requeue_later(task)
                return
        self.coord.emit("market.no_award", r.span, task_id=task.id, auction_id=r.aid,
                        reason=reason or "no winner could take the contract", auction_ms=took_ms)
        if offers:
            self.sched.enqueue(task, front=True)  # winners filled up: wait for room as usual
            return
        streak = self.no_award[task.id] = self.no_award.get(task.id, 0) + 1
        if streak >= MAX_NO_AWARD_ROUNDS:
            self._give_up(task, r, streak)
        else:
            self._requeue_later(task)

    def _give_up(self, task: TaskRun, r: _Round, rounds: int) -> None:
        """No offer could win in ``rounds`` auctions: end the task NO_AWARD (bounded)."""
        best = self.best_offer.get(task.id)
        budget = None if r.budget_mc is None else r.budget_mc / 1000
        offer = "no agent offered" if best is None else f"the best offer was {best / 1000} credits"
        error = {"code": "NO_AWARD", "best_offer": None if best is None else best / 1000,
                 "budget": budget, "rounds": rounds,
                 "message": f"no bid could win task {task.id} in {rounds} auctions: {offer}, "
                            f"the budget is {budget if budget is not None else 'unlimited'} credits",
                 "hint": "raise options.budget, or add agents that bid within it"}
        self.coord.emit("market.gave_up", r.span, task_id=task.id, **{k: error[k] for k in
                                                                        ("best_offer", "budget", "rounds")})
        self.sched.reject(task.id, error)

    def _still_waiting(self, task: TaskRun) -> bool:
        """Not cancelled, expired or started meanwhile (dispatch marks a task it handed to
        the market ``deferred``)."""
        return self.sched.tasks.get(task.id) is task and task.state in ("deferred", "queued")

    def _usable(self, agent_id: str, task: TaskRun) -> AgentLink | None:
        link = self.sched.agents.get(agent_id)
        if link is None or link.draining or agent_id in task.excluded:
            return None
        return link if len(link.inflight) + len(link.side) < self.sched.room(link) else None

    def _try_contract(self, r: _Round, bid: Bid, price: int, took_ms: float, bidders: int,
                      assign: bool = True) -> str:
        """Escrow, contract, assignment for one offer: awarded | skip | unfunded."""
        link = self._usable(bid.bidder, r.task)
        if link is None:
            return "skip"
        # one contract per attempt: the id survives restarts (the journal counts attempts)
        cid = f"{r.task.id}.c{r.task.attempts + 1}"
        refused = self._hold(r, link, price, cid)
        if refused:
            return refused
        self.coord.emit("market.award", r.span, task_id=r.task.id, auction_id=r.aid, kind=r.kind,
                        agent=link.id, price_mc=price, bid_mc=bid.price, score=bid.score,
                        bidders=bidders, auction_ms=round(took_ms, 4))
        self._start_contract(r.task, link, price, cid, r.span.child(), assign)
        return "awarded"

    def _hold(self, r: _Round, link: AgentLink, price: int, cid: str) -> str | None:
        """Price from the payer and bond from the agent into escrow; why not, if refused."""
        payer = self.payers.get(r.task.id, PAYER)
        try:
            self.ledger.hold(cid, payer, agent_account(link.id), price,
                             bond=self.config.penalty.penalty(price), trace_id=r.task.trace.trace_id)
        except InsufficientCredits as e:
            self.coord.emit("market.unfunded", r.span, task_id=r.task.id, agent=link.id,
                            account=e.details.get("account"), error=e.message)
            return "unfunded" if e.details.get("account") == payer else "skip"
        return None

    def _start_contract(self, task: TaskRun, link: AgentLink, price: int, cid: str,
                        span: TraceContext, assign: bool = True) -> None:
        """The contract, and its attempt started now (``assign``) or by the dispatch the
        award is returned to (which starts it as the task's next attempt)."""
        now = self.coord.clock()
        deadline = task.deadline if task.deadline is not None else now + self.config.contract_timeout_s
        contract = K.start(K.award(cid, task.id, link.id, price, max(deadline, now + 1e-6), now,
                                   self.grading.terms(link.pool)), now)
        ahead = len(link.inflight)
        if self.probation.on_award(link.id, task.capability, task.id, now):
            self.coord.emit("market.probation", span, task_id=task.id, agent=link.id,
                            state="trial")
        if assign:
            self.sched.assign(task, link)
        attempt = task.attempts if assign else task.attempts + 1
        self.open[task.id] = _Open(contract, attempt, span, task.capability, ahead)
        self.coord.emit("market.contract", span, task_id=task.id, contract_id=cid, agent=link.id,
                        price_mc=price, attempt=task.attempts, deadline_in_s=round(deadline - now, 3))
        self._transfer_event(span, cid, "hold", price)
        self._remember_contract(contract)
        self._start_sweep()

    def _requeue_later(self, task: TaskRun) -> None:
        low, high = self.config.backoff_s
        delay = self.backoff[task.id] = min(high, self.backoff.get(task.id, low / 2) * 2)
        self.coord.call_later(delay, partial(self._requeue, task))

    def _requeue(self, task: TaskRun) -> None:
        if self._still_waiting(task):
            self.sched.enqueue(task, front=True)

    # -- outcomes ----------------------------------------------------------------------

    def on_attempt_end(self, task: TaskRun, attempt: int, fin: Any, crashed: bool) -> None:
        o = self.open.get(task.id)
        if o is None or o.attempt != attempt:
            return
        now = self.coord.clock()
        ok = fin.state == "succeeded"
        if ok:  # graded if its pool has a grader (settled when the grade is in), else unknown
            self._measure(o, now)
            self.open.pop(task.id)  # settled now (no grader: quality unknown) or once graded
            link = self.sched.agents.get(o.contract.agent)  # (agent ids are "<pool>.<n>")
            pool = link.pool if link is not None else o.contract.agent.rpartition(".")[0]
            if not self.grading.grade(task, pool, fin, partial(self._graded, task, o, now)):
                self._settle(task, *K.complete(o.contract, now, None, self.config.penalty), o=o)
        else:
            why = "the agent died mid-task" if crashed else "the handler failed"
            self._settle(task, *K.breach(o.contract, K.BreachReason.FAILED, now, self.config.penalty),
                         why=why)
        self._probation_outcome(o.contract.agent, o.capability, ok, task, now)

    def _probation_outcome(self, agent: str, capability: str, ok: bool, task: TaskRun, now: float) -> None:
        before = self.probation.state(agent, capability, now)
        after = self.probation.on_outcome(agent, capability, ok, self._below_gate(agent, capability, now), now)
        if after != before:
            self.coord.emit("market.probation", task.trace, agent=agent, capability=capability,
                            state=after, retry_in_s=round(self.probation.retry_in(agent, capability, now), 3))

    def on_final(self, task: TaskRun, rec: Any) -> None:
        """The task ended while a contract was still open (cancel, task deadline, or a late
        success of an earlier attempt); then forget the task."""
        o = self.open.get(task.id)
        if o is not None:
            now = self.coord.clock()
            if rec.state == "deadline_exceeded":
                self._settle(task, *K.breach(o.contract, K.BreachReason.TIMEOUT, now, self.config.penalty),
                             why="the task's deadline passed under contract")
            else:
                self._settle(task, *K.cancel(o.contract, now), why=f"the task ended {rec.state}")
        for table in (self.auctions_of, self.backoff, self.no_award, self.best_offer):
            table.pop(task.id, None)

    def _graded(self, task: TaskRun, o: _Open, delivered_at: float, quality: float | None,
                why: str | None) -> None:
        """A grading ended: settle the contract with the delivered quality (issue 18)."""
        c = o.contract
        if quality is None:
            self.coord.emit("market.grade_failed", o.span, task_id=task.id, contract_id=c.id,
                            agent=c.agent, why=why)
        else:
            self.coord.emit("market.graded", o.span, task_id=task.id, contract_id=c.id, agent=c.agent,
                            quality=quality, min_quality=c.quality.min_quality)
        self._settle(task, *K.complete(c, delivered_at, quality, self.config.penalty), o=o,
                     why=None if quality is None or quality >= c.quality.min_quality else
                     f"delivered quality {quality:.3f} below the contracted {c.quality.min_quality:.3f}")

    def _settle(self, task: TaskRun, contract: K.Contract, s: K.Settlement, why: str | None = None,
                o: _Open | None = None) -> None:
        o = self.open.pop(task.id) if o is None else o
        self.ledger.settle(s, trace_id=task.trace.trace_id)
        kind = {"completed": "completion", "breached": "breach"}.get(contract.state.value, "cancel")
        self.coord.emit(f"market.{kind}", o.span, task_id=task.id, contract_id=contract.id,
                        agent=contract.agent, price_mc=contract.price, settlement=s.to_json(),
                        breach=None if contract.breach is None else contract.breach.value, why=why,
                        delivered_quality=contract.delivered_quality,  # None: not graded (unknown)
                        min_quality=contract.quality.min_quality)
        self._transfer_event(o.span, contract.id, s.action, s.amount)
        if contract.state is not K.ContractState.CANCELLED:
            self._learn(o, contract)
        if s.exclude:
            task.excluded.add(contract.agent)
        self._remember_contract(contract)

    def _learn(self, o: _Open, contract: K.Contract) -> None:
        now = self.coord.clock()
        before = self._rep(contract.agent, o.capability, now)[0]
        observation = observation_from_contract(contract)
        self.reputation.record(contract.agent, o.capability, observation)
        self.memory.observed(contract.agent, o.capability, observation, self.reputation.config.window)
        self._rep_memo.pop((contract.agent, o.capability), None)
        after = self._rep(contract.agent, o.capability, now)[0]
        self.coord.emit("market.reputation", o.span, agent=contract.agent, capability=o.capability,
                        before=round(before, 4), after=round(after, 4), task_id=contract.task_id)

    def _transfer_event(self, span: TraceContext, cid: str, action: str, amount: int) -> None:
        self.coord.emit("market.transfer", span.child(), contract_id=cid, action=action,
                        amount_mc=amount, payer=PAYER)

    # -- contract deadlines --------------------------------------------------------------

    def _start_sweep(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            self.coord.call_later(self.config.sweep_s, self.sweep)

    def sweep(self) -> None:
        """Breach contracts past their deadline (tasks without their own deadline: the
        scheduler's deadline timer handles the others) and give their attempt up."""
        now = self.coord.clock()
        for tid, o in list(self.open.items()):
            task = self.sched.tasks.get(tid)
            if task is not None and task.deadline is None and K.expire(o.contract, now) is not None:
                self._expire(task, o, now)
        self._sweeping = False
        if self.open:
            self._start_sweep()

    def _expire(self, task: TaskRun, o: _Open, now: float) -> None:
        contract, settlement = K.breach(o.contract, K.BreachReason.TIMEOUT, now, self.config.penalty)
        self._settle(task, contract, settlement, why="the contract deadline passed")
        error = {"code": "CONTRACT_TIMEOUT",
                 "message": f"agent {contract.agent} did not finish contract {contract.id} in time"}
        fin = self.coord.journal.finish_attempt(task.id, o.attempt, "crashed", error=error)
        link = self.sched.agents.get(contract.agent)
        if link is not None:  # stop the work: the agent stays busy until it has (no second run)
            self.sched.stop_attempt(link, task.id, o.attempt, "contract deadline passed", task.trace)
        self.sched.follow(task, o.attempt, fin, crashed=True)

    # -- history and commands ------------------------------------------------------------

    def _remember_auction(self, r: _Round, result: Any, took_ms: float) -> None:
        self.recent_auctions.append({
            "auction_id": result.auction_id, "kind": r.kind, "task_id": r.task.id,
            "capability": r.task.capability, "rounds": len(result.rounds),
            "invited": sorted(r.auction.invited or ()), "bids": [b.to_json() for b in result.bids],
            "winner": result.winner, "price_mc": result.price, "reason": result.reason,
            "auction_ms": round(took_ms, 4), "rejected": len(result.rejected)})

    def _remember_contract(self, contract: K.Contract) -> None:
        self.recent_contracts[contract.id] = contract.to_json()
        self.recent_contracts.move_to_end(contract.id)
        while len(self.recent_contracts) > self.config.history:
            self.recent_contracts.popitem(last=False)

    def cmd_market(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "limit")
        limit = arg(args, "limit", int, 20)
        return {"allocation": self.coord.cfg.allocation, "config": self.config.to_json(),
                "open_auctions": len(self.rounds), "open_contracts": len(self.open),
                "auctions": list(self.recent_auctions)[-limit:],
                "contracts": list(self.recent_contracts.values())[-limit:]}

    def cmd_ledger(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "agent", "limit")
        agent, limit = arg(args, "agent", str, None), arg(args, "limit", int, 50)
        if agent is None:
            report = self.ledger.check_conservation()
            return {"accounts": self.ledger.accounts(), "conserved": report.ok,
                    "issued_mc": report.issued}
        account = agent if agent == PAYER or ":" in agent else agent_account(agent)
        entries = self.ledger.entries(account)
        return {"account": account, "balance_mc": self.ledger.balance(account),
                "entries": [e.to_json() for e in entries[-limit:]], "count": len(entries)}

    def cmd_reputation(self, args: dict[str, Any], trace: Any) -> Any:
        only(args, "capability")
        cap, now = arg(args, "capability", str, None), self.coord.clock()
        rows = []
        for agent, c in self.reputation.keys():
            if cap is None or c == cap:
                s, t, q = self.reputation.signals(agent, c, now)
                graded, measured = self.reputation.graded(agent, c)
                rows.append({"agent": agent, "capability": c,
                             "observations": self.reputation.count(agent, c),
                             "graded": graded, "measured_quality": measured,
                             "score": self.reputation.score(agent, c, now), "success": s,
                             "timely": t, "quality": q if graded else None,  # None: never graded
                             "gated": self._gated(agent, c, now),
                             "weight": self.reputation.weight(agent, c, now),
                             "probation": self.probation.state(agent, c, now)})
        return rows

    def cmd_config(self, args: dict[str, Any], trace: Any) -> Any:
        """Change knobs at run time; every argument is checked before any is applied."""
        self.config = configure(self.config, args)
        return self.config.to_json()


#: The market's knobs: ``[market]`` in agora.toml and ``agora market-config`` take these.
MARKET_KNOBS = ("auction", "window_ms", "round_ms", "tick_ms", "min_decrement", "clock_steps",
                "ceiling_factor", "penalty_fraction", "contract_timeout_s", "min_success", "weights",
                "bid_cache_ms", "floor")


def configure(c: MarketConfig, args: dict[str, Any]) -> MarketConfig:
    """``c`` with the knobs of ``args`` applied; every one is checked before any applies
    (pure: the composition root checks agora.toml's ``[market]`` with it at load time)."""
    only(args, *MARKET_KNOBS)
    changes: dict[str, Any] = {}
    for name, attr in (("window_ms", "window_s"), ("round_ms", "round_s"), ("tick_ms", "tick_s")):
        if name in args:
            changes[attr] = _bounded(arg(args, name, (int, float)), name, 0, 10_000, low_open=True) / 1000
    weights = arg(args, "weights", dict, None)
    if weights is not None:
        unknown = sorted(set(weights) - set(Weights.__dataclass_fields__))
        if unknown:
            raise InvalidInput(f"unknown evaluation weights {unknown}",
                               hint="weights: price, quality, load, reputation")
        changes["weights"] = Weights(**weights)
    fraction = arg(args, "penalty_fraction", (int, float), None)
    if fraction is not None:
        changes["penalty"] = K.PenaltyPolicy(fraction)
    changes.update(_clock_changes(args))
    if "bid_cache_ms" in args:
        changes["bid_cache_ms"] = float(_bounded(arg(args, "bid_cache_ms", (int, float)), "bid_cache_ms", 0, 60_000))
    changes["contract_timeout_s"] = float(_bounded(arg(args, "contract_timeout_s", (int, float), c.contract_timeout_s),
                                                   "contract_timeout_s", 0, 30 * 86400, low_open=True))
    changes["min_success"] = float(_bounded(arg(args, "min_success", (int, float), c.min_success),
                                            "min_success", 0, 1))  # a success rate
    return replace(c, **changes)


def _clock_changes(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    auction = arg(args, "auction", str, None)
    if auction is not None:
        out["auction"] = _auction_kind(auction)
    if "min_decrement" in args:
        out["min_decrement_mc"] = round(_bounded(arg(args, "min_decrement", (int, float)),
                                                 "min_decrement", 0, MAX_AMOUNT / 1000, low_open=True) * 1000)
    if "clock_steps" in args:
        out["clock_steps"] = int(_bounded(arg(args, "clock_steps", int), "clock_steps", 1, 10_000))
    if "floor" in args:
        out["floor_mc"] = round(_bounded(arg(args, "floor", (int, float)), "floor", 0, MAX_AMOUNT / 1000) * 1000)
    if "ceiling_factor" in args:
        out["ceiling_factor"] = _bounded(arg(args, "ceiling_factor", (int, float)), "ceiling_factor", 1, 1000)
    return out


def _bounded(value: float, name: str, low: float, high: float, low_open: bool = False) -> float:
    """``value`` once ``check_number`` passed it (the market's settings)."""
    check_number(name, value, low, high, low_open=low_open)
    return value


def install(coord: ServiceHost, payers: dict[str, str] | None = None) -> MarketPolicy:
    """The coordinator's service entry (``payers``: shared with the economy service, which
    names the budget account paying for each subcontracted task).  The composition root
    makes this service the allocation policy when ``allocation = "market"``; otherwise it only answers the
    ledger/reputation/market commands (and settles nothing: no task is under contract)."""
    market = MarketPolicy(coord, payers=payers)
    if coord.cfg.market:  # [market] in agora.toml: checked as `agora market-config` is
        market.cmd_config(dict(coord.cfg.market), None)
    market.attach()
    coord.call_later(FOLD_EVERY_S, market.fold_ledger)
    return market
