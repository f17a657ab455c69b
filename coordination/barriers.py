"""Barriers: N participants wait until all have arrived, or all learn why not.

A :class:`Barrier` is a pure state machine the coordinator drives: an agent's "arrive"
request calls ``arrive``; the supervisor's death notice calls ``participant_died``; a
timer set to ``barrier.deadline`` calls ``expire``.  Each call returns an
:class:`Outcome` saying the barrier's state and whom to notify, so the driver replies to
every waiting participant exactly once.

No hang is possible: every barrier ends in exactly one of

``released``  all parties arrived; everyone who arrived is told to go on;
``broken``    a participant died first (:class:`BarrierBroken`, naming it), or the
              deadline passed (:class:`~runtime.errors.DeadlineExceeded`); everyone who
              arrived gets that error, and so does any later arrival.

Errors are returned as data in ``Outcome.error`` (the driver sends each participant in
``notify`` either "go on" or that error), never raised by the barrier: a raise would
leave the other waiters unanswered.  ``Outcome.raise_if_broken()`` is there for
in-process callers.  Calling it wrong (an unknown participant) raises ``InvalidInput``.

Decisions where the spec is silent:

- ``parties`` is either a count or the names of the expected participants.  With names,
  an arrival from anyone else is refused (``InvalidInput``) and the death of any named
  participant that has not been released breaks the barrier.  With a count, the barrier
  cannot know who was going to arrive, so only the death of a participant that already
  arrived breaks it (it will never run the phase the others wait for); drivers that know
  the members should pass names.
- The deadline is absolute, on the injected clock (seconds).  ``arrive`` after the
  deadline breaks the barrier even if ``expire`` was not called yet.  The arrival that
  completes the barrier exactly at its deadline still releases it (``now > deadline``
  is late).
- A barrier is one-shot: once released, ``arrive`` by one who took part returns
  ``released`` again (idempotent retry); by anyone else it is refused.  Arriving twice
  while waiting counts once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from runtime.errors import AgoraError, BrokenError, DeadlineExceeded, InvalidInput

__all__ = ["BarrierBroken", "Outcome", "Barrier", "WAITING", "RELEASED", "BROKEN"]

WAITING, RELEASED, BROKEN = "waiting", "released", "broken"


class BarrierBroken(BrokenError):
    """A barrier participant died before the barrier was released."""

    code = "BARRIER_BROKEN"
    default_hint = "the phase cannot complete without it: restart the phase with a new barrier"


@dataclass(frozen=True)
class Outcome:
    """The barrier's state after a call, and whom the driver must answer now."""

    state: str
    notify: tuple[str, ...] = ()  # participants to answer (released or failed)
    error: AgoraError | None = None  # set when state is BROKEN

    def raise_if_broken(self) -> None:
        if self.error is not None:
            raise self.error


class Barrier:
    """One barrier of ``parties`` (a count or a collection of participant names)."""

    def __init__(
        self,
        name: str,
        parties: int | Collection[str],
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.deadline, self._clock = name, deadline, clock
        self.members = _members(name, parties)
        self.parties = len(self.members) if self.members is not None else int(parties)  # type: ignore[arg-type]
        self.state = WAITING
        self.error: AgoraError | None = None
        self._arrived: dict[str, None] = {}  # insertion-ordered set

    @property
    def arrived(self) -> tuple[str, ...]:
        return tuple(self._arrived)

    def arrive(self, participant: str) -> Outcome:
        """Record an arrival.  ``notify`` lists who to answer now: on release everyone who
        arrived, on a break everyone who arrived plus this caller (with ``error``)."""
        self._check_participant(participant)
        if self.state == WAITING and self._clock() > self.deadline:
            broken = self._break(self._deadline_error())
            return Outcome(BROKEN, notify=_plus(broken.notify, participant), error=broken.error)
        if self.state == BROKEN:
            return Outcome(BROKEN, notify=(participant,), error=self._copy_error())
        if self.state == RELEASED:
            return Outcome(RELEASED, notify=(participant,))
        self._arrived[participant] = None
        if len(self._arrived) < self.parties:
            return Outcome(WAITING)
        self.state = RELEASED
        return Outcome(RELEASED, notify=self.arrived)

    def participant_died(self, participant: str) -> Outcome:
        """Break the barrier if ``participant`` was part of it; answer everyone waiting."""
        if self.state != WAITING or not self._counts(participant):
            return Outcome(self.state)
        return self._break(
            BarrierBroken(
                f"barrier {self.name!r} is broken: participant {participant!r} died before "
                f"it was released ({len(self._arrived)} of {self.parties} had arrived)",
                barrier=self.name,
                participant=participant,
            )
        )

    def expire(self, now: float | None = None) -> Outcome:
        """Break the barrier if its deadline has passed (the driver's timer)."""
        now = self._clock() if now is None else now
        if self.state != WAITING or now <= self.deadline:
            return Outcome(self.state)
        return self._break(self._deadline_error())

    # -- steps

    def _counts(self, participant: str) -> bool:
        return participant in self._arrived or (
            self.members is not None and participant in self.members
        )

    def _check_participant(self, participant: str) -> None:
        if not isinstance(participant, str) or not participant:
            raise InvalidInput(f"expected a participant name, got: {participant!r}")
        if self.members is not None and participant not in self.members:
            raise InvalidInput(
                f"{participant!r} is not a party of barrier {self.name!r} "
                f"(parties: {sorted(self.members)})"
            )
        if self.state == RELEASED and participant not in self._arrived:  # one-shot
            raise InvalidInput(
                f"barrier {self.name!r} was already released without {participant!r}",
                hint="barriers are one-shot: create a new one for the next phase",
            )

    def _deadline_error(self) -> DeadlineExceeded:
        missing = sorted(self.members - set(self._arrived)) if self.members is not None else None
        who = f"; missing: {missing}" if missing else ""
        return DeadlineExceeded(
            f"barrier {self.name!r} passed its deadline with {len(self._arrived)} of "
            f"{self.parties} arrived{who}",
            hint="a participant is slow or stuck: raise the deadline or find the straggler",
            barrier=self.name,
        )

    def _break(self, error: AgoraError) -> Outcome:
        self.state, self.error = BROKEN, error
        return Outcome(BROKEN, notify=self.arrived, error=error)

    def _copy_error(self) -> AgoraError:
        """A fresh exception per raise, so tracebacks do not pile up on one object."""
        assert self.error is not None
        return type(self.error)(self.error.message, hint=self.error.hint, **self.error.details)


def _plus(names: tuple[str, ...], name: str) -> tuple[str, ...]:
    return names if name in names else (*names, name)


def _members(name: str, parties: object) -> frozenset[str] | None:
    """The named parties, or None for a plain count; refuses anything else."""
    if isinstance(parties, int) and not isinstance(parties, bool) and parties >= 1:
        return None
    if (
        not isinstance(parties, (str, bytes, int))
        and isinstance(parties, Collection)
        and parties
        and all(isinstance(m, str) and m for m in parties)
    ):
        return frozenset(parties)
    raise InvalidInput(
        f"expected barrier {name!r} parties to be a count >= 1 or a collection of names, "
        f"got: {parties!r}"
    )
