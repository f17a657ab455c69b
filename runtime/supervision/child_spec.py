"""Child specifications: what a supervisor starts, how it restarts it, how it stops it.

Keys and defaults (as OTP documents its child spec):

``id``        unique among its siblings.
``target``    ``target(ctx, *args)`` runs in the forked child; ``ctx`` is a
              :class:`runtime.supervision.forking.ChildContext` (``ctx.ready()`` tells the supervisor
              that start-up is done; until then the supervisor waits, up to ``start_timeout``).
``restart``   ``permanent`` (always restarted, default), ``transient`` (restarted only
              after an abnormal exit: non-zero code or a signal), ``temporary`` (never;
              its spec is dropped when it exits).
``shutdown``  seconds between SIGTERM and SIGKILL when stopping (default 5.0);
              ``0`` kills at once (OTP's ``brutal_kill``).
``title``     the process name shown by ps/top (default ``agora:<id>``).
``start_timeout`` seconds to wait for ``ctx.ready()`` (default 10.0).

A :class:`SupervisorSpec` is itself a child: ``strategy`` (``one_for_one`` default,
``one_for_all``, ``rest_for_one``), ``intensity``/``period`` (default 1 in 5 s, OTP's),
and its ``children`` in start order.  Supervisors live inside the root process (the only
process that forks); a nested supervisor is a logical node, not a process.

``significant`` (OTP 24's significant child with ``auto_shutdown = any_significant``): when a
significant child exits and is not restarted (it is ``transient`` or ``temporary``, e.g. a
supervisor that gave up), its parent shuts down too, and the failure goes up a level.  The
daemon's ``core`` is significant: a core that gave up ends the daemon (exit non-zero with the
reason) instead of leaving a live root that serves nothing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidInput

__all__ = ["Restart", "Strategy", "ChildSpec", "SupervisorSpec"]

_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


def _check_id(child_id: str) -> None:
    if not isinstance(child_id, str) or not _ID.match(child_id):
        raise InvalidInput(f"expected a child id of 1-64 characters [A-Za-z0-9_.:-], got: {child_id!r}")


@dataclass(frozen=True)
class ChildSpec:
    id: str
    target: Callable[..., Any]
    args: tuple[Any, ...] = ()
    restart: Restart = Restart.PERMANENT
    shutdown: float = 5.0
    title: str | None = None
    start_timeout: float = 10.0

    def __post_init__(self) -> None:
        _check_id(self.id)
        if self.shutdown < 0:
            raise InvalidInput(f"expected shutdown >= 0 seconds for child {self.id!r}, got: {self.shutdown}")

    @property
    def process_title(self) -> str:
        return self.title or f"agora:{self.id}"


@dataclass(frozen=True)
class SupervisorSpec:
    id: str
    children: tuple[ChildSpec | SupervisorSpec, ...] = ()
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 1
    period: float = 5.0
    restart: Restart = Restart.PERMANENT
    meta: dict[str, Any] = field(default_factory=dict)
    significant: bool = False  # its parent shuts down when it ends for good (module docstring)
    # its workers do not depend on one another (an agent pool, the registry's partitions):
    # they are forked at once and then awaited in order, instead of one after the other
    start_together: bool = False

    def __post_init__(self) -> None:
        _check_id(self.id)
        if self.intensity < 0:
            raise InvalidInput(f"expected intensity to be a non-negative integer, got: {self.intensity}")
        if self.period <= 0:
            raise InvalidInput(f"expected period to be a positive number of seconds, got: {self.period}")
        ids = [c.id for c in self.children]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise InvalidInput(f"duplicate child ids under supervisor {self.id!r}: {sorted(dup)}")
