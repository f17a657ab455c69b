"""Leases with fencing tokens, locks, leader election and counters: pure state machines.

The coordinator process owns one :class:`LeaseTable` and drives it from its event loop:
requests from agents call ``acquire``/``renew``/``release``; the supervisor's death
notices call ``holder_died``; a timer set to ``next_deadline()`` calls ``expire``.
Whatever changes hands comes back as a :class:`Handover` (``released`` and ``granted``
leases) so the driver can tell the new holders and log events.  Nothing here does I/O,
starts a thread or reads a clock other than the injected one.

Why leases and not plain locks (the Elixir reference's mutex released the lock as soon
as it was acquired, and nothing tied a lock to its holder's life):

- Every grant carries a *fencing token*: a per-resource counter that only goes up and is
  never reused, not even after the resource was released and forgotten.  A holder that
  stalled (GC pause, SIGSTOP) past its expiry and then writes is caught by
  ``check_fence``/``fence``: only the current, unexpired holder's token passes; a stale
  one raises :class:`StaleFence`.
- A lease is tied to its holder's liveness: ``holder_died`` releases everything it held
  at once (the supervisor sees the death on the process sentinel; no timeout needed) and
  drops it from every wait queue.  The TTL is the backstop for a holder that is alive but
  stuck.

Decisions where the spec is silent:

- Time is seconds on the injected clock.  A lease with ``expires_at <= now`` is expired:
  ``check_fence`` and ``renew`` refuse it at once, but the resource is handed to the next
  waiter only when the driver calls ``expire`` (it should wake at ``next_deadline()``);
  until then ``acquire`` by others sees it busy.  This keeps every hand-over visible in
  one place instead of hiding grants inside ``acquire``.
- ``acquire`` by the holder that already holds the resource renews it with the new TTL
  and keeps the token (idempotent retry after a lost reply).  ``acquire`` by a holder
  already waiting returns its place in the queue.
- Waiters are served FIFO per resource; each waiter's TTL is the one it asked for and
  starts when it is granted.
- ``release`` requires the holder's token: a stale holder cannot release its successor.

Leader election (:class:`Election`): the leader is the longest-standing live candidate
(earliest ``join``; a candidate that leaves and re-joins goes to the back).  Not the
highest name, as the Elixir reference did: that hands leadership to every newcomer with a
larger name and churns the term.  Seniority keeps the leader stable as long as it lives.
Each change of leader increments ``term``, which doubles as the leader's fencing token.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from runtime.errors import Conflict, InvalidInput

__all__ = [
    "StaleFence",
    "LeaseBusy",
    "Lease",
    "Queued",
    "Handover",
    "LeaseTable",
    "Lock",
    "Leadership",
    "Election",
    "Counters",
]


class StaleFence(Conflict):
    """A lease operation or fenced write carried a token that is no longer current."""

    code = "STALE_FENCE"
    default_hint = (
        "this holder lost the lease (expired, released, or taken over after it was declared dead): "
        "stop writing and acquire the resource again"
    )


class LeaseBusy(Conflict):
    """``acquire(wait=False)`` on a resource someone else holds."""

    code = "LEASE_BUSY"
    default_hint = (
        "acquire with wait=True to queue for it, or retry after the current lease expires"
    )


@dataclass(frozen=True)
class Lease:
    resource: str
    holder: str
    token: int
    ttl: float
    granted_at: float
    expires_at: float


@dataclass(frozen=True)
class Queued:
    """The answer to ``acquire(wait=True)`` when the resource is held: wait for a grant."""

    resource: str
    holder: str
    position: int  # 1 = next in line


@dataclass(frozen=True)
class Handover:
    """Leases that ended and leases granted to waiters as a result (notify the latter)."""

    released: tuple[Lease, ...] = ()
    granted: tuple[Lease, ...] = ()

    def __add__(self, other: Handover) -> Handover:
        return Handover(self.released + other.released, self.granted + other.granted)


@dataclass(frozen=True)
class _Waiter:
    holder: str
    ttl: float


def _check_name(kind: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"expected {kind} to be a non-empty string, got: {value!r}")


def _check_ttl(ttl: object) -> None:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (0 < ttl < math.inf):
        raise InvalidInput(f"expected a lease ttl in seconds > 0, got: {ttl!r}")


class LeaseTable:
    """All leases of one coordinator, keyed by resource name."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}
        self._last_token: dict[str, int] = {}  # never shrinks: tokens are never reused

    # -- queries

    def holder_of(self, resource: str) -> Lease | None:
        """The current lease of ``resource`` (possibly expired and not yet reaped)."""
        return self._leases.get(resource)

    def resources(self) -> list[str]:
        """Every resource that is held or waited for, sorted."""
        return sorted(set(self._leases) | set(self._waiters))

    def waiters(self, resource: str) -> tuple[str, ...]:
        return tuple(w.holder for w in self._waiters.get(resource, ()))

    def last_token(self, resource: str) -> int:
        """The highest token ever issued for ``resource`` (0 if none)."""
        return self._last_token.get(resource, 0)

    def next_deadline(self) -> float | None:
        """When the earliest lease expires: the driver's next call to ``expire``."""
        return min((lease.expires_at for lease in self._leases.values()), default=None)

    def check_fence(self, resource: str, token: int) -> bool:
        """True only for the current, unexpired holder's token."""
        lease = self._leases.get(resource)
        return lease is not None and lease.token == token and self._clock() < lease.expires_at

    def fence(self, resource: str, token: int) -> None:
        """Guard a fenced write: raise :class:`StaleFence` unless ``token`` is current."""
        if not self.check_fence(resource, token):
            lease = self._leases.get(resource)
            now_held = f"token {lease.token} held by {lease.holder!r}" if lease else "no holder"
            raise StaleFence(
                f"fenced write to {resource!r} with token {token} refused: the current lease is "
                f"{now_held} (last token issued {self.last_token(resource)})",
                resource=resource,
                token=token,
            )

    # -- restart

    def restore(self, leases: Iterable[Lease], last_tokens: Mapping[str, int]) -> None:
        """Take back the state a previous coordinator left (``coordination.services.store``):
        held leases as they were, and every resource's last token, so that tokens keep
        increasing across restarts.  Waiters are not restored: their requests died with the
        old coordinator's sockets and they ask again."""
        for resource, token in last_tokens.items():
            self._last_token[resource] = max(token, self._last_token.get(resource, 0))
        for lease in leases:
            self._leases[lease.resource] = lease
            self._last_token[lease.resource] = max(lease.token, self.last_token(lease.resource))

    def held_by(self, holder: str) -> list[Lease]:
        return [lease for lease in self._leases.values() if lease.holder == holder]

    # -- holder requests

    def acquire(
        self, resource: str, holder: str, ttl: float, *, wait: bool = False
    ) -> Lease | Queued:
        """Grant ``resource`` to ``holder`` for ``ttl`` seconds, or queue it (``wait``)."""
        _check_name("resource", resource)
        _check_name("holder", holder)
        _check_ttl(ttl)
        current = self._leases.get(resource)
        if current is None:
            return self._grant(resource, _Waiter(holder, ttl), self._clock())
        if current.holder == holder:
            return self._extend(current, ttl)
        if not wait:
            raise LeaseBusy(
                f"{resource!r} is held by {current.holder!r} (token {current.token}) until "
                f"{current.expires_at:.3f}; {holder!r} did not ask to wait",
                resource=resource,
                holder=current.holder,
            )
        return self._enqueue(resource, _Waiter(holder, ttl))

    def renew(self, resource: str, holder: str, token: int, ttl: float | None = None) -> Lease:
        """Extend a live lease by ``ttl`` (default: its original ttl) from now."""
        lease = self._current(resource, holder, token, "renew")
        if ttl is not None:
            _check_ttl(ttl)
        return self._extend(lease, lease.ttl if ttl is None else ttl)

    def release(self, resource: str, holder: str, token: int) -> Handover:
        """End a lease; the next waiter (if any) is granted it."""
        lease = self._leases.get(resource)
        if lease is None or lease.holder != holder or lease.token != token:
            raise self._stale(resource, holder, token, "release")
        return self._end(lease, self._clock())

    def cancel(self, resource: str, holder: str) -> bool:
        """Leave the wait queue of ``resource``; False if ``holder`` was not waiting."""
        queue = self._waiters.get(resource)
        if not queue or holder not in self.waiters(resource):
            return False
        self._waiters[resource] = deque(w for w in queue if w.holder != holder)
        self._drop_empty_queue(resource)
        return True

    # -- driver events

    def holder_died(self, holder: str) -> Handover:
        """Release everything ``holder`` held and drop it from every queue, at once."""
        for resource in [r for r, q in self._waiters.items() if any(w.holder == holder for w in q)]:
            self.cancel(resource, holder)
        now = self._clock()
        held = [lease for lease in self._leases.values() if lease.holder == holder]
        return sum((self._end(lease, now) for lease in held), Handover())

    def expire(self, now: float | None = None) -> Handover:
        """End every lease with ``expires_at <= now``; grant their resources onwards."""
        now = self._clock() if now is None else now
        due = sorted(
            (lease for lease in self._leases.values() if lease.expires_at <= now),
            key=lambda lease: (lease.expires_at, lease.resource),
        )
        return sum((self._end(lease, now) for lease in due), Handover())

    # -- steps

    def _current(self, resource: str, holder: str, token: int, action: str) -> Lease:
        lease = self._leases.get(resource)
        if (
            lease is None
            or lease.holder != holder
            or lease.token != token
            or self._clock() >= lease.expires_at
        ):
            raise self._stale(resource, holder, token, action)
        return lease

    def _stale(self, resource: str, holder: str, token: int, action: str) -> StaleFence:
        lease = self._leases.get(resource)
        state = (
            f"held by {lease.holder!r} with token {lease.token}, expiring at {lease.expires_at:.3f}"
            if lease
            else "not held"
        )
        return StaleFence(
            f"{holder!r} cannot {action} {resource!r} with token {token}: it is {state}",
            resource=resource,
            holder=holder,
            token=token,
        )

    def _grant(self, resource: str, waiter: _Waiter, now: float) -> Lease:
        token = self._last_token.get(resource, 0) + 1
        self._last_token[resource] = token
        lease = Lease(resource, waiter.holder, token, waiter.ttl, now, now + waiter.ttl)
        self._leases[resource] = lease
        return lease

    def _extend(self, lease: Lease, ttl: float) -> Lease:
        renewed = replace(lease, ttl=ttl, expires_at=self._clock() + ttl)
        self._leases[lease.resource] = renewed
        return renewed

    def _enqueue(self, resource: str, waiter: _Waiter) -> Queued:
        queue = self._waiters.setdefault(resource, deque())
        names = [w.holder for w in queue]
        if waiter.holder not in names:
            queue.append(waiter)
            names.append(waiter.holder)
        return Queued(resource, waiter.holder, names.index(waiter.holder) + 1)

    def _end(self, lease: Lease, now: float) -> Handover:
        del self._leases[lease.resource]
        queue = self._waiters.get(lease.resource)
        if not queue:
            return Handover(released=(lease,))
        granted = self._grant(lease.resource, queue.popleft(), now)
        self._drop_empty_queue(lease.resource)
        return Handover(released=(lease,), granted=(granted,))

    def _drop_empty_queue(self, resource: str) -> None:
        if not self._waiters.get(resource):
            self._waiters.pop(resource, None)


