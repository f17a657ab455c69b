"""Waiting for a reply by spinning before sleeping.

On this kind of machine (a virtual machine with few cores) a process that sleeps in
``poll``/``recv`` lets its virtual CPU halt, and waking it again costs 30-50 us: about
the whole round trip of a small message over a pipe (perf/registry.py, perf/dispatch.py
measure that floor in every run).  A caller that expects its reply within a fraction of
a millisecond therefore polls without blocking for a bounded time first, yielding the
CPU to anything runnable on its core between polls, and only then sleeps.  The price is
CPU time of the waiting caller, at most ``seconds`` per wait; see docs/DECISIONS.md.
"""

from __future__ import annotations

import os
import select
import time
from typing import Any

__all__ = ["spin_until_readable", "Spinner"]

#: A Spinner stops spinning after this many waits in a row outlasted its spin ...
MISSES = 3
#: ... and spins again on every PROBE_EVERY-th wait, to see whether replies are quick again.
PROBE_EVERY = 16


def spin_until_readable(sock: Any, seconds: float) -> bool:
    """True as soon as ``sock`` (anything with ``fileno``) is readable, False after
    ``seconds`` without it.  Never sleeps; ``sched_yield`` between polls."""
    if seconds <= 0:
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    until = time.perf_counter() + seconds
    while not poller.poll(0):
        if time.perf_counter() >= until:
            return False
        os.sched_yield()
    return True


class Spinner:
    """``spin_until_readable`` with a memory of how it went.

    A spin only pays when the reply comes within it, and it costs a core meanwhile.  When
    replies keep coming later than the spin (a long task, or many callers sharing the
    cores: eight clients that each spun 1 ms for their reply ran 671 tasks/s together
    against 698 for one, their spins taking the cores the daemon needed), the waits after
    ``MISSES`` such replies in a row go straight to sleep; every ``PROBE_EVERY``-th wait
    spins again, and one reply within the spin brings spinning back.
    """

    __slots__ = ("seconds", "misses", "waits")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.misses = 0
        self.waits = 0

    def wait(self, sock: Any) -> bool:
        """True if ``sock`` became readable while spinning; False: go and block."""
        if self.seconds <= 0:
            return False
        self.waits += 1
        if self.misses >= MISSES and self.waits % PROBE_EVERY:
            return False
        if spin_until_readable(sock, self.seconds):
            self.misses = 0
            return True
        self.misses = min(self.misses + 1, MISSES)
        return False
