"""Bid evaluation: one score per offer from price, declared quality, load and reputation.

Used by market allocation between "bids collected" and "award": the coordinator builds
one :class:`Offer` per bid of a round, calls :func:`evaluate`, and hands the scores to
the auction (``close(now, scores=...)``), whose ranking rule then picks the best
evaluated offer rather than only the cheapest.

Normalisation (decided here; the spec only says "normalised across the bids of one
round"): each criterion is scaled *relative to the best offer of the round*, so every
part lies in [0, 1] and the best offer on a criterion gets 1:

* price, procurement (a cost): ``min_price / price`` (a free offer gets 1);
* price, sale (a benefit): ``price / max_price``;
* quality and reputation (benefits in [0, 1]): ``value / max_value``;
* load (a utilisation in [0, 1], a cost): free capacity ``(1 - load) / max(1 - load)``.

When the best value is 0 (everybody free, or everybody fully loaded) the criterion does
not discriminate and everyone gets 1.  Ratio-to-best, unlike min-max scaling, keeps a
0.90 vs 0.91 quality difference small instead of turning it into 0 vs 1.

The score is the weighted mean of the parts with :class:`Weights` (normalised to sum to
1), so it lies in [0, 1] too.  Pure: no clock is needed, nothing is read or written.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from coordination.auction import Direction
from runtime.errors import InvalidInput

__all__ = ["Weights", "Offer", "Evaluation", "Scoring", "evaluate", "scores"]

_CRITERIA = ("price", "quality", "load", "reputation")


def _check_unit(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"expected {what} in [0, 1], got: {value!r}")
    return float(value)


@dataclass(frozen=True)
class Weights:
    """Relative weights of the criteria; non-negative, finite, not all zero.
    Defaults favour price, then quality, then reputation, then load."""

    price: float = 0.4
    quality: float = 0.3
    load: float = 0.1
    reputation: float = 0.2

    def __post_init__(self) -> None:
        for name in _CRITERIA:
            w = getattr(self, name)
            number = isinstance(w, (int, float)) and not isinstance(w, bool)
            if not number or not math.isfinite(w) or w < 0:
                raise InvalidInput(f"expected weight {name!r} as a finite number >= 0, got: {w!r}")
        if self.total == 0:
            raise InvalidInput("all evaluation weights are 0",
                               hint="give at least one criterion a positive weight")

    @property
    def total(self) -> float:
        return float(sum(getattr(self, n) for n in _CRITERIA))

    def normalised(self) -> dict[str, float]:
        return {n: getattr(self, n) / self.total for n in _CRITERIA}


@dataclass(frozen=True)
class Offer:
    """One bid as evaluation sees it.  ``price`` in milli-credits; ``quality`` is the
    agent's declared capability score, ``load`` its current utilisation, ``reputation``
    from coordination.reputation (a new agent's prior) -- all three in [0, 1]."""

    bidder: str
    price: int
    quality: float = 1.0
    load: float = 0.0
    reputation: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.price, bool) or not isinstance(self.price, int) or self.price < 0:
            raise InvalidInput(f"expected the price of {self.bidder!r} as a non-negative integer "
                               f"of milli-credits, got: {self.price!r}")
        for name in ("quality", "load", "reputation"):
            _check_unit(getattr(self, name), f"{name} of {self.bidder!r}")


@dataclass(frozen=True)
class Evaluation:
    bidder: str
    score: float
    parts: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"bidder": self.bidder, "score": self.score, "parts": dict(self.parts)}


def _ratio(value: float, best: float) -> float:
    """value / best for a benefit; 1 when the best is 0 (no discrimination)."""
    return 1.0 if best == 0 else value / best


def _price_part(price: int, prices: list[int], direction: Direction) -> float:
    if direction is Direction.SALE:
        return _ratio(price, max(prices))
    cheapest = min(prices)
    return 1.0 if price == 0 else cheapest / price


def _parts(offer: Offer, round_: list[Offer], direction: Direction) -> dict[str, float]:
    return {
        "price": _price_part(offer.price, [o.price for o in round_], direction),
        "quality": _ratio(offer.quality, max(o.quality for o in round_)),
        "load": _ratio(1 - offer.load, max(1 - o.load for o in round_)),
        "reputation": _ratio(offer.reputation, max(o.reputation for o in round_)),
    }


def evaluate(offers: Iterable[Offer], weights: Weights = Weights(),
             direction: Direction = Direction.PROCUREMENT) -> list[Evaluation]:
    """Score every offer of one round; returned in the order given."""
    round_ = list(offers)
    seen = [o.bidder for o in round_]
    if len(set(seen)) != len(seen):
        raise InvalidInput(f"one offer per bidder in a round, got duplicates among {sorted(seen)}")
    w = weights.normalised()
    out = []
    for offer in round_:
        parts = _parts(offer, round_, direction)
        out.append(Evaluation(offer.bidder, sum(w[n] * parts[n] for n in _CRITERIA), parts))
    return out


