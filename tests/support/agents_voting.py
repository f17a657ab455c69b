"""Voters for the live voting tests (tests/system/test_voting_daemon.py).

``Chooser`` votes a bare name (a single choice, whatever the method): its preference order
is ``PREFERENCES[index]``, and it names the first of those among the options it is asked
about, so a majority vote among three of them needs a live runoff.  ``Revoter`` answers its
first choice, then changes its mind: from another thread (the control thread is busy
answering) it casts its second choice with the ``vote.cast`` agent op.
"""

from __future__ import annotations

import threading
from typing import Any

from agora import Agent, capability

__all__ = ["PREFERENCES", "Chooser", "Revoter", "choice"]

#: agent index -> preference order (index 0: a, then c; 1: b, then c; 2: c, then b ...)
PREFERENCES = (("a", "c", "b"), ("b", "c", "a"), ("c", "b", "a"), ("a", "b", "c"), ("b", "a", "c"))


def choice(index: int, options: list[str]) -> str:
    """Agent ``index``'s first preference among ``options``."""
    return next(o for o in PREFERENCES[index % len(PREFERENCES)] if o in options)


class Chooser(Agent):
    @capability("noop")
    def noop(self, input: Any, task: Any) -> Any:
        return None

    def vote(self, request: dict[str, Any]) -> Any:
        return choice(self.ctx.index, request["options"])


class Revoter(Agent):
    @capability("noop")
    def noop(self, input: Any, task: Any) -> Any:
        return None

    def vote(self, request: dict[str, Any]) -> Any:
        first, second = request["options"][:2]
        threading.Thread(target=self._recast, args=(request["vote_id"], second),
                         daemon=True).start()
        return first

    def _recast(self, vote_id: str, ballot: str) -> None:
        self.ctx.call("vote.cast", {"vote_id": vote_id, "ballot": ballot}, timeout=10)
