"""The hedge budget: hedged requests are at most a share of a service's calls, machine-wide.

A hedge (``hedge_after_s``, runtime.guards.service) sends a twin of an attempt that has not
answered in time.  Against a service with spare capacity it cuts the tail for about
P(latency > hedge_after_s) more calls; against a saturated one it is harmful: when every
answer is slow because the service queues, every call gets a twin, the load doubles and the
queue grows (perf/pipelines.py's ablation: agora's saturation throughput was 1,683
pipelines/min with hedging and 3,226 without).  The remedy is a budget, as gRPC's retry
throttling and Finagle's retry budget do for retries: every hedgeable call deposits
``share`` of a token, every hedge spends one, the bucket holds at most ``BURST`` tokens, so
over any stretch of calls the hedges are at most ``share`` of them plus ``BURST``.  A
refused hedge is the event ``hedge_denied``; the first attempt goes on alone.

Decisions: the budget counts calls, not time (a quiet service keeps its few hedges, a busy
one gets ``share`` of its calls); it is shared by every agent of the machine through the
service's ``StateStore`` (the record ``<service>/hedge``), like the breaker and the limiter,
because the service's capacity is shared.  The default share is 0.1 ("The Tail at Scale"
reports hedging after the p95 for ~5% more calls; 0.1 leaves room for a p90 hedge).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .state import LocalStateStore, StateStore

__all__ = ["HedgeBudget", "BURST"]

BURST = 10.0  # hedges a budget can grant in a row (its bucket's size)


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


class HedgeBudget:
    """``deposit()`` per hedgeable call, ``try_spend()`` before each hedge (True: hedge)."""

    def __init__(self, name: str, share: float, store: StateStore | None = None) -> None:
        self.share, self.store, self.key = share, store or LocalStateStore(), f"{name}/hedge"
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
