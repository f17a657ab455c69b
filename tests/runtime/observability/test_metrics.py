"""Metrics (pure), the telemetry collector's ring, log rotation, emitters, the metrics
HTTP endpoint on loopback, and the CLI's renderings."""

from __future__ import annotations

import math
import os
import socket
import urllib.error
import urllib.request

import orjson
import pytest

from runtime.errors import Unavailable
from runtime.observability import metrics as M
from runtime.observability.eventlog import log_files, read_after, read_events
from runtime.observability.events import Emitter, set_tracing, tracing_enabled
from runtime.observability.metrics import EventMetrics, Metrics, quantile, to_prometheus
from runtime.observability.telemetry import Collector, EventLog, read_snapshot, write_snapshot


def ev(ts, type_, **fields):
    return {"ts": ts, "type": type_, "source": "coordinator", "pid": 1, **fields}


def test_counters_gauges_histograms_snapshot_and_merge():
    m = Metrics()
    m.inc("a_total", pool="x")
    m.inc("a_total", 2, pool="x")
    m.set("g", 5, agent="x.0")
    for v in (0.0004, 0.003, 0.003, 7.0, 100.0):
        m.observe("h_seconds", v)
    h = m.value("h_seconds")
    assert (m.value("a_total", pool="x"), m.value("g", agent="x.0"), h["count"]) == (3.0, 5.0, 5)
    assert h["counts"][0] == 1 and h["counts"][-1] == 1 and quantile(h, 0.5) == 0.005
    assert quantile(h, 1.0) == math.inf and quantile({"counts": [0], "sum": 0, "count": 0}, 0.5) is None
    again = Metrics.from_snapshot(orjson.loads(orjson.dumps(m.snapshot())))
    assert again.snapshot() == m.snapshot()
    other = Metrics()
    other.inc("a_total", 10, pool="x")
    other.set("g", 1, agent="x.0")
    other.observe("h_seconds", 0.003)
    again.merge(other)
    assert again.value("a_total", pool="x") == 13.0 and again.value("g", agent="x.0") == 1.0
    assert again.value("h_seconds")["count"] == 6


def test_prometheus_text_format():
    m = Metrics()
    m.inc("agora_restarts_total", child='root/"core"\nx')
    m.set("agora_breaker_state", 2, breaker="llm")
    m.observe("agora_task_latency_seconds", 0.003, capability="echo")
    m.observe("agora_task_latency_seconds", 2.0, capability="echo")
    text = to_prometheus(m.snapshot())
    lines = text.splitlines()
    assert "# TYPE agora_restarts_total counter" in lines
    assert 'agora_restarts_total{child="root/\\"core\\"\\nx"} 1' in lines
    assert 'agora_breaker_state{breaker="llm"} 2' in lines
    buckets = [ln for ln in lines if ln.startswith("agora_task_latency_seconds_bucket")]
    counts = [int(ln.rsplit(" ", 1)[1]) for ln in buckets]
    assert counts == sorted(counts) and counts[-1] == 2 and len(buckets) == len(M.BUCKETS) + 1
    assert 'agora_task_latency_seconds_bucket{capability="echo",le="+Inf"} 2' in lines
    assert 'agora_task_latency_seconds_bucket{capability="echo",le="0.005"} 1' in lines
    assert 'agora_task_latency_seconds_sum{capability="echo"} 2.003' in lines
    assert 'agora_task_latency_seconds_count{capability="echo"} 2' in lines
    assert text.endswith("\n") and "# HELP agora_restarts_total Supervisor restarts, by child." in lines


