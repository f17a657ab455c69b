"""Circuit breaker: closed -> open -> half-open -> closed, on a failure-rate window.

States and what takes the breaker out of each::

    closed     calls pass; outcomes fill the window. When the window holds >= min_calls
               outcomes and failures/calls >= failure_rate          -> open
    open       calls fail fast with CircuitOpen(retry_after=time left).
               open_s after opening, the next permit request          -> half_open
    half_open  up to half_open_probes calls pass as probes, the rest fail fast.
               all probes succeed                                     -> closed (window cleared)
               any probe fails                                        -> open (timer restarts)
               probes issued but unanswered for open_s (their callers
               died)                                                  -> probes re-issued

Decisions:
- The window is count-based (the last ``window_calls`` outcomes) unless ``window_s`` is
  given; then it is time-based: ``WINDOW_BUCKETS`` buckets of ``window_s / 10`` each, the
  outcomes of the last ``window_s`` seconds (resilience4j's two kinds).
- An outcome reported for a permit given before the last transition is dropped: a slow call
  that started while closed must not reopen a breaker that has since closed again.
- The state lives in a ``StateStore`` so that with the shared store every agent of the machine
  sees one breaker. Transitions are reported to listeners in the process that made them
  (``origin="local"``) and, once, in every other process that notices them on its next call
  (``origin="observed"``), so each agent's trace shows the breaker it ran into.
- Defaults: failure_rate 0.5, window_calls 20, min_calls 10, open_s 30, half_open_probes 3.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.bounds import MAX_WAIT_S, check_number
from runtime.errors import InvalidInput

from .errors import CircuitOpen
from .state import LocalStateStore, StateStore

__all__ = ["CLOSED", "OPEN", "HALF_OPEN", "BreakerConfig", "Permit", "CircuitBreaker", "BreakerCodec",
           "WINDOW_BUCKETS", "MAX_WINDOW_CALLS"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
_STATES = (CLOSED, OPEN, HALF_OPEN)
WINDOW_BUCKETS = 10
MAX_WINDOW_CALLS = 1000  # keeps one record under 1.1 KB (a shared-memory slot is 2 KB)


@dataclass(frozen=True)
class BreakerConfig:
    failure_rate: float = 0.5
    window_calls: int = 20
    window_s: float | None = None
    min_calls: int = 10
    open_s: float = 30.0
    half_open_probes: int = 3

    def __post_init__(self) -> None:
        if not (isinstance(self.failure_rate, (int, float)) and 0 < self.failure_rate <= 1):
            raise InvalidInput(f"breaker failure_rate must be in (0, 1], got {self.failure_rate!r}",
                               hint="0.5 opens when half the calls in the window failed")
        _positive_int("window_calls", self.window_calls, MAX_WINDOW_CALLS)
        _positive_int("min_calls", self.min_calls, 10**9)
        _positive_int("half_open_probes", self.half_open_probes, 10**6)
        if self.window_s is not None:
            check_number("breaker window_s", self.window_s, 0.001, MAX_WAIT_S, hint="leave it out for a count window")
        check_number("breaker open_s", self.open_s, 0, MAX_WAIT_S)
        if self.window_s is None and self.min_calls > self.window_calls:
            raise InvalidInput(f"breaker min_calls ({self.min_calls}) exceeds window_calls ({self.window_calls}): "
                               "it could never open", hint="lower min_calls or widen the window")


def _positive_int(name: str, value: Any, most: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most):
        raise InvalidInput(f"breaker {name} must be an int in 1..{most}, got {value!r}")


@dataclass
class _Record:
    """The shared state of one breaker (see ``BreakerCodec`` for its bytes)."""

    state: int = 0
    gen: int = 0
    since: float = 0.0
    probes_issued: int = 0
    probes_ok: int = 0
    head: int = 0
    filled: int = 0
    ring: bytearray = field(default_factory=bytearray)  # count window: 1 = failure
    ids: list[int] = field(default_factory=list)  # time window: bucket number per bucket
    calls: list[int] = field(default_factory=list)
    fails: list[int] = field(default_factory=list)


class BreakerCodec:
    """Fixed layout: header, then the count ring or the time buckets."""

    _HEAD = struct.Struct("<BBIdIIII")  # kind, state, gen, since, probes_issued, probes_ok, head, filled

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.timed = config.window_s is not None
        self._buckets = struct.Struct(f"<{WINDOW_BUCKETS}q{WINDOW_BUCKETS}I{WINDOW_BUCKETS}I")
        self.kind = 2 if self.timed else 1

    def new(self) -> _Record:
        if self.timed:
            n = WINDOW_BUCKETS
            return _Record(ids=[-1] * n, calls=[0] * n, fails=[0] * n)
        return _Record(ring=bytearray(self.config.window_calls))

    def pack(self, r: _Record) -> bytes:
        head = self._HEAD.pack(self.kind, r.state, r.gen, r.since, r.probes_issued, r.probes_ok, r.head, r.filled)
        if self.timed:
            return head + self._buckets.pack(*r.ids, *r.calls, *r.fails)
        return head + bytes(r.ring)

    def unpack(self, data: bytes) -> _Record | None:
        tail = self._buckets.size if self.timed else self.config.window_calls
        if len(data) != self._HEAD.size + tail or data[0] != self.kind:
            return None
        _, state, gen, since, issued, ok, head, filled = self._HEAD.unpack_from(data, 0)
        r = _Record(state, gen, since, issued, ok, head, filled)
        body = data[self._HEAD.size:]
        if self.timed:
            values = self._buckets.unpack(body)
            n = WINDOW_BUCKETS
            r.ids, r.calls, r.fails = list(values[:n]), list(values[n:2 * n]), list(values[2 * n:])
        else:
            r.ring = bytearray(body)
        return r


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; hand it back to ``record`` with the outcome."""

    gen: int
    probe: bool


