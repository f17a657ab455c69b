"""A named external service and the guards around every call to it, from one config table.

The ``[services.<name>]`` table of agora.toml (every key optional)::

    timeout_s        30      per attempt; 0 or absent-with-none = no timeout
    retries          2       retries after the first attempt (so 3 attempts)
    backoff          0.1     base seconds, or a table {base_s = 0.1, cap_s = 5, max_retry_after_s = 60}
    breaker          {}      a table of BreakerConfig fields, or false to disable
    rate                     requests per second (absent: no limit); burst = one second's worth
    burst
    tokens_per_s             token budget per second (LLM); token_burst = one second's worth
    token_burst
    max_wait_s               a throttle wait above this raises Throttled (absent: always wait)
    cache_ttl_s      0       0 disables the cache and in-flight de-duplication
    cache_size       1024
    batch_window_ms  10      for ``batched`` functions only
    batch_max        16
    hedge_after_s    0       async calls only: a second attempt after this long if the first has
                             not answered, the first answer wins (0 = off; for idempotent calls)
    hedge_budget     0.1     hedges are at most this share of the calls, machine-wide (1 = every
                             slow call may be hedged; runtime.guards.budget)
    retry_budget             retries per call at most, on average over the machine's calls, plus
                             10 (0.2: a fifth of the calls; absent: no limit; runtime.guards.budget)

A call goes: cache (hit / join an identical call in flight / lead; in an agent, behind this
process's cache, the machine's: a stored answer, runtime.guards.shared_cache, or an identical
call in another agent, runtime.guards.flights) -> [batch] -> retry loop of
attempts; each attempt: breaker permit -> rate limiter wait -> the call under the timeout ->
outcome to the breaker. The breaker counts only *retryable* errors (and timeouts) as failures:
a service that answers "bad request" is healthy.

Use: ``svc.call(fn, *a)``, ``await svc.acall(fn, *a)``, ``@svc`` on a sync or async function,
``svc.batched(fn)``, or ``with svc.attempt():`` / ``async with svc.attempt():`` around any code
(one attempt: breaker, limiter and timeout; no retry or cache, since a block cannot be re-run).

Every guard decision is ``on_event(name, service=..., **fields)``: ``breaker_transition``,
``breaker_reject``, ``throttle_wait``, ``cache_hit``, ``cache_join``, ``cache_miss``,
``batch_join``, ``batch_flush``, ``retry``, ``retry_denied``, ``timeout``, ``hedge``, ``hedge_won``,
``hedge_denied``;
``Service.counts`` counts them.

Hedged requests (``hedge_after_s``, "The Tail at Scale"): an awaited attempt that has not
answered after ``hedge_after_s`` gets a twin (its own breaker permit, limiter tokens and
timeout); the first success wins and the other is cancelled (its permit handed back
unjudged); only when both fail does the retry loop see the (last) error.  It cuts the tail
of a heavy-tailed service for about P(latency > hedge_after_s) more calls.  Only ``acall``
and the async transport hedge: a sync call runs in its caller's thread and has no second
thread to race; the transport hedges idempotent methods and ``cache_methods`` only, and a
caller opts a call out with ``acall_with(..., hedge=False)``.  At most ``hedge_budget`` of a
service's calls are hedged, machine-wide (runtime.guards.budget): against a saturated service,
where every answer is slow, a twin per call would double its load.  Retries have a budget of
their own (``retry_budget``, off by default: see runtime.guards.budget): a saturated
service times out every attempt, and a retry of each would multiply its queue (a retry storm).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

import orjson

from runtime.bounds import MAX_WAIT_S, check_number
from runtime.errors import DeadlineExceeded, InvalidInput, NotFound

from .batcher import AsyncMicroBatcher, MicroBatcher
from .breaker import BreakerConfig, CircuitBreaker, Permit
from .budget import Budget
from .cache import Hit, Join, ResultCache
from .errors import CallTimeout, CircuitOpen, is_retryable
from .flights import FOLLOW, LeaderGone, SharedFlights
from .limiter import LimiterConfig, RateLimiter
from .retry import RetryPolicy
from .shared_cache import SharedResults
from .state import LocalStateStore, StateStore
from .timeout import Deadline, _current, run_async, run_sync

__all__ = ["ServiceConfig", "Service", "Attempt", "Guards", "default_key"]

T = TypeVar("T")
OnEvent = Callable[..., None]
MAX_RETRIES = 100  # retries per call: more is a loop, not a guard
_KEYS = {"timeout_s", "retries", "backoff", "breaker", "rate", "burst", "tokens_per_s", "token_burst",
         "max_wait_s", "cache_ttl_s", "cache_size", "batch_window_ms", "batch_max", "hedge_after_s",
         "hedge_budget", "retry_budget"}


@dataclass(frozen=True)
class ServiceConfig:
    timeout_s: float | None = 30.0
    retries: int = 2
    base_s: float = 0.1
    cap_s: float = 5.0
    max_retry_after_s: float = 60.0
    breaker: BreakerConfig | None = field(default_factory=BreakerConfig)
    limiter: LimiterConfig = field(default_factory=LimiterConfig)
    max_wait_s: float | None = None
    cache_ttl_s: float = 0.0
    cache_size: int = 1024
    batch_window_ms: float = 10.0
    batch_max: int = 16
    hedge_after_s: float = 0.0
    hedge_budget: float = 0.1
    retry_budget: float | None = None

    @classmethod
    def from_dict(cls, name: str, table: Mapping[str, Any]) -> ServiceConfig:
        """Validate a ``[services.<name>]`` table; unknown keys are errors (typos would be silent)."""
        if not isinstance(table, Mapping):
            raise InvalidInput(f"[services.{name}] must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - _KEYS)
        if unknown:
            raise InvalidInput(f"[services.{name}] has unknown key(s) {unknown}", hint=f"known keys: {sorted(_KEYS)}")
        kw: dict[str, Any] = {k: table[k] for k in ("retries", "max_wait_s", "cache_ttl_s", "cache_size",
                                                    "batch_window_ms", "batch_max", "hedge_after_s",
                                                    "hedge_budget", "retry_budget")
                               if k in table}
        if "timeout_s" in table:
            kw["timeout_s"] = table["timeout_s"] or None
        kw.update(_backoff(name, table.get("backoff")))
        try:
            kw["breaker"] = _breaker(name, table.get("breaker", {}))
            kw["limiter"] = LimiterConfig(**{k: table[k] for k in ("rate", "burst", "tokens_per_s", "token_burst")
                                             if k in table})
            return cls(**kw)
        except InvalidInput as e:  # the value checks do not know the table: name it
            if e.message.startswith("[services."):
                raise
            raise InvalidInput(f"[services.{name}] {e.message}", hint=e.hint) from None

    def __post_init__(self) -> None:
        check_number("retries", self.retries, 0, MAX_RETRIES, integer=True)
        for name in ("timeout_s", "max_wait_s"):
            value = getattr(self, name)
            if value is not None:
                check_number(name, value, 0, MAX_WAIT_S, low_open=True, hint="leave it out for none")
        for name in ("base_s", "cap_s", "max_retry_after_s"):
            check_number(f"backoff {name}", getattr(self, name), 0, MAX_WAIT_S)
        check_number("hedge_after_s", self.hedge_after_s, 0, MAX_WAIT_S, hint="0 = no hedging")
        check_number("hedge_budget", self.hedge_budget, 0, 1, low_open=True,
                     hint="the share of calls that may be hedged (1: every slow one)")
        if self.retry_budget is not None:
            check_number("retry_budget", self.retry_budget, 0, MAX_RETRIES, low_open=True,
                         hint="retries per call on average (0.2: a fifth of the calls; leave it out for no limit)")
        check_number("cache_ttl_s", self.cache_ttl_s, 0, 10 * 365 * 86400, hint="0 = no cache")
        check_number("batch_window_ms", self.batch_window_ms, 0, 60_000)
        check_number("cache_size", self.cache_size, 1, 10**9, integer=True)
        check_number("batch_max", self.batch_max, 1, 10**6, integer=True)


def _backoff(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"base_s": value}
    if isinstance(value, Mapping) and set(value) <= {"base_s", "cap_s", "max_retry_after_s"}:
        return dict(value)
    raise InvalidInput(f"[services.{name}].backoff must be base seconds or a table of base_s, cap_s, "
                       f"max_retry_after_s; got {value!r}")


def _breaker(name: str, value: Any) -> BreakerConfig | None:
    if value is False:
        return None
    known = {f.name for f in fields(BreakerConfig)}
    if not isinstance(value, Mapping) or not set(value) <= known:
        raise InvalidInput(f"[services.{name}].breaker must be false or a table of {sorted(known)}; got {value!r}")
    return BreakerConfig(**value)


def default_key(fn: Callable, args: tuple, kwargs: Mapping[str, Any]) -> bytes:
    """The function's qualified name and its arguments as canonical JSON (sorted keys)."""
    try:
        return orjson.dumps([f"{fn.__module__}.{fn.__qualname__}", args, kwargs],
                            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as e:
        raise InvalidInput(f"cannot make a cache key for {fn.__qualname__}: its arguments are not JSON ({e})",
                           hint="pass key=callable(fn, args, kwargs) to the Service, or disable cache_ttl_s") from e


class Service:
    """The guards of one named service; shared breaker and limiter when ``store`` is shared."""

    def __init__(self, name: str, config: ServiceConfig | Mapping[str, Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic, store: StateStore | None = None,
                 on_event: OnEvent | None = None, rng: random.Random | None = None,
                 retryable: Callable[[BaseException], bool] = is_retryable,
                 key: Callable[[Callable, tuple, Mapping[str, Any]], Any] = default_key,
                 sleep: Callable[[float], None] = time.sleep,
                 asleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 flights_dir: str | None = None) -> None:
        cfg = config if isinstance(config, ServiceConfig) else ServiceConfig.from_dict(name, config or {})
        self.name, self.config, self.clock = name, cfg, clock
        self.counts: Counter[str] = Counter()
        self._on_event, self._key, self._sleep, self._asleep = on_event, key, sleep, asleep
        store = store or LocalStateStore()
        self.retry = RetryPolicy(cfg.retries + 1, cfg.base_s, cfg.cap_s, cfg.max_retry_after_s,
                                 rng or random.Random(), retryable)
        self.breaker = CircuitBreaker(name, cfg.breaker, clock=clock, store=store) if cfg.breaker else None
        if self.breaker:
            self.breaker.listeners.append(lambda **f: self.emit("breaker_transition", **f))
        self.limiter = RateLimiter(name, cfg.limiter, clock=clock, store=store)
        self.hedges = Budget(name, "hedge", cfg.hedge_budget, store)
        # (none, or as many retries per call as the policy allows: no limit, no budget kept)
        budget = cfg.retry_budget
        self.retry_budget = Budget(name, "retry", budget, store) if budget is not None and budget < cfg.retries else None
        self.cache = ResultCache(ttl_s=cfg.cache_ttl_s, size=cfg.cache_size, clock=clock)
        # machine-wide in-flight de-duplication (runtime.guards.flights): with a directory for results
        self.flights = SharedFlights(name, store, flights_dir) if flights_dir and self.cache.enabled else None
        # and the machine-wide answers behind the local cache (runtime.guards.shared_cache)
        self.shared = SharedResults(name, flights_dir, cfg.cache_ttl_s, cfg.cache_size) if self.flights else None
        per_attempt = (cfg.timeout_s or 600.0) + cfg.cap_s + max(cfg.max_retry_after_s, 0)
        self.wait_bound_s = self.retry.max_attempts * per_attempt + cfg.batch_window_ms / 1000

    def emit(self, event: str, **fields: Any) -> None:
        """Count the decision and hand it to ``on_event`` (the runtime traces and meters it)."""
        self.counts[event] += 1
        if self._on_event is not None:
            fields.setdefault("service", self.name)
            self._on_event(event, **fields)

    # -- sync ------------------------------------------------------------------------
    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` under every guard."""
        return self.call_with(fn, args, kwargs)

    def call_with(self, fn: Callable[..., T], args: tuple = (), kwargs: Mapping[str, Any] | None = None, *,
                  tokens: float = 0.0, key: Any = None, cache: bool = True) -> T:
        """``call`` with a token estimate for the limiter, an explicit cache key, or no cache."""
        kwargs = kwargs or {}
        run = functools.partial(self._retrying, lambda: fn(*args, **kwargs), tokens)
        if not (cache and self.cache.enabled):
            return run()
        return self._cached(self._cache_key(fn, args, kwargs, key), run)

    def _cache_key(self, fn: Callable, args: tuple, kwargs: Mapping[str, Any], key: Any) -> Any:
        """``key``, else the key function's."""
        return self._hashable(self._key(fn, args, kwargs) if key is None else key)

    def _hashable(self, key: Any) -> Any:
        """A cache key as it is, or a typed error naming the service (not the cache's TypeError)."""
        try:
            hash(key)
        except TypeError as e:
            raise InvalidInput(f"service {self.name!r}: a cache key must be hashable, got {type(key).__name__}",
                               hint="use a str, bytes or tuple (bytes and str are shared by the machine's "
                                    "agents), or call with cache=False") from e
        return key

    def _cached(self, key: Any, compute: Callable[[], T]) -> T:
        step = self.cache.begin(key)
        if isinstance(step, Hit):
            self.emit("cache_hit")
            return step.value
        if isinstance(step, Join):
            self.emit("cache_join")
            try:
                return step.future.result(timeout=self.wait_bound_s)
            except FutureTimeout as e:
                if step.future.done():
                    raise  # the leader's own error, a TimeoutError of its call
                raise DeadlineExceeded(f"the identical call to service {self.name!r} that this one joined gave "
                                       f"no answer in {self.wait_bound_s:g} s",
                                       hint="set [services.<name>].timeout_s so a hung call ends") from e
        try:
            value = self._shared(key, compute)
        except BaseException as e:
            self.cache.fail(key, step, e)
            raise
        self.cache.finish(key, step, value)
        return value

    def _shared(self, key: Any, compute: Callable[[], T]) -> T:
        """This process leads ``key``: follow an identical call of another process, or lead
        (``cache_miss``: this call is made here)."""
        digest = self.flights.digest(key) if self.flights else None
        if digest is None or self.flights is None or self.shared is None:
            self.emit("cache_miss")
            return compute()
        hit, value = self.shared.get(digest)
        if hit:
            self.emit("cache_hit", scope="machine")
            return value
        while self.flights.begin(digest) == FOLLOW:
            self.emit("cache_join", scope="machine")
            try:
                return self._follow(digest)
            except LeaderGone:
                continue  # the other process failed or died: lead (or follow whoever does now)
        # LEAD, or ALONE (the board was full): the call is made here; an ALONE answer goes to
        # the machine's cache only (``SharedFlights.finish`` publishes to this process's flight)
        self.emit("cache_miss")
        try:
            value = compute()
        except BaseException:
            self.flights.fail(digest)
            raise
        self._publish(digest, value)
        return value

    def _publish(self, digest: bytes, value: Any) -> None:
        """The leader's answer: to the machine's cache first (a caller arriving once the
        flight is over finds it there), then to the flight's followers."""
        assert self.flights is not None and self.shared is not None
        self.shared.put(digest, value)
        self.flights.finish(digest, value)

    def _follow(self, digest: bytes) -> Any:
        assert self.flights is not None
        deadline, delay = time.monotonic() + self.wait_bound_s, SharedFlights.POLL_S[0]
        try:
            while time.monotonic() < deadline:
                done, value = self.flights.poll(digest)
                if done:
                    return value
                self._sleep(delay)
                delay = min(delay * 2, SharedFlights.POLL_S[1])
        except BaseException as e:
            if not isinstance(e, LeaderGone):
                self.flights.abandon(digest)
            raise
        self.flights.abandon(digest)
        raise self._flight_timed_out()

    def _flight_timed_out(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"the identical call to service {self.name!r} in another agent gave no answer "
                                f"in {self.wait_bound_s:g} s", hint="set [services.<name>].timeout_s so a hung call ends")

    def _retrying(self, thunk: Callable[[], T], tokens: float) -> T:
        self._deposit_retry()
        attempt = 1
        while True:
            try:
                return self._attempt(thunk, tokens)
            except Exception as e:
                delay = self._next_delay(attempt, e)
                if delay is None:
                    raise
            self._sleep(delay)
            attempt += 1

    def _attempt(self, thunk: Callable[[], T], tokens: float) -> T:
        permit = self._permit()
        ok: bool | None = None
        try:
            self._throttle(tokens)
            result = run_sync(thunk, self._deadline())
            ok = True
            return result
        except Exception as e:
            ok = self._healthy(e)
            raise
        finally:
            self._settle(permit, ok)

    def _throttle(self, tokens: float) -> None:
        wait = self.limiter.acquire(tokens, max_wait=self.config.max_wait_s)
        if wait > 0:
            self.emit("throttle_wait", wait_s=wait, tokens=tokens)
            self._sleep(wait)

    # -- async -----------------------------------------------------------------------
    async def acall(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Await ``fn(*args, **kwargs)`` under every guard."""
        return await self.acall_with(fn, args, kwargs)

    async def acall_with(self, fn: Callable[..., Awaitable[T]], args: tuple = (),
                         kwargs: Mapping[str, Any] | None = None, *, tokens: float = 0.0, key: Any = None,
                         cache: bool = True, hedge: bool = True) -> T:
        """``acall`` with a token estimate, an explicit cache key, no cache, or no hedging."""
        kwargs = kwargs or {}
        run = functools.partial(self._aretrying, lambda: fn(*args, **kwargs), tokens,
                                hedge and self.config.hedge_after_s > 0)
        if not (cache and self.cache.enabled):
            return await run()
        return await self._acached(self._cache_key(fn, args, kwargs, key), run)

    async def _acached(self, key: Any, compute: Callable[[], Awaitable[T]]) -> T:
        step = self.cache.begin(key)
        if isinstance(step, Hit):
            self.emit("cache_hit")
            return step.value
        if isinstance(step, Join):
            self.emit("cache_join")
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(step.future)), self.wait_bound_s)
        try:
            value = await self._ashared(key, compute)
        except BaseException as e:  # a cancelled leader fails its joiners too; they may call again
            self.cache.fail(key, step, e if isinstance(e, Exception) else CallTimeout(
                f"the identical call to service {self.name!r} that this one joined was cancelled"))
            raise
        self.cache.finish(key, step, value)
        return value

    async def _ashared(self, key: Any, compute: Callable[[], Awaitable[T]]) -> T:
        """``_shared`` on the event loop."""
        digest = self.flights.digest(key) if self.flights else None
        if digest is None or self.flights is None or self.shared is None:
            self.emit("cache_miss")
            return await compute()
        hit, value = self.shared.get(digest)
        if hit:
            self.emit("cache_hit", scope="machine")
            return value
        while self.flights.begin(digest) == FOLLOW:
            self.emit("cache_join", scope="machine")
            try:
                return await self._afollow(digest)
            except LeaderGone:
                continue  # the other process failed or died: try to lead
        self.emit("cache_miss")
        try:
            value = await compute()
        except BaseException:
            self.flights.fail(digest)
            raise
        self._publish(digest, value)
        return value

    async def _afollow(self, digest: bytes) -> Any:
        assert self.flights is not None
        deadline, delay = time.monotonic() + self.wait_bound_s, SharedFlights.POLL_S[0]
        try:
            while time.monotonic() < deadline:
                done, value = self.flights.poll(digest)
                if done:
                    return value
                await self._asleep(delay)
                delay = min(delay * 2, SharedFlights.POLL_S[1])
        except BaseException as e:
            if not isinstance(e, LeaderGone):
                self.flights.abandon(digest)
            raise
        self.flights.abandon(digest)
        raise self._flight_timed_out()

    async def _aretrying(self, thunk: Callable[[], Awaitable[T]], tokens: float, hedge: bool = False) -> T:
        self._deposit_retry()
        attempt = 1
        while True:
            try:
                if hedge:
                    return await self._ahedged(thunk, tokens)
                return await self._aattempt(thunk, tokens)
            except Exception as e:
                delay = self._next_delay(attempt, e)
                if delay is None:
                    raise
            await self._asleep(delay)
            attempt += 1

    async def _aattempt(self, thunk: Callable[[], Awaitable[T]], tokens: float) -> T:
        permit = self._permit()
        ok: bool | None = None
        try:
            await self._athrottle(tokens)
            result = await run_async(thunk, self._deadline())
            ok = True
            return result
        except Exception as e:
            ok = self._healthy(e)
            raise
        finally:
            self._settle(permit, ok)

    async def _ahedged(self, thunk: Callable[[], Awaitable[T]], tokens: float) -> T:
        """One attempt, and its twin if it has not answered in ``hedge_after_s``: the first
        success wins; both failed raises the last error (the retry loop decides what follows).
        Whatever ends this call (an answer, an error, its own cancellation), no attempt of it
        is left running."""
        self.hedges.deposit()
        first = asyncio.ensure_future(self._aattempt(thunk, tokens))
        pending: set[asyncio.Future[T]] = {first}
        try:
            done, pending = await asyncio.wait(pending, timeout=self.config.hedge_after_s)
            if done:
                return first.result()
            if not self.hedges.try_spend():  # the service is slow for everyone: no twin
                self.emit("hedge_denied", budget=self.config.hedge_budget)
                return await first
            self.emit("hedge", after_s=self.config.hedge_after_s)
            second = asyncio.ensure_future(self._aattempt(thunk, tokens))
            pending = {first, second}
            error: BaseException | None = None
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for f in done:
                    if f.exception() is None:
                        if f is second:
                            self.emit("hedge_won")
                        return f.result()
                    error = f.exception()
            assert error is not None
            raise error
        finally:
            running = [f for f in pending if not f.done()]
            for f in running:  # the loser, or every attempt when this call itself is cancelled
                f.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _athrottle(self, tokens: float) -> None:
        wait = self.limiter.acquire(tokens, max_wait=self.config.max_wait_s)
        if wait > 0:
            self.emit("throttle_wait", wait_s=wait, tokens=tokens)
            await self._asleep(wait)

    # -- shared steps ----------------------------------------------------------------
    def _permit(self) -> Permit | None:
        if self.breaker is None:
            return None
        try:
            return self.breaker.permit()
        except CircuitOpen as e:
            self.emit("breaker_reject", retry_after=e.retry_after)
            raise

    def _settle(self, permit: Permit | None, ok: bool | None) -> None:
        """Outcome to the breaker; None (cancelled, interrupted) hands a probe back unjudged."""
        if self.breaker is None or permit is None:
            return
        if ok is None:
            self.breaker.release(permit)
        else:
            self.breaker.record(permit, ok)

    def _healthy(self, exc: BaseException) -> bool:
        if isinstance(exc, CallTimeout):
            self.emit("timeout", timeout_s=self.config.timeout_s)
            return False
        return not self.retry.retryable(exc)

    def _deadline(self) -> Deadline | None:
        t = self.config.timeout_s
        return Deadline(self.clock, t, f"a call to service {self.name!r}") if t else None

    def _deposit_retry(self) -> None:
        if self.retry_budget is not None:
            self.retry_budget.deposit()

    def _next_delay(self, attempt: int, exc: Exception) -> float | None:
        """The wait before the next attempt, or None: give up (the policy says so, or the
        machine's retry budget is spent).  Every retry loop deposits once per call."""
        delay = self.retry.next_delay(attempt, exc)
        if delay is None:
            return None
        if self.retry_budget is not None and not self.retry_budget.try_spend():  # failing for many callers: no multiplying
            self.emit("retry_denied", attempt=attempt, error=type(exc).__name__, budget=self.config.retry_budget)
            return None
        self.emit("retry", attempt=attempt, delay_s=delay, error=type(exc).__name__,
                  retry_after=getattr(exc, "retry_after", None))
        return delay

    # -- decorator, batch, context manager -------------------------------------------
    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``@service``: every call of ``fn`` (sync or ``async def``) goes through the guards."""
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                return await self.acall_with(fn, args, kwargs)
            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            return self.call_with(fn, args, kwargs)
        return guarded

    def batched(self, batch_fn: Callable[[list], Any], *,
                key: Callable[[Any], Any] | None = None, hedge: bool = False) -> Callable[[Any], Any]:
        """An item function over ``batch_fn(items) -> results``: items are cached (by ``key(item)``,
        default the service's key of ``batch_fn(item)``; a key of None skips the cache), then
        batched, and each batch is one guarded call (retries, breaker, limiter, timeout; with
        ``hedge`` and an async ``batch_fn``, hedged as ``acall`` is: say so only for a batch
        that may be sent twice).

        A result that is an exception is that item's error alone: never cached, and, when it is
        retryable (a 5xx of one item in a batch that answered), that item is sent again, in a
        later batch, up to ``retries`` times with the same backoff.  A batch whose *every* item
        is a retryable error is a failed call: the breaker counts it as one (an outage that
        answers 200 with a 500 per item must open the breaker) and the retry loop sends the
        batch again; with some items answered the call succeeded."""
        cfg = self.config
        hedged = hedge and cfg.hedge_after_s > 0

        def key_of(item: Any) -> Any:
            k = key(item) if key is not None else self._key(batch_fn, (item,), {})
            return None if k is None else self._hashable(k)
        if inspect.iscoroutinefunction(batch_fn):
            async def guarded_batch(items: list) -> Any:
                async def once() -> Any:
                    return self._judged(await batch_fn(items))
                return self._mark_items(await self._aretrying(once, 0.0, hedged))
            ab = AsyncMicroBatcher(self.name, guarded_batch, window_s=cfg.batch_window_ms / 1000,
                                   max_size=cfg.batch_max, on_event=self.emit, result_wait_s=self.wait_bound_s)

            @functools.wraps(batch_fn)
            async def item_async(item: Any) -> Any:
                k = key_of(item) if self.cache.enabled else None
                if k is None:  # no cache, or the key function says "do not cache this one"
                    return await self._aitem_retrying(lambda: ab.submit(item))
                return await self._aitem_retrying(lambda: self._acached(k, lambda: ab.submit(item)))
            return item_async
        def guarded_sync_batch(items: list) -> Any:
            return self._mark_items(self._retrying(lambda: self._judged(batch_fn(items)), 0.0))
        sb = MicroBatcher(self.name, guarded_sync_batch,
                          window_s=cfg.batch_window_ms / 1000, max_size=cfg.batch_max,
                          on_event=self.emit, result_wait_s=self.wait_bound_s)

        @functools.wraps(batch_fn)
        def item(value: Any) -> Any:
            k = key_of(value) if self.cache.enabled else None
            if k is None:  # no cache, or the key function says "do not cache this one"
                return self._item_retrying(lambda: sb.submit(value))
            return self._item_retrying(lambda: self._cached(k, lambda: sb.submit(value)))
        return item

    def _judged(self, results: Any) -> Any:
        """A batch's answer, or its last item's error raised when every item is a retryable
        error (the attempt failed: the breaker and the retry loop see it)."""
        if (isinstance(results, list) and results
                and all(isinstance(r, Exception) and self.retry.retryable(r) for r in results)):
            raise results[-1]
        return results

    def _mark_items(self, results: Any) -> Any:
        """A batch's answer with each item's retryable error marked: its caller sends it again."""
        if not isinstance(results, list):
            return results  # malformed: the batcher fails every item with a clear error
        return [_ItemAgain(r) if isinstance(r, Exception) and self.retry.retryable(r) else r for r in results]

    def _item_retrying(self, once: Callable[[], T]) -> T:
        self._deposit_retry()
        attempt = 1
        while True:
            try:
                return once()
            except _ItemAgain as again:
                delay = self._next_delay(attempt, again.error)
                if delay is None:
                    raise again.error from None
            self._sleep(delay)
            attempt += 1

    async def _aitem_retrying(self, once: Callable[[], Awaitable[T]]) -> T:
        self._deposit_retry()
        attempt = 1
        while True:
            try:
                return await once()
            except _ItemAgain as again:
                delay = self._next_delay(attempt, again.error)
                if delay is None:
                    raise again.error from None
            await self._asleep(delay)
            attempt += 1

    def attempt(self, *, tokens: float = 0.0) -> Attempt:
        """One guarded attempt around a block: ``with svc.attempt():`` or ``async with``."""
        return Attempt(self, tokens)


class _ItemAgain(Exception):
    """One item's retryable error in a batch that answered (``Service.batched``): its caller
    (and any identical call that joined it) sends the item again; never cached."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Attempt:
    """Breaker permit, limiter wait and timeout around a ``with`` / ``async with`` block."""

    def __init__(self, service: Service, tokens: float) -> None:
        self.service, self.tokens = service, tokens
        self.deadline: Deadline | None = None
        self._permit: Permit | None = None
        self._token: Any = None
        self._scope: asyncio.Timeout | None = None

    def __enter__(self) -> Attempt:
        self._permit = self.service._permit()
        try:
            self.service._throttle(self.tokens)
        except BaseException:
            self.service._settle(self._permit, None)
            raise
        self._open_deadline()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: Any) -> bool:
        _current.reset(self._token)
        if e is None and self.deadline is not None and self.deadline.expired():
            self.service._settle(self._permit, self.service._healthy(self.deadline.error()))
            raise self.deadline.error()
        self._judge(e)
        return False

    async def __aenter__(self) -> Attempt:
        self._permit = self.service._permit()
        try:
            await self.service._athrottle(self.tokens)
        except BaseException:
            self.service._settle(self._permit, None)
            raise
        self._open_deadline()
        if self.deadline is not None:
            self._scope = asyncio.timeout(self.deadline.remaining())
            await self._scope.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: Any) -> bool:
        _current.reset(self._token)
        if self._scope is not None:
            try:
                await self._scope.__aexit__(et, e, tb)
            except TimeoutError as timeout:
                if not self._scope.expired():
                    self._judge(timeout)
                    raise
                err = self.deadline.error() if self.deadline else CallTimeout("timed out")
                self.service._settle(self._permit, self.service._healthy(err))
                raise err from timeout
        self._judge(e)
        return False

    def _open_deadline(self) -> None:
        self.deadline = self.service._deadline()
        self._token = _current.set(self.deadline)

    def _judge(self, e: BaseException | None) -> None:
        if e is None:
            self.service._settle(self._permit, True)
        elif isinstance(e, Exception):
            self.service._settle(self._permit, self.service._healthy(e))
        else:
            self.service._settle(self._permit, None)


class Guards:
    """The services of one config (``[services]`` of agora.toml), built once and shared."""

    def __init__(self, services: Mapping[str, Mapping[str, Any]], *, store: StateStore | None = None,
                 clock: Callable[[], float] = time.monotonic, on_event: OnEvent | None = None,
                 **service_kw: Any) -> None:
        self._configs = {name: ServiceConfig.from_dict(name, table) for name, table in services.items()}
        self._store = store or LocalStateStore()
        self._kw = dict(service_kw, clock=clock, on_event=on_event)
        self._services: dict[str, Service] = {}

    def service(self, name: str) -> Service:
        """The ``Service`` named ``name`` (what ``ctx.service(name)`` returns)."""
        if name not in self._services:
            if name not in self._configs:
                raise NotFound(f"no service named {name!r} is configured",
                               hint=f"add a [services.{name}] table to agora.toml; configured: {sorted(self._configs)}")
            self._services[name] = Service(name, self._configs[name], store=self._store, **self._kw)
        return self._services[name]

    def names(self) -> list[str]:
        return sorted(self._configs)

