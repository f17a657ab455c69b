"""Logical clocks: vector clocks and Lamport clocks, for ordering events across agents.

A :class:`VectorClock` is an immutable map ``node -> counter``.  ``increment(node)``
before a node's own event, ``merge(other)`` (pointwise max) when it receives a message,
``compare`` to learn whether one event happened before another or they are concurrent.
It travels as JSON: ``to_json()`` gives ``{"node": counter}`` and ``from_json`` checks
what it is given (it comes from other processes).

Each agent keeps its *own* clock: a :class:`NodeClock` is the mutable per-node holder
a driver gives every agent (one per agent, never one per group: a clock shared by a
group makes every stamp dominate the earlier ones and hides concurrency).  Its rules,
Fidge/Mattern's::

    local event   tick()            own entry + 1
    send          send() -> stamp   own entry + 1; the message carries the new clock
    receive       receive(stamp)    elementwise max with the stamp, then own entry + 1

so every event of a node gets a distinct stamp, and ``compare(stamp_e, stamp_f)`` is
BEFORE exactly when e happened before f (a chain of same-node steps and send->receive
edges leads from e to f), AFTER for the converse, EQUAL only for the same event, and
CONCURRENT otherwise.

A :class:`LamportClock` is the scalar version: a total order consistent with causality
(break ties by node name), but it cannot tell concurrent events apart.

Decisions where the spec is silent: zero counters are dropped, so ``{}`` and
``{"a": 0}`` are the same clock (equal, same hash, same JSON).  Counters are
non-negative ints; node names are non-empty strings.  ``receive`` is merge-then-increment,
the usual rule for a message arrival.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from typing import Any

from runtime.errors import InvalidInput

__all__ = ["Order", "VectorClock", "NodeClock", "LamportClock", "compare"]


class Order(enum.Enum):
    BEFORE = "before"  # self happened before other
    AFTER = "after"  # other happened before self
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def _check_entry(node: object, count: object) -> None:
    if not isinstance(node, str) or not node:
        raise InvalidInput(f"expected a vector clock node name (non-empty string), got: {node!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidInput(
            f"expected a vector clock counter >= 0 for node {node!r}, got: {count!r}"
        )


class VectorClock(Mapping[str, int]):
    """Immutable vector clock; missing nodes count as 0."""

    __slots__ = ("_c",)

    def __init__(self, counters: Mapping[str, int] | None = None) -> None:
        counters = dict(counters or {})
        for node, count in counters.items():
            _check_entry(node, count)
        self._c = {n: c for n, c in sorted(counters.items()) if c}

    # Mapping protocol: a missing node reads as 0.
    def __getitem__(self, node: str) -> int:
        return self._c.get(node, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self._c)

    def __len__(self) -> int:
        return len(self._c)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VectorClock) and self._c == other._c

    def __hash__(self) -> int:
        return hash(tuple(self._c.items()))

    def __repr__(self) -> str:
        return f"VectorClock({self._c!r})"

    def increment(self, node: str) -> VectorClock:
        _check_entry(node, 0)
        return VectorClock({**self._c, node: self[node] + 1})

    def merge(self, other: VectorClock) -> VectorClock:
        nodes = set(self._c) | set(other._c)
        return VectorClock({n: max(self[n], other[n]) for n in nodes})

    def receive(self, node: str, other: VectorClock) -> VectorClock:
        """The clock of ``node`` after it receives a message stamped ``other``."""
        return self.merge(other).increment(node)

    def compare(self, other: VectorClock) -> Order:
        nodes = set(self._c) | set(other._c)
        le = all(self[n] <= other[n] for n in nodes)
        ge = all(self[n] >= other[n] for n in nodes)
        if le and ge:
            return Order.EQUAL
        if le:
            return Order.BEFORE
        return Order.AFTER if ge else Order.CONCURRENT

    def happened_before(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.BEFORE

    def concurrent_with(self, other: VectorClock) -> bool:
        return self.compare(other) is Order.CONCURRENT

    def to_json(self) -> dict[str, int]:
        return dict(self._c)

    @classmethod
    def from_json(cls, data: Any) -> VectorClock:
        if not isinstance(data, dict):
            raise InvalidInput(
                f"expected a vector clock as a JSON object of counters, got: {type(data).__name__}"
            )
        return cls(data)


def compare(a: VectorClock, b: VectorClock) -> Order:
    """How event ``a`` relates to event ``b``: ``a.compare(b)``, as a function."""
    return a.compare(b)


class NodeClock:
    """The vector clock one node (agent) owns; mutable, one per node.

    ``tick``/``send``/``receive`` each stamp one event of this node and return its stamp
    (an immutable :class:`VectorClock`, what a message carries as ``to_json()``).
    """

    __slots__ = ("node", "_now")

    def __init__(self, node: str, start: VectorClock | None = None) -> None:
        _check_entry(node, 0)
        self.node = node
        self._now = start if start is not None else VectorClock()

    @property
    def now(self) -> VectorClock:
        """The stamp of this node's latest event."""
        return self._now

    def tick(self) -> VectorClock:
        """A local event."""
        self._now = self._now.increment(self.node)
        return self._now

    def send(self) -> VectorClock:
        """A send event: the returned stamp travels with the message."""
        return self.tick()

    def receive(self, stamp: VectorClock | dict[str, int]) -> VectorClock:
        """A receive event of a message stamped ``stamp`` (a clock or its JSON form)."""
        theirs = stamp if isinstance(stamp, VectorClock) else VectorClock.from_json(stamp)
        self._now = self._now.receive(self.node, theirs)
        return self._now

    def __repr__(self) -> str:
        return f"NodeClock({self.node!r}, {self._now!r})"


class LamportClock:
    """A scalar logical clock owned by one node (mutable: one per process)."""

    def __init__(self, time: int = 0) -> None:
        _check_entry("lamport", time)
        self.time = time

    def tick(self) -> int:
        """Before a local event or a send: the event's timestamp."""
        self.time += 1
        return self.time

    def receive(self, stamp: int) -> int:
        """On a message stamped ``stamp``: jump past it."""
        _check_entry("lamport", stamp)
        self.time = max(self.time, stamp) + 1
        return self.time
