"""Observability against a real daemon: one connected trace for a pipeline whose step was
retried after its agent was SIGKILLed, metrics across processes, `agora top`, every event
correlated or marked system, `agora events --follow` ending with the daemon, tracing off."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import urllib.request

import orjson
from click.testing import CliRunner

import runtime.cli.observe  # noqa: F401  (registers trace/metrics/top on the group)
from runtime.cli.main import cli
from runtime.observability.eventlog import read_events
from runtime.observability.metrics import Metrics
from tests.support.daemons import REPO, config, running_daemon

LOCAL = 'drain_s = 3.0'


def poll(fn, what, timeout=20.0):
    """fn() until it returns a truthy value; bounded, with backoff."""
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def walk(node):
    yield node
    for c in node["children"]:
        yield from walk(c)


def kill_step_agent(pid_file):
    line = poll(lambda: pid_file.exists() and pid_file.read_text().strip(), "the step to start")
    os.kill(int(line.split()[0]), signal.SIGKILL)


def settled_trace(c, pipeline_id):
    def ready():
        try:
            tr = c.call("trace", id=pipeline_id)["trace"]
        except Exception:  # noqa: BLE001 -- NOT_FOUND until the first batch is written
            return None
        spans = list(walk(tr["root"]))
        attempts = [s for s in spans if s["kind"] == "attempt"]
        done = tr["root"]["outcome"] == "succeeded" and len(attempts) >= 3
        return tr if done and not any(s["open"] for s in attempts) else None
    return poll(ready, "the pipeline's trace to settle")


def check_pipeline_trace(tr, trace_id):
    spans = list(walk(tr["root"]))
    assert tr["trace_id"] == trace_id and tr["adopted"] == 0
    assert tr["root"]["kind"] == "pipeline"
    assert all(e["trace_id"] == trace_id for s in spans for e in s["events"])
    steps = {s["label"].split()[1]: s for s in spans if s["kind"] == "task"}
    a = next(s for s in steps.values() if len(s["children"]) == 2)
    outcomes = [k["outcome"] for k in a["children"]]
    assert outcomes == ["crashed", "succeeded"], outcomes
    assert all(s["parent_span_id"] == tr["root"]["span_id"] for s in steps.values())
    assert len(steps) == 2 and all(s["outcome"] == "succeeded" for s in steps.values())


def finished(c, state, n):
    def enough():
        m = Metrics.from_snapshot(c.call("metrics")["metrics"])
        return (m.value("agora_tasks_finished_total", state=state) or 0) >= n and m
    return poll(enough, f"{n} {state} tasks in the metrics")


def follow_events(home):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "--home", str(home), "events",
                             "--follow", "--since", "0", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=str(REPO))
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready, "`agora events --follow` printed nothing"
    assert orjson.loads(proc.stdout.readline())["ts"] > 0
    return proc


def scrape_served_metrics(home):
    """`agora metrics --serve 0` in its own process: scrape it on loopback, Ctrl-C it."""
    code = "import sys, runtime.cli.observe; from runtime.cli.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "--home", str(home), "metrics", "--serve", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "`agora metrics --serve` printed nothing"
        url = proc.stdout.readline().decode().split()[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics"), url
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read().decode()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0, proc.stderr.read()
        return body
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def check_correlation(home):
    events = read_events(home, limit=None)
    by_type = {}
    for e in events:
        by_type.setdefault(e["type"], []).append(e)
    for type_, evs in sorted(by_type.items()):
        for e in evs:
            traced = isinstance(e.get("trace_id"), str) and e.get("system") is False \
                and isinstance(e.get("span_id"), str)
            assert traced or (e.get("system") is True and e.get("trace_id") is None), (type_, e)
            if type_.startswith(("task.", "pipeline.")):
                assert traced, f"{type_} must belong to its task's trace: {e}"
    for needed in ("pipeline.submitted", "pipeline.succeeded", "task.submitted", "task.attempt",
                   "task.rerouted", "task.retry_scheduled", "task.succeeded", "agent.died",
                   "supervisor.restart", "daemon.stopping", "coordinator.stopped"):
        assert needed in by_type, f"the workload produced no {needed} event"


def test_pipeline_retry_trace_metrics_top_follow_and_correlation(agora_env, tmp_path):
    home, pid_file = agora_env, tmp_path / "pids"
    spec = {"name": "obs", "steps": [
        {"id": "a", "capability": "sleep", "input": {"s": 0.3, "pid_file": str(pid_file)}},
        {"id": "b", "capability": "echo", "input": {"x": {"$ref": "a.slept"}}}]}
    runner, follower = CliRunner(), None
    try:
        with running_daemon(home, config(size=2, daemon=LOCAL)) as (c, _proc):
            p = c.call("pipeline", spec=spec)
            kill_step_agent(pid_file)
            flaky = c.call("submit", task={"capability": "flaky", "input": {"succeed_on": 2}})
            assert c.call("pipeline_result", id=p["id"], wait=True, timeout_s=30)["state"] == "succeeded"
            assert c.call("result", id=flaky, wait=True, timeout_s=30)["state"] == "succeeded"
            check_pipeline_trace(settled_trace(c, p["id"]), p["trace_id"])

            m = finished(c, "succeeded", 3)
            assert m.value("agora_agent_deaths_total", pool="echo") >= 1
            assert m.value("agora_attempt_duration_seconds", pool="echo", outcome="crashed")["count"] >= 1
            assert m.value("agora_queue_depth", capability="echo") == 0
            assert all(v > 0 for v in m.series["agora_agent_memory_bytes"].values())

            args = ["--home", str(home)]
            res = runner.invoke(cli, [*args, "trace", p["id"]])
            assert res.exit_code == 0, res.output
            assert "crashed" in res.output and "attempt 2 on echo." in res.output, res.output
            res = runner.invoke(cli, [*args, "metrics", "--prometheus"])
            assert res.exit_code == 0 and "# TYPE agora_tasks_finished_total counter" in res.output
            assert "agora_agent_deaths_total{pool=\"echo\"} 1" in scrape_served_metrics(home)
            res = runner.invoke(cli, [*args, "top", "--once"])
            assert res.exit_code == 0, res.output
            assert "coordinator" in res.output and "echo" in res.output and "\x1b" not in res.output
            follower = follow_events(home)
        assert follower.wait(20) == 0, follower.stderr.read()
        check_correlation(home)
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait(10)
        if follower is not None:
            follower.stdout.close()
            follower.stderr.close()


def test_tracing_off_writes_no_event(agora_env):
    with running_daemon(agora_env, config(size=1, daemon=LOCAL + "\ntracing = false")) as (c, _):
        tid = c.call("submit", task={"capability": "echo", "input": 1})
        assert c.call("result", id=tid, wait=True, timeout_s=30)["state"] == "succeeded"
        assert c.call("metrics")["metrics"]["agora_pool_agents"]["series"][0]["value"] == 1
    assert read_events(agora_env, limit=None) == []
