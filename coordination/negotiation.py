"""Negotiation: multi-round votes with compromise proposals, and bilateral price bargaining.

Two pure state machines (no I/O, time from an injected ``clock``) that the coordinator
drives by asking real agents through their hooks:

``Negotiation`` — a collective choice in rounds::

    voting ──end_round()──> agreed        winner's support >= threshold (and quorum met)
       ^          └───────> failed        round max_rounds ended without agreement
       |          └───────> proposing     parties may propose compromise options
       └──────next_round()──────┘         proposals join the options of the next round

  Each round is a :class:`~coordination.voting.BallotBox` (the coordinator casts what the
  agents' ``vote(request)`` hooks answer); in ``proposing`` it hands every agent's
  ``propose(request)`` answer (a list of ``{"name", "combines", "note"}``) to
  :meth:`Negotiation.propose_from`.  ``support`` is defined per method in
  ``coordination.voting`` (share of first choices, approval share, normalised Borda
  score, weakest head-to-head share...), always over the ballots counted, so abstaining
  never helps agreement.  Decisions where the spec is silent: a compromise combines at
  least two options already on the table (hybrids of hybrids are fine) and gets a new
  name; the same name proposed again with the same parts adds a co-proposer, with other
  parts it is refused (Conflict); options are never withdrawn, so every round's winner
  stays comparable; a round may pass with no proposal (parties can change their minds).
  ``majority`` on bare single-choice ballots only says "runoff needed" and so never agrees
  in a round: use ranked ballots for it here.

``AlternatingOffers`` — Rubinstein-style bilateral bargaining on a price between a task
owner (buyer) and an agent (seller).  The state machine never learns either party's
limit: it only sees offers, acceptances and walk-aways, in turn.  ``max_rounds`` is the
total number of offers; after the last one the receiver may only accept or walk away.
Past ``deadline`` (on ``clock``'s scale) the session ends with no deal.

Concession strategies (Faratin, Sierra & Jennings 1998, time-dependent tactics) are plain
functions an agent can use inside its hook: a tactic maps progress ``t`` in [0, 1] to the
share of the way from its initial price to its reservation price it has conceded;
``time_dependent(beta, k)`` is ``k + (1 - k) * t ** (1 / beta)``: ``beta < 1`` is
Boulware (holds out, concedes at the end), ``beta > 1`` Conceder, ``beta = 1`` linear.
:class:`PriceStrategy` accepts an offer when it is at least as good as the offer it would
make next, and at ``t = 1`` it offers its reservation price; so two such strategies always
close a deal, at a price inside the zone of agreement, when that zone is not empty (and no
deadline cuts the session short), and never when it is empty.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from coordination.voting import (
    LEXICOGRAPHIC,
    BallotBox,
    CastRecord,
    Outcome,
    Quorum,
    ballot_shape,
)
from runtime.errors import ClosedError, Conflict, DeadlineExceeded, InvalidInput, PermissionDenied

__all__ = [
    "Proposal", "Negotiation", "Offer", "AlternatingOffers", "PriceStrategy", "Tactic",
    "time_dependent", "boulware", "conceder", "linear", "offer_at", "step", "bargain",
]


# ---------------------------------------------------------------------------- multi-round

@dataclass(frozen=True)
class Proposal:
    """A compromise option: a new name for a combination of options on the table."""

    name: str
    combines: tuple[str, ...]
    proposers: tuple[str, ...]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "combines": list(self.combines),
                "proposers": list(self.proposers), "note": self.note}


@dataclass
class _Round:
    number: int
    box: BallotBox
    agreed: bool = False
    proposals: tuple[Proposal, ...] = ()
    first_ballot: BallotBox | None = None  # a majority round's first ballot, when it had a runoff

    def to_json(self) -> dict[str, Any]:
        outcome = self.box.outcome
        out = {"round": self.number, "options": list(self.box.options),
               "ballots": self.box.ballots, "log": [r.to_json() for r in self.box.log],
               "outcome": None if outcome is None else outcome.to_json(),
               "agreed": self.agreed, "proposals": [p.to_json() for p in self.proposals]}
        if self.first_ballot is not None:
            out["first_ballot"] = self.first_ballot.to_json()
        return out


class Negotiation:
    """Rounds of voting until a winner's support reaches ``threshold``, or ``max_rounds``."""

    def __init__(
        self,
        question: str,
        options: Iterable[str],
        method: str = "plurality",
        threshold: float = 0.5,
        max_rounds: int = 3,
        *,
        electorate: Iterable[str] | None = None,
        weights: Mapping[str, float] | None = None,
        quorum: Quorum | None = None,
        round_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        tie_break: str | int = LEXICOGRAPHIC,
    ) -> None:
        ballot_shape(method)
        if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
            raise InvalidInput(f"threshold must be within (0, 1], got {threshold!r}",
                               hint="e.g. 0.5 for half of the ballots, 1.0 for unanimity")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise InvalidInput(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
        self.question, self.method = question, method
        self.threshold, self.max_rounds = float(threshold), max_rounds
        self.electorate = None if electorate is None else frozenset(electorate)
        self._quorum, self._weights, self._tie_break = quorum, weights, tie_break
        self._round_seconds, self._clock = round_seconds, clock
        self._parts: dict[str, tuple[str, ...]] = {o: () for o in options}
        self._rounds: list[_Round] = []
        self._pending: dict[str, Proposal] = {}
        self.state: Literal["voting", "proposing", "agreed", "failed"] = "voting"
        self._open_round()

    # -- reading

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(self._parts)

    @property
    def round_number(self) -> int:
        return len(self._rounds)

    @property
    def box(self) -> BallotBox:
        """The current round's ballot box."""
        return self._rounds[-1].box

    @property
    def agreed_option(self) -> str | None:
        last = self._rounds[-1]
        return last.box.outcome.winner if last.agreed and last.box.outcome else None

    def parts_of(self, option: str) -> tuple[str, ...]:
        """The options a compromise combines (``()`` for an original option)."""
        return self._parts[option]

    def request(self) -> dict[str, Any]:
        """What the coordinator hands the agents' ``vote``/``propose`` hooks this round."""
        return {**self.box.request(), "round": self.round_number, "max_rounds": self.max_rounds,
                "threshold": self.threshold, "state": self.state,
                "compromises": {o: list(p) for o, p in self._parts.items() if p},
                "last_outcome": None if self.box.outcome is None else self.box.outcome.to_json()}

    # -- voting

    def cast(self, voter: str, ballot: Any) -> CastRecord:
        """Cast into the current round (a re-vote replaces the voter's earlier ballot)."""
        self._require("voting", f"{voter!r} cannot vote now")
        return self.box.cast(voter, ballot)

    def end_round(self) -> Outcome:
        """Close the current round; the negotiation becomes agreed, failed or proposing."""
        self._require("voting", "no round is open")
        outcome = self.box.close()
        current = self._rounds[-1]
        current.agreed = self._reaches_threshold(outcome)
        if current.agreed:
            self.state = "agreed"
        else:
            self.state = "failed" if self.round_number >= self.max_rounds else "proposing"
        return outcome

    def open_runoff(self) -> BallotBox | None:
        """After ``end_round``: when the round's ``majority`` outcome needs a second ballot
        (every ballot a bare name, nobody with a majority), open it within the same round
        over the two finalists; cast into it and ``end_round`` again.  None otherwise."""
        current = self._rounds[-1]
        outcome = current.box.outcome
        if outcome is None or outcome.runoff_finalists is None or current.first_ballot is not None:
            return None
        deadline = None if self._round_seconds is None else self._clock() + self._round_seconds
        current.first_ballot, current.box = current.box, current.box.open_runoff(deadline)
        self.state = "voting"
        return current.box

    def _reaches_threshold(self, outcome: Outcome) -> bool:
        # 1e-12: 3/4 computed from counts must reach a 0.75 threshold despite rounding.
        return (outcome.quorum_met and outcome.winner is not None
                and outcome.support >= self.threshold - 1e-12)

    # -- proposing

    def propose(self, proposer: str, name: str, combines: Iterable[str],
                note: str = "") -> Proposal:
        """Offer a compromise ``name`` combining options on the table, for the next round."""
        self._require("proposing", f"{proposer!r} cannot propose now")
        self._check_proposer(proposer)
        parts = self._check_parts(name, tuple(combines))
        earlier = self._pending.get(name)
        if earlier is not None and set(earlier.combines) != set(parts):
            raise Conflict(f"{proposer!r} proposed {name!r} as {list(parts)}, but "
                           f"{list(earlier.proposers)} already proposed it as "
                           f"{list(earlier.combines)}",
                           hint="pick another name for a different combination")
        proposers = (earlier.proposers if earlier else ()) + (proposer,)
        proposal = Proposal(name, earlier.combines if earlier else parts, proposers,
                            earlier.note if earlier else note)
        self._pending[name] = proposal
        return proposal

    def propose_from(self, proposer: str, answer: Any) -> list[Proposal]:
        """Apply what an agent's ``propose(request)`` hook returned (a list of dicts)."""
        if not isinstance(answer, list) or not all(isinstance(p, dict) for p in answer):
            raise InvalidInput(f"{proposer!r} answered propose() with {type(answer).__name__}",
                               hint='return [{"name": ..., "combines": [...], "note": ...}]')
        return [self.propose(proposer, p.get("name"), p.get("combines") or (),
                             str(p.get("note", ""))) for p in answer]

    def next_round(self) -> BallotBox:
        """Add the proposals to the options and open the next round's ballot box."""
        self._require("proposing", "the next round opens only after a round without agreement")
        self._rounds[-1].proposals = tuple(self._pending.values())
        for proposal in self._pending.values():
            self._parts[proposal.name] = proposal.combines
        self._pending.clear()
        self.state = "voting"
        return self._open_round()

    # -- checks and steps

    def _open_round(self) -> BallotBox:
        deadline = None if self._round_seconds is None else self._clock() + self._round_seconds
        box = BallotBox(f"{self.question} (round {self.round_number + 1})", self.options,
                        self.method, self.electorate, self._quorum, deadline, self._clock,
                        weights=self._weights, tie_break=self._tie_break)
        self._rounds.append(_Round(self.round_number + 1, box))
        return box

    def _require(self, state: str, what: str) -> None:
        if self.state == state:
            return
        if self.state in ("agreed", "failed"):
            raise ClosedError(f"negotiation {self.question!r} already {self.state}: {what}",
                              hint="start a new Negotiation")
        raise InvalidInput(f"negotiation {self.question!r} is {self.state}, not {state}: {what}",
                           hint="voting -> end_round() -> proposing -> next_round() -> voting")

    def _check_proposer(self, proposer: str) -> None:
        if self.electorate is not None and proposer not in self.electorate:
            raise PermissionDenied(f"{proposer!r} is not a party to negotiation {self.question!r}",
                                   hint="only electors may propose compromises")

    def _check_parts(self, name: Any, parts: tuple[str, ...]) -> tuple[str, ...]:
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"a compromise needs a non-empty string name, got {name!r}")
        if name in self._parts:
            raise InvalidInput(f"compromise name {name!r} is already an option",
                               hint="give the compromise a new name")
        unknown = [p for p in parts if not isinstance(p, str) or p not in self._parts]
        if unknown or len(set(parts)) != len(parts) or len(parts) < 2:
            raise InvalidInput(f"compromise {name!r} must combine at least two distinct options "
                               f"on the table; got {list(parts)}",
                               hint=f"the options are {list(self._parts)}")
        return parts

    def to_json(self) -> dict[str, Any]:
        return {"question": self.question, "method": self.method, "threshold": self.threshold,
                "max_rounds": self.max_rounds, "state": self.state,
                "agreed_option": self.agreed_option,
                "compromises": {o: list(p) for o, p in self._parts.items() if p},
                "pending_proposals": [p.to_json() for p in self._pending.values()],
                "rounds": [r.to_json() for r in self._rounds]}


