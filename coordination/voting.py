"""Voting: pure tally functions and a ballot box for the agents' collective choices.

The coordinator asks real agents through their ``vote(request)`` hook (see
:meth:`BallotBox.request`), casts what they answer into a :class:`BallotBox` and closes it
to get an :class:`Outcome`.  Everything here is pure: no I/O, the time comes from an
injected ``clock``, and the same ballots always give the same outcome.

Methods (``METHODS``) and the ballot shape each one reads (``ballot_shape(method)``)::

    plurality   single    most first choices
    majority    ranked    absolute majority of first choices, else a runoff of the top two
    approval    approval  most approvals
    weighted    single    most weight (weights per voter, e.g. reputation or stake)
    borda       ranked    Borda count, partial rankings allowed
    irv         ranked    instant runoff
    schulze     ranked    Condorcet method with Schulze's beatpath

Ballots (decisions where the spec is silent):

* single choice: an option name; a ranked list is also accepted and its first entry is the
  choice (so one set of ranked ballots can be tallied by every method); ``[]`` is blank.
* approval: a set, frozenset, list or tuple of option names; a bare name approves one.
* ranked: a list or tuple, best first; partial rankings are allowed and every unranked
  option is below all ranked ones (unranked options are tied with each other); a bare
  name ranks one option.  A set is refused for ranked methods: it has no order.
* unknown options, duplicates (in a ranking or an approval list) and wrong types raise
  :class:`~runtime.errors.InvalidInput` naming the voter.
* a blank ballot (``[]``, empty set) is a valid abstention: it counts for the quorum and
  in ``ballots_counted`` (hence lowers ``support``) but supports no option.  With no
  non-blank ballot (or, for weighted, no positive weight behind one) there is no winner.

Tie-breaking, the same rule for every method: a *priority order* over the options is
fixed before counting.  ``tie_break="lexicographic"`` (the default) orders options by
Python string order (code points); an integer seed ``s`` orders them by
``blake2b(f"{s}:{option}")`` (stable across processes and runs, never the salted builtin
``hash``), then by name.  Whenever options tie where one must be chosen (the winner, a
runoff finalist, Schulze's winner set), the one earliest in the order wins; when one
must be eliminated (IRV), the one latest in the order goes.  Every tie that was broken is
listed in ``tally["ties"]`` and ``Outcome.tie_broken_by`` names the rule
(``"lexicographic"`` or ``"seed:<s>"``); it is ``None`` when no tie decided anything.

Support (``Outcome.support``, in [0, 1]; what a negotiation compares to its threshold),
always over ``ballots_counted`` so that an abstention never helps agreement:
plurality: first choices of the winner / ballots; weighted: winner's weight / total
weight; approval: approvals of the winner / ballots; majority and irv: the winner's votes
in the deciding round / ballots (exhausted ballots count against); borda: winner's score /
the most any option could score; schulze: the winner's weakest head-to-head share
(min over rivals of voters ranking the winner above the rival, / ballots).

Quorum: ``Quorum(min_ballots, fraction)``, a count, a fraction of the electorate, or both
(``Quorum.of(3)``, ``Quorum.of(0.6)``, ``Quorum.of("60%")``); met when the ballots counted
(blank included; ballots, not weight) reach ``max(min_ballots, ceil(fraction * electorate
size))``.  When it is not met nothing is counted: the outcome has no winner,
``quorum_met=False`` and the tally only says what was required.

Weights (``weights={voter: w}``, e.g. reputation or stake in credits) apply to every
method: a voter of weight ``w`` counts exactly as ``w`` voters casting the same ballot
(plurality and approval counts, Borda points, IRV and majority rounds, Schulze's pairwise
matrix, and every support share are in weight; ``ballots_counted``, ``blank`` and the
quorum stay in ballots).  ``weighted`` is weighted plurality and requires weights; the
others are unweighted without them.  Weights are finite and >= 0 (0 silences a voter but
its ballot meets the quorum); every voter who casts needs one; weights naming a voter who
is not in the electorate (or, without an electorate, who cast no ballot) are refused as
InvalidInput naming them, since such a weight is most likely a typo.  Arithmetic is exact
(ints, or Fractions for non-whole weights), so ties are exact and the voters' order never
matters; the tally's JSON holds ints for whole numbers and floats otherwise.

Majority runoff with a second ballot: when every ballot is a bare name the first round
cannot say who the voters prefer between the two finalists, so the outcome has no winner,
``runoff_finalists`` set, and :func:`runoff` (or :meth:`BallotBox.open_runoff` for a live
vote) tallies the second ballot over the two finalists.  Method names: ``METHODS`` is the
vocabulary; ``METHOD_ALIASES`` maps other accepted names (``instant_runoff`` -> ``irv``);
:func:`canonical_method` is the one place that maps them, and outcomes carry the canonical
name.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from runtime.errors import ClosedError, Conflict, DeadlineExceeded, InvalidInput, PermissionDenied

__all__ = [
    "METHODS", "METHOD_ALIASES", "LEXICOGRAPHIC", "Outcome", "Quorum", "CastRecord",
    "BallotBox", "canonical_method", "ballot_shape", "priority_order", "tally", "runoff",
    "plurality", "majority", "approval", "weighted", "borda", "irv", "schulze",
]

LEXICOGRAPHIC = "lexicographic"
_SHAPES = {
    "plurality": "single", "majority": "ranked", "approval": "approval",
    "weighted": "single", "borda": "ranked", "irv": "ranked", "schulze": "ranked",
}
METHODS = tuple(_SHAPES)
#: other names accepted for a method, mapped here and nowhere else: ``instant_runoff``
#: (a pipeline step's long spelling) is ``irv``.
METHOD_ALIASES = {"instant_runoff": "irv"}
_SHAPE_HINT = {
    "single": "send one option name (or a ranking, whose first entry counts)",
    "approval": "send a list of the option names you approve",
    "ranked": "send a list of option names, best first (partial rankings are fine)",
}


# ---------------------------------------------------------------------------- outcome

@dataclass(frozen=True)
class Outcome:
    """The result of one vote; ``to_json()`` is what goes into the event trail."""

    winner: str | None
    method: str
    tally: dict[str, Any]
    ballots_counted: int
    quorum_met: bool
    tie_broken_by: str | None
    support: float = 0.0

    @property
    def runoff_finalists(self) -> tuple[str, ...] | None:
        """The two finalists when a ``majority`` vote on single-choice ballots needs a runoff."""
        return tuple(self.tally["finalists"]) if self.tally.get("runoff_needed") else None

    def to_json(self) -> dict[str, Any]:
        return {
            "winner": self.winner, "method": self.method, "tally": self.tally,
            "ballots_counted": self.ballots_counted, "quorum_met": self.quorum_met,
            "tie_broken_by": self.tie_broken_by, "support": self.support,
        }


@dataclass(frozen=True)
class Quorum:
    """At least ``min_ballots`` ballots and at least ``fraction`` of the electorate."""

    min_ballots: int = 0
    fraction: float = 0.0

    def __post_init__(self) -> None:
        n = self.min_ballots
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInput(f"quorum min_ballots must be an integer >= 0, got {n!r}")
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
            raise InvalidInput(f"quorum fraction must be within [0, 1], got {self.fraction!r}")

    def required(self, electorate_size: int | None) -> int:
        """Ballots needed; a fractional quorum needs to know the electorate."""
        if self.fraction == 0.0:
            return self.min_ballots
        if electorate_size is None:
            raise InvalidInput(
                f"a quorum of {self.fraction:.0%} of the electorate needs an electorate",
                hint="pass electorate= (or electorate_size=) or use Quorum(min_ballots=N)")
        # 1e-9: 0.3 * 10 is 3.0000000000000004 in floats, which must still need 3 ballots.
        return max(self.min_ballots, math.ceil(self.fraction * electorate_size - 1e-9))

    @classmethod
    def of(cls, value: Any) -> Quorum:
        """A quorum from its everyday spellings: ``None`` (none), an int ``N`` (at least N
        ballots), a float in (0, 1] (that fraction of the electorate; ``1.0`` is everyone),
        a ``"60%"`` string, ``{"min_ballots": N, "fraction": f}``, or a Quorum."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict) and set(value) <= {"min_ballots", "fraction"}:
            return cls(value.get("min_ballots", 0), value.get("fraction", 0.0))
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(min_ballots=value)
        if isinstance(value, float) and 0.0 < value <= 1.0:
            return cls(fraction=value)
        if isinstance(value, str) and value.endswith("%"):
            try:
                return cls(fraction=float(value[:-1]) / 100)
            except ValueError:
                pass
        raise InvalidInput(f"quorum must be a ballot count or a fraction of the electorate, "
                           f"got {value!r}",
                           hint='pass an int (ballots), a float in (0, 1], "60%" or '
                                '{"min_ballots": N, "fraction": f}')

    def to_json(self) -> dict[str, Any]:
        return {"min_ballots": self.min_ballots, "fraction": self.fraction}


