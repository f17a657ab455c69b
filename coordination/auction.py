"""Auctions as pure state machines with a clock, in both market directions.

The coordinator drives an auction; the auction never does I/O and never reads a clock::

    auction.open(now, invited=agents)
    while (action := auction.next_action(now)).kind is not ActionKind.CLOSE:
        # COLLECT: ask every invited agent's bid() for a sealed price, until action.until
        # ASK:     tell agents "price is action.price (round action.round)", until action.until
        # WAIT:    nothing to ask; wait until action.until
        for bidder, answer, t in answers_that_arrived_before(action.until):
            auction.submit(bidder, answer, t)
    result = auction.close(now)          # AuctionResult, JSON-able via to_json()

``submit(bidder, bid, now)`` takes what the agent's ``bid()`` hook answered to the last
action: an ``int`` price for sealed auctions, ``True``/``False`` (stay/drop, take/pass) for
English and Dutch clocks, ``None`` for "I decline".  A refusal that is normal market life
(late, outside the reserve, not invited, already answered, dropped earlier) is *returned*
as ``Ack(accepted=False, reason=...)`` and kept in the result's ``rejected`` list; misuse
(wrong type, auction not open, clock going backwards) raises a typed error.

Two helpers serve live drivers (coordination.services.market): a sealed auction's ``payment(ranked)``
prices an award offered down the ranking when the winner cannot take it, and
``DutchAuction.tick_for(limit)`` turns a bidder's stated limit into the tick at which it
takes, so that a clock of ~1 ms ticks need not ask every agent at every tick.

Directions
    ``SALE``: agents bid for a scarce resource; the highest bid wins; English clocks
    ascend, Dutch clocks descend.  ``PROCUREMENT``: agents offer prices for doing a task;
    the lowest (or best evaluated) offer wins; English clocks descend ("reverse English"),
    Dutch clocks ascend.

Decisions where the spec is silent (also recorded in the docstrings below)
    * Prices are integers in milli-credits, the ledger's unit, so that increments and
      payments never drift.
    * Timestamps are the coordinator's receipt times and must never go backwards
      (``InvalidInput``); this makes every outcome a function of the inputs alone.
    * Ranking (:func:`rank_key`, the one rule used everywhere): higher evaluated score,
      then the better price (lower in procurement, higher in sale), then the earlier
      timestamp, then the bidder id in lexicographic order.  Without an evaluation score
      a bid's score is its price (sale) or minus its price (procurement).
    * A deadline is exclusive: a sealed bid at ``opened_at + window`` is late; a clock tick
      boundary belongs to the new tick.
    * Sealed auctions take one bid per bidder; a second one is rejected, not merged.
      ``invited`` lets the auction close as soon as every invited agent has answered.
    * Vickrey payment: unscored, the runner-up's price; scored, second-*score*: the
      price at which the winner's score would equal the best rival's, from a
      :class:`ScoreModel` (evaluation.Scoring documents the formula), never worse for
      the winner than its own bid nor past the reserve; with no rival the reserve, or
      the winner's own price when there is no reserve.
    * English: a bidder that does not answer a round before its deadline has dropped.
      When every remaining bidder drops in the same round, the item goes to the best
      ranked of them (earliest "stay" in the previous round) at the previous round's
      price.  The procurement clock stops at price 0; ``max_rounds`` stops either clock.
    * Dutch: one price per round (tick); every round asks the bidders to take or pass;
      a round ends after ``tick`` seconds or once every invited bidder answered; the
      first round with a taker decides, its takers ranked by :func:`rank_key` (earliest
      receipt, then id); takes in a later round are rejected.  The clock runs down
      (sale) to the reserve (or 0), up (procurement) to the reserve (required); no taker
      by then, no award.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from runtime.errors import Conflict, InvalidInput

__all__ = [
    "Direction", "AuctionKind", "ActionKind", "Action", "Ack", "Bid", "RoundRecord",
    "AuctionResult", "AuctionStateError", "ScoreModel", "rank_key", "rank", "FirstPriceAuction",
    "SecondPriceAuction", "EnglishAuction", "DutchAuction",
]

_TICK_EPS = 1e-9  # a tick boundary computed as 11.999999 belongs to tick 12


class Direction(enum.Enum):
    PROCUREMENT = "procurement"
    SALE = "sale"


class AuctionKind(enum.Enum):
    FIRST_PRICE = "first_price"
    SECOND_PRICE = "second_price"
    ENGLISH = "english"
    DUTCH = "dutch"


class ActionKind(enum.Enum):
    COLLECT = "collect"   # ask for sealed bids until `until`
    ASK = "ask"           # a price is on the table (round / tick) until `until`
    WAIT = "wait"         # nothing to ask; wait until `until`
    CLOSE = "close"       # call close(now)
    DONE = "done"         # already closed


class AuctionStateError(Conflict):
    code = "AUCTION_STATE"
    default_hint = "follow open -> submit/next_action -> close; next_action(now) says what is due"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    until: float | None = None
    price: int | None = None
    round: int | None = None


@dataclass(frozen=True)
class Ack:
    accepted: bool
    reason: str | None = None


@dataclass(frozen=True)
class Bid:
    bidder: str
    price: int
    at: float
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"bidder": self.bidder, "price": self.price, "at": self.at, "score": self.score}


@dataclass(frozen=True)
class RoundRecord:
    round: int
    price: int
    opened_at: float
    closed_at: float
    stayed: tuple[str, ...]
    dropped: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "price": self.price, "opened_at": self.opened_at,
                "closed_at": self.closed_at, "stayed": list(self.stayed),
                "dropped": list(self.dropped)}


@dataclass(frozen=True)
class AuctionResult:
    auction_id: str
    kind: AuctionKind
    direction: Direction
    opened_at: float
    closed_at: float
    winner: str | None
    price: int | None
    bids: tuple[Bid, ...]
    rounds: tuple[RoundRecord, ...] = ()
    reason: str | None = None          # why there is no award; None when awarded
    rejected: tuple[tuple[str, float, str], ...] = ()  # (bidder, at, reason)

    @property
    def awarded(self) -> bool:
        return self.winner is not None

    def to_json(self) -> dict[str, Any]:
        return {"auction_id": self.auction_id, "kind": self.kind.value,
                "direction": self.direction.value, "opened_at": self.opened_at,
                "closed_at": self.closed_at, "winner": self.winner, "price": self.price,
                "bids": [b.to_json() for b in self.bids],
                "rounds": [r.to_json() for r in self.rounds], "reason": self.reason,
                "rejected": [{"bidder": b, "at": t, "reason": r} for b, t, r in self.rejected]}


@runtime_checkable
class ScoreModel(Protocol):
    """Evaluation scores as a function of the prices (coordination.evaluation.Scoring is
    one): what a second-score auction inverts to price its award."""

    def scores(self, prices: dict[str, int] | None = None) -> Mapping[str, float]:
        """bidder -> score, with ``prices`` replacing some offered prices."""

    def critical_price(self, bidder: str, rivals: Iterable[str]) -> float | None:
        """The price at which ``bidder``'s score equals its best rival's (None: unbounded)."""


# -- the one ranking rule ---------------------------------------------------------------

def rank_key(bid: Bid, direction: Direction) -> tuple[float, int, float, str]:
    """Sort key, smaller is better: score desc, better price, earlier time, bidder id."""
    signed = bid.price if direction is Direction.SALE else -bid.price
    score = bid.score if bid.score is not None else float(signed)
    return (-score, -signed, bid.at, bid.bidder)


def rank(bids: Iterable[Bid], direction: Direction) -> list[Bid]:
    """Bids best first, by :func:`rank_key`."""
    return sorted(bids, key=lambda b: rank_key(b, direction))


def _within_reserve(price: int, reserve: int | None, direction: Direction) -> bool:
    if reserve is None:
        return True
    return price >= reserve if direction is Direction.SALE else price <= reserve


def _check_price(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"expected {what} as a non-negative integer of milli-credits, got: {value!r}")
    return value


def _check_positive(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or not math.isfinite(value):
        raise InvalidInput(f"expected {what} as a positive finite number, got: {value!r}")
    return value


# -- shared lifecycle ---------------------------------------------------------------------

class _Auction:
    """Lifecycle shared by every auction: states, clock monotonicity, rejections."""

    kind: AuctionKind

    def __init__(self, auction_id: str, direction: Direction, reserve: int | None) -> None:
        if not isinstance(direction, Direction):
            raise InvalidInput(f"expected a Direction, got: {direction!r}")
        self.auction_id = auction_id
        self.direction = direction
        self.reserve = None if reserve is None else _check_price(reserve, "reserve")
        self.invited: frozenset[str] | None = None
        self.opened_at: float | None = None
        self._now = -math.inf
        self._rejected: list[tuple[str, float, str]] = []
        self._result: AuctionResult | None = None

    def open(self, now: float, invited: Iterable[str] | None = None) -> None:
        if self.opened_at is not None:
            raise AuctionStateError(
                f"auction {self.auction_id!r} was already opened at {self.opened_at}")
        self.opened_at = self._now = now
        self.invited = None if invited is None else frozenset(invited)
        self._on_open(now)

    def _tick(self, now: float) -> None:
        """Check the clock and the state before any input; advance time-driven state."""
        if self.opened_at is None:
            raise AuctionStateError(f"auction {self.auction_id!r} is not open yet",
                                    hint="call open(now) first")
        if now < self._now:
            raise InvalidInput(
                f"auction {self.auction_id!r}: time went backwards ({now} < {self._now})",
                hint="feed answers in the order they were received, stamped with one clock")
        self._now = now
        self._advance(now)

    def _reject(self, bidder: str, now: float, reason: str) -> Ack:
        self._rejected.append((bidder, now, reason))
        return Ack(False, reason)

    def _screen(self, bidder: str, now: float) -> Ack | None:
        """Common refusals: closed auction, bidder not invited."""
        if self._result is not None:
            return self._reject(bidder, now, "auction closed")
        if self.invited is not None and bidder not in self.invited:
            return self._reject(bidder, now, "not invited")
        return None

    def submit(self, bidder: str, bid: Any, now: float) -> Ack:
        if not isinstance(bidder, str) or not bidder:
            raise InvalidInput(f"expected a non-empty bidder id, got: {bidder!r}")
        self._tick(now)
        return self._screen(bidder, now) or self._take(bidder, bid, now)

    def next_action(self, now: float) -> Action:
        if self._result is not None:
            return Action(ActionKind.DONE)
        self._tick(now)
        return self._action(now)

    def close(self, now: float) -> AuctionResult:
        """Final outcome; closing again returns the same result."""
        if self._result is not None:
            return self._result
        self._tick(now)
        self._result = self._finish(now)
        return self._result

    def _make_result(self, now: float, winner: Bid | None, price: int | None, bids: Iterable[Bid],
                     reason: str | None, rounds: Iterable[RoundRecord] = ()) -> AuctionResult:
        assert self.opened_at is not None
        return AuctionResult(self.auction_id, self.kind, self.direction, self.opened_at, now,
                             None if winner is None else winner.bidder, price, tuple(bids),
                             tuple(rounds), reason, tuple(self._rejected))

    # -- hooks for the concrete auctions
    def _on_open(self, now: float) -> None:
        """Set up the first round / tick."""

    def _advance(self, now: float) -> None:
        """Let time-driven state (round deadlines) catch up with ``now``."""

    def _take(self, bidder: str, bid: Any, now: float) -> Ack:
        raise NotImplementedError

    def _action(self, now: float) -> Action:
        raise NotImplementedError

    def _finish(self, now: float) -> AuctionResult:
        raise NotImplementedError


# -- sealed bids --------------------------------------------------------------------------

class _SealedAuction(_Auction):
    """One sealed bid per bidder within ``window`` seconds of opening."""

    def __init__(self, auction_id: str, direction: Direction, *, window: float,
                 reserve: int | None = None) -> None:
        super().__init__(auction_id, direction, reserve)
        self.window = _check_positive(window, "window (seconds)")
        self._bids: dict[str, Bid] = {}
        self._answered: set[str] = set()
        self._scores: Mapping[str, float] | None = None
        self._model: ScoreModel | None = None
        self._pending_score: float | None = None

    @property
    def deadline(self) -> float:
        assert self.opened_at is not None
        return self.opened_at + self.window

    def bids(self) -> list[Bid]:
        """The bids accepted so far, in arrival order (what evaluation scores at close)."""
        return list(self._bids.values())

    def submit(self, bidder: str, bid: Any, now: float, score: float | None = None) -> Ack:
        """``bid``: an int price, or None to decline; ``score``: an evaluation score."""
        if score is not None and not (isinstance(score, (int, float)) and math.isfinite(score)):
            raise InvalidInput(f"expected a finite evaluation score for {bidder!r}, got: {score!r}")
        self._pending_score = score
        return super().submit(bidder, bid, now)

    def _take(self, bidder: str, bid: Any, now: float) -> Ack:
        if bid is not None:
            _check_price(bid, f"the bid of {bidder!r}")
        if bidder in self._answered:
            return self._reject(bidder, now, "already answered")
        if now >= self.deadline:
            return self._reject(bidder, now, f"late: the window closed at {self.deadline}")
        self._answered.add(bidder)
        if bid is None:
            return Ack(True, "declined")
        if not _within_reserve(bid, self.reserve, self.direction):
            return self._reject(bidder, now, f"outside the reserve {self.reserve}")
        self._bids[bidder] = Bid(bidder, bid, now, self._pending_score)
        return Ack(True)

    def _action(self, now: float) -> Action:
        everyone_answered = self.invited is not None and self._answered >= self.invited
        if now >= self.deadline or everyone_answered:
            return Action(ActionKind.CLOSE)
        return Action(ActionKind.COLLECT, until=self.deadline)

    def close(self, now: float,
                scores: Mapping[str, float] | ScoreModel | None = None) -> AuctionResult:
        """``scores``: evaluation scores by bidder (e.g. from evaluation.evaluate), or a
        :class:`ScoreModel` (evaluation.Scoring) that gives them and says how they move
        with the price; they replace the scores given at submit, and every bid must then
        have one.  A second-score auction needs the model to price a scored award."""
        # (duck-typed: isinstance against a runtime_checkable Protocol walks its members,
        # 3% of the coordinator's time under the market; a Mapping has no critical_price)
        if self._result is None and callable(getattr(scores, "critical_price", None)):
            self._model, scores = scores, scores.scores()
        self._scores = scores
        return super().close(now)

    def _scored_bids(self) -> list[Bid]:
        bids = list(self._bids.values())
        if self._scores is not None:
            missing = [b.bidder for b in bids if b.bidder not in self._scores]
            if missing:
                raise InvalidInput(
                    f"auction {self.auction_id!r}: no evaluation score for {missing}",
                    hint="score every bid of the round, or none")
            bids = [Bid(b.bidder, b.price, b.at, float(self._scores[b.bidder])) for b in bids]
        if len({b.score is None for b in bids}) > 1:
            raise InvalidInput(f"auction {self.auction_id!r}: some bids carry an evaluation score "
                               "and some do not", hint="score every bid of the round, or none")
        return bids

    def _finish(self, now: float) -> AuctionResult:
        bids = self._scored_bids()
        ranked = rank(bids, self.direction)
        in_order = sorted(bids, key=lambda b: (b.at, b.bidder))
        if not ranked:
            return self._make_result(now, None, None, in_order, "no eligible bids")
        return self._make_result(now, ranked[0], self._price(ranked), in_order, None)

    def payment(self, ranked: list[Bid]) -> int:
        """What the first of ``ranked`` (best first, as :func:`rank` orders them) pays or is
        paid when the others are the competition: the rule ``close`` applies, exposed so
        that a driver whose winner cannot take the award can offer it down the ranking."""
        if not ranked:
            raise InvalidInput(f"auction {self.auction_id!r}: no bid to price")
        return self._price(list(ranked))

    def _price(self, ranked: list[Bid]) -> int:
        raise NotImplementedError


class FirstPriceAuction(_SealedAuction):
    """Sealed first-price: the winner pays (sale) or is paid (procurement) its own bid."""

    kind = AuctionKind.FIRST_PRICE

    def _price(self, ranked: list[Bid]) -> int:
        return ranked[0].price


class SecondPriceAuction(_SealedAuction):
    """Sealed second-price (Vickrey), second-*score* when bids are evaluated.

    Unscored, the winner pays (sale) or is paid (procurement) the runner-up's price.
    Scored by a :class:`ScoreModel`, it pays / is paid its *critical price*: the price at
    which its own score would equal the best rival's score (the model's
    ``critical_price``, whose formula evaluation.Scoring documents), rounded to the
    milli-credit in the winner's disfavour only as far as it still ranks at least level
    (checked on the model's own scores, so rounding never breaks the rule), never worse
    for it than its own bid, and never past the reserve.  This payment does not depend on
    the winner's own bid, which is what makes bidding one's true value (weakly) dominant;
    with equal non-price attributes it is the runner-up's price.  No rival: the reserve,
    or the winner's own price without one; likewise when no price would make a
    procurement winner lose and there is no reserve.  Bare scores without a model are
    refused: they cannot say what price would have tied.
    """

    kind = AuctionKind.SECOND_PRICE

    def _price(self, ranked: list[Bid]) -> int:
        own = ranked[0].price
        if len(ranked) == 1:
            return own if self.reserve is None else self.reserve
        if ranked[0].score is None:
            runner_up = ranked[1].price
            return max(own, runner_up) if self.direction is Direction.PROCUREMENT \
                else min(own, runner_up)
        if self._model is None:
            raise InvalidInput(
                f"auction {self.auction_id!r}: a second-score auction prices the award at the "
                "score that ties the runner-up, which bare scores cannot tell",
                hint="close(now, scores=evaluation.Scoring(offers, weights, direction))")
        return self._critical(ranked[0], ranked[1:])

    def _critical(self, winner: Bid, rivals: list[Bid]) -> int:
        model = self._model
        assert model is not None
        t = model.critical_price(winner.bidder, [r.bidder for r in rivals])
        sale = self.direction is Direction.SALE
        at_bid = model.scores()[winner.bidder]

        def level(price: int) -> bool:
            """The winner's score at ``price`` is at least every rival's; where its price
            does not move its score at all (a zero price weight, or a rival at 0 that
            flattens every other price part), a level score goes to the better price as
            in ``rank_key``: without that the search ran to the reserve, paying a bid the
            ranking would have refused (a bid below the true cost then won; hypothesis
            found it)."""
            s = model.scores({winner.bidder: price})
            mine = s[winner.bidder]
            flat = abs(mine - at_bid) <= _LEVEL
            return all(mine > s[r.bidder] + _LEVEL or mine >= s[r.bidder] - _LEVEL and not (
                flat and (price < r.price if sale else price > r.price)) for r in rivals)

        if self.direction is Direction.PROCUREMENT:
            cap = self.reserve
            if t is None or (cap is not None and t >= cap):
                return winner.price if cap is None else max(winner.price, cap)
            start = max(winner.price, math.floor(t + _TICK_EPS))
            return _last_true(level, start, winner.price, cap, up=True)
        floor = self.reserve if self.reserve is not None else 0
        if t is None or t <= floor:
            return min(winner.price, floor) if t is None else floor
        start = min(winner.price, math.ceil(min(t, winner.price) - _TICK_EPS))
        return _last_true(level, start, winner.price, floor, up=False)


_LEVEL = 1e-12  # scores this close are level (coordination.evaluation does the same)


def _last_true(ok: Callable[[int], bool], guess: int, safe: int, bound: int | None, *,
               up: bool) -> int:
    """The farthest price from ``safe`` (where ``ok`` holds) toward ``bound`` at which
    ``ok`` (monotone: true up to a point) still holds, starting the search at ``guess``
    (the closed form's rounded answer, off by a rounding error at most): gallop, then
    bisect, so a good guess costs two or three evaluations."""
    sign = 1 if up else -1
    inside = lambda p: bound is None or (p <= bound if up else p >= bound)  # noqa: E731
    good, bad = safe, None
    if ok(guess):
        good = guess
    else:
        bad = guess
    step = 1
    while bad is None:
        probe = good + sign * step
        if not inside(probe):
            probe = bound
            if probe == good or ok(probe):
                return probe
            bad = probe
        elif ok(probe):
            good, step = probe, step * 2
        else:
            bad = probe
    while abs(bad - good) > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return good


# -- English: rounds with a price clock ------------------------------------------------------

class EnglishAuction(_Auction):
    """Rounds at rising (sale) or falling (procurement) prices; agents stay or drop.

    Round 0 asks ``start``; each next round moves the price by ``increment`` toward the
    bidders' side.  A round ends when every active bidder answered (only known when
    ``invited`` was given) or at ``round_window`` seconds after it opened.  The auction
    ends when at most one bidder stays, after ``max_rounds`` rounds, or (procurement)
    when the next price would be negative; several stayers are then ranked by
    :func:`rank_key` (earliest "stay").  ``close(now)`` before that forces a decision
    on the answers in.
    """

    kind = AuctionKind.ENGLISH

    def __init__(self, auction_id: str, direction: Direction, *, start: int, increment: int,
                 round_window: float, reserve: int | None = None,
                 max_rounds: int | None = None) -> None:
        super().__init__(auction_id, direction, reserve)
        self.start = _check_price(start, "start price")
        if _check_price(increment, "increment") == 0:
            raise InvalidInput("expected a positive increment, got: 0")
        if not _within_reserve(start, self.reserve, direction):
            raise InvalidInput(f"start price {start} is outside the reserve {reserve} for a "
                               f"{direction.value} auction", hint="start at or inside the reserve")
        if max_rounds is not None and max_rounds < 1:
            raise InvalidInput(f"expected max_rounds >= 1, got: {max_rounds}")
        self.increment = increment
        self.round_window = _check_positive(round_window, "round_window (seconds)")
        self.max_rounds = max_rounds
        self._rounds: list[RoundRecord] = []
        self._answers: dict[str, Bid | None] = {}   # this round: Bid = stay, None = drop
        self._active: frozenset[str] | None = None  # None: round 0 of an open auction
        self._round_open = 0.0
        self._stays: list[Bid] = []
        self._outcome: tuple[Bid | None, int | None, str | None] | None = None

    @property
    def round(self) -> int:
        return len(self._rounds)

    @property
    def rounds(self) -> tuple[RoundRecord, ...]:
        """The rounds ended so far, oldest first."""
        return tuple(self._rounds)

    @property
    def active(self) -> frozenset[str] | None:
        """Who is asked in the current round (None: everyone, round 0 without ``invited``)."""
        return self._active

    def answered(self, bidder: str) -> bool:
        """Whether ``bidder`` has answered the current round."""
        return bidder in self._answers

    @property
    def price(self) -> int:
        step = self.increment if self.direction is Direction.SALE else -self.increment
        return self.start + step * self.round

    def _on_open(self, now: float) -> None:
        self._active = self.invited
        self._round_open = now

    def _round_deadline(self) -> float:
        return self._round_open + self.round_window

    def _round_complete(self, now: float) -> bool:
        if now >= self._round_deadline():
            return True
        return self._active is not None and set(self._answers) >= self._active

    def _advance(self, now: float) -> None:
        while self._outcome is None and self._round_complete(now):
            self._end_round(min(now, self._round_deadline()))

    def _end_round(self, at: float) -> None:
        stay_bids = [bid for bid in self._answers.values() if bid is not None]
        stayed = sorted(b.bidder for b in stay_bids)
        asked = self._active if self._active is not None else set(self._answers)
        self._rounds.append(RoundRecord(self.round, self.price, self._round_open, at,
                                        tuple(stayed), tuple(sorted(set(asked) - set(stayed)))))
        self._outcome = self._decide(stay_bids)
        self._active, self._answers, self._round_open = frozenset(stayed), {}, at

    def _decide(self, stay_bids: list[Bid]) -> tuple[Bid | None, int | None, str | None] | None:
        """None: go on with another round; else (winner, price, reason)."""
        if len(stay_bids) == 1:
            return stay_bids[0], stay_bids[0].price, None
        if not stay_bids:
            return self._fallback()
        if not self._may_continue():
            best = rank(stay_bids, self.direction)[0]
            return best, best.price, None
        return None

    def _fallback(self) -> tuple[Bid | None, int | None, str | None]:
        """Everyone dropped: the best of last round's stayers wins at last round's price."""
        if self.round == 1:
            return None, None, "no bidder stayed at the start price"
        last_price = self._rounds[-2].price
        contenders = [b for b in self._stays if b.price == last_price]
        best = rank(contenders, self.direction)[0]
        return best, best.price, None

    def _may_continue(self) -> bool:
        """Called once the round is recorded: ``self.price`` is the next round's price."""
        if self.max_rounds is not None and self.round >= self.max_rounds:
            return False
        return self.price >= 0

    def _take(self, bidder: str, bid: Any, now: float) -> Ack:
        if bid is not None and not isinstance(bid, bool):
            raise InvalidInput(f"expected True (stay), False or None (drop) from {bidder!r} in an "
                               f"English auction, got: {bid!r}")
        if self._outcome is not None:
            return self._reject(bidder, now, "auction decided")
        if self._active is not None and bidder not in self._active:
            return self._reject(bidder, now, "dropped in an earlier round")
        if bidder in self._answers:
            return self._reject(bidder, now, f"already answered round {self.round}")
        stay = Bid(bidder, self.price, now) if bid else None
        self._answers[bidder] = stay
        if stay is not None:
            self._stays.append(stay)
        self._advance(now)
        return Ack(True)

    def _action(self, now: float) -> Action:
        if self._outcome is not None:
            return Action(ActionKind.CLOSE)
        return Action(ActionKind.ASK, until=self._round_deadline(), price=self.price,
                      round=self.round)

    def _finish(self, now: float) -> AuctionResult:
        if self._outcome is None:  # forced close mid-round: decide on what is in
            self._end_round(now)
            if self._outcome is None:
                best = rank([b for b in self._stays if b.price == self._rounds[-1].price],
                            self.direction)[0]
                self._outcome = (best, best.price, None)
        winner, price, reason = self._outcome
        return self._make_result(now, winner, price, self._stays, reason, self._rounds)


# -- Dutch: a price clock, one round per tick, first taker wins ----------------------------

_RUNNING, _TAKEN, _RAN_OUT = "running", "taken", "ran out"


class DutchAuction(_Auction):
    """A price clock: round (tick) ``k`` offers ``price_at(k)``, ``start`` moved ``k`` steps
    of ``step``, down in a sale, up in procurement, never past ``reserve`` (the floor of a
    sale, 0 without one; the ceiling of procurement, required).

    Every round asks the bidders "do you take it at this price?" (``next_action`` is ASK
    with the round's price); ``True`` takes, ``False``/``None`` passes this round only (a
    bidder that passed is asked again at the next price).  A round ends ``tick`` seconds
    after it opened or, when ``invited`` was given, as soon as every invited bidder has
    answered it; the clock then moves one step.  The first round with a taker decides: its
    takers compete by :func:`rank_key` (earliest receipt, then bidder id: deterministic
    for a given feed) and the winner pays / is paid that round's price.  A take in a later
    round is refused ("already taken").  No taker by the last round (the price at the
    reserve): no award.  Rounds nobody answered are not recorded, and silent stretches of
    the clock are skipped arithmetically, so a clock of many ticks costs nothing idle.  In
    ``rounds``, ``stayed`` lists a round's takers and ``dropped`` those that passed (or,
    with ``invited``, did not answer).
    """

    kind = AuctionKind.DUTCH

    def __init__(self, auction_id: str, direction: Direction, *, start: int, step: int,
                 tick: float, reserve: int | None = None) -> None:
        super().__init__(auction_id, direction, reserve)
        self.start = _check_price(start, "start price")
        if _check_price(step, "step") == 0:
            raise InvalidInput("expected a positive step, got: 0")
        if direction is Direction.PROCUREMENT and reserve is None:
            raise InvalidInput("a procurement Dutch auction needs a reserve (the highest price "
                               "its rising clock may reach)", hint="pass reserve=<max price>")
        if not _within_reserve(start, self.reserve, direction):
            raise InvalidInput(f"start price {start} is outside the reserve {reserve} for a "
                               f"{direction.value} auction", hint="start at or inside the reserve")
        self.step = step
        self.tick = _check_positive(tick, "tick (seconds)")
        limit = self.reserve if self.reserve is not None else 0
        self.last_tick = abs(self.start - limit) // step
        self.round = 0
        self._state = _RUNNING
        self._anchor = (0.0, 0)            # (time, round): rounds run on a grid from here
        self._round_open = 0.0
        self._answers: dict[str, bool] = {}
        self._takers: list[Bid] = []
        self._rounds: list[RoundRecord] = []

    # -- the clock -----------------------------------------------------------------------

    @property
    def rounds(self) -> tuple[RoundRecord, ...]:
        """The rounds ended so far in which somebody answered, oldest first."""
        return tuple(self._rounds)

    @property
    def price(self) -> int:
        """The current round's price."""
        return self.price_at(self.round)

    def price_at(self, tick: int) -> int:
        delta = self.step * tick
        return self.start - delta if self.direction is Direction.SALE else self.start + delta

    def tick_start(self, tick: int) -> float:
        """When round ``tick`` begins if no round ends early before it (a boundary belongs
        to the new round); for the current round, when it opened."""
        if tick == self.round:
            return self._round_open
        t0, k0 = self._anchor
        return t0 + (tick - k0) * self.tick

    def tick_at(self, now: float) -> int:
        """The round running at ``now`` (not before the last time fed) if no round ends
        early before it; may exceed ``last_tick`` (the clock has then run out)."""
        if self._state != _RUNNING or now <= self._now:
            return self.round
        return max(self.round, self._scheduled_round(now))

    def tick_for(self, limit: int) -> int | None:
        """The first tick whose price a bidder with this limit takes: the first price >=
        ``limit`` in procurement (the lowest payment it works for), <= ``limit`` in a sale
        (the most it pays); None when the clock stops before reaching it.  Lets a bidder
        state its limit once instead of answering every tick (a proxy for the clock)."""
        _check_price(limit, "a limit price")
        gap = limit - self.start if self.direction is Direction.PROCUREMENT else self.start - limit
        tick = max(0, -(-gap // self.step))  # ceil: the first tick at or past the limit
        return tick if tick <= self.last_tick else None

    def answered(self, bidder: str) -> bool:
        """Has ``bidder`` answered the current round?"""
        return bidder in self._answers

    def _scheduled_round(self, now: float) -> int:
        t0, k0 = self._anchor
        return k0 + max(0, math.floor((now - t0) / self.tick + _TICK_EPS))

    def _on_open(self, now: float) -> None:
        self._anchor, self._round_open = (now, 0), now

    def _everyone_answered(self) -> bool:
        return self.invited is not None and set(self._answers) >= self.invited

    def _advance(self, now: float) -> None:
        """End every round that is over at ``now``: answered by everyone (early) or past
        its boundary (then the silent rounds after it are skipped in one move)."""
        while self._state == _RUNNING:
            if self._everyone_answered():
                self._end_round(now, self.round + 1, early=True)
                continue
            due = self._scheduled_round(now)
            if due <= self.round:
                return
            self._end_round(self.tick_start(self.round + 1), due, early=False)

    def _end_round(self, at: float, next_round: int, *, early: bool) -> None:
        self._record_round(at)
        if self._takers:
            self._state = _TAKEN
            return
        if next_round > self.last_tick:
            self._state = _RAN_OUT
            return
        if early:  # the grid restarts here: later rounds last a full tick each
            self._anchor = (at, next_round)
        t0, k0 = self._anchor
        self.round, self._answers = next_round, {}
        self._round_open = t0 + (next_round - k0) * self.tick

    def _record_round(self, at: float) -> None:
        if not self._answers:
            return
        takers = sorted(b for b, took in self._answers.items() if took)
        asked = self.invited if self.invited is not None else set(self._answers)
        self._rounds.append(RoundRecord(self.round, self.price, self._round_open, at,
                                        tuple(takers), tuple(sorted(set(asked) - set(takers)))))
        self._answers = {}

    # -- answers, actions, result ----------------------------------------------------------

    def _take(self, bidder: str, bid: Any, now: float) -> Ack:
        if bid is not None and not isinstance(bid, bool):
            raise InvalidInput(f"expected True (take) or False/None (pass) from {bidder!r} in a "
                               f"Dutch auction, got: {bid!r}")
        if self._state == _RAN_OUT:
            return self._reject(bidder, now, "the clock ran out")
        if self._state == _TAKEN:
            return self._reject(bidder, now, f"already taken at tick {self.round}")
        if bidder in self._answers:
            return self._reject(bidder, now, f"already answered tick {self.round}")
        self._answers[bidder] = bool(bid)
        if bid:
            self._takers.append(Bid(bidder, self.price, now))
        self._advance(now)
        return Ack(True) if bid else Ack(True, "passed")

    def _action(self, now: float) -> Action:
        if self._state != _RUNNING:
            return Action(ActionKind.CLOSE)
        until = self.tick_start(self.round + 1)
        if self._takers:  # taken: later answers of this round still compete
            return Action(ActionKind.WAIT, until=until)
        return Action(ActionKind.ASK, until=until, price=self.price, round=self.round)

    def _finish(self, now: float) -> AuctionResult:
        if self._state == _RUNNING:  # forced close mid-round: decide on what is in
            self._record_round(now)
        if not self._takers:
            reason = ("nobody took the price before the clock ran out" if self._state == _RAN_OUT
                      else f"closed at tick {self.round} before anybody took the price")
            return self._make_result(now, None, None, (), reason, self._rounds)
        best = rank(self._takers, self.direction)[0]
        return self._make_result(now, best, best.price, self._takers, None, self._rounds)