class Lock:
    """A named mutual-exclusion lock: a lease with a FIFO queue of waiters.

    ``acquire`` always queues when the lock is held; the grant arrives in a
    :class:`Handover` when the holder releases, dies, or lets the lease expire.
    """

    def __init__(self, table: LeaseTable, name: str, ttl: float) -> None:
        _check_name("lock name", name)
        _check_ttl(ttl)
        self.table, self.name, self.ttl = table, name, ttl
        self.resource = f"lock:{name}"

    def acquire(self, holder: str) -> Lease | Queued:
        return self.table.acquire(self.resource, holder, self.ttl, wait=True)

    def release(self, holder: str, token: int) -> Handover:
        return self.table.release(self.resource, holder, token)

    @property
    def holder(self) -> str | None:
        lease = self.table.holder_of(self.resource)
        return lease.holder if lease else None


@dataclass(frozen=True)
class Leadership:
    """A change of leader: ``leader`` is None when the group has no candidate left."""

    group: str
    leader: str | None
    term: int


class Election:
    """One leader per group: the longest-standing live candidate (see module docstring)."""

    def __init__(self, group: str) -> None:
        _check_name("election group", group)
        self.group = group
        self._seniority = itertools.count()
        self._candidates: dict[str, int] = {}  # candidate -> join order; dict order = seniority
        self._leader: str | None = None
        self._term = 0

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def term(self) -> int:
        return self._term

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(self._candidates)

    def join(self, candidate: str) -> Leadership | None:
        """Stand for leader; returns the new Leadership if this changed the leader."""
        _check_name("candidate", candidate)
        self._candidates.setdefault(candidate, next(self._seniority))
        return self._elect()

    def leave(self, candidate: str) -> Leadership | None:
        """Stop standing (or step down); the next candidate takes over with a new term."""
        self._candidates.pop(candidate, None)
        return self._elect()

    @classmethod
    def restored(cls, group: str, term: int, candidates: Iterable[str]) -> Election:
        """An election as a previous coordinator left it: candidates in seniority order,
        the first of them the leader of ``term`` (terms keep increasing across restarts)."""
        election = cls(group)
        for candidate in candidates:
            election._candidates[candidate] = next(election._seniority)
        election._leader = next(iter(election._candidates), None)
        election._term = term
        return election

    def candidate_died(self, candidate: str) -> Leadership | None:
        return self.leave(candidate)

    def check_term(self, candidate: str, term: int) -> bool:
        """True only for the current leader with the current term (a leader's fence)."""
        return candidate == self._leader and term == self._term

    def _elect(self) -> Leadership | None:
        senior = next(iter(self._candidates), None)
        if senior == self._leader:
            return None
        self._leader = senior
        if senior is not None:
            self._term += 1
        return Leadership(self.group, senior, self._term)


class Counters:
    """Named integer counters; atomic because only the coordinator's loop touches them."""

    def __init__(self) -> None:
        self._values: dict[str, int] = {}

    def add(self, name: str, delta: int = 1) -> int:
        """Add ``delta`` (may be negative) and return the new value."""
        _check_name("counter name", name)
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise InvalidInput(f"expected an integer delta for counter {name!r}, got: {delta!r}")
        value = self._values.get(name, 0) + delta
        self._values[name] = value
        return value

    def get(self, name: str) -> int:
        return self._values.get(name, 0)

    def restore(self, values: Mapping[str, int]) -> None:
        self._values.update(values)

    def snapshot(self) -> dict[str, int]:
        return dict(self._values)