# ---------------------------------------------------------------------------- ballots

def canonical_method(method: str) -> str:
    """The name in ``METHODS`` for ``method`` or one of its aliases (``METHOD_ALIASES``)."""
    name = METHOD_ALIASES.get(method, method) if isinstance(method, str) else method
    if name not in _SHAPES:
        raise InvalidInput(f"unknown voting method {method!r}",
                           hint=f"use one of {', '.join(METHODS)}")
    return name


def ballot_shape(method: str) -> str:
    """``"single"``, ``"approval"`` or ``"ranked"``: what a voter should send for ``method``."""
    return _SHAPES[canonical_method(method)]


def _check_options(options: Iterable[str]) -> tuple[str, ...]:
    opts = tuple(options)
    if not opts:
        raise InvalidInput("a vote needs at least one option",
                           hint="pass the options to choose from")
    bad = [o for o in opts if not isinstance(o, str) or not o]
    if bad:
        raise InvalidInput(f"options must be non-empty strings, got {bad!r}")
    if len(set(opts)) != len(opts):
        dups = sorted({o for o in opts if opts.count(o) > 1})
        raise InvalidInput(f"options listed twice: {dups}", hint="list every option once")
    return opts


def _entries(voter: Any, ballot: Any, shape: str) -> tuple[Any, ...]:
    """The ballot's entries in order; refuses types that do not fit the shape."""
    if isinstance(ballot, str):
        return (ballot,)
    allowed: tuple[type, ...] = (list, tuple)
    if shape == "approval":
        allowed = (list, tuple, set, frozenset)
    if not isinstance(ballot, allowed):
        raise InvalidInput(f"voter {voter!r} cast a {type(ballot).__name__} for a {shape} ballot",
                           hint=_SHAPE_HINT[shape], voter=str(voter))
    return tuple(sorted(ballot, key=str)) if isinstance(ballot, (set, frozenset)) else tuple(ballot)


