"""Result cache (TTL, LRU, in-flight de-duplication) and micro-batching (sync and async)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runtime.errors import BrokenError, InvalidInput
from runtime.guards import AsyncMicroBatcher, Hit, Join, Lead, MicroBatcher, ResultCache
from runtime.guards.service import Service
from tests.support.helpers import WAIT, FakeClock


def test_miss_lead_finish_hit_and_ttl():
    clock = FakeClock()
    cache = ResultCache(ttl_s=10.0, size=4, clock=clock)
    lead = cache.begin("k")
    assert isinstance(lead, Lead)
    cache.finish("k", lead, 42)
    assert cache.begin("k") == Hit(42)
    clock.t += 10.0
    assert isinstance(cache.begin("k"), Lead)  # expired: computed again


def test_lru_bound_evicts_the_least_recently_used():
    cache = ResultCache(ttl_s=100.0, size=2, clock=FakeClock())
    for k in ("a", "b"):
        cache.finish(k, cache.begin(k), k.upper())
    assert cache.begin("a") == Hit("A")  # a is now the most recent
    cache.finish("c", cache.begin("c"), "C")
    assert len(cache) == 2
    assert isinstance(cache.begin("b"), Lead)
    assert cache.begin("a") == Hit("A")


def test_an_identical_call_in_flight_is_joined_and_errors_are_shared_not_stored():
    cache = ResultCache(ttl_s=100.0, size=8, clock=FakeClock())
    lead = cache.begin("q")
    join = cache.begin("q")
    assert isinstance(join, Join) and join.future is lead.future
    cache.fail("q", lead, ConnectionError("down"))
    with pytest.raises(ConnectionError):
        join.future.result(timeout=0)
    assert isinstance(cache.begin("q"), Lead)  # the failure was not cached


def test_cache_config_errors():
    with pytest.raises(InvalidInput, match="ttl_s"):
        ResultCache(ttl_s=-1, size=1, clock=FakeClock())
    with pytest.raises(InvalidInput, match="size"):
        ResultCache(ttl_s=1, size=0, clock=FakeClock())


def _threads(n, target):
    ts = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT)
    assert not any(t.is_alive() for t in ts)


def test_sync_batch_sent_by_the_caller_that_fills_it():
    batches, events, results = [], [], {}
    joined = threading.Barrier(4)

    def leader_wait(event, timeout):  # the window never ends by time: only filling ends it
        return event.wait(WAIT)

    def run(items):
        batches.append(list(items))
        return [x * 10 if x != 2 else ValueError("item 2 is bad") for x in items]
    mb = MicroBatcher("s", run, window_s=5.0, max_size=4, on_event=lambda e, **f: events.append((e, f)),
                      wait=leader_wait)

    def caller(i):
        joined.wait(WAIT)
        try:
            results[i] = mb.submit(i)
        except ValueError as e:
            results[i] = e
    _threads(4, caller)
    assert len(batches) == 1 and sorted(batches[0]) == [0, 1, 2, 3]
    assert results[0] == 0 and results[1] == 10 and results[3] == 30
    assert isinstance(results[2], ValueError)  # fanned back to its own caller only
    assert [f["reason"] for e, f in events if e == "batch_flush"] == ["full"]
    assert sum(e == "batch_join" for e, _ in events) == 4


def test_sync_window_closes_and_a_failing_or_malformed_batch_fails_every_item():
    mb = MicroBatcher("s", lambda items: [i + 1 for i in items], window_s=0.0, max_size=8,
                      on_event=lambda *a, **k: None)
    assert mb.submit(1) == 2  # window 0: the leader sends alone
    by_time = MicroBatcher("s", lambda items: [1], window_s=1.0, max_size=8, on_event=lambda *a, **k: None,
                          wait=lambda e, t: False)
    assert by_time.submit(5) == 1  # the (injected) window wait ran out: sent with one item
    wrong = MicroBatcher("s", lambda items: [], window_s=0.0, max_size=8, on_event=lambda *a, **k: None)
    with pytest.raises(BrokenError, match="0 results for 1 items"):
        wrong.submit(5)

    def boom(items):
        raise ConnectionError("down")
    with pytest.raises(ConnectionError):
        MicroBatcher("s", boom, window_s=0.0, max_size=8, on_event=lambda *a, **k: None).submit(1)
    with pytest.raises(InvalidInput, match="batch_max"):
        MicroBatcher("s", boom, window_s=0.0, max_size=0, on_event=lambda *a, **k: None)


def test_async_batch_joins_concurrent_calls_and_fans_back():
    events = []

    async def run(items):
        return [{"echo": x} if x >= 0 else KeyError(x) for x in items]

    async def main():
        ab = AsyncMicroBatcher("s", run, window_s=WAIT, max_size=3, on_event=lambda e, **f: events.append(e))
        got = await asyncio.gather(ab.submit(1), ab.submit(-1), ab.submit(2), return_exceptions=True)
        assert got[0] == {"echo": 1} and got[2] == {"echo": 2} and isinstance(got[1], KeyError)
        ab2 = AsyncMicroBatcher("s", run, window_s=0.001, max_size=100, on_event=lambda e, **f: events.append(e))
        assert await asyncio.gather(ab2.submit(7), ab2.submit(8)) == [{"echo": 7}, {"echo": 8}]
    asyncio.run(main())
    assert events.count("batch_flush") == 2 and events.count("batch_join") == 5


def test_a_cancelled_async_leader_still_sends_the_batch():
    async def run(items):
        return [x * 2 for x in items]

    async def main():
        ab = AsyncMicroBatcher("s", run, window_s=WAIT, max_size=10, on_event=lambda *a, **k: None)
        leader = asyncio.ensure_future(ab.submit(1))
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(ab.submit(2))
        await asyncio.sleep(0)
        leader.cancel()
        assert await asyncio.wait_for(follower, WAIT) == 4
        with pytest.raises(asyncio.CancelledError):
            await leader
    asyncio.run(main())


def test_cancelling_the_caller_that_sends_a_batch_cancels_that_caller_only():
    started = []

    async def run(items):
        started.append(items)
        await asyncio.sleep(0.05)
        return [x * 10 for x in items]

    async def main():
        ab = AsyncMicroBatcher("s", run, window_s=WAIT, max_size=3, on_event=lambda *a, **k: None)
        first = [asyncio.ensure_future(ab.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        filler = asyncio.ensure_future(ab.submit(3))  # fills the batch: its call sends it
        while not started:
            await asyncio.sleep(0.001)
        filler.cancel()
        got = await asyncio.wait_for(asyncio.gather(*first, filler, return_exceptions=True), WAIT)
        assert got[:2] == [10, 20] and isinstance(got[2], asyncio.CancelledError)
    asyncio.run(main())
    assert started == [[1, 2, 3]]


def test_an_unhashable_cache_key_is_a_typed_error_naming_the_service():
    svc = Service("api", {"cache_ttl_s": 60, "batch_window_ms": 1, "batch_max": 2})
    calls = []
    for bad in (["a list"], {"a": "dict"}):
        with pytest.raises(InvalidInput, match="'api': a cache key must be hashable"):
            svc.call_with(lambda: calls.append(1), key=bad)
        with pytest.raises(InvalidInput, match="hashable"):
            asyncio.run(svc.acall_with(lambda: asyncio.sleep(0), key=bad))
        one = svc.batched(lambda items: [calls.append(1) or i for i in items], key=lambda item: [item])
        with pytest.raises(InvalidInput, match="hashable"):
            one("x")
    assert calls == []  # refused before any call
    assert svc.call_with(lambda: 7, key=("a", "tuple")) == 7
