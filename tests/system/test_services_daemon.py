"""Service guards across real agent processes of a real daemon, against the fake API on
127.0.0.1: a breaker opened by one agent is open in the others; the rate limiter holds its
rate across 8 agents; two identical calls in flight at once, in one agent or in two, make one request;
async handlers with concurrency; guard decisions are events in the task's trace and metrics.
The leak fixture checks that no process or segment (the guard table included) outlives a test."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.support.daemons import running_daemon
from tests.support.fake_api import FakeAPI

pytest.importorskip("httpx")

POOL = """
[daemon]
drain_s = 3.0
[pools.caller]
agent = "tests.support.agents_services:Caller"
size = {size}
max = {size}
concurrency = {concurrency}
[pools.caller.scaling]
autoscale = false
[services.api]
{service}
"""


def conf(size: int, service: str, concurrency: int = 1) -> str:
    return POOL.format(size=size, concurrency=concurrency, service=service)


def run_all(c, tasks: list[dict], timeout: float = 60.0) -> list[dict]:
    ids = c.call("submit_many", tasks=tasks, wait_s=30)
    return [c.call("result", id=i, wait=True, timeout_s=timeout) for i in ids]


def test_a_breaker_opened_by_one_agent_is_open_in_the_others(tmp_path):
    service = "retries = 0\ntimeout_s = 5\nbreaker = {min_calls = 2, window_calls = 4, open_s = 120}"
    with FakeAPI(time_scale=0.01) as api, running_daemon(tmp_path, conf(2, service)) as (c, _):
        api.outage_start()
        outcomes = [run_all(c, [{"capability": "call", "input": {"url": api.url}}])[0]["result"]
                    for _ in range(3)]
        assert [o["outcome"] for o in outcomes[:2]] == [503, 503]
        assert outcomes[2]["outcome"] == "CircuitOpen"
        before = api.requests
        # two at once, each holding its agent: one runs on the agent that never saw a failure
        probes = run_all(c, [{"capability": "call", "input": {"url": api.url, "hold": 0.5}}] * 2)
        got = {p["result"]["agent"]: p["result"]["outcome"] for p in probes}
        assert got == {"caller.0": "CircuitOpen", "caller.1": "CircuitOpen"}
        assert api.requests == before  # refused by the breaker: nothing reached the API
        trace = c.call("trace", id=probes[0]["id"])
        kinds = {e.get("type") for e in _events(trace["trace"])}
        assert "service.breaker_reject" in kinds


def test_the_rate_limiter_holds_its_rate_across_8_agents(tmp_path):
    rate, n_each = 20, 5
    with FakeAPI(time_scale=0.01) as api, running_daemon(tmp_path, conf(8, f"rate = {rate}\nretries = 0")) as (c, _):
        tasks = [{"capability": "calls", "input": {"url": api.url, "n": n_each, "body": {"q": i}}}
                 for i in range(8)]
        results = run_all(c, tasks)
        assert all(r["state"] == "succeeded" for r in results), results
        assert {o["outcome"] for r in results for o in r["result"]} == {200}
        times = sorted(api.arrivals)
        assert len(times) == 8 * n_each
        # a token bucket of `rate` per second with a one-second burst: any window of w seconds
        # sees at most burst + rate * w requests (a 5% margin for the clocks' granularity)
        for i, t0 in enumerate(times):
            for j in range(i, len(times)):
                w = times[j] - t0
                assert j - i + 1 <= rate + rate * w * 1.05 + 1, (i, j, w)
        assert times[-1] - times[0] >= (8 * n_each - rate) / rate * 0.9


def test_identical_calls_in_flight_in_one_agent_make_one_request(tmp_path):
    service = "cache_ttl_s = 60\nretries = 0"
    with FakeAPI(time_scale=0.01) as api, running_daemon(tmp_path, conf(1, service, concurrency=4)) as (c, _):
        api.pause()  # hold the first request so that the second joins it in flight
        ids = c.call("submit_many", tasks=[{"capability": "acall", "input": {"url": api.url,
                                                                             "body": {"q": "same"}}}] * 2)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the agent itself says when the second call joined
            counts = c.call("submit", task={"capability": "counts", "input": {}}, result=True)["result"]
            if counts.get("cache_join") and api.requests:  # joined, and the leader's call is held
                break
            time.sleep(0.01)
        counts.pop("pid")
        assert counts == {"cache_miss": 1, "cache_join": 1} and api.requests == 1
        api.resume()
        results = [c.call("result", id=i, wait=True, timeout_s=30) for i in ids]
        assert [r["state"] for r in results] == ["succeeded", "succeeded"]
        assert results[0]["result"]["body"] == results[1]["result"]["body"]
        assert api.seen(b'{"q":"same"}') == 1
        kinds = set()
        for r in results:
            kinds |= {e.get("type") for e in _events(c.call("trace", id=r["id"])["trace"])}
        assert {"service.cache_miss", "service.cache_join"} <= kinds


def _events(tree) -> list[dict]:
    """Every event of a trace tree, whatever its nesting (runtime.observability.tracing)."""
    out: list[dict] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "type" in node:
                out.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def test_an_agent_with_64_async_calls_in_flight_stays_small(tmp_path):
    """USS of one agent process while 64 async handlers each wait on a request (target <= 50 MiB)."""
    with FakeAPI(time_scale=0.01, concurrency=128) as api, \
            running_daemon(tmp_path, conf(1, "retries = 0", concurrency=65)) as (c, _):
        api.pause()
        ids = c.call("submit_many", tasks=[{"capability": "acall", "input": {"url": api.url, "body": {"q": i}}}
                                           for i in range(64)])
        deadline = time.monotonic() + 30
        while api.requests < 64 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert api.requests == 64 and api.in_flight == 64
        pid = c.call("submit", task={"capability": "counts", "input": {}}, result=True)["result"]["pid"]
        uss_mib = psutil.Process(pid).memory_full_info().uss / (1 << 20)
        api.resume()
        results = [c.call("result", id=i, wait=True, timeout_s=30) for i in ids]
        assert all(r["state"] == "succeeded" for r in results)
        print(f"USS of an agent with 64 async calls in flight: {uss_mib:.1f} MiB")
        assert uss_mib <= 50, uss_mib


def _counts_of_both(c) -> dict[int, dict]:
    """``Service.counts`` of caller.0 and caller.1 by pid (two at once: least-loaded spreads them)."""
    ids = c.call("submit_many", tasks=[{"capability": "counts", "input": {}}] * 2)
    got = [c.call("result", id=i, wait=True, timeout_s=30) for i in ids]
    return {r["result"].pop("pid"): r["result"] for r in got if r["state"] == "succeeded"}


def test_identical_calls_in_flight_in_two_agents_make_one_request(tmp_path):
    """In-flight de-duplication across agent processes (runtime.guards.flights): caller.0 leads,
    caller.1 finds its flight on the machine-wide board and waits for its result."""
    service = "cache_ttl_s = 60\nretries = 0"
    with FakeAPI(time_scale=0.01) as api, running_daemon(tmp_path, conf(2, service, concurrency=2)) as (c, _):
        api.pause()  # hold the leader's request so that the other agent's call finds it in flight
        ids = c.call("submit_many", tasks=[{"capability": "call", "input": {"url": api.url,
                                                                            "body": {"q": "both"}}}] * 2)
        deadline = time.monotonic() + 30
        counts: dict[int, dict] = {}
        while time.monotonic() < deadline:  # the agents themselves say when the second one joined
            counts = _counts_of_both(c)
            # both counts tasks can land on one agent (a tie in load), and the leader opens its
            # flight before it counts its miss: sample again until each answered and both counted
            joined, missed = (sum(v.get(k, 0) for v in counts.values()) for k in ("cache_join", "cache_miss"))
            if len(counts) == 2 and joined and missed and api.requests:
                break
            time.sleep(0.01)
        assert len(counts) == 2, counts  # both agents answered
        # one agent made the call, the other joined it (the local cache missed there too, but
        # only a call that is made counts as cache_miss)
        assert sorted((v.get("cache_miss", 0), v.get("cache_join", 0)) for v in counts.values()) == [(0, 1), (1, 0)]
        assert api.requests == 1
        api.resume()
        results = [c.call("result", id=i, wait=True, timeout_s=30) for i in ids]
        assert [r["state"] for r in results] == ["succeeded", "succeeded"]
        assert {r["result"]["agent"] for r in results} == {"caller.0", "caller.1"}
        assert [r["result"]["outcome"] for r in results] == [200, 200]
        assert api.seen(b'{"q":"both"}') == 1
        joins = {(e.get("task_id"), e.get("scope")) for r in results
                 for e in _events(c.call("trace", id=r["id"])["trace"]) if e.get("type") == "service.cache_join"}
        assert [scope for _, scope in joins] == ["machine"]  # one task joined the other agent's call


def test_an_answer_one_agent_got_is_a_hit_in_another(tmp_path):
    """The machine-wide result cache (runtime.guards.shared_cache): after caller.X's call, the
    same question asked of both agents at once makes no request: a hit from its own memory in
    one, from the machine's cache in the other (its trace says scope machine)."""
    service = "cache_ttl_s = 60\nretries = 0"
    same = {"capability": "call", "input": {"body": {"q": "again"}}}
    with FakeAPI(time_scale=0.01) as api, running_daemon(tmp_path, conf(2, service)) as (c, _):
        same["input"]["url"] = api.url
        [first] = run_all(c, [same])
        assert first["state"] == "succeeded" and api.requests == 1
        both = run_all(c, [same, same])  # concurrency 1: one task each
        assert {r["result"]["agent"] for r in both} == {"caller.0", "caller.1"}
        assert [r["result"]["outcome"] for r in both] == [200, 200] and api.requests == 1
        counts = _counts_of_both(c)
        assert sorted((v.get("cache_miss", 0), v.get("cache_hit", 0)) for v in counts.values()) == [(0, 1), (1, 1)]
        scopes = [e.get("scope") for r in both for e in _events(c.call("trace", id=r["id"])["trace"])
                  if e.get("type") == "service.cache_hit" and e.get("task_id") == r["id"]]
        assert sorted(map(str, scopes)) == ["None", "machine"]