def _validated(known: frozenset[str], voter: Any, ballot: Any, shape: str) -> tuple[str, ...]:
    items = _entries(voter, ballot, shape)
    # non-strings first: an unhashable entry (a dict from a buggy vote() hook) would raise
    # TypeError on the membership test below, and must be refused like any bad ballot
    unknown = [o for o in items if not isinstance(o, str) or o not in known]
    if unknown:
        raise InvalidInput(f"voter {voter!r} voted for unknown option(s) {unknown!r}",
                           hint=f"the options are {sorted(known)}", voter=str(voter))
    if len(set(items)) != len(items):
        dups = sorted({o for o in items if items.count(o) > 1})
        raise InvalidInput(f"voter {voter!r} listed {dups} more than once",
                           hint="name every option at most once per ballot", voter=str(voter))
    return items


def _normalize(options: tuple[str, ...], method: str, ballots: Mapping[Any, Any]) -> list[Any]:
    """Ballots as the counters read them: str|None (single), frozenset, or tuple (ranked)."""
    shape, known = ballot_shape(method), frozenset(options)
    out: list[Any] = []
    for voter, ballot in ballots.items():
        items = _validated(known, voter, ballot, shape)
        if shape == "single":
            out.append(items[0] if items else None)
        else:
            out.append(frozenset(items) if shape == "approval" else items)
    return out


def _as_json_ballot(ballot: Any) -> Any:
    """A validated ballot in JSON form (sets become sorted lists, tuples lists)."""
    if isinstance(ballot, str):
        return ballot
    return sorted(ballot) if isinstance(ballot, (set, frozenset)) else list(ballot)


def _checked_weights(weights: Mapping[Any, float] | None) -> dict[Any, float]:
    if weights is None:
        raise InvalidInput("the weighted method needs weights per voter",
                           hint="pass weights={voter: weight} (e.g. reputation or stake)")
    for voter, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InvalidInput(f"voter {voter!r} has weight {w!r}; a weight must be a finite "
                               "number >= 0",
                               hint="weight 0 silences a voter; negative weights are refused",
                               voter=str(voter))
    return dict(weights)


# ---------------------------------------------------------------------------- ties

def priority_order(options: Iterable[str], tie_break: str | int = LEXICOGRAPHIC) -> tuple[str, ...]:
    """The order in which ties are won (first wins, last is eliminated first)."""
    opts = list(options)
    if tie_break == LEXICOGRAPHIC:
        return tuple(sorted(opts))
    if isinstance(tie_break, int) and not isinstance(tie_break, bool):
        def key(o: str) -> tuple[bytes, str]:
            return hashlib.blake2b(f"{tie_break}:{o}".encode(), digest_size=8).digest(), o
        return tuple(sorted(opts, key=key))
    raise InvalidInput(f"tie_break must be {LEXICOGRAPHIC!r} or an integer seed, got {tie_break!r}")


class _Ties:
    """Breaks ties by the priority order and remembers each one it broke."""

    def __init__(self, options: tuple[str, ...], tie_break: str | int) -> None:
        self.rank = {o: i for i, o in enumerate(priority_order(options, tie_break))}
        self.rule = LEXICOGRAPHIC if tie_break == LEXICOGRAPHIC else f"seed:{tie_break}"
        self.broken: list[dict[str, Any]] = []

    def pick(self, tied: Iterable[str], at: str, *, last: bool = False) -> str:
        ordered = sorted(tied, key=self.rank.__getitem__)
        chosen = ordered[-1] if last else ordered[0]
        if len(ordered) > 1:
            self.broken.append({"at": at, "tied": ordered, "chosen": chosen})
        return chosen

    def top(self, scores: Mapping[str, float], at: str) -> str:
        best = max(scores.values())
        return self.pick([o for o, s in scores.items() if s == best], at)

    @property
    def broken_by(self) -> str | None:
        return self.rule if self.broken else None


# ---------------------------------------------------------------------------- counters

@dataclass
class _Count:
    """What a counter returns: the winner, its JSON tally and the winner's support."""

    winner: str | None
    tally: dict[str, Any]
    support: float = 0.0


_Num = int | Fraction  # an exact count of weight (ints when every weight is a whole number)


@dataclass
class _Ctx:
    """The validated ballots of one count, each with its exact weight (1 when unweighted)."""

    options: tuple[str, ...]
    ballots: list[Any]
    ties: _Ties
    weights: list[_Num]
    single_choice: bool = False

    @property
    def blank(self) -> int:
        return sum(1 for b in self.ballots if not b)

    @property
    def total(self) -> _Num:
        return sum(self.weights)

    @property
    def cast_weight(self) -> _Num:
        """The weight behind non-blank ballots: 0 means nothing was chosen at all."""
        return sum(w for b, w in zip(self.ballots, self.weights) if b)

    def weighted(self) -> Iterable[tuple[Any, _Num]]:
        return zip(self.ballots, self.weights)

    def share(self, votes: _Num) -> float:
        return float(votes / self.total) if self.total else 0.0


