"""Per-node vector clocks on the wire: what agora's messages carry (``vc``).

Every agent process and the coordinator own one :class:`LiveClock` (node = the agent's id,
or ``"coordinator"``).  Fidge/Mattern rules, on plain dicts so the hot path stays cheap
(a stamp is a ``{node: counter}`` dict of the nodes that ticked, nothing else)::

    agent        task start   receive(frame["vc"])   merge the coordinator's stamp, own + 1
                 task.emit    tick()                  the event carries it as ``vc``
                 result       tick()                  the result entry carries it as ``vc``
                 ask, reply   receive(msg["vc"])      an ask, a ctx.call's reply
                 answer, call tick()                  the frame carries it as ``vc``
    coordinator  task frame   tick()                  the frame carries it as ``vc`` (so do
                                                      asks and call replies)
                 result, answer, call, hello
                              receive(msg["vc"])      merge the agent's stamp, own + 1

:func:`compare` is the pure order of two stamps (``before``/``after``/``concurrent``/
``equal``), exported as ``agora.compare_clocks``.  ``coordination.clocks`` is the immutable
form of the same clocks (``VectorClock``), for code that reasons about stamps.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from runtime.errors import InvalidInput

__all__ = ["LiveClock", "compare", "check_stamp", "COORDINATOR"]

COORDINATOR = "coordinator"  # the coordinator's node name in every stamp


def check_stamp(stamp: Any) -> dict[str, int]:
    """``stamp`` as a clean ``{node: counter}`` dict (zero counters dropped), or InvalidInput."""
    if not isinstance(stamp, Mapping):
        raise InvalidInput(f"expected a vector clock stamp as a JSON object, got {type(stamp).__name__}")
    for node, count in stamp.items():
        if not isinstance(node, str) or not node:
            raise InvalidInput(f"expected a vector clock node name (non-empty string), got {node!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidInput(f"expected a vector clock counter >= 0 for node {node!r}, got {count!r}")
    return {n: c for n, c in stamp.items() if c}


def compare(a: Mapping[str, int], b: Mapping[str, int]) -> str:
    """How the event stamped ``a`` relates to the one stamped ``b``: ``"before"`` (a happened
    before b), ``"after"``, ``"equal"`` (the same event) or ``"concurrent"``."""
    a, b = check_stamp(a), check_stamp(b)
    nodes = a.keys() | b.keys()
    le = all(a.get(n, 0) <= b.get(n, 0) for n in nodes)
    ge = all(a.get(n, 0) >= b.get(n, 0) for n in nodes)
    if le and ge:
        return "equal"
    if le:
        return "before"
    return "after" if ge else "concurrent"


def _check_fast(stamp: Any) -> None:
    """check_stamp without the copy (the hot path: a result's, a frame's stamp)."""
    if type(stamp) is not dict:
        check_stamp(stamp)
        return
    for node, count in stamp.items():
        if type(count) is not int or count < 0 or type(node) is not str or not node:
            check_stamp(stamp)  # raises, naming the entry


class LiveClock:
    """The mutable vector clock of one node, safe from several threads (an agent's handlers,
    its reading thread).  Each method stamps one event and returns that stamp (a new dict)."""

    __slots__ = ("node", "_c", "_lock")

    def __init__(self, node: str) -> None:
        check_stamp({node: 0})
        self.node = node
        self._c: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def now(self) -> dict[str, int]:
        """The stamp of this node's latest event (a copy)."""
        with self._lock:
            return dict(self._c)

    def tick(self) -> dict[str, int]:
        """A local event or a send."""
        with self._lock:
            self._c[self.node] = self._c.get(self.node, 0) + 1
            return dict(self._c)

    def receive(self, stamp: Any) -> dict[str, int]:
        """The receipt of a message stamped ``stamp`` (checked: it comes from another process);
        ``None`` (a message without a stamp) is a local event."""
        if stamp is None:
            return self.tick()
        _check_fast(stamp)
        with self._lock:
            c = self._c
            for node, count in stamp.items():
                if count > c.get(node, 0):  # a zero never enters: only nodes that ticked
                    c[node] = count
            c[self.node] = c.get(self.node, 0) + 1
            return dict(c)

    def __repr__(self) -> str:
        return f"LiveClock({self.node!r}, {self.now!r})"
