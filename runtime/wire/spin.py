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

__all__ = ["spin_until_readable"]


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