def _first_choices(ctx: _Ctx, continuing: Iterable[str]) -> tuple[dict[str, _Num], _Num]:
    """Per continuing option, the weight of ballots whose best continuing choice it is;
    and the weight of the (non-blank) ballots that rank none of them (exhausted)."""
    counts: dict[str, _Num] = dict.fromkeys(continuing, 0)
    exhausted: _Num = 0
    for ballot, w in ctx.weighted():
        top = next((o for o in ballot if o in counts), None)
        if top is None:
            exhausted += w if ballot else 0
        else:
            counts[top] += w
    return counts, exhausted


def _count_plurality(ctx: _Ctx) -> _Count:
    counts: dict[str, _Num] = dict.fromkeys(ctx.options, 0)
    for choice, w in ctx.weighted():
        if choice is not None:
            counts[choice] += w
    if not any(counts.values()):
        return _Count(None, {"counts": counts, "blank": ctx.blank})
    winner = ctx.ties.top(counts, "winner")
    return _Count(winner, {"counts": counts, "blank": ctx.blank}, ctx.share(counts[winner]))


def _count_weighted(ctx: _Ctx) -> _Count:
    """Weighted plurality, kept as its own method with its own tally keys."""
    count = _count_plurality(ctx)
    info = {"weights": count.tally["counts"], "total_weight": ctx.total, "blank": ctx.blank}
    return _Count(count.winner, info, count.support)


def _count_approval(ctx: _Ctx) -> _Count:
    counts: dict[str, _Num] = dict.fromkeys(ctx.options, 0)
    for approved, w in ctx.weighted():
        for o in approved:
            counts[o] += w
    if not any(counts.values()):
        return _Count(None, {"approvals": counts, "blank": ctx.blank})
    winner = ctx.ties.top(counts, "winner")
    return _Count(winner, {"approvals": counts, "blank": ctx.blank}, ctx.share(counts[winner]))


def _finalists(ties: _Ties, counts: dict[str, _Num]) -> list[str]:
    """The top two by first choices; a tie matters only when it leaves a place open."""
    best = max(counts.values())
    first = [o for o, c in counts.items() if c == best]
    if len(first) == 2:
        return sorted(first, key=ties.rank.__getitem__)
    leader = ties.pick(first, "first finalist")
    rest = {o: c for o, c in counts.items() if o != leader}
    return [leader, ties.top(rest, "second finalist")]


def _count_majority(ctx: _Ctx) -> _Count:
    first, _ = _first_choices(ctx, ctx.options)
    rounds: list[dict[str, Any]] = [{"counts": first}]
    valid = sum(first.values())
    if valid == 0:
        return _Count(None, {"rounds": rounds, "blank": ctx.blank})
    leader = max(first, key=first.__getitem__)
    if 2 * first[leader] > valid:                   # a majority is unique: no tie possible
        return _Count(leader, {"rounds": rounds, "blank": ctx.blank}, ctx.share(first[leader]))
    finalists = _finalists(ctx.ties, first)
    info: dict[str, Any] = {"rounds": rounds, "blank": ctx.blank, "finalists": finalists}
    if ctx.single_choice:
        return _Count(None, {**info, "runoff_needed": True})
    second, exhausted = _first_choices(ctx, finalists)
    rounds.append({"counts": second, "exhausted": exhausted})
    winner = ctx.ties.top(second, "runoff winner")
    return _Count(winner, {**info, "runoff_needed": False}, ctx.share(second[winner]))


def _count_borda(ctx: _Ctx) -> _Count:
    n = len(ctx.options)
    doubled: dict[str, _Num] = dict.fromkeys(ctx.options, 0)  # doubled points: exact ties
    for ballot, w in ctx.weighted():
        if not ballot:                              # a blank ballot abstains: no points
            continue
        for i, option in enumerate(ballot):
            doubled[option] += 2 * (n - 1 - i) * w
        rest = n - 1 - len(ballot)                  # doubled mean of the positions left
        for option in set(ctx.options).difference(ballot):
            doubled[option] += rest * w
    scores = {o: Fraction(d, 2) for o, d in doubled.items()}
    if ctx.cast_weight == 0:
        return _Count(None, {"scores": scores, "blank": ctx.blank})
    winner = ctx.ties.top(doubled, "winner")
    most = (n - 1) * ctx.total
    support = float(scores[winner] / most) if n > 1 else ctx.share(ctx.cast_weight)
    return _Count(winner, {"scores": scores, "blank": ctx.blank}, support)


def _irv_eliminate(ctx: _Ctx, counts: dict[str, _Num], round_no: int) -> list[str]:
    """Options that leave after this round: all with no vote at once (that changes no
    count, so it needs no tie-break), else the one with fewest votes."""
    zero = [o for o, c in counts.items() if c == 0]
    if zero and len(zero) < len(counts):
        return zero
    fewest = min(counts.values())
    tied = [o for o, c in counts.items() if c == fewest]
    return [ctx.ties.pick(tied, f"elimination in round {round_no}", last=True)]


