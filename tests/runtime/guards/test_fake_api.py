"""The fake external API itself: its latency model, cap, faults, 429, batch endpoint, counters."""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.support.fake_api import FakeAPI
from tests.support.helpers import WAIT, eventually


def fetch(url, body=None):
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=WAIT) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_latency_is_seeded_lognormal_around_the_median_with_a_heavy_tail():
    with FakeAPI(seed=3, median_s=0.3) as a, FakeAPI(seed=3, median_s=0.3) as b:
        draws = [a.latency() for _ in range(4000)]
        assert draws[:50] == [b.latency() for _ in range(50)]
        assert a.url.startswith("http://127.0.0.1:")
    assert statistics.median(draws) == pytest.approx(0.3, rel=0.1)
    p99 = sorted(draws)[int(0.99 * len(draws))]
    assert p99 > 3 * 0.3  # heavy tail
    with FakeAPI(seed=3, median_s=0.3, time_scale=0.01) as fast:
        assert statistics.median(fast.latency() for _ in range(2000)) == pytest.approx(0.003, rel=0.1)


def test_endpoints_counters_and_batch():
    with FakeAPI(time_scale=0.001) as api:
        status, _, body = fetch(api.url + "/v1/complete", b'{"p": 1}')
        assert status == 200 and body["answer"] == {"p": 1}
        assert fetch(api.url + "/v1/echo?q=hi")[2]["q"] == "hi"
        status, _, body = fetch(api.url + "/v1/batch", b'{"items": [1, "two"]}')
        assert [r["body"]["answer"] for r in body["results"]] == [1, "two"]
        assert fetch(api.url + "/v1/batch", b"[1]")[0] == 400
        assert fetch(api.url + "/nope")[0] == 404
        assert api.seen(b'{"p": 1}') == 1 and api.seen("q=hi") == 1
        assert api.requests == 5 and api.by_status[200] == 3


def test_injected_errors_outages_and_rate_limit():
    with FakeAPI(time_scale=0.001, error_rate=1.0) as api:
        assert fetch(api.url + "/v1/echo")[0] == 500
        status, _, body = fetch(api.url + "/v1/batch", b'{"items": [1]}')
        assert status == 200 and body["results"][0]["status"] == 500  # errors per item
    with FakeAPI(time_scale=0.001) as api:
        api.outage(WAIT)
        assert fetch(api.url + "/v1/echo")[0] == 503
        api.outage_stop()
        assert fetch(api.url + "/v1/echo")[0] == 200
        api.outage(0.0)  # an outage of no length is already over
        assert fetch(api.url + "/v1/echo")[0] == 200
    with FakeAPI(time_scale=0.001, rate_limit=1) as api:
        assert fetch(api.url + "/v1/echo")[0] == 200
        status, headers, _ = fetch(api.url + "/v1/echo")
        assert status == 429 and headers["Retry-After"] == "1"


def test_concurrency_cap_queues_the_rest():
    with FakeAPI(time_scale=0.001, concurrency=2) as api:
        api.pause()
        done = []
        ts = [threading.Thread(target=lambda: done.append(fetch(api.url + "/v1/echo")[0])) for _ in range(5)]
        for t in ts:
            t.start()
        eventually(lambda: api.requests == 5 and api.in_flight == 2, "5 admitted, 2 served at once")
        time.sleep(0.05)  # a margin in which a broken cap would let a third one in
        assert api.max_in_flight == 2
        api.resume()
        for t in ts:
            t.join(WAIT)
        assert done == [200] * 5 and api.max_in_flight == 2