Listener = Callable[..., None]  # listener(breaker=name, old=..., new=..., reason=..., origin=...)


class CircuitBreaker:
    """One named breaker over a ``StateStore`` record, on the monotonic ``clock``."""

    def __init__(self, name: str, config: BreakerConfig | None = None, *, clock: Callable[[], float],
                 store: StateStore | None = None) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.clock = clock
        self.store = store or LocalStateStore()
        self.codec = BreakerCodec(self.config)
        self.key = f"{name}/breaker"
        self.listeners: list[Listener] = []
        self._seen: tuple[int, int] = (0, 0)

    # -- public ----------------------------------------------------------------------
    def permit(self) -> Permit:
        """A permit to call now, or ``CircuitOpen`` (with ``retry_after``) when refused."""
        got = self._update(self._permit)
        if isinstance(got, CircuitOpen):
            raise got
        return got

    def record(self, permit: Permit, ok: bool) -> None:
        """Report the outcome of the call made under ``permit``."""
        self._update(lambda r, now, moves: self._record(r, now, moves, permit, ok))

    def release(self, permit: Permit) -> None:
        """Hand back a permit whose call ended without an outcome (cancelled): a probe is re-issued."""
        def give_back(r: _Record, now: float, moves: list) -> None:
            if permit.probe and permit.gen == r.gen and r.state == 2 and r.probes_issued > r.probes_ok:
                r.probes_issued -= 1
        self._update(give_back)

    def state(self) -> str:
        """The state now (a due open -> half-open move is made by the next permit, not here)."""
        return _STATES[self._update(lambda r, now, moves: r.state)]

    def stats(self) -> dict[str, Any]:
        """State, generation and the window's calls and failures (for ``agora top`` and tests)."""
        def read(r: _Record, now: float, moves: list) -> dict[str, Any]:
            calls, fails = self._window(r, now)
            return {"state": _STATES[r.state], "gen": r.gen, "calls": calls, "failures": fails,
                    "probes_issued": r.probes_issued, "probes_ok": r.probes_ok}
        return self._update(read)

    def reset(self) -> None:
        """Force closed with an empty window (an operator's action)."""
        self._update(lambda r, now, moves: self._move(r, now, moves, CLOSED, "reset"))

    # -- transitions (pure, on the record, under the store's lock) --------------------
    def _permit(self, r: _Record, now: float, moves: list) -> Permit | CircuitOpen:
        cfg = self.config
        if r.state == 1 and now - r.since >= cfg.open_s:
            self._move(r, now, moves, HALF_OPEN, f"open for {cfg.open_s:g} s")
        if r.state == 0:
            return Permit(r.gen, probe=False)
        if r.state == 2:
            if r.probes_issued >= cfg.half_open_probes and now - r.since >= cfg.open_s:
                r.probes_issued, r.probes_ok, r.since = r.probes_ok, r.probes_ok, now  # lost probes: re-issue
            if r.probes_issued < cfg.half_open_probes:
                r.probes_issued += 1
                return Permit(r.gen, probe=True)
            return CircuitOpen(f"service {self.name!r}: circuit half-open, all {cfg.half_open_probes} probe calls "
                               "in flight", retry_after=None, service=self.name, state=HALF_OPEN)
        left = max(0.0, cfg.open_s - (now - r.since))
        return CircuitOpen(f"service {self.name!r}: circuit open after repeated failures; {left:.3g} s "
                           "until a probe call is let through", retry_after=left, service=self.name, state=OPEN)

    def _record(self, r: _Record, now: float, moves: list, permit: Permit, ok: bool) -> None:
        if permit.gen != r.gen:
            return  # the breaker moved since this call started: its outcome belongs to a past state
        if r.state == 2:
            self._record_probe(r, now, moves, ok)
        elif r.state == 0:
            self._add_outcome(r, now, ok)
            calls, fails = self._window(r, now)
            if calls >= self.config.min_calls and fails >= self.config.failure_rate * calls:
                self._move(r, now, moves, OPEN, f"{fails} of the last {calls} calls failed")

    def _record_probe(self, r: _Record, now: float, moves: list, ok: bool) -> None:
        if not ok:
            self._move(r, now, moves, OPEN, "a half-open probe call failed")
            return
        r.probes_ok += 1
        if r.probes_ok >= self.config.half_open_probes:
            self._move(r, now, moves, CLOSED, f"{r.probes_ok} probe calls succeeded")

    def _move(self, r: _Record, now: float, moves: list, to: str, reason: str) -> None:
        old = _STATES[r.state]
        r.state, r.gen, r.since = _STATES.index(to), (r.gen + 1) & 0xFFFFFFFF, now
        r.probes_issued = r.probes_ok = 0
        if to == CLOSED:
            self._clear_window(r)
        moves.append((old, to, reason, r.gen))

    # -- the window ------------------------------------------------------------------
    def _add_outcome(self, r: _Record, now: float, ok: bool) -> None:
        if not self.codec.timed:
            n = len(r.ring)
            r.ring[r.head] = 0 if ok else 1
            r.head, r.filled = (r.head + 1) % n, min(n, r.filled + 1)
            return
        bucket = self._bucket(now)
        i = bucket % WINDOW_BUCKETS
        if r.ids[i] != bucket:
            r.ids[i], r.calls[i], r.fails[i] = bucket, 0, 0
        r.calls[i] += 1
        r.fails[i] += 0 if ok else 1

    def _window(self, r: _Record, now: float) -> tuple[int, int]:
        if not self.codec.timed:
            return r.filled, sum(r.ring)  # unwritten places are 0 (a cleared ring is all zeros)
        oldest = self._bucket(now) - WINDOW_BUCKETS + 1
        live = [i for i in range(WINDOW_BUCKETS) if r.ids[i] >= oldest]
        return sum(r.calls[i] for i in live), sum(r.fails[i] for i in live)

    def _bucket(self, now: float) -> int:
        assert self.config.window_s is not None
        return math.floor(now / (self.config.window_s / WINDOW_BUCKETS))

    def _clear_window(self, r: _Record) -> None:
        fresh = self.codec.new()
        r.head, r.filled, r.ring, r.ids, r.calls, r.fails = 0, 0, fresh.ring, fresh.ids, fresh.calls, fresh.fails

    # -- store and listeners ---------------------------------------------------------
    def _update(self, step: Callable[[_Record, float, list], Any]) -> Any:
        moves: list[tuple[str, str, str, int]] = []
        seen: list[tuple[int, int]] = []

        def run(r: _Record) -> Any:
            seen.append((r.gen, r.state))
            return step(r, self.clock(), moves)
        result = self.store.update(self.key, self.codec, run)
        self._report(seen[0], moves)
        return result

    def _report(self, before: tuple[int, int], moves: list[tuple[str, str, str, int]]) -> None:
        if before != self._seen and before[0] != self._seen[0]:
            self._emit(_STATES[self._seen[1]], _STATES[before[1]], "moved by another process", "observed")
        for old, new, reason, _gen in moves:
            self._emit(old, new, reason, "local")
        if moves:
            self._seen = (moves[-1][3], _STATES.index(moves[-1][1]))
        else:
            self._seen = before

    def _emit(self, old: str, new: str, reason: str, origin: str) -> None:
        for listener in list(self.listeners):
            listener(breaker=self.name, old=old, new=new, reason=reason, origin=origin)