def task_life():
    return [ev(10.0, "task.submitted", task_id="k", capability="echo"),
            ev(10.1, "task.attempt", task_id="k", attempt=1, agent="echo.0"),
            ev(10.3, "agent.died", agent="echo.0", system=True),
            ev(10.3, "task.rerouted", task_id="k", attempt=1),
            ev(10.4, "task.attempt", task_id="k", attempt=2, agent="echo.1"),
            ev(10.9, "task.succeeded", task_id="k", attempts=2),
            ev(11.0, "task.attempt", task_id="step", attempt=1, agent="echo.1"),
            ev(11.5, "task.failed", task_id="step", attempts=1),
            ev(11.0, "supervisor.restart", child="root/core/pools/pool:echo/agent:echo.0"),
            ev(11.0, "auction.awarded", outcome="awarded", duration_s=0.02),
            ev(11.1, "vote.closed", outcome="a", duration_s=0.3),
            ev(11.2, "ledger.transfer", amount=-4.5),
            ev(11.3, "breaker.transition", breaker="llm", state="open"),
            ev(11.4, "breaker.transition", breaker="llm", state="sideways"),
            ev(11.5, "events.dropped", count=7, source="agent:echo.1")]


def test_event_metrics_from_a_task_life():
    em = EventMetrics()
    for e in task_life():
        em.observe(e)
    m = em.metrics
    assert m.value("agora_tasks_submitted_total", capability="echo") == 1
    assert m.value("agora_task_attempts_total", pool="echo") == 3
    assert m.value("agora_tasks_finished_total", state="succeeded") == 1
    assert m.value("agora_tasks_finished_total", state="failed") == 1
    lat = m.value("agora_task_latency_seconds", capability="echo")
    assert lat["count"] == 1 and lat["sum"] == pytest.approx(0.9)
    assert m.value("agora_task_latency_seconds", capability="unknown")["count"] == 1  # a step
    crashed = m.value("agora_attempt_duration_seconds", pool="echo", outcome="crashed")
    assert crashed["sum"] == pytest.approx(0.2)
    assert m.value("agora_attempt_duration_seconds", pool="echo", outcome="succeeded")["count"] == 1
    assert m.value("agora_agent_deaths_total", pool="echo") == 1
    assert m.value("agora_restarts_total", child="root/core/pools/pool:echo/agent:echo.0") == 1
    assert m.value("agora_auction_latency_seconds")["count"] == 1
    assert m.value("agora_span_duration_seconds", kind="vote")["sum"] == 0.3
    assert (m.value("agora_ledger_volume_total"), m.value("agora_ledger_transfers_total")) == (4.5, 1)
    assert m.value("agora_breaker_state", breaker="llm") == 2.0
    assert m.value("agora_events_dropped_total", source="agent:echo.1") == 7
    assert em.value("agora_events_total", type="task.attempt") == 3
    assert em.throughput(11.5, over=10) == pytest.approx(0.2)
    assert em.throughput(30.0, over=10) == 0.0


def test_event_metrics_memory_is_bounded():
    em = EventMetrics(max_tracked=50, window_s=5)
    for i in range(2000):
        em.observe(ev(float(i), "task.submitted", task_id=f"t{i}", capability=f"cap{i}"))
        em.observe(ev(float(i), "task.attempt", task_id=f"t{i}", attempt=1, agent="p.0"))
        em.observe(ev(float(i), "task.succeeded", task_id=f"u{i}", attempts=1))
    assert len(em._tasks) <= 50 and len(em._attempts) <= 50 and len(em._finished) <= 5
    assert len(em.metrics.series["agora_tasks_submitted_total"]) == M.MAX_SERIES
    assert em.metrics.value("agora_metrics_series_dropped_total",
                            metric="agora_tasks_submitted_total") == 2000 - M.MAX_SERIES


def test_collector_ring_is_bounded_and_bad_lines_counted():
    c = Collector(ring_size=100)
    batch = b"\n".join(orjson.dumps(ev(float(i), "task.submitted", task_id=f"t{i}")) for i in range(1000))
    c.feed(batch + b"\nnot json\n[1]\n" + orjson.dumps({"type": "x", "ts": "no"}))
    assert len(c.ring) == 100 and c.ring[-1]["task_id"] == "t999" and c.ring[0]["task_id"] == "t900"
    assert (c.received, c.bad_lines) == (1000, 3)
    snap = c.snapshot(1000.0)
    assert len(snap["recent"]) == 100
    assert snap["metrics"]["agora_tasks_submitted_total"]["series"][0]["value"] == 1000


