"""httpx transports that put a ``Service``'s guards around every request.

    svc = Service("llm", {"timeout_s": 20, "retries": 3, "rate": 50, "cache_ttl_s": 600})
    client = httpx.Client(transport=GuardedTransport(svc))          # or
    anthropic.Anthropic(http_client=httpx.Client(transport=GuardedTransport(svc)))

httpx is the optional extra ``agora[http]``; this module is the only one of the package that
imports it, and ``runtime.guards`` does not import this module.

Decisions:
- Retryable: 5xx, 429 and httpx transport errors (connect, read, timeouts). ``Retry-After``
  (delta-seconds or HTTP-date) on a 429/503 is honoured as the least wait before the retry.
- When the retries are spent, the client gets the service's **last real response** (its 5xx
  or 429), or the last httpx exception, exactly as without the guard, so the SDK's own error
  handling still applies. What the guard itself refuses raises agora's typed errors:
  ``CircuitOpen`` (the breaker is open), ``Throttled`` (wait above ``max_wait_s``).
- The per-attempt deadline lowers the request's httpx timeouts to what remains of it.
- Cached (when the service has ``cache_ttl_s``): only methods in ``cache_methods`` (default GET
  and HEAD; add "POST" for deterministic model calls), keyed by method, URL and body; only
  2xx responses are stored; two identical requests in flight at once make one request.
- Batching: a ``BatchRoute`` sends JSON POSTs to ``path`` as one POST to ``batch_path`` with
  ``{"items": [body, ...]}`` and expects ``{"results": [{"status": S, "body": B}, ...]}``; both
  encodings are overridable (``encode``/``decode``) for a real API's batch format.  An item
  answered 5xx or 429 inside a batch that answered is sent again alone (in a later batch, up
  to ``retries`` times); no item's error is cached.
- Hedged (async, when the service has ``hedge_after_s``): idempotent methods and
  ``cache_methods`` only, batches of POSTs when POST is one; a POST the user has not
  declared cacheable is never sent twice.
- ``tokens(request)`` estimates a request's LLM tokens for the limiter's token budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from runtime.errors import BrokenError

from .errors import ServiceError
from .retry import parse_retry_after
from .service import Service
from .timeout import current_deadline

__all__ = ["GuardedTransport", "AsyncGuardedTransport", "BatchRoute"]

_Replay = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, raw headers, body


def _encode_batch(bodies: list[Any]) -> bytes:
    return orjson.dumps({"items": bodies})


def _decode_batch(content: bytes) -> list[tuple[int, Any]]:
    data = orjson.loads(content)
    return [(int(r["status"]), r.get("body")) for r in data["results"]]


@dataclass(frozen=True)
class BatchRoute:
    path: str
    batch_path: str
    encode: Callable[[list[Any]], bytes] = _encode_batch
    decode: Callable[[bytes], list[tuple[int, Any]]] = _decode_batch


class _Failed(ServiceError):
    """A 5xx/429 or transport error, carrying what to hand the client once retries are spent."""

    def __init__(self, message: str, *, replay: _Replay | None = None, cause: Exception | None = None,
                 retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, retryable=True, retry_after=retry_after, status=status)
        self.replay, self.cause = replay, cause


class _NotStored(Exception):
    """A response the cache must not keep (not 2xx); still the answer for the callers in flight."""

    def __init__(self, replay: _Replay) -> None:
        super().__init__("not cacheable")
        self.replay = replay


def _response(replay: _Replay, request: httpx.Request) -> httpx.Response:
    status, headers, content = replay
    return httpx.Response(status, headers=headers, content=content, request=request)


def _with_deadline(request: httpx.Request) -> None:
    deadline = current_deadline()
    if deadline is None:
        return
    left = max(0.001, deadline.remaining())
    timeouts = dict(request.extensions.get("timeout") or {})
    for k in ("connect", "read", "write", "pool"):
        v = timeouts.get(k)
        timeouts[k] = left if v is None else min(v, left)
    request.extensions = {**request.extensions, "timeout": timeouts}


def _judge(replay: _Replay, now_wall: Callable[[], float]) -> _Replay:
    status, headers, _ = replay
    if status >= 500 or status == 429:
        ra = next((v.decode("latin-1") for k, v in headers if k.lower() == b"retry-after"), None)
        raise _Failed(f"HTTP {status}", replay=replay, status=status, retry_after=parse_retry_after(ra, now_wall()))
    return replay


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # RFC 9110 9.2.2


class _Common:
    def __init__(self, service: Service, *, cache_methods: tuple[str, ...] = ("GET", "HEAD"),
                 batch: list[BatchRoute] | None = None, tokens: Callable[[httpx.Request], float] | None = None,
                 now_wall: Callable[[], float] = time.time) -> None:
        self.service, self.cache_methods = service, tuple(m.upper() for m in cache_methods)
        self.routes: Mapping[str, BatchRoute] = {r.path: r for r in batch or []}
        self.tokens, self.now_wall = tokens or (lambda request: 0.0), now_wall

    def _key(self, request: httpx.Request) -> bytes | None:
        if request.method not in self.cache_methods or not self.service.cache.enabled:
            return None
        return b"\0".join([request.method.encode(), str(request.url).encode(), request.content])

    def _hedgeable(self, request: httpx.Request) -> bool:
        """Sent twice it does no harm: an idempotent method, or one the user caches."""
        return request.method in _IDEMPOTENT or request.method in self.cache_methods

    def _route(self, request: httpx.Request) -> BatchRoute | None:
        return self.routes.get(request.url.path) if request.method == "POST" else None

    def _batch_request(self, route: BatchRoute, items: list[httpx.Request]) -> httpx.Request:
        first = items[0]
        bodies = [orjson.loads(r.content) if r.content else None for r in items]
        headers = {k: v for k, v in first.headers.items() if k.lower() not in ("content-length", "content-type")}
        return httpx.Request("POST", first.url.copy_with(path=route.batch_path), headers=headers,
                             content=route.encode(bodies), extensions=first.extensions)

    def _fan(self, route: BatchRoute, replay: _Replay, n: int) -> list[_Replay]:
        parts = route.decode(replay[2])
        if len(parts) != n:
            raise BrokenError(f"batch endpoint {route.batch_path} answered {len(parts)} results for {n} items",
                              hint="check the BatchRoute's encode/decode against the API's batch format")
        ctype = [(b"content-type", b"application/json")]
        return [self._item((status, ctype, orjson.dumps(body))) for status, body in parts]

    def _item(self, replay: _Replay) -> _Replay | Exception:
        """One item of a batch's answer: a 5xx/429 is that item's retryable failure, any other
        non-2xx its answer but not the cache's (as for a single call)."""
        try:
            replay = _judge(replay, self.now_wall)
        except _Failed as e:
            return e
        return replay if 200 <= replay[0] < 300 else _NotStored(replay)


