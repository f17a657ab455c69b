"""Reputation per (agent, capability): how reliably an agent has done this kind of work.

Each finished contract is an :class:`Observation` of three signals in [0, 1]: success
(1 completed, 0 breached), timeliness (1 on time, 0 late) and quality (the delivered
quality a grader measured; None when nothing measured it: no grader, or no result to
grade because the attempt failed).  Each signal is a decaying weighted average::

    signal = (prior_weight * prior + sum(w_i * x_i)) / (prior_weight + sum(w_i))
    w_i    = 0.5 ** (age_i / half_life)

and the reputation is the weighted mean of the three signals (:class:`ReputationConfig`
``weights``).  The quality signal averages only the observations that carry a quality
(issue 18: an ungraded delivery used to count as quality 1.0, and a failure as 0; now the
quality of an agent nobody graded stays at the prior, and a failure weighs on success,
not twice).  :meth:`Reputation.graded` is the measured record (count and plain mean of
the graded qualities kept), which caps what an agent may claim in a bid
(coordination.grading).  The prior never decays, so an agent unseen for a long time drifts back
towards the prior rather than keeping an old verdict forever, and a new agent starts at
the prior (default 0.5: neither trusted nor distrusted).  Only the ``window`` most recent
observations per key are kept (bounded memory for long-lived daemons).

The *weight* of the evidence decays too (:meth:`Reputation.weight`, the sum of the
observations' decay weights): a reliability gate asks for a minimum weight rather than a
raw count, so that old history stops dominating and a gated agent's bad record fades.

:class:`Probation` is the way back from a gate, a circuit breaker per (agent,
capability) in three states::

    closed --failure while the reputation is below the gate--> open(until now + cooldown)
    open --cooldown over--> half_open: may win ONE task (a trial)
    half_open --trial succeeded--> closed (cooldown back to base)
    half_open --trial failed--> open (cooldown x 2, capped)

Pure: every query takes ``now``; nothing is read or written but this object.  The
snapshot is JSON-able and :meth:`Reputation.from_snapshot` rebuilds the same state.
Observations stamped after ``now`` count as age 0 (clocks of different processes).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from coordination.contracts import BreachReason, Contract, ContractState
from runtime.errors import InvalidInput

__all__ = ["Observation", "ReputationConfig", "Reputation", "observation_from_contract", "Probation"]


def _unit(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"expected {what} in [0, 1] (or a bool), got: {value!r}")
    return float(value)


@dataclass(frozen=True)
class Observation:
    at: float
    success: float
    timely: float
    quality: float | None  # None: not graded (unknown)

    def __post_init__(self) -> None:
        for name in ("success", "timely", "quality"):
            if name == "quality" and self.quality is None:
                continue
            object.__setattr__(self, name, _unit(getattr(self, name), name))

    def to_json(self) -> list[float | None]:
        return [self.at, self.success, self.timely, self.quality]


@dataclass(frozen=True)
class ReputationConfig:
    """half_life in seconds (default 1 h); window: observations kept per key (default 50);
    prior and prior_weight: the starting belief and how many observations it is worth;
    weights of (success, timely, quality)."""

    half_life: float = 3600.0
    window: int = 50
    prior: float = 0.5
    prior_weight: float = 1.0
    weights: tuple[float, float, float] = (0.5, 0.2, 0.3)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.half_life) and self.half_life > 0):
            raise InvalidInput(f"expected half_life > 0 seconds, got: {self.half_life!r}")
        if not (isinstance(self.window, int) and self.window >= 1):
            raise InvalidInput(f"expected window >= 1 observations, got: {self.window!r}")
        _unit(self.prior, "prior")
        if not (math.isfinite(self.prior_weight) and self.prior_weight > 0):
            raise InvalidInput(f"expected prior_weight > 0, got: {self.prior_weight!r}")
        if len(self.weights) != 3 or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise InvalidInput(f"expected 3 non-negative weights (success, timely, quality) "
                               f"not all 0, got: {self.weights!r}")


def observation_from_contract(contract: Contract) -> Observation:
    """What a settled contract says about its agent."""
    settled = contract.state in (ContractState.COMPLETED, ContractState.BREACHED)
    if not settled or contract.ended_at is None:
        raise InvalidInput(f"contract {contract.id!r} is {contract.state.value}, not settled",
                           hint="record reputation after complete/breach")
    return Observation(contract.ended_at, contract.state is ContractState.COMPLETED,
                       contract.breach is not BreachReason.TIMEOUT, contract.delivered_quality)


#: Reputation's running sums are recomputed from the window after this many updates (each
#: eviction subtracts what an addition added: rounding drift stays below 1e-12) ...
_REBUILD_EVERY = 1000
#: ... and when an observation comes this many half-lives after their base (2 ** 200 is
#: still far from a float's range).
_REBASE_HALF_LIVES = 200


class Reputation:
    """Decaying reputation per (agent, capability)."""

    def __init__(self, config: ReputationConfig = ReputationConfig()) -> None:
        self.config = config
        self._history: dict[tuple[str, str], deque[Observation]] = {}
        # key -> [ref, newest, W, S, T, WQ, Q, adds]: the window's sums with each
        # observation weighted 2 ** ((at - ref) / half_life), which no clock moves: at
        # ``now`` (not before the newest) every decayed sum is this times
        # 2 ** ((ref - now) / half_life), so a reading is O(1), not a pass over the window
        # (the market reads reputation for every bid; the passes were ~5% of its turns)
        self._agg: dict[tuple[str, str], list[float]] = {}

    def record(self, agent: str, capability: str, observation: Observation) -> None:
        key = (agent, capability)
        hist = self._history.get(key)
        if hist is None:
            hist = self._history[key] = deque(maxlen=self.config.window)
        evicted = hist[0] if len(hist) == hist.maxlen else None
        hist.append(observation)
        agg = self._agg.get(key)
        if (agg is None or observation.at < agg[1] or agg[7] >= _REBUILD_EVERY
                or (observation.at - agg[0]) > _REBASE_HALF_LIVES * self.config.half_life):
            self._rebuild(key)  # new, out of order, drift-bounded, or far from its base
            return
        self._add(agg, observation, 1.0)
        if evicted is not None:
            self._add(agg, evicted, -1.0)
        agg[1], agg[7] = observation.at, agg[7] + 1

    def _add(self, agg: list[float], o: Observation, sign: float) -> None:
        e = sign * 2.0 ** ((o.at - agg[0]) / self.config.half_life)
        agg[2] += e
        agg[3] += e * o.success
        agg[4] += e * o.timely
        if o.quality is not None:
            agg[5] += e
            agg[6] += e * o.quality

    def _rebuild(self, key: tuple[str, str]) -> None:
        hist = self._history[key]
        newest = max(o.at for o in hist)
        agg = [newest, newest, 0.0, 0.0, 0.0, 0.0, 0.0, 0]
        for o in hist:
            self._add(agg, o, 1.0)
        self._agg[key] = agg

    def _decayed(self, key: tuple[str, str], now: float) -> tuple[float, float, float, float, float] | None:
        """(W, S, T, WQ, Q) decayed to ``now``; None when ``now`` is before the newest
        observation (the clamped pass below handles that)."""
        agg = self._agg.get(key)
        if agg is None or now < agg[1]:
            return None
        f = 2.0 ** ((agg[0] - now) / self.config.half_life)
        return f * agg[2], f * agg[3], f * agg[4], f * agg[5], f * agg[6]

    def count(self, agent: str, capability: str) -> int:
        """Observations kept for (agent, capability) (at most ``window``)."""
        return len(self._history.get((agent, capability), ()))

    def weight(self, agent: str, capability: str, now: float) -> float:
        """The decayed number of observations (each counts 0.5 ** (age / half_life))."""
        d = self._decayed((agent, capability), now)
        if d is not None:
            return d[0]
        hl = self.config.half_life
        return sum(0.5 ** (max(0.0, now - o.at) / hl) for o in self._history.get((agent, capability), ()))

    def quality_weight(self, agent: str, capability: str, now: float) -> float:
        """The decayed number of graded observations (the quality signal's evidence)."""
        d = self._decayed((agent, capability), now)
        if d is not None:
            return d[3]
        hl = self.config.half_life
        return sum(0.5 ** (max(0.0, now - o.at) / hl) for o in self._history.get((agent, capability), ())
                   if o.quality is not None)

    def keys(self) -> list[tuple[str, str]]:
        """Every (agent, capability) with observations, sorted."""
        return sorted(self._history)

    def signals(self, agent: str, capability: str, now: float) -> tuple[float, float, float]:
        """The decayed (success, timely, quality) averages, prior included; quality over
        the graded observations only (the prior alone when none is graded)."""
        c = self.config
        base = c.prior_weight * c.prior
        d = self._decayed((agent, capability), now)
        if d is not None:
            w, ws, wt, wq, q = d
            return ((base + ws) / (c.prior_weight + w), (base + wt) / (c.prior_weight + w),
                    (base + q) / (c.prior_weight + wq))
        totals, sums = [c.prior_weight] * 3, [base] * 3
        for obs in self._history.get((agent, capability), ()):
            w = 0.5 ** (max(0.0, now - obs.at) / c.half_life)
            for i, x in enumerate((obs.success, obs.timely, obs.quality)):
                if x is not None:
                    totals[i] += w
                    sums[i] += w * x
        s, t, q = (v / total for v, total in zip(sums, totals))
        return s, t, q

    def graded(self, agent: str, capability: str) -> tuple[int, float | None]:
        """The measured quality record: (graded observations kept, their plain mean or None)."""
        qs = [o.quality for o in self._history.get((agent, capability), ()) if o.quality is not None]
        return len(qs), (sum(qs) / len(qs) if qs else None)

    def score(self, agent: str, capability: str, now: float) -> float:
        """Reputation in [0, 1]; the prior for an agent never seen with this capability."""
        weights = self.config.weights
        parts = self.signals(agent, capability, now)
        return sum(w * p for w, p in zip(weights, parts)) / sum(weights)

    def ranked(self, capability: str, agents: Iterable[str], now: float) -> list[tuple[str, float]]:
        """Agents by reputation for ``capability``, best first (ties: agent id)."""
        scored = [(a, self.score(a, capability, now)) for a in agents]
        return sorted(scored, key=lambda p: (-p[1], p[0]))

    def snapshot(self, now: float) -> dict[str, Any]:
        c = self.config
        entries = [{"agent": a, "capability": cap, "score": self.score(a, cap, now),
                    "observations": [o.to_json() for o in hist]}
                   for (a, cap), hist in sorted(self._history.items())]
        config = {"half_life": c.half_life, "window": c.window, "prior": c.prior,
                  "prior_weight": c.prior_weight, "weights": list(c.weights)}
        return {"at": now, "config": config, "entries": entries}

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any]) -> Reputation:
        cfg = dict(snap["config"])
        cfg["weights"] = tuple(cfg["weights"])
        rep = cls(ReputationConfig(**cfg))
        for entry in snap["entries"]:
            for at, s, t, q in entry["observations"]:
                rep.record(entry["agent"], entry["capability"], Observation(at, s, t, q))
        return rep