def _count_irv(ctx: _Ctx) -> _Count:
    continuing = list(ctx.options)
    rounds: list[dict[str, Any]] = []
    if ctx.cast_weight == 0:
        return _Count(None, {"rounds": rounds, "blank": ctx.blank})
    while True:
        counts, exhausted = _first_choices(ctx, continuing)
        rounds.append({"counts": counts, "exhausted": exhausted, "eliminated": []})
        leader = max(counts, key=counts.__getitem__)
        if 2 * counts[leader] > sum(counts.values()) or len(continuing) == 1:
            return _Count(leader, {"rounds": rounds, "blank": ctx.blank}, ctx.share(counts[leader]))
        out = _irv_eliminate(ctx, counts, len(rounds))
        rounds[-1]["eliminated"] = out
        continuing = [o for o in continuing if o not in out]


_Matrix = dict[str, dict[str, _Num]]


def _pairwise(ctx: _Ctx) -> _Matrix:
    """d[a][b]: weight of ballots ranking a above b (ranked is above every unranked one)."""
    d: _Matrix = {a: {b: 0 for b in ctx.options if b != a} for a in ctx.options}
    for ballot, w in ctx.weighted():
        pos = {o: i for i, o in enumerate(ballot)}
        below = len(ballot)
        for a in ballot:
            for b in ctx.options:
                if b != a and pos[a] < pos.get(b, below):
                    d[a][b] += w
    return d


def _strongest_paths(options: tuple[str, ...], d: _Matrix) -> _Matrix:
    """Schulze's widest paths (winning-votes strength), Floyd-Warshall style."""
    p = {a: {b: (d[a][b] if d[a][b] > d[b][a] else 0) for b in d[a]} for a in options}
    for i in options:
        for j in options:
            if j == i:
                continue
            for k in options:
                if k != i and k != j:
                    p[j][k] = max(p[j][k], min(p[j][i], p[i][k]))
    return p


def _count_schulze(ctx: _Ctx) -> _Count:
    d = _pairwise(ctx)
    p = _strongest_paths(ctx.options, d)
    best = [a for a in ctx.options if all(p[a][b] >= p[b][a] for b in p[a])]
    condorcet = next((a for a in ctx.options if all(d[a][b] > d[b][a] for b in d[a])), None)
    info = {"pairwise": d, "strongest_paths": p, "schulze_winners": best,
            "condorcet_winner": condorcet, "blank": ctx.blank}
    if ctx.cast_weight == 0:
        return _Count(None, info)
    winner = ctx.ties.pick(best, "winner")
    weakest = min(d[winner].values(), default=ctx.cast_weight)
    return _Count(winner, info, ctx.share(weakest))


_COUNTERS: dict[str, Callable[[_Ctx], _Count]] = {
    "plurality": _count_plurality, "majority": _count_majority, "approval": _count_approval,
    "weighted": _count_weighted, "borda": _count_borda, "irv": _count_irv,
    "schulze": _count_schulze,
}


# ---------------------------------------------------------------------------- tally

def _exact(w: float) -> _Num:
    """A weight as an exact number: sums are then exact and independent of the voters'
    order (anonymity bit for bit), and whole weights stay fast plain ints."""
    if isinstance(w, int):
        return w
    return int(w) if w.is_integer() else Fraction(w)


def _jsonable(value: Any) -> Any:
    """The tally with exact counts turned into JSON numbers (whole ones as ints)."""
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _voter_weights(method: str, ballots: Mapping[Any, Any], weights: Mapping[Any, float] | None,
                   electorate: frozenset[Any] | None) -> list[_Num]:
    """Each ballot's exact weight, in ballot order; 1 each when the vote is unweighted."""
    if weights is None and method != "weighted":
        return [1] * len(ballots)
    known = _checked_weights(weights)
    allowed = electorate if electorate is not None else frozenset(ballots)
    strangers = sorted((v for v in known if v not in allowed), key=str)
    if strangers:
        who = "in the electorate" if electorate is not None else "among the voters who cast"
        raise InvalidInput(f"weights name {strangers}, who are not {who}",
                           hint="weigh only voters of this vote (a typo in a voter id?)",
                           voters=[str(v) for v in strangers])
    missing = [v for v in ballots if v not in known]
    if missing:
        raise InvalidInput(f"voter {missing[0]!r} has no weight in a weighted vote",
                           hint="give every voter a weight (0 silences one)", voter=str(missing[0]))
    return [_exact(known[v]) for v in ballots]


def _check_electorate(ballots: Mapping[Any, Any], electorate: frozenset[Any] | None) -> None:
    if electorate is None:
        return
    outsiders = sorted((v for v in ballots if v not in electorate), key=str)
    if outsiders:
        raise InvalidInput(f"ballots from {outsiders}, who are not in the electorate",
                           hint="count only the electors' ballots", voters=[str(v) for v in outsiders])


def _single_choice(ballots: Mapping[Any, Any], weights: list[_Num]) -> bool:
    """Every ballot that chooses anything (non-blank, positive weight) is a bare name: a
    runoff cannot be computed from them, it needs a second ballot."""
    choosing = [b for b, w in zip(ballots.values(), weights) if b and w]
    return bool(choosing) and all(isinstance(b, str) for b in choosing)