# ---------------------------------------------------------------------------- tactics

Role = Literal["buyer", "seller"]
Tactic = Callable[[float], float]
_OTHER: dict[str, Role] = {"buyer": "seller", "seller": "buyer"}


def time_dependent(beta: float, k: float = 0.0) -> Tactic:
    """Faratin's polynomial tactic: conceded share ``k + (1 - k) * t ** (1 / beta)``."""
    if not (math.isfinite(beta) and beta > 0):
        raise InvalidInput(f"beta must be a finite number > 0, got {beta!r}",
                           hint="beta < 1: Boulware (hold out), beta > 1: Conceder, 1: linear")
    if not 0.0 <= k <= 1.0:
        raise InvalidInput(f"k (the share conceded at once) must be within [0, 1], got {k!r}")

    def tactic(t: float) -> float:
        return k + (1.0 - k) * min(1.0, max(0.0, t)) ** (1.0 / beta)

    tactic.__name__ = f"time_dependent(beta={beta}, k={k})"
    return tactic


def boulware(beta: float = 0.2) -> Tactic:
    """Holds near its initial price and concedes late (``beta < 1``)."""
    if beta >= 1:
        raise InvalidInput(f"a Boulware tactic needs beta < 1, got {beta!r}")
    return time_dependent(beta)