class Probation:
    """Half-open re-admission of gated agents (see the module docstring).  Pure."""

    def __init__(self, base_s: float = 5.0, cap_s: float = 300.0) -> None:
        if not (0 < base_s <= cap_s):
            raise InvalidInput(f"expected 0 < base_s <= cap_s, got base_s={base_s!r} cap_s={cap_s!r}")
        self.base_s, self.cap_s = base_s, cap_s
        # key -> [until (None: closed), cooldown, trial task id or None]
        self._state: dict[tuple[str, str], list[Any]] = {}

    def state(self, agent: str, capability: str, now: float) -> str:
        st = self._state.get((agent, capability))
        if st is None or st[0] is None:
            return "closed"
        return "open" if now < st[0] else "half_open"

    def admits(self, agent: str, capability: str, now: float) -> bool:
        """Closed, or half-open with no trial under way."""
        state = self.state(agent, capability, now)
        return state == "closed" or (state == "half_open" and self._state[(agent, capability)][2] is None)

    def retry_in(self, agent: str, capability: str, now: float) -> float:
        st = self._state.get((agent, capability))
        return 0.0 if st is None or st[0] is None else max(0.0, st[0] - now)

    def on_award(self, agent: str, capability: str, task_id: str, now: float) -> bool:
        """A half-open agent won a task: that is its trial.  True if it was one."""
        if self.state(agent, capability, now) != "half_open":
            return False
        self._state[(agent, capability)][2] = task_id
        return True

    def on_outcome(self, agent: str, capability: str, ok: bool, below_gate: bool, now: float) -> str:
        """An attempt of this agent ended; returns the state after it."""
        key = (agent, capability)
        st = self._state.get(key)
        if st is None or st[0] is None:  # closed
            if not ok and below_gate:
                cooldown = self.base_s if st is None else st[1]
                self._state[key] = [now + cooldown, cooldown, None]
            return self.state(agent, capability, now)
        if st[2] is None:
            return self.state(agent, capability, now)  # not its trial (an older contract)
        if ok:
            self._state[key] = [None, self.base_s, None]
        else:
            cooldown = min(self.cap_s, st[1] * 2)
            self._state[key] = [now + cooldown, cooldown, None]
        return self.state(agent, capability, now)