def _quorum_failed(method: str, counted: int, needed: int) -> Outcome:
    return Outcome(None, method, {"quorum_required": needed, "ballots": counted}, counted,
                   False, None)


def _outcome(method: str, count: _Count, ties: _Ties, counted: int) -> Outcome:
    tally_json = _jsonable({**count.tally, "ties": ties.broken})
    return Outcome(count.winner, method, tally_json, counted, True, ties.broken_by, count.support)


def tally(
    method: str,
    options: Iterable[str],
    ballots: Mapping[Any, Any],
    *,
    weights: Mapping[Any, float] | None = None,
    tie_break: str | int = LEXICOGRAPHIC,
    quorum: Quorum | None = None,
    electorate_size: int | None = None,
    electorate: Iterable[Any] | None = None,
) -> Outcome:
    """Count ``ballots`` (voter -> ballot) over ``options`` with ``method``.

    Validates every ballot first (InvalidInput naming the voter), then the weights, then
    checks the quorum, then counts.  ``weights`` (voter -> weight) apply to every method:
    a voter of weight w counts as w voters casting the same ballot; ``weighted`` requires
    them.  ``electorate`` (who may vote) bounds who may cast and be weighed, and gives
    the electorate size for a fractional quorum.  Ties follow ``tie_break``.
    """
    method = canonical_method(method)
    opts = _check_options(options)
    normalized = _normalize(opts, method, ballots)
    voters = None if electorate is None else frozenset(electorate)
    _check_electorate(ballots, voters)
    vote_weights = _voter_weights(method, ballots, weights, voters)
    ties = _Ties(opts, tie_break)
    size = electorate_size if voters is None else len(voters)
    needed = (quorum or Quorum()).required(size)
    if len(normalized) < needed:
        return _quorum_failed(method, len(normalized), needed)
    ctx = _Ctx(opts, normalized, ties, vote_weights, _single_choice(ballots, vote_weights))
    return _outcome(method, _COUNTERS[method](ctx), ties, len(normalized))


def runoff(
    first: Outcome,
    ballots: Mapping[Any, Any],
    *,
    weights: Mapping[Any, float] | None = None,
    tie_break: str | int = LEXICOGRAPHIC,
    quorum: Quorum | None = None,
    electorate_size: int | None = None,
    electorate: Iterable[Any] | None = None,
) -> Outcome:
    """The second round of a ``majority`` vote whose first round said "runoff needed".

    ``ballots`` are the second-round ballots, over the two finalists only (a name, or a
    ranking of the finalists whose first entry counts; ``[]`` abstains).  The finalist with
    more (weighted) votes wins; a tie is decided by the same priority order as the first
    round.  The outcome is a ``majority`` outcome whose ``tally["rounds"]`` holds both
    rounds (the second with ``exhausted``: the weight of blank second ballots) and whose
    support is the winner's share of the second-round ballots.  Keywords as
    :func:`tally`; pass the first round's ``tie_break``.
    """
    finalists = first.runoff_finalists
    if first.method != "majority" or finalists is None:
        raise InvalidInput(f"a runoff follows a majority vote that needs one; this {first.method} "
                           f"outcome has winner {first.winner!r} and no finalists",
                           hint="call runoff() only when outcome.runoff_finalists is set")
    second = tally("plurality", finalists, ballots, weights=weights, tie_break=tie_break,
                   quorum=quorum, electorate_size=electorate_size, electorate=electorate)
    if not second.quorum_met:
        return replace(second, method="majority")
    counts = second.tally["counts"]
    blank = sum(w for v, w in _runoff_weights(ballots, weights).items() if not ballots[v])
    rounds = [*first.tally["rounds"], {"counts": counts, "exhausted": _jsonable(blank)}]
    ties = [*first.tally["ties"], *[{**t, "at": "runoff winner"} for t in second.tally["ties"]]]
    info = {"rounds": rounds, "blank": second.tally["blank"], "finalists": list(finalists),
            "runoff_needed": False, "second_ballot": True, "ties": ties}
    broken_by = second.tie_broken_by or first.tie_broken_by
    return Outcome(second.winner, "majority", info, second.ballots_counted, True, broken_by,
                   second.support)


def _runoff_weights(ballots: Mapping[Any, Any],
                    weights: Mapping[Any, float] | None) -> dict[Any, _Num]:
    if weights is None:
        return dict.fromkeys(ballots, 1)
    return {v: _exact(weights[v]) for v in ballots}


def plurality(options: Iterable[str], ballots: Mapping[Any, Any], **kw: Any) -> Outcome:
    """Plurality: the option named first by most ballots wins.

    Single-choice ballots (a ranking counts its first entry).  Tie for most votes: the
    priority order decides (lexicographic by default).  No winner if every ballot is
    blank.  Keywords as :func:`tally`.
    """
    return tally("plurality", options, ballots, **kw)