def conceder(beta: float = 5.0) -> Tactic:
    """Concedes early towards its reservation price (``beta > 1``)."""
    if beta <= 1:
        raise InvalidInput(f"a Conceder tactic needs beta > 1, got {beta!r}")
    return time_dependent(beta)


def linear() -> Tactic:
    """Concedes at a constant rate (``beta = 1``)."""
    return time_dependent(1.0)


def offer_at(t: float, initial: float, reservation: float, tactic: Tactic) -> float:
    """The price a party offers at progress ``t``; exactly its reservation from t = 1 on."""
    if t >= 1.0:
        return reservation
    price = initial + tactic(t) * (reservation - initial)
    # Rounding must never carry an offer past the party's own limit.
    return min(max(price, min(initial, reservation)), max(initial, reservation))


def _check_price(what: str, price: Any) -> float:
    number = isinstance(price, (int, float)) and not isinstance(price, bool)
    if not number or not math.isfinite(price) or price < 0:
        raise InvalidInput(f"{what} must be a finite number >= 0, got {price!r}")
    return float(price)


@dataclass(frozen=True)
class PriceStrategy:
    """One party's private bargaining position: where it starts, its limit and its tactic.

    A buyer starts low and will pay at most ``reservation``; a seller starts high and
    takes at least ``reservation``.
    """

    role: Role
    initial: float
    reservation: float
    tactic: Tactic = linear()

    def __post_init__(self) -> None:
        if self.role not in _OTHER:
            raise InvalidInput(f"role must be 'buyer' or 'seller', got {self.role!r}")
        low = _check_price("initial price", self.initial)
        high = _check_price("reservation", self.reservation)
        if (self.role == "buyer" and low > high) or (self.role == "seller" and low < high):
            raise InvalidInput(f"a {self.role} starting at {self.initial} with reservation "
                               f"{self.reservation} would concede the wrong way",
                               hint="a buyer starts at or below its limit, a seller at or above it")

    def offer(self, t: float) -> float:
        return offer_at(t, self.initial, self.reservation, self.tactic)

    def accepts(self, price: float, t: float) -> bool:
        """Is ``price`` at least as good as what this party would offer at ``t``?"""
        mine = self.offer(t)
        return price <= mine if self.role == "buyer" else price >= mine