def test_snapshot_file_roundtrip(agora_env):
    assert read_snapshot(agora_env) is None
    write_snapshot(agora_env, {"ts": 1.0, "metrics": {}})
    assert read_snapshot(agora_env) == {"ts": 1.0, "metrics": {}}
    assert sorted(p.name for p in agora_env.iterdir()) == ["telemetry.json"]  # no temp file left


def test_rotation_bounds_disk_and_readers_keep_order(agora_env):
    log = EventLog(agora_env, max_bytes=4096, keep=2)
    batch_no = 0
    for batch_no in range(200):
        log.append(b"\n".join(orjson.dumps(ev(float(batch_no), "x.y", n=batch_no, i=i)) for i in range(5)))
    log.close()
    files = log_files(agora_env)
    total = sum(p.stat().st_size for p in files)
    assert len(files) == 3 and total <= 4096 * 3 + 1024
    ns = [e["n"] for e in read_events(agora_env, limit=None)]
    assert ns == sorted(ns) and ns[-1] == 199 and ns[0] > 0  # the oldest were rotated away


def test_read_after_follows_by_position_across_rotation(agora_env):
    log = EventLog(agora_env, max_bytes=2000, keep=3)
    log.append(orjson.dumps(ev(1.0, "a.b", n=-1)))
    events, cursor = read_after(agora_env, None)
    assert events == []
    seen = []
    for n in range(60):  # out-of-order timestamps: position, not ts, decides
        log.append(orjson.dumps(ev(100.0 - n, "a.b", n=n)))
        if n % 7 == 0:
            got, cursor = read_after(agora_env, cursor, limit=5)
            seen += [e["n"] for e in got]
    while True:
        got, cursor = read_after(agora_env, cursor, limit=5)
        if not got:
            break
        seen += [e["n"] for e in got]
    log.close()
    assert seen == list(range(60))


def test_emitter_batches_to_a_datagram_socket_and_bounds_its_buffer(agora_env, monkeypatch):
    path = str(agora_env / "ev.sock")
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(path)
    rx.settimeout(5.0)
    try:
        em = Emitter(path, "test", max_batch=1000)
        em.emit("a.b", n=1)
        em.emit("a.c", n=2)
        assert em.flush()
        lines = rx.recv(1 << 16).split(b"\n")
        got = [orjson.loads(x) for x in lines]
        assert [(e["type"], e["n"], e["system"], e["source"]) for e in got] == [
            ("a.b", 1, True, "test"), ("a.c", 2, True, "test")]
        em.close()
        lost = Emitter(str(agora_env / "nobody.sock"), "test", max_buffer=10, max_batch=1000)
        for i in range(25):
            lost.emit("x", i=i)
        assert lost.dropped == 15 and len(lost._buf) == 10
        assert not lost.flush()  # the drop count now waits in the buffer as an event
        lost.sock_path = path
        assert lost.flush()
        got = [orjson.loads(x) for x in rx.recv(1 << 16).split(b"\n")]
        assert [e["type"] for e in got] == ["x"] * 10 + ["events.dropped"]
        assert got[0]["i"] == 15 and got[-1]["count"] == 15
        lost.close()
    finally:
        rx.close()


def test_tracing_switch_disables_new_emitters(agora_env, monkeypatch):
    monkeypatch.delenv("AGORA_TRACING", raising=False)
    assert tracing_enabled()
    set_tracing(False)
    try:
        em = Emitter(str(agora_env / "x.sock"), "t")
        em.emit("a.b")
        assert not em.enabled and em._buf == []
        em.close()
    finally:
        os.environ.pop("AGORA_TRACING", None)
    set_tracing(True)
    assert tracing_enabled()
    os.environ.pop("AGORA_TRACING", None)


