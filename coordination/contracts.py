"""Contracts: what an award binds an agent to, and what its end costs or pays.

States and legal transitions (anything else raises :class:`IllegalTransition`)::

    awarded --start--> running --complete--> completed            => pay the price
       |                  |
       +---- breach ------+--> breached(failed | timeout | quality) => penalty, exclusion
       +---- cancel ------+--> cancelled (the client withdrew the task) => refund, no penalty

Every transition is a pure function ``(contract, now, ...) -> (contract, Settlement)``
on frozen values; the coordinator applies the settlement to the ledger (escrow release
or refund, see coordination.ledger) and feeds the outcome to reputation.

Decisions where the spec is silent
    * ``complete`` after the deadline is a breach (timeout), and a delivered quality below
      ``QualityTerms.min_quality`` is a breach (quality): the coordinator reports what
      happened, the contract decides what it means.  A delivered quality of None means
      *not graded* (issue 18: no grader declared, or the grading failed): it is reported
      as unknown and never breaches the quality terms (nobody measured it), where it used
      to be taken as 1.0.
    * A deadline is exclusive: finishing at ``now == deadline`` is already late.
    * An agent may breach before it started (it died or refused after the award);
      completion needs ``running``.
    * The penalty is ``round(penalty_fraction * price)`` milli-credits (default 0.1); the
      breaching agent is excluded from the re-auction of *this task* only
      (:func:`excluded_agents`), not from the market.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from runtime.errors import Conflict, InvalidInput

__all__ = [
    "ContractState", "BreachReason", "QualityTerms", "PenaltyPolicy", "Contract",
    "Settlement", "IllegalTransition", "award", "start", "complete", "breach", "cancel", "expire",
    "excluded_agents",
]


class ContractState(enum.Enum):
    AWARDED = "awarded"
    RUNNING = "running"
    COMPLETED = "completed"
    BREACHED = "breached"
    CANCELLED = "cancelled"


class BreachReason(enum.Enum):
    FAILED = "failed"
    TIMEOUT = "timeout"
    QUALITY = "quality"


class IllegalTransition(Conflict):
    code = "ILLEGAL_TRANSITION"
    default_hint = "read the contract's current state; a settled contract never changes again"


@dataclass(frozen=True)
class QualityTerms:
    """The least delivered quality (in [0, 1]) that counts as fulfilment."""

    min_quality: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.min_quality, (int, float)) and 0.0 <= self.min_quality <= 1.0):
            raise InvalidInput(f"expected min_quality in [0, 1], got: {self.min_quality!r}")


@dataclass(frozen=True)
class PenaltyPolicy:
    """Penalty on breach, as a fraction of the contract price (default 10%)."""

    fraction: float = 0.1

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0.0 <= f <= 1.0):
            raise InvalidInput(f"expected a penalty fraction in [0, 1], got: {f!r}")

    def penalty(self, price: int) -> int:
        return int(round(self.fraction * price))


@dataclass(frozen=True)
class Contract:
    id: str
    task_id: str
    agent: str
    price: int
    deadline: float
    quality: QualityTerms
    state: ContractState
    awarded_at: float
    started_at: float | None = None
    ended_at: float | None = None
    breach: BreachReason | None = None
    delivered_quality: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "task_id": self.task_id, "agent": self.agent, "price": self.price,
                "deadline": self.deadline, "min_quality": self.quality.min_quality,
                "state": self.state.value, "awarded_at": self.awarded_at,
                "started_at": self.started_at, "ended_at": self.ended_at,
                "breach": None if self.breach is None else self.breach.value,
                "delivered_quality": self.delivered_quality}


@dataclass(frozen=True)
class Settlement:
    """What the ledger must do: ``pay`` the price to the agent, or take a ``penalty``
    from it (and refund the price); ``exclude`` the agent from this task's re-auction."""

    contract_id: str
    agent: str
    action: str               # "pay" | "penalty" | "refund"
    amount: int
    exclude: bool

    def to_json(self) -> dict[str, Any]:
        return {"contract_id": self.contract_id, "agent": self.agent, "action": self.action,
                "amount": self.amount, "exclude": self.exclude}


