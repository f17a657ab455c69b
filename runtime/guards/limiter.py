"""Token-bucket rate limiter: requests per second and, optionally, tokens per second.

``acquire`` *reserves* and returns how long the caller must wait before calling (Guava's
RateLimiter model): the bucket may go into debt, and the debt is the wait. Reserving, rather
than "try again later", keeps the order fair among agents and needs no polling: each caller
sleeps exactly its own wait. With the shared state store one bucket serves every process of
the machine, so 20 agents on one API key stay under the key's limit together.

Decisions:
- Buckets start full: ``burst`` requests (default: one second's worth, at least 1) and
  ``token_burst`` tokens (default one second's worth).
- A call that needs more tokens than the bucket holds is not refused: it waits for the debt
  to be repaid (an LLM call of 10k tokens under a 5k/s budget waits ~2 s); ``max_wait`` makes
  the limiter raise ``Throttled`` instead of reserving a longer wait.
- Both buckets are reserved together and the wait is the larger of the two (slightly
  conservative when only one of them is short).
- ``charge(tokens)`` settles the difference once a call's real token count is known
  (positive: more used than estimated; negative: a refund, capped at the burst).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from runtime.bounds import MAX_WAIT_S, check_number

from .errors import Throttled
from .state import LocalStateStore, StateStore

__all__ = ["LimiterConfig", "RateLimiter", "LimiterCodec"]


@dataclass(frozen=True)
class LimiterConfig:
    rate: float | None = None  # requests per second; None = unlimited
    burst: float | None = None
    tokens_per_s: float | None = None
    token_burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("rate", "tokens_per_s"):  # at least one per day: no wait for one is longer
            if getattr(self, name) is not None:
                check_number(f"limiter {name}", getattr(self, name), 1 / MAX_WAIT_S, 1e12,
                             hint="per second; leave it out for no limit")
        for name in ("burst", "token_burst"):
            if getattr(self, name) is not None:
                check_number(f"limiter {name}", getattr(self, name), 0, 1e15, low_open=True,
                             hint="leave it out for one second's worth")

    @property
    def request_burst(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.rate or 1.0)

    @property
    def tokens_burst(self) -> float:
        return self.token_burst if self.token_burst is not None else max(1.0, self.tokens_per_s or 1.0)


@dataclass
class _Buckets:
    req: float
    req_at: float
    tok: float
    tok_at: float
    fresh: bool = True


class LimiterCodec:
    _S = struct.Struct("<Bdddd")

    def __init__(self, config: LimiterConfig) -> None:
        self.config = config

    def new(self) -> _Buckets:
        return _Buckets(self.config.request_burst, 0.0, self.config.tokens_burst, 0.0)

    def pack(self, b: _Buckets) -> bytes:
        return self._S.pack(3 if not b.fresh else 4, b.req, b.req_at, b.tok, b.tok_at)

    def unpack(self, data: bytes) -> _Buckets | None:
        if len(data) != self._S.size or data[0] not in (3, 4):
            return None
        kind, req, req_at, tok, tok_at = self._S.unpack(data)
        return _Buckets(req, req_at, tok, tok_at, fresh=kind == 4)


class RateLimiter:
    """One named limiter over a ``StateStore`` record, on the monotonic ``clock``."""

    def __init__(self, name: str, config: LimiterConfig, *, clock: Callable[[], float],
                 store: StateStore | None = None) -> None:
        self.name, self.config, self.clock = name, config, clock
        self.store = store or LocalStateStore()
        self.codec = LimiterCodec(config)
        self.key = f"{name}/limiter"

    @property
    def active(self) -> bool:
        return self.config.rate is not None or self.config.tokens_per_s is not None

    def acquire(self, tokens: float = 0.0, *, max_wait: float | None = None) -> float:
        """Reserve one request (and ``tokens``); return the seconds to wait before calling."""
        if not self.active:
            return 0.0
        check_number("tokens", tokens, 0, 1e15, hint="the call's token estimate")
        wait = self.store.update(self.key, self.codec, lambda b: self._reserve(b, tokens, max_wait))
        if wait < 0:
            allowed = MAX_WAIT_S if max_wait is None else max_wait
            raise Throttled(f"service {self.name!r}: the rate limit needs a wait of {-wait:.3g} s, "
                            f"more than the {allowed:g} s allowed", retry_after=-wait, service=self.name)
        return wait

    def try_acquire(self, tokens: float = 0.0) -> bool:
        """Take one request (and ``tokens``) only if no wait is needed."""
        try:
            return self.acquire(tokens, max_wait=0.0) == 0.0
        except Throttled:
            return False

    def charge(self, tokens: float) -> None:
        """Settle a call's real token use against its estimate (negative = refund)."""
        if self.config.tokens_per_s is None or not tokens:
            return
        def settle(b: _Buckets) -> None:
            self._refill(b, self.clock())
            b.tok = min(self.config.tokens_burst, b.tok - tokens)
        self.store.update(self.key, self.codec, settle)

    # -- pure ------------------------------------------------------------------------
    def _refill(self, b: _Buckets, now: float) -> None:
        cfg = self.config
        if b.fresh:  # a new record: full buckets, timed from the first use
            b.req_at = b.tok_at = now
            b.fresh = False
        if cfg.rate is not None and now > b.req_at:
            b.req = min(cfg.request_burst, b.req + (now - b.req_at) * cfg.rate)
            b.req_at = now
        if cfg.tokens_per_s is not None and now > b.tok_at:
            b.tok = min(cfg.tokens_burst, b.tok + (now - b.tok_at) * cfg.tokens_per_s)
            b.tok_at = now

    def _reserve(self, b: _Buckets, tokens: float, max_wait: float | None) -> float:
        """The wait in seconds (>= 0), or minus the wait when it exceeds ``max_wait`` (nothing reserved)."""
        cfg = self.config
        self._refill(b, self.clock())
        wait = 0.0
        if cfg.rate is not None:
            wait = max(wait, (1.0 - b.req) / cfg.rate)
        if cfg.tokens_per_s is not None and tokens > 0:
            wait = max(wait, (tokens - b.tok) / cfg.tokens_per_s)
        wait = max(0.0, wait)
        if max_wait is None:
            max_wait = MAX_WAIT_S  # "always wait" stops at a day (a token estimate in the billions)
        if wait > max_wait:
            return -wait if wait > 0 else 0.0
        if cfg.rate is not None:
            b.req -= 1.0
        if cfg.tokens_per_s is not None:
            b.tok -= tokens
        return wait
