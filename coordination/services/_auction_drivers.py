"""Mechanism of the live market: its knobs, how agents' answers are read, one round per
auction, and one small driver per auction kind (sealed first/second price, reverse English,
a live procurement Dutch clock) that feeds the pure state machines of ``coordination.auction`` and tells
the market what to ask and when to close.  ``coordination.services.market`` holds the policy that
uses them (contracts, escrow, reputation, commands); see its docstring for the decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from coordination import contracts as K
from coordination.auction import (
    ActionKind,
    Bid,
    Direction,
    DutchAuction,
    EnglishAuction,
    rank,
)
from coordination.evaluation import Scoring, Weights
from coordination.ledger import MAX_AMOUNT
from runtime.errors import InvalidInput
from runtime.observability.trace_context import TraceContext
from runtime.tasks.scheduler import TaskRun


class Market(Protocol):
    """What a driver uses of the market service that owns it (``market.MarketPolicy``)."""

    coord: Any
    config: MarketConfig

    def arm(self, r: _Round, until: float, now: float) -> None: ...

    def ask(self, r: _Round, agent_id: str, extra: dict[str, Any], round_no: int) -> bool: ...

    def close_round(self, aid: str, at: float | None = None) -> None: ...

    def parse(self, r: _Round, agent_id: str, msg: dict[str, Any], parser: Any) -> Any: ...

    def offers(self, r: _Round, now: float) -> list[Any]: ...

    def standing(self, r: _Round, agent_id: str, now: float) -> dict[str, Any] | None: ...

__all__ = ["MarketConfig", "parse_bid", "parse_stay", "parse_take", "clock_terms", "AUCTION_KINDS"]

_PROCUREMENT = Direction.PROCUREMENT
AUCTION_KINDS = ("sealed-first", "sealed-second", "english", "dutch")


@dataclass
class MarketConfig:
    """The market's knobs (``market_config`` changes them on a running daemon)."""

    window_s: float = 0.005
    weights: Weights = field(default_factory=lambda: Weights(price=0.25, quality=0.15, load=0.4,
                                                             reputation=0.2))
    penalty: K.PenaltyPolicy = field(default_factory=K.PenaltyPolicy)
    contract_timeout_s: float = 60.0
    min_success: float = 0.6
    min_observations: int = 4
    client_grant_mc: int = 10**12        # a billion credits: the payer of every task
    agent_grant_mc: int = 10**6          # a thousand credits per agent, for bonds
    backoff_s: tuple[float, float] = (0.05, 1.0)
    history: int = 200                   # auctions and contracts kept for `agora market`
    sweep_s: float = 0.25                # contract-deadline check period
    speed_alpha: float = 0.2             # EWMA weight of a new service-time sample
    auction: str = "sealed-first"        # one of AUCTION_KINDS, for every task of the daemon
    round_s: float = 0.05                # english: time to answer one round (ends early)
    min_decrement_mc: int = 10           # english: the least price step (0.01 credits)
    clock_steps: int = 50                # english and dutch: clock moves over the price range
    tick_s: float = 0.02                 # dutch: one round's longest time (ends early)
    floor_mc: int = 0                    # dutch: the clock's first offer (milli-credits)
    ceiling_factor: float = 4.0          # price cap without a budget: x the dearest declared cost
    bid_cache_ms: float = 30_000.0       # sealed: the longest a standing bid is reused (0: never)

    def __post_init__(self) -> None:
        _auction_kind(self.auction)

    def to_json(self) -> dict[str, Any]:
        return {"window_ms": self.window_s * 1000, "weights": self.weights.normalised(),
                "penalty_fraction": self.penalty.fraction,
                "contract_timeout_s": self.contract_timeout_s, "min_success": self.min_success,
                "min_observations": self.min_observations, "auction": self.auction,
                "round_ms": self.round_s * 1000, "min_decrement": self.min_decrement_mc / 1000,
                "clock_steps": self.clock_steps, "tick_ms": self.tick_s * 1000, "floor": self.floor_mc / 1000,
                "ceiling_factor": self.ceiling_factor, "bid_cache_ms": self.bid_cache_ms}


def parse_bid(answer: Any) -> tuple[int, float | None] | None:
    """An agent's ``bid()`` answer -> (price in milli-credits, quality or None); None is a
    decline.  Junk raises InvalidInput naming what was wrong."""
    if answer is None:
        return None
    if not isinstance(answer, dict):
        raise InvalidInput(f"a bid must be an object with 'price' (credits) or null, got {answer!r}")
    price, quality = answer.get("price"), answer.get("quality")
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) \
            or not 0 <= price * 1000 <= MAX_AMOUNT:
        raise InvalidInput(f"bid price must be a finite number of credits >= 0, got {price!r}")
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, (int, float))
                                or not 0.0 <= quality <= 1.0):
        raise InvalidInput(f"bid quality must be in [0, 1], got {quality!r}")
    return round(price * 1000), None if quality is None else float(quality)


