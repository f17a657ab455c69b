"""Guards for calls to external services: timeouts, retries, a circuit breaker, a rate limiter,
a result cache with in-flight de-duplication, micro-batching, and an httpx transport.

Modules (pure state machines on an injected monotonic clock; no I/O except the sleeps a
``Service`` is given and the httpx transport's requests)::

    errors    CircuitOpen, CallTimeout, Throttled, ServiceError; is_retryable
    retry     RetryPolicy (full-jitter backoff, Retry-After), parse_retry_after
    timeout   Deadline, run_sync / run_async, current_deadline
    breaker   CircuitBreaker: closed / open / half-open on a count or time window
    limiter   RateLimiter: token buckets for requests/s and tokens/s; acquire returns the wait
    cache     ResultCache: TTL, LRU bound, in-flight de-duplication (one process)
    flights   SharedFlights: in-flight de-duplication across the processes of the machine
    batcher   MicroBatcher / AsyncMicroBatcher
    budget    Budget: hedges and retries at most a share of the calls, machine-wide
    state     StateStore: LocalStateStore (one process) or SharedStateStore (shm.guard_state:
              every process of the machine)
    service   ServiceConfig (the [services.<name>] table), Service (composes the guards; a
              decorator and a context manager, sync and async), Guards (all services of a config)
    http      GuardedTransport / AsyncGuardedTransport (imported on its own: it needs httpx)

Dependencies: the standard library, orjson, ``shm`` and ``runtime.errors`` (the leaf
vocabulary of error codes) only, so any layer of the runtime, or an agent, may use it.
"""

from runtime.guards.batcher import AsyncMicroBatcher, MicroBatcher
from runtime.guards.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker, Permit
from runtime.guards.cache import Hit, Join, Lead, ResultCache
from runtime.guards.errors import CallTimeout, CircuitOpen, ServiceError, Throttled, is_retryable, retry_after_of
from runtime.guards.limiter import LimiterConfig, RateLimiter
from runtime.guards.retry import RetryPolicy, parse_retry_after
from runtime.guards.service import Attempt, Guards, Service, ServiceConfig, default_key
from runtime.guards.state import Codec, LocalStateStore, SharedStateStore, StateStore
from runtime.guards.timeout import Deadline, current_deadline, run_async, run_sync

__all__ = [
    "AsyncMicroBatcher", "MicroBatcher", "CLOSED", "HALF_OPEN", "OPEN", "BreakerConfig", "CircuitBreaker",
    "Permit", "Hit", "Join", "Lead", "ResultCache", "CallTimeout", "CircuitOpen", "ServiceError", "Throttled",
    "is_retryable", "retry_after_of", "LimiterConfig", "RateLimiter", "RetryPolicy", "parse_retry_after",
    "Attempt", "Guards", "Service", "ServiceConfig", "default_key", "Codec", "LocalStateStore",
    "SharedStateStore", "StateStore", "Deadline", "current_deadline", "run_async", "run_sync",
]