def majority(options: Iterable[str], ballots: Mapping[Any, Any], **kw: Any) -> Outcome:
    """Absolute majority with runoff (two-round system).

    An option named first by more than half of the non-blank ballots wins at once.  Else
    the top two by first choices go to a runoff; ties for a finalist's place are decided
    by the priority order (two options tied for first are simply both finalists).  If
    every ballot is a single choice (a bare string) the second round cannot be computed:
    the outcome has no winner, ``tally["runoff_needed"] = True`` and
    ``tally["finalists"]`` (also ``Outcome.runoff_finalists``) name the two options for
    the caller to put to a second vote, counted by :func:`runoff`.  Otherwise the runoff is computed from the same
    ballots: each counts for the finalist it ranks higher; a ballot ranking neither is
    exhausted (a bare string is a ranking of one).  A runoff tie: the priority order
    decides.  Keywords as :func:`tally`.
    """
    return tally("majority", options, ballots, **kw)


def approval(options: Iterable[str], ballots: Mapping[Any, Any], **kw: Any) -> Outcome:
    """Approval: the option approved by most ballots wins.

    Ballots are sets (or lists) of approved options.  Tie for most approvals: the
    priority order decides.  No winner if nobody approved anything.  Keywords as
    :func:`tally`.
    """
    return tally("approval", options, ballots, **kw)


def weighted(options: Iterable[str], ballots: Mapping[Any, Any], weights: Mapping[Any, float],
             **kw: Any) -> Outcome:
    """Weighted plurality: each voter's single choice counts the voter's weight.

    ``weights`` maps every voter to a finite weight >= 0 (0 allowed: the ballot counts
    for the quorum but adds nothing; negative refused).  Sums are exact.
    Tie for most weight: the priority order decides.  No winner if no positive weight
    backs a choice.  Other keywords as :func:`tally`.
    """
    return tally("weighted", options, ballots, weights=weights, **kw)


def borda(options: Iterable[str], ballots: Mapping[Any, Any], **kw: Any) -> Outcome:
    """Borda count over n options: ranked position i (0 = best) scores n-1-i.

    Partial rankings: the unranked options share the remaining positions equally (each
    gets their average), so every non-blank ballot hands out the same total; a blank
    ballot hands out nothing.  Scores are summed doubled, as integers, so ties are
    exact.  Tie for the highest score: the priority order decides.  Keywords as
    :func:`tally`.
    """
    return tally("borda", options, ballots, **kw)


def irv(options: Iterable[str], ballots: Mapping[Any, Any], **kw: Any) -> Outcome:
    """Instant runoff: each round counts every ballot for its best continuing option.

    An option with more than half of the continuing (non-exhausted) ballots wins, as
    does the last one left.  Otherwise all options with no vote leave together (that
    changes no count), or, when every option has a vote, the one with fewest leaves; a
    tie for fewest is broken by the priority order: the tied option latest in the order
    leaves.  ``tally["rounds"]`` holds each round's counts, exhausted ballots and
    eliminations.  Keywords as :func:`tally`.
    """
    return tally("irv", options, ballots, **kw)


def schulze(options: Iterable[str], ballots: Mapping[Any, Any], **kw: Any) -> Outcome:
    """Condorcet with Schulze's beatpath method.

    ``tally["pairwise"][a][b]`` counts the ballots ranking a above b (a ranked option is
    above every unranked one; two unranked options are not compared).  A direct link's
    strength is its winning votes (d[a][b] if d[a][b] > d[b][a], else 0);
    ``tally["strongest_paths"]`` holds the widest paths.  The Schulze winners are the
    options whose path to every rival is at least as strong as the rival's path back; a
    Condorcet winner (``tally["condorcet_winner"]``) is always the only one.  Several
    Schulze winners: the priority order decides.  Keywords as :func:`tally`.
    """
    return tally("schulze", options, ballots, **kw)


# ---------------------------------------------------------------------------- ballot box

@dataclass(frozen=True)
class CastRecord:
    """One cast, in the order cast: the event trail of a vote."""

    voter: str
    ballot: Any
    at: float
    replaced: bool

    def to_json(self) -> dict[str, Any]:
        return {"voter": self.voter, "ballot": self.ballot, "at": self.at,
                "replaced": self.replaced}