def scores(offers: Iterable[Offer], weights: Weights = Weights(),
           direction: Direction = Direction.PROCUREMENT) -> dict[str, float]:
    """bidder -> score, the shape ``close(now, scores=...)`` of a sealed auction takes."""
    return {e.bidder: e.score for e in evaluate(offers, weights, direction)}


#: Scores within this of each other are level (sums of the same weights in another order).
_LEVEL = 1e-12


@dataclass(frozen=True)
class Scoring:
    """The round's evaluation as a function of the prices: what a second-score (Vickrey)
    auction inverts to price its award.  Pass it as ``close(now, scores=Scoring(...))``.

    ``scores(prices)`` re-evaluates the round with some bids' prices replaced (the other
    criteria do not depend on the price).  ``critical_price(bidder, rivals)`` is the price
    at which ``bidder``'s score would equal the best of its rivals' scores, everything
    else fixed.  Writing ``W`` for the normalised price weight, ``Q_k`` for the weighted
    sum of offer k's other parts, ``p_j`` for a rival's price and ``c`` for the best price
    among the offers other than ``bidder`` (the lowest in procurement, the highest in a
    sale; it fixes the price part's normalisation), the crossing with rival j is:

    * procurement (score falls with the price): ``a = p_j * (1 + (Q_i - Q_j) / W)``; if
      ``a <= c`` the crossing is ``a``, else ``W*c / (W*c/p_j + Q_j - Q_i)`` (unbounded
      when that denominator is <= 0); the critical price is the least crossing (it must
      beat every rival), ``None`` when unbounded;
    * sale (score rises with the price): ``a = p_j + c * (Q_j - Q_i) / W``; if ``a <= c``
      the crossing is ``max(a, 0)``, else ``W*p_j / (W + Q_i - Q_j)``; the critical price
      is the greatest crossing.

    With equal other parts (``Q_i = Q_j``) both reduce to ``p_j``: the classic second
    price.  A zero price weight makes the score ignore the price: unbounded (procurement)
    or 0 (sale) when ``bidder`` is not behind on the other criteria.
    """

    offers: tuple[Offer, ...]
    weights: Weights = Weights()
    direction: Direction = Direction.PROCUREMENT

    def scores(self, prices: dict[str, int] | None = None) -> dict[str, float]:
        """bidder -> score, with ``prices`` (bidder -> price) replacing the offered ones."""
        offers = [o if not prices or o.bidder not in prices
                  else Offer(o.bidder, prices[o.bidder], o.quality, o.load, o.reputation)
                  for o in self.offers]
        return scores(offers, self.weights, self.direction)

    def critical_price(self, bidder: str, rivals: Iterable[str]) -> float | None:
        rest = [o for o in self.offers if o.bidder != bidder]
        rival_set = set(rivals)
        beaten = [o for o in rest if o.bidder in rival_set]
        if not beaten:
            return None if self.direction is Direction.PROCUREMENT else 0.0
        w = self.weights.normalised()
        q = self._other_parts(w)
        sale = self.direction is Direction.SALE
        c = max(o.price for o in rest) if sale else min(o.price for o in rest)
        cross = self._sale_crossing if sale else self._procurement_crossing
        ts = [cross(w["price"], q[bidder], q[o.bidder], o.price, c) for o in beaten]
        if sale:
            return max(ts)
        finite = [t for t in ts if t is not None]
        return min(finite) if finite else None

    def _other_parts(self, w: dict[str, float]) -> dict[str, float]:
        """bidder -> the weighted sum of its non-price parts (they ignore the prices)."""
        return {e.bidder: sum(w[n] * e.parts[n] for n in _CRITERIA if n != "price")
                for e in evaluate(self.offers, self.weights, self.direction)}

    @staticmethod
    def _procurement_crossing(wp: float, qi: float, qj: float, pj: int, c: int) -> float | None:
        if wp == 0 or c == 0:            # the price part cannot (or, past 0, no longer) help
            ahead = qi - (qj + (wp if pj == 0 else 0.0))
            # level on score (to rounding): the tie goes to the lower price (rank_key), so
            # bidder i wins up to p_j and no further (unbounded only when strictly ahead)
            return None if ahead > _LEVEL else float(pj) if ahead >= -_LEVEL else 0.0
        a = pj * (1 + (qi - qj) / wp)
        if a <= c:
            return max(a, 0.0)
        d = wp * c / pj + qj - qi
        return None if d <= 0 else wp * c / d

    @staticmethod
    def _sale_crossing(wp: float, qi: float, qj: float, pj: int, c: int) -> float:
        if wp == 0:  # level on score: the tie goes to the higher price (rank_key)
            return 0.0 if qi > qj + _LEVEL else float(pj) if qi >= qj - _LEVEL else math.inf
        if c == 0:                       # every rival offers 0: any positive price beats them
            return 0.0 if qi >= qj else 1e-9
        a = pj + c * (qj - qi) / wp
        if a <= c:
            return max(a, 0.0)
        e = wp + qi - qj
        return math.inf if e <= 0 else wp * pj / e