# ---------------------------------------------------------------------------- bargaining

@dataclass(frozen=True)
class Offer:
    role: Role
    price: float
    at: float
    number: int

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "price": self.price, "at": self.at, "number": self.number}


class AlternatingOffers:
    """Alternating offers on a price; the parties' limits stay private to them."""

    def __init__(
        self,
        *,
        first: Role = "buyer",
        max_rounds: int = 10,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        subject: str = "",
    ) -> None:
        if first not in _OTHER:
            raise InvalidInput(f"first must be 'buyer' or 'seller', got {first!r}")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise InvalidInput("max_rounds (offers in total) must be an integer >= 1, "
                               f"got {max_rounds!r}")
        self.first, self.max_rounds, self.subject = first, max_rounds, subject
        self.deadline, self._clock = deadline, clock
        self.started = clock()
        if deadline is not None and deadline <= self.started:
            raise InvalidInput(f"deadline {deadline} is not after the start {self.started}")
        self.offers: list[Offer] = []
        self.state: Literal["open", "deal", "no_deal"] = "open"
        self.reason = ""
        self.price: float | None = None

    @property
    def turn(self) -> Role:
        """Whose move it is: the first mover, then whoever received the last offer."""
        return self.first if not self.offers else _OTHER[self.offers[-1].role]

    @property
    def last_offer(self) -> Offer | None:
        return self.offers[-1] if self.offers else None

    @property
    def offers_left(self) -> int:
        return self.max_rounds - len(self.offers)

    def progress(self) -> float:
        """``t`` in [0, 1] for the next offer: rounds used or time used, whichever is more."""
        made, last = len(self.offers), self.max_rounds - 1
        by_rounds = 1.0 if last == 0 else min(1.0, made / last)
        if self.deadline is None:
            return by_rounds
        by_time = (self._clock() - self.started) / (self.deadline - self.started)
        return max(by_rounds, min(1.0, max(0.0, by_time)))

    def check(self) -> str:
        """End the session with no deal once past the deadline; returns the state."""
        if self.state == "open" and self.deadline is not None and self._clock() >= self.deadline:
            self._end("no_deal", f"deadline {self.deadline} passed")
        return self.state

    def offer(self, role: Role, price: float) -> Offer:
        """``role`` offers ``price`` (its turn, within the round limit)."""
        now = self._require_turn(role)
        if not self.offers_left:
            raise InvalidInput(f"all {self.max_rounds} offers are made; {role} may only "
                               "accept or walk away",
                               hint="call accept() or walk_away()")
        made = Offer(role, _check_price(f"{role}'s offer", price), now, len(self.offers) + 1)
        self.offers.append(made)
        return made

    def accept(self, role: Role) -> Offer:
        """``role`` accepts the other party's last offer: a deal at that price."""
        self._require_turn(role)
        last = self.last_offer
        if last is None:
            raise InvalidInput(f"{role} cannot accept: no offer has been made yet",
                               hint="make the first offer instead")
        self._end("deal", f"{role} accepted offer {last.number}")
        self.price = last.price
        return last

    def walk_away(self, role: Role, reason: str = "") -> None:
        """``role`` ends the session without a deal."""
        self._require_turn(role)
        self._end("no_deal", f"{role} walked away" + (f": {reason}" if reason else ""))

    def _require_turn(self, role: Role) -> float:
        if self.check() != "open":
            if self.reason.startswith("deadline"):
                raise DeadlineExceeded(f"bargaining {self.subject!r} ended: {self.reason}",
                                       hint="start a new session with a later deadline")
            raise ClosedError(f"bargaining {self.subject!r} already ended "
                              f"({self.state}: {self.reason})",
                              hint="start a new AlternatingOffers session")
        if role != self.turn:
            raise InvalidInput(f"it is the {self.turn}'s move in {self.subject!r}, "
                               f"not the {role!r}'s",
                               hint="offers alternate; wait for the other party's move")
        return self._clock()

    def _end(self, state: Literal["deal", "no_deal"], reason: str) -> None:
        self.state, self.reason = state, reason

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject, "first": self.first, "max_rounds": self.max_rounds,
                "deadline": self.deadline, "state": self.state, "reason": self.reason,
                "price": self.price, "offers": [o.to_json() for o in self.offers]}


def step(session: AlternatingOffers, strategy: PriceStrategy) -> str:
    """One move for the party whose turn it is: accept, counter-offer, or walk away.

    Returns ``"accept"``, ``"offer"``, ``"walk_away"``, or the state if the session ended
    (deadline) before the move.  This is what an agent's bargaining hook can do.
    """
    if session.check() != "open":
        return session.state
    t = session.progress()
    last = session.last_offer
    if last is not None and strategy.accepts(last.price, t):
        session.accept(strategy.role)
        return "accept"
    if session.offers_left:
        session.offer(strategy.role, strategy.offer(t))
        return "offer"
    session.walk_away(strategy.role, "round limit reached without an acceptable offer")
    return "walk_away"


def bargain(session: AlternatingOffers, buyer: PriceStrategy,
            seller: PriceStrategy) -> AlternatingOffers:
    """Play both strategies against each other until the session ends (bounded by max_rounds)."""
    if buyer.role != "buyer" or seller.role != "seller":
        raise InvalidInput("bargain() needs a buyer and a seller, "
                           f"got {buyer.role} and {seller.role}")
    parties = {"buyer": buyer, "seller": seller}
    while session.state == "open":
        step(session, parties[session.turn])
    return session
