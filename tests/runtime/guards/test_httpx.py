"""The httpx transports against the fake API on 127.0.0.1: breaker in an outage, 429 with
Retry-After, retries of injected 5xx, de-duplication, batching, timeouts; sync and async."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")

from runtime.guards import CircuitOpen, Service  # noqa: E402
from runtime.guards.http import AsyncGuardedTransport, BatchRoute, GuardedTransport  # noqa: E402
from tests.support.fake_api import FakeAPI  # noqa: E402
from tests.support.helpers import WAIT, FakeClock, eventually  # noqa: E402


@pytest.fixture
def api():
    with FakeAPI(seed=11, time_scale=0.01) as server:  # median 3 ms
        yield server


def service(**table):
    events = []
    svc = Service("api", {"backoff": 0.001, **table}, rng=random.Random(5),
                  on_event=lambda e, **f: events.append((e, f)))
    svc.events = events  # type: ignore[attr-defined]
    return svc


def client(api, svc, **kw):
    return httpx.Client(transport=GuardedTransport(svc, **kw), base_url=api.url, timeout=WAIT)


def threads(n, target):
    ts = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    return ts


def join(ts):
    for t in ts:
        t.join(WAIT)
    assert not any(t.is_alive() for t in ts)


def test_injected_5xx_are_retried_to_success(api):
    api.error_rate = 0.4
    svc = service(retries=8, breaker=False)
    with client(api, svc) as c:
        got = [c.get("/v1/echo", params={"q": i}).status_code for i in range(20)]
    assert got == [200] * 20 and api.by_status[500] > 0 and svc.counts["retry"] == api.by_status[500]


def test_breaker_opens_during_an_outage_and_closes_after_it(api):
    clock = FakeClock()
    svc = Service("api", {"retries": 0, "breaker": {"min_calls": 3, "window_calls": 3, "open_s": 30,
                                                    "half_open_probes": 1}}, clock=clock)
    with client(api, svc) as c:
        api.outage_start()
        assert [c.get("/v1/echo").status_code for _ in range(3)] == [503] * 3  # the service's own answers
        with pytest.raises(CircuitOpen) as info:
            c.get("/v1/echo")
        assert info.value.retry_after == pytest.approx(30)
        assert api.requests == 3  # the refused call never reached the server
        api.outage_stop()
        clock.t += 30
        assert c.get("/v1/echo").status_code == 200  # the probe
    assert svc.breaker.state() == "closed"


def test_429_retry_after_is_honoured(api):
    api.rate_limit, api.fractional_retry_after = 2, True
    slept = []

    def sleep(s):
        slept.append(s)
        time.sleep(s)
    svc = Service("api", {"retries": 3, "backoff": 0.001, "breaker": False}, sleep=sleep, rng=random.Random(1))
    with client(api, svc) as c:
        started = time.monotonic()
        codes = [c.get("/v1/echo", params={"q": i}).status_code for i in range(3)]
        elapsed = time.monotonic() - started
    assert codes == [200, 200, 200] and api.by_status[429] >= 1
    assert slept and max(slept) > 0.5  # the server asked for the rest of its one-second window
    assert elapsed >= max(slept)


def test_two_concurrent_identical_calls_make_one_request(api):
    svc = service(cache_ttl_s=60, breaker=False)
    out = {}
    with client(api, svc) as c:
        api.pause()
        first = threads(1, lambda i: out.__setitem__("a", c.get("/v1/echo", params={"q": "same"}).json()))
        eventually(lambda: api.in_flight == 1, "the first request at the server")
        second = threads(1, lambda i: out.__setitem__("b", c.get("/v1/echo", params={"q": "same"}).json()))
        eventually(lambda: svc.counts["cache_join"] == 1, "the second call joining the first")
        api.resume()
        join(first + second)
        again = c.get("/v1/echo", params={"q": "same"}).json()
    assert out["a"] == out["b"] == again and api.seen("q=same") == 1
    assert svc.counts["cache_hit"] == 1


def test_errors_are_not_cached(api):
    svc = service(cache_ttl_s=60, retries=0, breaker=False)
    with client(api, svc) as c:
        assert c.get("/v1/nowhere").status_code == 404
        assert c.get("/v1/nowhere").status_code == 404
    assert api.by_path["/v1/nowhere"] == 2


def test_batching_joins_calls(api):
    svc = service(batch_window_ms=WAIT * 1000, batch_max=3, breaker=False)
    out = {}
    with client(api, svc, batch=[BatchRoute("/v1/complete", "/v1/batch")]) as c:
        def call(i):
            out[i] = c.post("/v1/complete", json={"i": i})
        join(threads(3, call))
    assert api.by_path == {"/v1/batch": 1}
    assert {i: r.json()["answer"] for i, r in out.items()} == {i: {"i": i} for i in range(3)}
    assert svc.counts["batch_join"] == 3 and svc.counts["batch_flush"] == 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_batch_items_5xx_is_sent_again_and_not_cached(api, mode):
    """The fake API fails items of a batch one by one (500 inside a 200): such an item is
    retried alone and its error never becomes the cache's answer."""
    api.error_rate = 0.5
    svc = service(batch_window_ms=0, batch_max=4, retries=12, breaker=False, cache_ttl_s=60)
    route = [BatchRoute("/v1/complete", "/v1/batch")]
    if mode == "sync":
        with client(api, svc, batch=route, cache_methods=("POST",)) as c:
            got = [c.post("/v1/complete", json={"i": i}) for i in range(8)]
            again = [c.post("/v1/complete", json={"i": i}) for i in range(8)]
    else:
        async def main():
            transport = AsyncGuardedTransport(svc, batch=route, cache_methods=("POST",))
            async with httpx.AsyncClient(transport=transport, base_url=api.url, timeout=WAIT) as c:
                return ([await c.post("/v1/complete", json={"i": i}) for i in range(8)],
                        [await c.post("/v1/complete", json={"i": i}) for i in range(8)])
        got, again = asyncio.run(main())
    assert [r.status_code for r in got + again] == [200] * 16
    assert [r.json()["answer"] for r in again] == [{"i": i} for i in range(8)]
    batches = api.by_path["/v1/batch"]
    assert svc.counts["retry"] > 0 and batches == 8 + svc.counts["retry"]  # the second round: all cached


