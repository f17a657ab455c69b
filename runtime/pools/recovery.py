"""Pool recovery: a pool whose supervisor gave up is restarted after a backoff.

::

    pool:<name> gave up (more than its intensity of restarts in 10 s)
      -> PoolRecovery.failed(now, exits)   failures + 1, retry_at = now + backoff_delay(...)
      -> the root's loop wakes at retry_at (its wait timeout), restarts the pool supervisor
         (every agent it had, same ids and slots): running again, or failed once more
      -> ``agora pools restart NAME`` restarts at once, whatever the backoff says

The delay doubles from ``restart_backoff_s`` (default 1 s) up to ``restart_backoff_max_s``
(default 60 s) and the count starts again once a restarted pool has stayed up for
``restart_backoff_max_s`` (it recovered; a later failure is a new story).  Everything here
but ``Recovery.restart`` is pure and takes the clock as an argument.

Why these defaults (docs/DECISIONS.md, issue 16): a pool gives up only after
``max(5, 2 * max)`` restarts in 10 s, so a retry costs that many forks again; 1 s brings back
a pool whose cause was brief (a file being replaced, a service restarting) almost at once,
and the 60 s cap bounds a pool that stays broken to one burst of forks a minute, cheap enough
to leave running for good, soon enough that a fix is picked up without a person.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["backoff_delay", "PoolRecovery", "Recovery", "DEFAULT_BACKOFF_S", "DEFAULT_BACKOFF_MAX_S",
           "MAX_EXITS"]

DEFAULT_BACKOFF_S = 1.0
DEFAULT_BACKOFF_MAX_S = 60.0
MAX_EXITS = 5  # last exit reasons kept per pool


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds before retry number ``failures`` (1 = the first failure): base * 2**(n-1),
    at most ``cap``."""
    if failures < 1:
        return 0.0
    return min(cap, base * 2.0 ** min(failures - 1, 62))


@dataclass
class PoolRecovery:
    """One pool's recovery state (pure: every method takes ``now``)."""

    name: str
    base: float = DEFAULT_BACKOFF_S
    cap: float = DEFAULT_BACKOFF_MAX_S
    failures: int = 0
    retry_at: float | None = None  # set while the pool is failed
    restarted_at: float | None = None
    exits: list[dict[str, Any]] = field(default_factory=list)

    def failed(self, now: float, exits: list[dict[str, Any]]) -> float:
        """The pool gave up (or a restart did not start): schedule the next try; returns the
        delay.  A pool that had stayed up ``cap`` seconds since its restart starts at 1."""
        if self.restarted_at is not None and now - self.restarted_at >= self.cap:
            self.failures = 0
        self.failures += 1
        self.exits = [*self.exits, *exits][-MAX_EXITS:]
        delay = backoff_delay(self.failures, self.base, self.cap)
        self.retry_at = now + delay
        return delay

    def restarted(self, now: float) -> None:
        self.retry_at, self.restarted_at = None, now

    def due(self, now: float) -> bool:
        return self.retry_at is not None and now >= self.retry_at

    def retry_in(self, now: float) -> float | None:
        return None if self.retry_at is None else max(0.0, self.retry_at - now)

    def row(self, now: float) -> dict[str, Any]:
        failed = self.retry_at is not None
        return {"pool": self.name, "state": "failed" if failed else "running",
                "failures": self.failures, "retry_in_s": _round(self.retry_in(now)),
                "last_exits": list(self.exits) if failed else []}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


class Recovery:
    """The root's driver: watches the pool supervisors of a tree and restarts failed ones.

    ``pools`` maps a pool name to its supervisor path; ``step(now)`` notices new failures
    and restarts what is due; ``next_in(now)`` is the root loop's wait bound."""

    def __init__(self, tree: Any, pools: dict[str, tuple[str, float, float]], emit: Any) -> None:
        self.tree, self.emit = tree, emit
        self.paths = {name: path for name, (path, _, _) in pools.items()}
        self.pools = {name: PoolRecovery(name, base, cap) for name, (_, base, cap) in pools.items()}
        self.seen: dict[str, float | None] = {name: None for name in pools}  # failed_at noticed

    def supervisor(self, name: str) -> Any:
        return self.tree.find(self.paths[name])

    def step(self, now: float) -> None:
        self.notice(now)
        for name, rec in self.pools.items():
            if rec.due(now):
                self.restart(name, now, why="backoff")

    def notice(self, now: float) -> None:
        """Pools whose supervisor gave up since the last look: their retry is scheduled."""
        for name, rec in self.pools.items():
            sup = self.supervisor(name)
            if sup.state == "failed" and sup.failed_at != self.seen[name]:
                self.seen[name] = sup.failed_at
                self._failed(rec, now, [_reason(e) for e in sup.last_exits])

    def _failed(self, rec: PoolRecovery, now: float, exits: list[dict[str, Any]]) -> None:
        delay = rec.failed(now, exits)
        self.emit("pool.failed", pool=rec.name, failures=rec.failures, retry_in_s=round(delay, 3),
                  last_exits=rec.exits)

    def restart(self, name: str, now: float, why: str) -> dict[str, Any]:
        """Start the pool's supervisor again (its agents, same ids); a start that fails counts
        as a failure.  Returns the pool's row."""
        from runtime.supervision.supervisor import StartFailed
        rec, sup = self.pools[name], self.supervisor(name)
        self.emit("pool.restarting", pool=name, why=why, failures=rec.failures)
        try:
            sup.start()
        except StartFailed as e:
            self._failed(rec, self.tree.clock(), [{"child": "-", "reason": e.message}])
            return rec.row(self.tree.clock())
        sup.failed_at, sup.last_exits = None, []  # the next failure's exits are its own
        self.seen[name] = None
        rec.restarted(self.tree.clock())
        self.emit("pool.restarted", pool=name, why=why, failures=rec.failures)
        return rec.row(self.tree.clock())

    def next_in(self, now: float) -> float | None:
        waits = [w for r in self.pools.values() if (w := r.retry_in(now)) is not None]
        return min(waits) if waits else None

    def rows(self, now: float) -> list[dict[str, Any]]:
        return [rec.row(now) for rec in self.pools.values()]


def _reason(exit: dict[str, Any]) -> dict[str, Any]:
    """A supervisor's exit record as a user reads it: who, and why in words."""
    reason = exit.get("reason")
    if not reason:
        code = exit.get("exitcode")
        reason = (f"killed by signal {-code}" if isinstance(code, int) and code < 0 else
                  f"exit code {code}" if code is not None else "ended")
    return {"child": exit.get("child"), "reason": reason, "at": exit.get("at")}