def test_metrics_http_endpoint_on_loopback_only(agora_env):
    from runtime.cli.observe import start_metrics_server
    state = {"fail": False}

    def fetch():
        if state["fail"]:
            raise Unavailable("daemon gone")
        return "agora_x_total 1\n"

    server, thread = start_metrics_server(fetch, 0)
    try:
        host, port = server.server_address
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200 and r.read() == b"agora_x_total 1\n"
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        for url, code in ((f"http://127.0.0.1:{port}/other", 404), (f"http://127.0.0.1:{port}/metrics", 503)):
            state["fail"] = code == 503
            with pytest.raises(urllib.error.HTTPError) as exc:
                urllib.request.urlopen(url, timeout=5)
            assert exc.value.code == code
            exc.value.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_render_metrics_and_top_frames():
    from runtime.cli.observe import render_metrics, render_top
    em = EventMetrics()
    for e in task_life():
        em.observe(e)
    text = "\n".join(render_metrics({"metrics": em.snapshot(12.0), "telemetry": {"snapshot_age_s": 0.1}}))
    assert "agora_tasks_finished_total{state=succeeded}" in text and "count=1 mean=0.9000s" in text
    tree = {"id": "root", "kind": "supervisor", "strategy": "one_for_one", "state": "running",
            "restarts": 0, "children": [{"id": "telemetry", "kind": "worker", "pid": 5,
                                         "state": "running", "restarts": 1, "uptime_s": 3.0}]}
    frame = render_top({"ts": 0.0, "tree": tree, "tasks": {"succeeded": 3}, "throughput": 1.5,
                        "restarts_total": 1, "pools": [{"pool": "echo", "size": 2, "min": 1, "max": 4,
                                                        "agents": 2, "inflight": 1, "queue": 0, "done": 3}],
                        "restarts": [], "coordination": [ev(0.0, "auction.awarded", winner="echo.1")]})
    joined = "\n".join(frame)
    assert "throughput 1.5 tasks/s" in joined and "telemetry" in joined and "pid=5" in joined
    assert "RECENT RESTARTS\n  none" in joined and "auction.awarded [coordinator] winner=echo.1" in joined
    assert any(line.startswith("echo") and line.split()[1:] == ["2", "1", "4", "2", "1", "0", "3"]
               for line in frame)


def test_event_metrics_from_market_votes_and_scaling_events():
    em = EventMetrics()
    for e in [ev(1.0, "market.award", auction_ms=12.0), ev(1.1, "market.no_award"),
              ev(1.2, "market.transfer", action="hold", amount_mc=2500),
              ev(1.3, "market.transfer", action="pay", amount_mc=2500),
              ev(1.4, "market.breach", contract_id="c"),
              ev(1.5, "vote.outcome", method="borda", elapsed_ms=30.0),
              ev(1.6, "scaling.decision", pool="w", delta=2), ev(1.7, "scaling.decision", pool="w", delta=0)]:
        em.observe(e)
    m = em.metrics
    assert m.value("agora_auction_latency_seconds")["sum"] == pytest.approx(0.012)
    assert m.value("agora_auctions_total", outcome="award") == 1
    assert m.value("agora_auctions_total", outcome="no_award") == 1
    assert m.value("agora_ledger_volume_total") == 5.0
    assert m.value("agora_ledger_transfers_total", action="pay") == 1
    assert m.value("agora_contracts_total", outcome="breach") == 1
    assert m.value("agora_votes_total", method="borda") == 1
    assert m.value("agora_span_duration_seconds", kind="vote")["sum"] == pytest.approx(0.03)
    assert m.value("agora_scaling_decisions_total", pool="w", action="grow") == 1
    assert m.value("agora_scaling_decisions_total", pool="w", action="hold") == 1