def parse_stay(answer: Any, price_mc: int) -> bool:
    """An agent's answer to an English round at ``price_mc`` -> does it stay?
    ``{"stay": bool}`` says so; a plain bid is the agent's reservation price (it stays
    while the announced price is at least its price); None drops.  Junk raises."""
    if isinstance(answer, dict) and "stay" in answer:
        if not isinstance(answer["stay"], bool):
            raise InvalidInput(f"'stay' must be true or false, got {answer['stay']!r}")
        return answer["stay"]
    parsed = parse_bid(answer)
    return parsed is not None and parsed[0] <= price_mc


def clock_terms(ceiling_mc: int, config: MarketConfig) -> tuple[int, int]:
    """(English decrement, Dutch step) in milli-credits for a clock spanning
    ``[0, ceiling_mc]``: about ``clock_steps`` moves, never below the minimum decrement
    (English) or 1 mc (Dutch), so that the number of rounds or ticks stays bounded."""
    steps = max(1, config.clock_steps)
    move = -(-ceiling_mc // steps)  # ceil
    return max(1, config.min_decrement_mc, move), max(1, move)


@dataclass
class _Round:
    """One open auction: the task, its span, what each bidder claimed, and the driver's
    state (the kind is fixed at open: a config change does not touch open rounds)."""

    auction: Any
    kind: str
    task: TaskRun
    span: TraceContext
    qualities: dict[str, float] = field(default_factory=dict)
    asked_round: int = -1                # english, dutch: the round last announced
    reported: int = 0                    # english, dutch: rounds already told as market.round
    took: bool = False                   # dutch: the clock was taken
    timer_at: float | None = None        # the wake-up already armed
    budget_mc: int | None = None         # the task's budget (the reserve), told in every ask
    held: dict[str, int] = field(default_factory=dict)   # sealed: tasks each agent held when asked

    @property
    def aid(self) -> str:
        return str(self.auction.auction_id)


@dataclass
class _Open:
    """A contract under way: the attempt it covers and its trace span."""

    contract: K.Contract
    attempt: int
    span: TraceContext
    capability: str
    ahead: int = 0                       # tasks the agent held when this one was awarded


# -- drivers: one per auction kind, the thin protocol layer around auction.py ----------------
#
# Each turns agents' answers into submits on its pure auction and decides when to wake:
# build(aid, reserve, ceiling) -> auction; terms(r) -> cfp event fields; start(r, invited, now);
# answer(r, agent, round, msg, now); gone(r, agent, now); step(r, now) (closes through the
# market when the auction says so); result(r, now) -> (AuctionResult, [(bid, price), ...]).


def _winner_only(result: Any) -> list[tuple[Bid, int]]:
    """A clock auction's award: its winner at its price (no ranking to go down)."""
    if result.winner is None:
        return []
    return [(Bid(result.winner, result.price, result.closed_at), result.price)]


class _SealedDriver:
    """sealed-first and sealed-second: one ask, bids within the window, evaluation ranks."""

    def __init__(self, market: Market, cls: type) -> None:
        self.m, self.cls = market, cls

    def build(self, aid: str, reserve: int | None, ceiling: int) -> Any:
        return self.cls(aid, _PROCUREMENT, window=self.m.config.window_s, reserve=reserve)

    def terms(self, r: _Round) -> dict[str, Any]:
        return {"window_ms": r.auction.window * 1000}

    def start(self, r: _Round, invited: list[str], now: float) -> None:
        """Ask every invited agent, except those whose standing bid for these terms is
        still valid (their answer is taken as given).  The close is never synchronous:
        ``start`` runs inside the scheduler's dispatch, which must not see an award."""
        standing = {a: self.m.standing(r, a, now) for a in invited}
        for agent in [a for a in invited if standing[a] is None and not self.m.ask(r, a, {}, 0)]:
            r.auction.submit(agent, None, now)
        for agent, msg in standing.items():
            if msg is not None:
                self.answer(r, agent, 0, msg, now)
        done = r.auction.next_action(now).kind is ActionKind.CLOSE
        self.m.arm(r, now if done else r.auction.deadline, now)

    def answer(self, r: _Round, agent: str, round_no: int, msg: dict[str, Any], now: float) -> None:
        parsed = self.m.parse(r, agent, msg, parse_bid)
        ack = r.auction.submit(agent, None if parsed is None else parsed[0], now)
        if parsed is not None and parsed[1] is not None:
            r.qualities[agent] = parsed[1]
        self.m.coord.emit("market.bid", r.span, auction_id=r.aid, task_id=r.task.id, agent=agent,
                          price_mc=None if parsed is None else parsed[0], accepted=ack.accepted,
                          reason=ack.reason or msg.get("error"))

    def gone(self, r: _Round, agent: str, now: float) -> None:
        r.auction.submit(agent, None, now)

    def step(self, r: _Round, now: float) -> None:
        if r.auction.next_action(now).kind is ActionKind.CLOSE:
            self.m.close_round(r.aid, now)

    def result(self, r: _Round, now: float) -> tuple[Any, list[tuple[Bid, int]]]:
        """Evaluated scores rank the bids; each is offered at the price the auction's rule
        gives it against the bids ranked after it (Vickrey: the price at which its score
        would equal the best of theirs)."""
        # one bid has no rival to be scored against: its rank and price do not need a model
        offers = self.m.offers(r, now) if len(r.auction.bids()) > 1 else []
        # the model, not bare scores: a second-score auction inverts it to price the award
        model = Scoring(tuple(offers), self.m.config.weights, _PROCUREMENT) if offers else None
        result = r.auction.close(now, scores=model)
        ranked = rank(result.bids, _PROCUREMENT)
        return result, [(b, r.auction.payment(ranked[i:])) for i, b in enumerate(ranked)]


class _EnglishDriver:
    """Reverse English: each round asks the still-active agents at a lower price."""

    def __init__(self, market: Market) -> None:
        self.m = market

    def build(self, aid: str, reserve: int | None, ceiling: int) -> Any:
        decrement = clock_terms(ceiling, self.m.config)[0]
        return EnglishAuction(aid, _PROCUREMENT, start=ceiling, increment=decrement,
                              round_window=self.m.config.round_s, reserve=reserve)

    def terms(self, r: _Round) -> dict[str, Any]:
        a = r.auction
        return {"start_mc": a.start, "decrement_mc": a.increment, "round_ms": a.round_window * 1000}

    def start(self, r: _Round, invited: list[str], now: float) -> None:
        self.step(r, now)

    def answer(self, r: _Round, agent: str, round_no: int, msg: dict[str, Any], now: float) -> None:
        a, price = r.auction, r.auction.price
        if round_no != a.round:
            self._told(r, agent, round_no, None, False, f"late: round {round_no} is over")
            return
        stay = bool(self.m.parse(r, agent, msg, partial(_stay_at, price)))
        ack = a.submit(agent, stay, now)
        self._told(r, agent, round_no, stay, ack.accepted, ack.reason or msg.get("error"))

    def _told(self, r: _Round, agent: str, round_no: int, stay: bool | None, accepted: bool,
              reason: str | None) -> None:
        self.m.coord.emit("market.bid", r.span, auction_id=r.aid, task_id=r.task.id, agent=agent,
                          round=round_no, price_mc=r.auction.start - round_no * r.auction.increment,
                          stay=stay, accepted=accepted, reason=reason)

    def gone(self, r: _Round, agent: str, now: float) -> None:
        a = r.auction
        if a.active is not None and agent in a.active and not a.answered(agent):
            a.submit(agent, False, now)

    def step(self, r: _Round, now: float) -> None:
        """Report ended rounds; announce a new one; close when decided."""
        a = r.auction
        while True:
            action = a.next_action(now)
            self._report(r)
            if action.kind is ActionKind.CLOSE:
                self.m.close_round(r.aid, now)
                return
            if action.round == r.asked_round:
                self.m.arm(r, action.until, now)
                return
            r.asked_round = action.round
            extra = {"round": action.round, "price": action.price / 1000,
                     "decrement": a.increment / 1000}
            for agent in [b for b in sorted(a.active or ()) if not self.m.ask(r, b, extra, action.round)]:
                a.submit(agent, False, now)  # gone: it drops (may end the round: loop again)

    def _report(self, r: _Round) -> None:
        for rec in r.auction.rounds[r.reported:]:
            self.m.coord.emit("market.round", r.span, auction_id=r.aid, task_id=r.task.id,
                              round=rec.round, price_mc=rec.price, stayed=list(rec.stayed),
                              dropped=list(rec.dropped))
        r.reported = len(r.auction.rounds)

    def result(self, r: _Round, now: float) -> tuple[Any, list[tuple[Bid, int]]]:
        result = r.auction.close(now)
        self._report(r)
        return result, _winner_only(result)


def _stay_at(price_mc: int, answer: Any) -> bool:
    return parse_stay(answer, price_mc)


class _DutchDriver:
    """Procurement Dutch clock run live: each tick is a round that asks every invited agent
    "do you take the task at this price?"; the offered payment starts at ``floor`` and
    rises a step per round up to the ceiling; the first agent to take wins at that round's
    price.  A round ends after ``tick_s`` or as soon as every agent answered it."""

    def __init__(self, market: Market) -> None:
        self.m = market

    def build(self, aid: str, reserve: int | None, ceiling: int) -> Any:
        floor = min(self.m.config.floor_mc, ceiling)
        step = clock_terms(ceiling - floor, self.m.config)[1]
        return DutchAuction(aid, _PROCUREMENT, start=floor, step=step, tick=self.m.config.tick_s,
                            reserve=ceiling)

    def terms(self, r: _Round) -> dict[str, Any]:
        a = r.auction
        return {"start_mc": a.start, "step_mc": a.step, "tick_ms": a.tick * 1000, "ceiling_mc": a.reserve}

    def start(self, r: _Round, invited: list[str], now: float) -> None:
        self.step(r, now)

    def answer(self, r: _Round, agent: str, round_no: int, msg: dict[str, Any], now: float) -> None:
        a = r.auction
        if round_no != a.round or r.took:
            self._told(r, agent, round_no, None, False, f"late: round {round_no} is over")
            return
        take = bool(self.m.parse(r, agent, msg, partial(parse_take, a.price)))
        ack = a.submit(agent, take, now)
        r.took = r.took or (take and ack.accepted)
        self._told(r, agent, round_no, take, ack.accepted, ack.reason or msg.get("error"))

    def _told(self, r: _Round, agent: str, round_no: int, take: bool | None, accepted: bool,
              reason: str | None) -> None:
        self.m.coord.emit("market.bid", r.span, auction_id=r.aid, task_id=r.task.id, agent=agent,
                          round=round_no, price_mc=r.auction.price_at(round_no), take=take,
                          accepted=accepted, reason=reason)

    def gone(self, r: _Round, agent: str, now: float) -> None:
        a = r.auction
        if a.next_action(now).kind is ActionKind.ASK and not a.answered(agent):
            a.submit(agent, False, now)

    def step(self, r: _Round, now: float) -> None:
        """Report ended rounds; close on the first take or at the clock's end; else ask
        the new round (once) and wake at its end."""
        a = r.auction
        while True:
            action = a.next_action(now)
            self._report(r)
            if r.took or action.kind is ActionKind.CLOSE:
                self.m.close_round(r.aid, now)  # the first taker wins: later ones cannot
                return
            if action.round == r.asked_round:
                self.m.arm(r, action.until, now)
                return
            r.asked_round = action.round
            extra = {"round": action.round, "price": action.price / 1000, "step": a.step / 1000,
                     "tick_ms": a.tick * 1000, "ceiling": a.reserve / 1000}
            for agent in [b for b in sorted(a.invited or ()) if not self.m.ask(r, b, extra, action.round)]:
                a.submit(agent, False, now)  # gone: it passes (may end the round: loop again)

    def _report(self, r: _Round) -> None:
        for rec in r.auction.rounds[r.reported:]:
            self.m.coord.emit("market.round", r.span, auction_id=r.aid, task_id=r.task.id,
                              round=rec.round, price_mc=rec.price, took=list(rec.stayed),
                              passed=list(rec.dropped))
        r.reported = len(r.auction.rounds)

    def result(self, r: _Round, now: float) -> tuple[Any, list[tuple[Bid, int]]]:
        result = r.auction.close(now)
        self._report(r)
        return result, _winner_only(result)


def parse_take(price_mc: int, answer: Any) -> bool:
    """An agent's answer to a Dutch round offering ``price_mc`` -> does it take it?
    ``{"take": bool}`` says so; a plain bid is the agent's reservation price (it takes
    once the offer reaches it); None passes.  Junk raises InvalidInput."""
    if isinstance(answer, dict) and "take" in answer:
        if not isinstance(answer["take"], bool):
            raise InvalidInput(f"'take' must be true or false, got {answer['take']!r}")
        return answer["take"]
    parsed = parse_bid(answer)
    return parsed is not None and parsed[0] <= price_mc


def _auction_kind(kind: str) -> str:
    if kind not in AUCTION_KINDS:
        raise InvalidInput(f"unknown auction kind {kind!r}",
                           hint=f"auction: one of {', '.join(AUCTION_KINDS)}")
    return kind
