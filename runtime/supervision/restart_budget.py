"""Restart intensity: OTP's ``add_restart`` as a pure function.

A supervisor may restart its children at most ``intensity`` times within any window of
``period`` seconds.  The restart that would make it ``intensity + 1`` within the window
is refused: the supervisor then stops all its children and itself, and the failure goes
up one level (escalation).

Defaults (documented in docs/DECISIONS.md): OTP's 1 restart in 5 s for a bare
``SupervisorSpec``; agora's own trees choose per level (root and core: 5 in 10 s,
registry: 10 in 10 s, an agent pool: ``max(5, 2 * max)`` in 10 s, as
``runtime.pools.specs`` builds it, so that a poison task that kills its agent
``max_attempts`` times does not take the pool down with it).
"""

from __future__ import annotations

__all__ = ["add_restart"]


def add_restart(
    restarts: tuple[float, ...], now: float, intensity: int, period: float
) -> tuple[bool, tuple[float, ...]]:
    """Record a restart at ``now``; return (allowed, restarts still inside the window).

    ``restarts`` holds earlier restart times, oldest first.  Times older than ``period``
    fall out of the window.  With ``intensity == 0`` no restart is ever allowed.
    """
    recent = tuple(t for t in restarts if now - t < period) + (now,)
    return len(recent) <= intensity, recent