def test_the_deadline_lowers_the_request_timeout(api):
    svc = service(timeout_s=0.05, retries=1, breaker={"min_calls": 2, "window_calls": 2})
    api.pause()
    with client(api, svc) as c, pytest.raises(httpx.ReadTimeout):
        c.get("/v1/echo")  # the client's own timeout is WAIT; the guard's 50 ms wins
    api.resume()
    assert svc.counts["retry"] == 1 and svc.breaker.state() == "open"


def test_async_transport_outage_dedup_and_batch(api):
    async def main():
        clock = FakeClock()
        svc = Service("api", {"retries": 0, "cache_ttl_s": 60, "batch_window_ms": WAIT * 1000, "batch_max": 2,
                              "breaker": {"min_calls": 2, "window_calls": 2, "failure_rate": 1.0, "open_s": 5}},
                      clock=clock)
        transport = AsyncGuardedTransport(svc, batch=[BatchRoute("/v1/complete", "/v1/batch")])
        async with httpx.AsyncClient(transport=transport, base_url=api.url, timeout=WAIT) as c:
            api.pause()
            a = asyncio.ensure_future(c.get("/v1/echo", params={"q": "z"}))
            b = asyncio.ensure_future(c.get("/v1/echo", params={"q": "z"}))
            while svc.counts["cache_join"] == 0:
                await asyncio.sleep(0.001)
            api.resume()
            ra, rb = await asyncio.gather(a, b)
            assert ra.json() == rb.json() and api.seen("q=z") == 1
            p, q = await asyncio.gather(c.post("/v1/complete", json=1), c.post("/v1/complete", json=2))
            assert (p.json()["answer"], q.json()["answer"]) == (1, 2) and api.by_path["/v1/batch"] == 1
            api.outage_start()
            assert [(await c.get("/v1/echo", params={"q": i})).status_code for i in range(2)] == [503, 503]
            with pytest.raises(CircuitOpen):
                await c.get("/v1/echo", params={"q": 9})
            api.outage_stop()
            clock.t += 5
            assert (await c.get("/v1/echo", params={"q": 10})).status_code == 200
    asyncio.run(main())
