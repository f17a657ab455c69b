"""Service: the guards composed from a [services.<name>] table, as decorator, call and context
manager, sync and async, on a fake clock whose sleeps advance it; every decision an event."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from runtime.errors import InvalidInput, NotFound
from runtime.guards import CallTimeout, CircuitOpen, Guards, Service, ServiceConfig, ServiceError, Throttled
from tests.support.helpers import WAIT, FakeClock


class Env:
    """A fake clock, sleeps that advance it, and the events a service reported."""

    def __init__(self):
        self.clock = FakeClock(1000.0)
        self.events: list[tuple[str, dict]] = []
        self.slept: list[float] = []

    def sleep(self, s):
        self.slept.append(s)
        self.clock.t += s

    async def asleep(self, s):
        self.sleep(s)

    def service(self, table, **kw):
        return Service("api", table, clock=self.clock, on_event=lambda e, **f: self.events.append((e, f)),
                       rng=random.Random(1), sleep=self.sleep, asleep=self.asleep, **kw)

    def names(self):
        return [e for e, _ in self.events]


def flaky(failures, exc=lambda: ConnectionError("reset")):
    calls = []

    def fn(x):
        calls.append(x)
        if len(calls) <= failures:
            raise exc()
        return x * 2
    return fn, calls


def test_config_table_is_validated_naming_the_key():
    cfg = ServiceConfig.from_dict("llm", {"timeout_s": 5, "retries": 1, "backoff": {"base_s": 0.2, "cap_s": 2},
                                          "breaker": {"min_calls": 2, "window_calls": 4}, "rate": 5,
                                          "tokens_per_s": 100, "cache_ttl_s": 60, "cache_size": 10,
                                          "batch_window_ms": 20, "batch_max": 8})
    assert cfg.timeout_s == 5 and cfg.base_s == 0.2 and cfg.breaker.min_calls == 2 and cfg.limiter.rate == 5
    assert ServiceConfig.from_dict("x", {"breaker": False}).breaker is None
    for bad, word in (({"retry": 2}, "unknown key"), ({"retries": -1}, "retries"), ({"timeout_s": -2}, "timeout_s"),
                      ({"backoff": "fast"}, "backoff"), ({"breaker": {"opens": 1}}, "breaker"),
                      ({"rate": 0}, "rate"), ({"batch_max": 0}, "batch_max")):
        with pytest.raises(InvalidInput, match=word):
            Service("x", bad)


def test_retries_with_backoff_then_success_and_events():
    env = Env()
    svc = env.service({"retries": 3, "backoff": {"base_s": 1.0, "cap_s": 8.0}, "breaker": False})
    fn, calls = flaky(2)
    assert svc.call(fn, 21) == 42 and len(calls) == 3
    retries = [f for e, f in env.events if e == "retry"]
    assert [r["attempt"] for r in retries] == [1, 2] and retries[0]["error"] == "ConnectionError"
    assert env.slept[0] <= 1.0 and env.slept[1] <= 2.0  # full jitter under 1 s, then 2 s


def test_no_retry_of_non_retryable_errors_and_exhaustion_raises_the_last_error():
    env = Env()
    svc = env.service({"retries": 2, "breaker": False})
    fn, calls = flaky(5, lambda: InvalidInput("bad prompt"))
    with pytest.raises(InvalidInput):
        svc.call(fn, 1)
    assert len(calls) == 1
    fn, calls = flaky(5)
    with pytest.raises(ConnectionError):
        svc.call(fn, 1)
    assert len(calls) == 3


def test_retry_after_is_honoured():
    env = Env()
    svc = env.service({"retries": 1, "backoff": 0.01, "breaker": False})
    fn, _ = flaky(1, lambda: ServiceError("429", retryable=True, retry_after=7.0, status=429))
    assert svc.call(fn, 1) == 2
    assert env.slept == [7.0]


def test_breaker_opens_fails_fast_half_opens_and_closes():
    env = Env()
    svc = env.service({"retries": 0, "breaker": {"min_calls": 3, "window_calls": 3, "open_s": 10,
                                                 "half_open_probes": 1}})
    fn, calls = flaky(3)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            svc.call(fn, 1)
    with pytest.raises(CircuitOpen):
        svc.call(fn, 1)
    assert len(calls) == 3  # refused without calling
    env.clock.t += 10
    assert svc.call(fn, 1) == 2
    moves = [(f["old"], f["new"]) for e, f in env.events if e == "breaker_transition"]
    assert moves == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert svc.counts["breaker_reject"] == 1


def test_bad_requests_do_not_open_the_breaker():
    env = Env()
    svc = env.service({"retries": 0, "breaker": {"min_calls": 2, "window_calls": 2}})
    fn, _ = flaky(10, lambda: InvalidInput("bad"))
    for _ in range(5):
        with pytest.raises(InvalidInput):
            svc.call(fn, 1)
    assert svc.breaker.state() == "closed"


def test_throttle_waits_are_slept_and_reported_and_max_wait_raises():
    env = Env()
    svc = env.service({"rate": 2, "burst": 1, "breaker": False})
    for _ in range(3):
        svc.call(lambda: None)
    assert env.slept == [pytest.approx(0.5), pytest.approx(0.5)]
    assert [f["wait_s"] for e, f in env.events if e == "throttle_wait"] == [pytest.approx(0.5)] * 2
    strict = Env().service({"rate": 1, "burst": 1, "max_wait_s": 0.1, "breaker": False})
    strict.call(lambda: None)
    with pytest.raises(Throttled):
        strict.call(lambda: None)


def test_a_sync_call_that_overruns_its_timeout_raises_and_counts_as_a_failure():
    env = Env()
    svc = env.service({"timeout_s": 1, "retries": 0, "breaker": {"min_calls": 1, "window_calls": 1}})

    def slow():
        env.clock.t += 2
        return "late"
    with pytest.raises(CallTimeout):
        svc.call(slow)
    assert svc.breaker.state() == "open" and "timeout" in env.names()


def test_cache_hit_and_two_concurrent_identical_calls_make_one_call():
    env = Env()
    svc = env.service({"cache_ttl_s": 60, "breaker": False})
    started, release, calls = threading.Event(), threading.Event(), []

    @svc
    def ask(q):
        calls.append(q)
        started.set()
        assert release.wait(WAIT)
        return q.upper()
    out = []
    t1 = threading.Thread(target=lambda: out.append(ask("hi")))
    t1.start()
    assert started.wait(WAIT)
    t2 = threading.Thread(target=lambda: out.append(ask("hi")))
    t2.start()
    while svc.counts["cache_join"] == 0:
        t2.join(0.001)  # until the second caller has joined the flight (an event, not a guess)
    release.set()
    t1.join(WAIT)
    t2.join(WAIT)
    assert out == ["HI", "HI"] and calls == ["hi"]
    assert ask("hi") == "HI" and calls == ["hi"] and svc.counts["cache_hit"] == 1
    env.clock.t += 61
    assert ask("hi") == "HI" and calls == ["hi", "hi"]  # expired


def test_async_decorator_cache_dedup_and_timeout():
    env = Env()
    svc = env.service({"cache_ttl_s": 60, "breaker": False, "timeout_s": 0.05, "retries": 0})
    calls, gate = [], None

    @svc
    async def ask(q):
        calls.append(q)
        await gate.wait()
        return q * 2

    async def main():
        nonlocal gate
        gate = asyncio.Event()
        a = asyncio.ensure_future(ask("x"))
        b = asyncio.ensure_future(ask("x"))
        await asyncio.sleep(0)
        gate.set()
        assert await asyncio.gather(a, b) == ["xx", "xx"]
        assert calls == ["x"] and svc.counts["cache_join"] == 1
        gate = asyncio.Event()  # never set: the timeout cancels the call
        with pytest.raises(CallTimeout):
            await ask("y")
    asyncio.run(main())


def test_attempt_context_manager_sync_and_async():
    env = Env()
    svc = env.service({"timeout_s": 0.05, "breaker": {"min_calls": 2, "window_calls": 2, "failure_rate": 1.0}})
    with svc.attempt():
        pass
    for _ in range(2):
        with pytest.raises(ConnectionError), svc.attempt():
            raise ConnectionError("reset")
    with pytest.raises(CircuitOpen), svc.attempt():
        pass
    svc.breaker.reset()

    async def main():
        async with svc.attempt():
            await asyncio.sleep(0)
        with pytest.raises(CallTimeout):
            async with svc.attempt():
                await asyncio.Event().wait()
    asyncio.run(main())
    assert svc.breaker.stats()["failures"] == 1


def test_batched_items_share_one_guarded_call():
    env = Env()
    svc = env.service({"batch_window_ms": 0, "batch_max": 4, "retries": 1, "backoff": 0.01, "breaker": False,
                       "cache_ttl_s": 60})
    sent = []

    def embed(items):
        sent.append(list(items))
        if len(sent) == 1:
            raise ConnectionError("blip")  # the whole batch is retried once
        return [len(x) for x in items]
    item = svc.batched(embed)
    assert item("abc") == 3 and sent == [["abc"], ["abc"]]
    assert item("abc") == 3 and len(sent) == 2  # cached per item
    assert "batch_join" in env.names() and "batch_flush" in env.names()


def test_a_batch_items_own_error_is_retried_alone_and_never_cached():
    env = Env()
    svc = env.service({"batch_window_ms": 0, "batch_max": 4, "retries": 2, "backoff": 0.01, "breaker": False,
                       "cache_ttl_s": 60})
    sent, fails = [], {"flaky": 1, "down": 99}

    def embed(items):
        sent.append(list(items))
        out = []
        for x in items:
            if x == "bad":
                out.append(ValueError("not an input"))  # not retryable: the caller's own error
            elif fails.get(x, 0) > 0:
                fails[x] -= 1
                out.append(ServiceError(f"500 for {x}", retryable=True, status=500))
            else:
                out.append(len(x))
        return out
    item = svc.batched(embed)
    assert item("flaky") == 5 and sent == [["flaky"], ["flaky"]]  # sent again alone, then answered
    assert item("flaky") == 5 and len(sent) == 2  # the answer is cached, the error was not
    with pytest.raises(ServiceError, match="500 for down"):
        item("down")
    assert sent[2:] == [["down"]] * 3  # retries = 2: three tries in all
    with pytest.raises(ValueError):
        item("bad")
    with pytest.raises(ValueError):
        item("bad")  # sent again: an error is never the cache's answer
    assert sent[5:] == [["bad"], ["bad"]]
    retries = [f for e, f in env.events if e == "retry"]
    assert [r["error"] for r in retries] == ["ServiceError"] * 3


def test_async_batch_item_errors_are_retried_alone():
    env = Env()
    svc = env.service({"batch_window_ms": 0, "batch_max": 4, "retries": 1, "backoff": 0.01, "breaker": False,
                       "cache_ttl_s": 60})
    sent = []

    async def embed(items):
        sent.append(list(items))
        first = len(sent) == 1
        return [ServiceError("500", retryable=True) if first else len(x) for x in items]
    item = svc.batched(embed)

    async def main():
        assert await item("abc") == 3 and await item("abc") == 3
    asyncio.run(main())
    assert sent == [["abc"], ["abc"]] and env.names().count("retry") == 1


def test_guards_registry():
    g = Guards({"llm": {"rate": 10}, "search": {}}, clock=FakeClock())
    assert g.service("llm") is g.service("llm") and g.names() == ["llm", "search"]
    with pytest.raises(NotFound, match="services.vector"):
        g.service("vector")


def _twins(first_hangs=True, fail=()):
    """An async call whose n-th invocation hangs (until cancelled) or fails or answers n."""
    calls, cancelled = [], []

    async def fn():
        n = len(calls) + 1
        calls.append(n)
        if n in fail:
            raise ConnectionError(f"reset {n}")
        if n == 1 and first_hangs:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(n)
                raise
        return n
    return fn, calls, cancelled


def test_a_slow_attempt_gets_a_hedge_and_the_first_answer_wins():
    env = Env()
    svc = env.service({"hedge_after_s": 0.01, "retries": 0, "timeout_s": WAIT,
                       "breaker": {"min_calls": 1, "window_calls": 2}})
    fn, calls, cancelled = _twins()
    assert asyncio.run(svc.acall(fn)) == 2  # the twin's answer
    assert calls == [1, 2] and cancelled == [1]  # the loser is cancelled, not left running
    assert svc.counts["hedge"] == 1 and svc.counts["hedge_won"] == 1
    assert svc.breaker.stats()["failures"] == 0  # the cancelled loser is not judged a failure


def test_a_fast_attempt_is_never_hedged_and_hedge_false_opts_out():
    env = Env()
    svc = env.service({"hedge_after_s": WAIT, "retries": 0, "breaker": False})
    fn, calls, _ = _twins(first_hangs=False)
    assert asyncio.run(svc.acall(fn)) == 1 and calls == [1] and svc.counts["hedge"] == 0
    quick = env.service({"hedge_after_s": 0.01, "retries": 0, "timeout_s": 0.2, "breaker": False})
    fn, calls, _ = _twins()
    with pytest.raises(CallTimeout):  # no twin: the hung attempt runs into its timeout
        asyncio.run(quick.acall_with(fn, hedge=False))
    assert calls == [1] and quick.counts["hedge"] == 0
    assert env.service({"retries": 0}).config.hedge_after_s == 0  # off by default


def test_when_the_twin_fails_the_first_attempt_still_counts_and_both_failed_is_retried():
    env = Env()
    svc = env.service({"hedge_after_s": 0.01, "retries": 1, "breaker": False})
    gate: list[asyncio.Event] = []
    calls = []

    async def fn():  # 1: slow then answers; 2: the twin fails at once
        calls.append(len(calls) + 1)
        if len(calls) == 2:
            gate[0].set()
            raise ConnectionError("reset")
        await gate[0].wait()
        return "first"

    async def main():
        gate.append(asyncio.Event())
        return await svc.acall(fn)
    assert asyncio.run(main()) == "first" and calls == [1, 2] and svc.counts["retry"] == 0
    both = env.service({"hedge_after_s": 0.01, "retries": 2, "breaker": False})
    fn2, calls2, _ = _twins(first_hangs=False, fail=(1, 2))
    assert asyncio.run(both.acall(fn2)) == 3  # each failed before its hedge was due: retries
    assert calls2 == [1, 2, 3] and both.counts["retry"] == 2 and both.counts["hedge"] == 0


def test_a_cancelled_hedged_call_cancels_both_attempts():
    env = Env()
    svc = env.service({"hedge_after_s": 0.01, "retries": 0, "breaker": False})
    started, cancelled = [], []

    async def fn():
        started.append(1)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def main():
        call = asyncio.ensure_future(svc.acall(fn))
        while len(started) < 2:
            await asyncio.sleep(0.005)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    asyncio.run(asyncio.wait_for(main(), WAIT))
    assert len(started) == 2 and len(cancelled) == 2


def test_hedge_after_s_is_validated():
    with pytest.raises(InvalidInput, match="hedge_after_s"):
        Service("x", {"hedge_after_s": -1})


def test_a_batch_declared_hedgeable_is_hedged_and_others_are_not():
    env = Env()
    svc = env.service({"hedge_after_s": 0.01, "batch_window_ms": 0, "batch_max": 4, "retries": 0,
                       "timeout_s": 0.3, "breaker": False})
    sent = []

    async def embed(items):  # the first batch hangs until cancelled, later ones answer
        sent.append(list(items))
        if len(sent) == 1:
            await asyncio.Event().wait()
        return [len(x) for x in items]

    assert asyncio.run(svc.batched(embed, hedge=True)("abcd")) == 4
    assert sent == [["abcd"], ["abcd"]] and svc.counts["hedge_won"] == 1
    sent.clear()
    with pytest.raises(CallTimeout):  # not declared: the hung batch runs into its timeout alone
        asyncio.run(svc.batched(embed)("xy"))
    assert sent == [["xy"]] and svc.counts["hedge"] == 1


def test_a_call_cancelled_before_its_hedge_is_due_leaves_no_attempt_running():
    env = Env()
    svc = env.service({"hedge_after_s": WAIT, "retries": 0, "breaker": False})
    fn, calls, cancelled = _twins()

    async def main():
        call = asyncio.ensure_future(svc.acall(fn))
        while not calls:
            await asyncio.sleep(0.001)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert cancelled == [1]  # by the call itself, not by asyncio.run's clean-up at the end
    asyncio.run(asyncio.wait_for(main(), WAIT))
    assert calls == [1] and svc.counts["hedge"] == 0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_batch_whose_every_item_failed_is_a_failed_call_for_the_breaker(mode):
    """An outage that answers 200 with a 500 per item opens the breaker; a batch with some
    items answered is a call that succeeded (its failed items are sent again alone)."""
    env = Env()
    svc = env.service({"batch_window_ms": 0, "batch_max": 4, "retries": 0, "cache_ttl_s": 0,
                       "breaker": {"failure_rate": 0.5, "window_calls": 4, "min_calls": 3, "open_s": 60}})
    down = {"on": False}

    def answer(items):
        return [ServiceError("500", retryable=True, status=500) if down["on"] or x == "sick" else len(x)
                for x in items]

    if mode == "sync":
        item = svc.batched(answer)
        run = item
    else:
        async def aanswer(items):
            return answer(items)
        aitem = svc.batched(aanswer)

        def run(x):
            return asyncio.run(aitem(x))
    assert run("ok") == 2
    with pytest.raises(ServiceError):
        run("sick")  # alone in its batch: every item failed, one failed call
    assert svc.breaker.state() == "closed" and svc.breaker.stats()["failures"] == 1
    down["on"] = True
    with pytest.raises(ServiceError):
        run("abc")
    assert svc.breaker.state() == "open"  # 2 of 3 calls failed: the outage is seen
    with pytest.raises(CircuitOpen):
        run("abc")