def award(contract_id: str, task_id: str, agent: str, price: int, deadline: float, now: float,
          quality: QualityTerms = QualityTerms()) -> Contract:
    """A new contract in state ``awarded``; the deadline must lie after ``now``."""
    if isinstance(price, bool) or not isinstance(price, int) or price < 0:
        raise InvalidInput(f"expected the price of contract {contract_id!r} as a non-negative "
                           f"integer of milli-credits, got: {price!r}")
    if not (math.isfinite(deadline) and deadline > now):
        raise InvalidInput(f"contract {contract_id!r}: deadline {deadline} is not after the award "
                           f"time {now}", hint="give the agent a deadline in the future")
    return Contract(contract_id, task_id, agent, price, deadline, quality,
                    ContractState.AWARDED, awarded_at=now)


def _require(contract: Contract, allowed: tuple[ContractState, ...], verb: str) -> None:
    if contract.state not in allowed:
        names = " or ".join(s.value for s in allowed)
        raise IllegalTransition(
            f"cannot {verb} contract {contract.id!r} (task {contract.task_id!r}, agent "
            f"{contract.agent!r}): it is {contract.state.value}, and {verb} needs {names}")


def start(contract: Contract, now: float) -> Contract:
    """awarded -> running."""
    _require(contract, (ContractState.AWARDED,), "start")
    return replace(contract, state=ContractState.RUNNING, started_at=now)


def breach(contract: Contract, reason: BreachReason, now: float,
           policy: PenaltyPolicy = PenaltyPolicy()) -> tuple[Contract, Settlement]:
    """awarded | running -> breached(reason): a penalty, and exclusion from the re-auction."""
    if not isinstance(reason, BreachReason):
        raise InvalidInput(f"expected a BreachReason, got: {reason!r}")
    _require(contract, (ContractState.AWARDED, ContractState.RUNNING), "breach")
    ended = replace(contract, state=ContractState.BREACHED, breach=reason, ended_at=now)
    penalty = policy.penalty(contract.price)
    return ended, Settlement(contract.id, contract.agent, "penalty", penalty, True)


def cancel(contract: Contract, now: float) -> tuple[Contract, Settlement]:
    """awarded | running -> cancelled: the client withdrew the task (cancel request, or the
    task ended for a reason that is nobody's fault); the price goes back, no penalty, no
    exclusion, and reputation learns nothing from it."""
    _require(contract, (ContractState.AWARDED, ContractState.RUNNING), "cancel")
    ended = replace(contract, state=ContractState.CANCELLED, ended_at=now)
    return ended, Settlement(contract.id, contract.agent, "refund", 0, False)


def complete(contract: Contract, now: float, delivered_quality: float | None = None,
             policy: PenaltyPolicy = PenaltyPolicy()) -> tuple[Contract, Settlement]:
    """running -> completed (pay), or breached(timeout | quality) when late or too poor.
    ``delivered_quality`` None: not graded (unknown), which is never a quality breach."""
    _require(contract, (ContractState.RUNNING,), "complete")
    if delivered_quality is not None and (
            isinstance(delivered_quality, bool) or not isinstance(delivered_quality, (int, float))
            or not 0.0 <= delivered_quality <= 1.0):
        raise InvalidInput(f"expected the delivered quality of contract {contract.id!r} in [0, 1] "
                           f"or None (not graded), got: {delivered_quality!r}")
    quality = None if delivered_quality is None else float(delivered_quality)
    contract = replace(contract, delivered_quality=quality)
    if now >= contract.deadline:
        return breach(contract, BreachReason.TIMEOUT, now, policy)
    if quality is not None and quality < contract.quality.min_quality:
        return breach(contract, BreachReason.QUALITY, now, policy)
    done = replace(contract, state=ContractState.COMPLETED, ended_at=now)
    return done, Settlement(contract.id, contract.agent, "pay", contract.price, False)


def expire(contract: Contract, now: float,
           policy: PenaltyPolicy = PenaltyPolicy()) -> tuple[Contract, Settlement] | None:
    """The deadline check the coordinator runs on its timer: a contract still open at or
    after its deadline is breached (timeout); otherwise None (nothing to do)."""
    open_states = (ContractState.AWARDED, ContractState.RUNNING)
    if contract.state not in open_states or now < contract.deadline:
        return None
    return breach(contract, BreachReason.TIMEOUT, now, policy)


def excluded_agents(contracts: Iterable[Contract], task_id: str) -> frozenset[str]:
    """Agents that breached a contract for ``task_id``: not invited to its re-auction."""
    return frozenset(c.agent for c in contracts
                     if c.task_id == task_id and c.state is ContractState.BREACHED)
