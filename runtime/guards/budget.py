"""Budgets for extra requests: hedges and retries are at most a share of a service's calls,
machine-wide.

A hedge (``hedge_after_s``, runtime.guards.service) sends a twin of an attempt that has not
answered in time; a retry sends a failed attempt again.  Against a service with spare
capacity both help; against a saturated one both are harmful: when every answer is slow
because the service queues, every call gets a twin and every timed-out attempt is sent
again, the load multiplies and the queue grows (perf/pipelines.py's ablation: agora's
saturation throughput was 1,683 pipelines/min with unbudgeted hedging and 3,226 without).
A server does not see that its caller gave up: an attempt abandoned at the caller's timeout
still takes a worker for its whole latency, so each retry of a timed-out attempt adds work
to the very queue that made it time out (a retry storm, which outlives the burst that
started it).  The remedy is a budget, as gRPC's retry throttling and Finagle's retry budget
do: every call deposits ``share`` of a token, every extra request spends one, the bucket
holds at most ``BURST`` tokens, so over any stretch of calls the extra requests are at most
``share`` of them plus ``BURST`` (a retry share may exceed 1: a call may retry more than once).  A refused hedge is the event ``hedge_denied`` (the first
attempt goes on alone), a refused retry ``retry_denied`` (the call raises its last error).

Decisions: a budget counts calls, not time (a quiet service keeps its few extra requests, a
busy one gets ``share`` of its calls); it is shared by every agent of the machine through
the service's ``StateStore`` (the records ``<service>/hedge`` and ``<service>/retry``), like
the breaker and the limiter, because the service's capacity is shared.  Default shares:
hedges 0.1 ("The Tail at Scale" reports hedging after the p95 for ~5% more calls; 0.1 leaves
room for a p90 hedge); retries none (no limit).  The retry budget is off by default because
the breaker, on by default, already stops a storm, and the budget then costs successes in a
short overload: perf/retry_storm.py (calls at 1.35x the service's capacity), four runs
with the breaker (seeds 1-3 of 3 s, seed 1 of 6 s): success 0.59 on average with
``retry_budget = 0.2`` against 0.68 without (mixed by seed), the same drain time; without
the breaker, 6 s: requests per call 2.14 -> 1.16 and the server's backlog gone after 9.5 s
instead of 18.8 s.  Set it (0.2 is Finagle's ``percentCanRetry``) for a service whose
breaker is off or does not trip (one that fails partly, or slowly).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .state import LocalStateStore, StateStore

__all__ = ["Budget", "BURST"]

BURST = 10.0  # extra requests a budget can grant in a row (its bucket's size)


@dataclass
class _Tokens:
    tokens: float


class _Codec:
    _S = struct.Struct("<Bd")
    KIND = 7

    def new(self) -> _Tokens:
        return _Tokens(BURST)  # a new budget may hedge at once

    def pack(self, t: _Tokens) -> bytes:
        return self._S.pack(self.KIND, t.tokens)

    def unpack(self, data: bytes) -> _Tokens | None:
        if len(data) != self._S.size or data[0] != self.KIND:
            return None
        return _Tokens(self._S.unpack(data)[1])


class Budget:
    """``deposit()`` per call, ``try_spend()`` before each extra request (True: send it).
    ``kind`` names what it budgets (``hedge``, ``retry``): the record ``<service>/<kind>``."""

    def __init__(self, name: str, kind: str, share: float, store: StateStore | None = None) -> None:
        self.share, self.store, self.key = share, store or LocalStateStore(), f"{name}/{kind}"
        self._codec = _Codec()

    def deposit(self) -> None:
        def add(t: _Tokens) -> None:
            t.tokens = min(BURST, t.tokens + self.share)
        self.store.update(self.key, self._codec, add)

    def try_spend(self) -> bool:
        def spend(t: _Tokens) -> bool:
            if t.tokens < 1.0:
                return False
            t.tokens -= 1.0
            return True
        return self.store.update(self.key, self._codec, spend)

    def tokens(self) -> float:
        return self.store.update(self.key, self._codec, lambda t: t.tokens)