class BallotBox:
    """Collects one ballot per voter until closed or past its deadline.

    A re-vote replaces the voter's earlier ballot (it never adds).  Ballots are validated
    when cast, so an agent learns at once that its ballot is wrong.  ``deadline`` is a
    time on ``clock``'s scale; casting at or after it raises DeadlineExceeded, and
    ballots cast before it still count when ``close()`` is called.
    """

    def __init__(
        self,
        question: str,
        options: Iterable[str],
        method: str,
        electorate: Iterable[str] | None = None,
        quorum: Quorum | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        weights: Mapping[str, float] | None = None,
        tie_break: str | int = LEXICOGRAPHIC,
    ) -> None:
        self.question = question
        self.options = _check_options(options)
        self.method = canonical_method(method)
        self._shape = ballot_shape(method)
        self.electorate = None if electorate is None else frozenset(electorate)
        if self.electorate is not None and not self.electorate:
            raise InvalidInput(f"ballot box {question!r} has an empty electorate: "
                               "nobody could vote",
                               hint="name the electors, or pass electorate=None for an open vote")
        self.quorum = quorum or Quorum()
        self.deadline = deadline
        self._clock = clock
        self._weights = self._check_box_weights(weights)
        self._tie_break = tie_break
        priority_order(self.options, tie_break)          # refuse a bad tie_break now
        self.quorum.required(self._electorate_size)       # and a quorum it cannot check
        self._ballots: dict[str, Any] = {}
        self._log: list[CastRecord] = []
        self._outcome: Outcome | None = None
        self._first: Outcome | None = None     # set on a runoff box: the first round

    def _check_box_weights(self, weights: Mapping[str, float] | None) -> dict[str, float] | None:
        """Weights apply to every method; given, they must weigh exactly the electorate."""
        if weights is None and self.method != "weighted":
            return None
        known = _checked_weights(weights)
        if self.electorate is None:
            return known
        strangers = sorted(set(known) - self.electorate, key=str)
        if strangers:
            raise InvalidInput(f"weights name {strangers}, who are not in the electorate of "
                               f"{self.question!r}", hint="weigh only electors (a typo?)",
                               voters=[str(v) for v in strangers])
        missing = sorted(self.electorate - set(known))
        if missing:
            raise InvalidInput(f"electors {missing} have no weight in a weighted vote",
                               hint="give every elector a weight (0 silences one)")
        return known

    @property
    def _electorate_size(self) -> int | None:
        return None if self.electorate is None else len(self.electorate)

    @property
    def closed(self) -> bool:
        return self._outcome is not None

    @property
    def outcome(self) -> Outcome | None:
        return self._outcome

    @property
    def ballots(self) -> dict[str, Any]:
        """Current ballot per voter (JSON form), in first-cast order."""
        return dict(self._ballots)

    @property
    def log(self) -> tuple[CastRecord, ...]:
        return tuple(self._log)

    def expired(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def request(self) -> dict[str, Any]:
        """What the coordinator hands each agent's ``vote(request)`` hook."""
        return {"question": self.question, "options": list(self.options), "method": self.method,
                "shape": self._shape, "deadline": self.deadline,
                "round": 1 if self._first is None else 2}

    def cast(self, voter: str, ballot: Any) -> CastRecord:
        """Record ``voter``'s ballot, replacing any earlier one; returns the log record."""
        now = self._check_open(voter)
        items = _validated(frozenset(self.options), voter, ballot, self._shape)
        if self._weights is not None and voter not in self._weights:
            raise InvalidInput(f"voter {voter!r} has no weight in this weighted vote",
                               hint="add the voter to weights= when opening the box", voter=voter)
        stored = ballot if isinstance(ballot, str) else _as_json_ballot(items)
        record = CastRecord(voter, stored, now, replaced=voter in self._ballots)
        self._ballots[voter] = stored
        self._log.append(record)
        return record

    def _check_open(self, voter: str) -> float:
        if self.closed:
            raise ClosedError(f"ballot box {self.question!r} is closed; {voter!r} voted too late",
                              hint="open a new BallotBox for a new vote")
        now = self._clock()
        if self.deadline is not None and now >= self.deadline:
            raise DeadlineExceeded(
                f"ballot box {self.question!r} passed its deadline {self.deadline} (now {now}); "
                f"{voter!r} voted too late", hint="vote before the deadline or open a new box")
        if not isinstance(voter, str) or not voter:
            raise InvalidInput(f"a voter id must be a non-empty string, got {voter!r}")
        if self.electorate is not None and voter not in self.electorate:
            raise PermissionDenied(f"{voter!r} is not in the electorate of {self.question!r}",
                                   hint="only electors named when the box was opened may vote")
        return now

    def close(self) -> Outcome:
        """Stop accepting ballots and count them; a second call returns the same outcome."""
        if self._outcome is None:
            self._outcome = self._count()
        return self._outcome

    def _count(self) -> Outcome:
        weights = self._weights
        if weights is not None and self.electorate is None:  # an open vote weighs who cast
            weights = {v: w for v, w in weights.items() if v in self._ballots}
        kw = {"weights": weights, "tie_break": self._tie_break, "quorum": self.quorum,
              "electorate": self.electorate}
        if self._first is not None:
            return runoff(self._first, self._ballots, **kw)
        return tally(self.method, self.options, self._ballots, **kw)

    def open_runoff(self, deadline: float | None = None) -> BallotBox:
        """The second ballot of a closed ``majority`` vote that needs a runoff: a box over
        the two finalists with the same electorate, weights, quorum, tie-break and clock;
        its ``close()`` gives the final outcome (see :func:`runoff`).  Ask the agents again
        with its ``request()`` (``round`` 2, shape ``single``)."""
        first = self._outcome
        if first is None or first.runoff_finalists is None:
            raise Conflict(f"ballot box {self.question!r} needs no runoff "
                           f"({'still open' if first is None else f'winner {first.winner!r}'})",
                           hint="close() the box and open a runoff only when "
                                "outcome.runoff_finalists is set")
        box = BallotBox(f"{self.question} (runoff)", first.runoff_finalists, "majority",
                        self.electorate, self.quorum, deadline, self._clock,
                        weights=self._weights, tie_break=self._tie_break)
        box._first, box._shape = first, "single"
        return box

    def to_json(self) -> dict[str, Any]:
        return {
            "question": self.question, "options": list(self.options), "method": self.method,
            "electorate": None if self.electorate is None else sorted(self.electorate),
            "deadline": self.deadline, "ballots": self.ballots,
            "log": [r.to_json() for r in self._log],
            "outcome": None if self._outcome is None else self._outcome.to_json(),
        }