def _unwrap(e: _Failed, request: httpx.Request) -> httpx.Response:
    if e.replay is not None:
        return _response(e.replay, request)
    assert e.cause is not None
    raise e.cause


class GuardedTransport(_Common, httpx.BaseTransport):
    """Sync: ``httpx.Client(transport=GuardedTransport(service))``."""

    def __init__(self, service: Service, transport: httpx.BaseTransport | None = None, **kw: Any) -> None:
        super().__init__(service, **kw)
        self.inner = transport or httpx.HTTPTransport()
        self._batchers = {path: service.batched(lambda items, r=r: self._send_batch(r, items),
                                                key=lambda req: self._key(req))
                          for path, r in self.routes.items()}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a retried request must be sent again: keep its body
        try:
            route = self._route(request)
            if route is not None:
                replay = self._batchers[route.path](request)
            else:
                key = self._key(request)
                replay = self.service.call_with(self._send, (request,), tokens=self.tokens(request),
                                                key=key, cache=key is not None)
        except _Failed as e:
            return _unwrap(e, request)
        except _NotStored as e:
            return _response(e.replay, request)
        return _response(replay, request)

    def _send(self, request: httpx.Request) -> _Replay:
        replay = self._send_plain(request)
        if self._key(request) is not None and not 200 <= replay[0] < 300:
            raise _NotStored(replay)
        return replay

    def _send_batch(self, route: BatchRoute, items: list[httpx.Request]) -> list[_Replay]:
        replay = self._send_plain(self._batch_request(route, items))
        return self._fan(route, replay, len(items))

    def _send_plain(self, request: httpx.Request) -> _Replay:
        _with_deadline(request)
        try:
            response = self.inner.handle_request(request)
            try:
                content = response.read()
            finally:
                response.close()
        except httpx.TransportError as e:
            raise _Failed(f"{type(e).__name__}: {e}", cause=e) from e
        return _judge((response.status_code, list(response.headers.raw), content), self.now_wall)

    def close(self) -> None:
        self.inner.close()


class AsyncGuardedTransport(_Common, httpx.AsyncBaseTransport):
    """Async: ``httpx.AsyncClient(transport=AsyncGuardedTransport(service))``."""

    def __init__(self, service: Service, transport: httpx.AsyncBaseTransport | None = None, **kw: Any) -> None:
        super().__init__(service, **kw)
        self.inner = transport or httpx.AsyncHTTPTransport()

        def batcher(r: BatchRoute) -> Callable[[Any], Any]:
            async def run(items: list[httpx.Request]) -> list[_Replay]:
                return await self._send_batch(r, items)
            # a batch of POSTs may go twice when POST is a cacheable method (as a single one may)
            return service.batched(run, key=lambda req: self._key(req), hedge="POST" in self.cache_methods)
        self._batchers = {path: batcher(r) for path, r in self.routes.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()  # a retried request must be sent again: keep its body
        try:
            route = self._route(request)
            if route is not None:
                replay = await self._batchers[route.path](request)
            else:
                key = self._key(request)
                replay = await self.service.acall_with(self._send, (request,), tokens=self.tokens(request),
                                                       key=key, cache=key is not None, hedge=self._hedgeable(request))
        except _Failed as e:
            return _unwrap(e, request)
        except _NotStored as e:
            return _response(e.replay, request)
        return _response(replay, request)

    async def _send(self, request: httpx.Request) -> _Replay:
        replay = await self._send_plain(request)
        if self._key(request) is not None and not 200 <= replay[0] < 300:
            raise _NotStored(replay)
        return replay

    async def _send_batch(self, route: BatchRoute, items: list[httpx.Request]) -> list[_Replay]:
        replay = await self._send_plain(self._batch_request(route, items))
        return self._fan(route, replay, len(items))

    async def _send_plain(self, request: httpx.Request) -> _Replay:
        _with_deadline(request)
        try:
            response = await self.inner.handle_async_request(request)
            try:
                content = await response.aread()
            finally:
                await response.aclose()
        except httpx.TransportError as e:
            raise _Failed(f"{type(e).__name__}: {e}", cause=e) from e
        return _judge((response.status_code, list(response.headers.raw), content), self.now_wall)

    async def aclose(self) -> None:
        await self.inner.aclose()
