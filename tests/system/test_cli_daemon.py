"""The CLI a user expects, against real daemons (issue 17, item 5): exit codes of failed
and timed-out work, pipeline progress and step errors, ``result PIPELINE_ID``, uptimes in
``status``, readable events and ``--follow`` from the end, start-up errors of ``up``, and
``run`` keeping the home of a failed job."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from runtime.cli.main import cli
from tests.support.daemons import REPO, config, running_daemon

PIPELINE = {"name": "half-fails", "steps": [
    {"id": "sum", "capability": "add", "input": {"a": 1, "b": 2}},
    {"id": "boom", "capability": "flaky", "input": {"succeed_on": 9}, "options": {"max_attempts": 1}},
    {"id": "after", "capability": "echo", "input": {"$ref": "boom"}}]}


def _agora(home: Path, *args: str):
    return CliRunner().invoke(cli, [*args, "--home", str(home)])  # global option after the command


def test_failed_work_exits_1_and_a_timed_out_wait_75(agora_env):
    with running_daemon(agora_env, config(size=2)) as (c, _proc):
        res = _agora(agora_env, "submit", "flaky", "--input", '{"succeed_on": 9}', "--max-attempts", "1", "--wait")
        assert res.exit_code == 1, res.output
        assert "failed after 1 attempt(s): RuntimeError: flaky failure on attempt 1" in res.output
        tid = c.call("tasks", state="failed", limit=1)[0]["id"]
        res = _agora(agora_env, "result", tid)
        assert res.exit_code == 1 and "error: RuntimeError" in res.output
        ok = c.call("submit", task={"capability": "add", "input": {"a": 2, "b": 3}})
        res = _agora(agora_env, "result", ok, "--wait", "--json")
        assert res.exit_code == 0 and json.loads(res.stdout)["result"] == 5
        slow = c.call("submit", task={"capability": "sleep", "input": {"s": 3}})
        res = _agora(agora_env, "result", slow, "--wait", "--timeout", "0.3")
        assert res.exit_code == 75 and "still not finished" in res.stderr
        assert _agora(agora_env, "cancel", slow, "--json").exit_code == 0


def test_pipeline_wait_shows_progress_and_step_errors(agora_env, tmp_path):
    spec = tmp_path / "pipeline.json"
    spec.write_text(json.dumps(PIPELINE))
    with running_daemon(agora_env, config(size=2)):
        res = _agora(agora_env, "pipeline", str(spec), "--wait")
        assert res.exit_code == 1, res.output
        assert "[1/3]" in res.stderr and "[3/3]" in res.stderr  # progress, step by step
        assert "boom" in res.stdout and "RuntimeError: flaky failure on attempt 1" in res.stdout
        assert "UPSTREAM_FAILED" in res.stdout  # the step that could not run says why
        pid = res.stdout.split()[0]
        assert pid.startswith("p-") and "(3/3 steps done)" in res.stdout
        again = _agora(agora_env, "result", pid)
        assert again.exit_code == 1 and "RuntimeError" in again.stdout
        as_json = json.loads(_agora(agora_env, "result", pid, "--json").stdout)
        assert as_json["state"] == "failed" and len(as_json["steps"]) == 3


def test_status_shows_the_daemon_uptime_and_each_process_own(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, proc):
        res = _agora(agora_env, "status")
        assert res.exit_code == 0, res.output
        assert f"root pid {proc.pid}" in res.stdout and "daemon up " in res.stdout
        lines = [ln for ln in res.stdout.splitlines() if "pid=" in ln]
        assert lines and all("uptime=" in ln and "uptime=-" not in ln for ln in lines)
        st = c.call("status")
        assert st["daemon_uptime_s"] >= st["uptime_s"] - 0.5  # the root started first


def test_events_are_readable_and_follow_starts_at_the_end(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, _proc):
        before = c.call("submit", task={"capability": "echo", "input": 1})
        c.call("result", id=before, wait=True, timeout_s=10)
        _wait_logged(c, before)  # the event log is written by telemetry, a moment later
        res = _agora(agora_env, "events", "--type", "task.")
        assert res.exit_code == 0 and f"task.succeeded [coordinator] task_id={before}" in res.stdout
        raw = _agora(agora_env, "events", "--type", "task.", "--json").stdout.splitlines()
        assert all(json.loads(line)["type"].startswith("task.") for line in raw)
        follow = subprocess.Popen([sys.executable, "-m", "runtime.cli", "events", "--follow",
                                   "--type", "task.succeeded", "--home", str(agora_env)],
                                  stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            seen = _submit_until_followed(c, follow)
        finally:
            c.call("down")
            rest, _ = follow.communicate(timeout=30)  # the follow ends with the daemon
        assert seen and before not in "".join(seen) + rest  # history was not replayed


def _wait_logged(c, task_id: str, bound_s: float = 30.0) -> None:
    deadline, delay = time.monotonic() + bound_s, 0.01
    while not any(e.get("task_id") == task_id for e in c.call("events", type="task.succeeded")):
        assert time.monotonic() < deadline, f"{task_id} never reached the event log"
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _submit_until_followed(c, follow, bound_s: float = 30.0) -> list[str]:
    """Submit tasks until the follow prints one (it takes its position when it starts)."""
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(follow.stdout, selectors.EVENT_READ)
    deadline, seen = time.monotonic() + bound_s, []
    while time.monotonic() < deadline:
        tid = c.call("submit", task={"capability": "echo", "input": 2})
        c.call("result", id=tid, wait=True, timeout_s=10)
        if sel.select(timeout=0.5):
            seen.append(follow.stdout.readline())
            return seen
    raise AssertionError("the follow printed nothing within the bound")


def test_up_prints_the_start_up_error_and_exits_2_for_an_invalid_config(agora_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.x]\nagent = 'tests.support.agents:Echo'\nsize = 'two'\n")
    res = _agora(agora_env, "up", "--config", str(bad))
    assert res.exit_code == 2, res.output
    log = agora_env / "agora.log"
    assert f"last lines of its log ({log})" in res.stderr and "size" in res.stderr
    assert "  | " in res.stderr  # the log's own lines, quoted


def test_up_prints_an_agent_that_fails_to_start(agora_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.x]\nagent = 'no_such_module_here:Foo'\nsize = 1\n"
                   "[pools.x.capabilities.x]\ncost = 1.0\n")
    res = _agora(agora_env, "up", "--config", str(bad), "--wait", "60")
    assert res.exit_code in (2, 4), res.output  # invalid config (checked early) or a child failed
    assert "no_such_module_here" in res.stderr
    if (agora_env / "agora.log").exists():  # a daemon was started: its log is named
        assert str(agora_env / "agora.log") in res.stderr
    assert "Traceback (most recent call last)" not in res.stderr.split("last lines of its log")[0]


def test_run_keeps_the_home_of_a_failed_job_for_a_post_mortem(agora_env, tmp_path):
    cfg = tmp_path / "agora.toml"
    cfg.write_text(config(size=1))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"capability": "flaky", "input": {"succeed_on": 9},
                               "options": {"max_attempts": 1}}))
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), str(job), "--json"])
    assert res.exit_code == 1, res.output
    home = Path(res.stderr.split("home kept for inspection: ")[1].split()[0])
    try:
        assert (home / "agora.log").exists() and "Traceback" not in res.stderr
        tid = json.loads(res.stdout.splitlines()[-1])["tasks"][0]["id"]
        trace = CliRunner().invoke(cli, ["--home", str(home), "trace", tid, "--brief"])
        assert trace.exit_code == 0 and "flaky" in trace.output  # read from the kept event log
    finally:
        shutil.rmtree(home, ignore_errors=True)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"capability": "add", "input": {"a": 1, "b": 1}}))
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), str(ok), "--keep"])
    assert res.exit_code == 0, res.output
    kept = Path(res.stderr.split("home kept for inspection: ")[1].split()[0])
    assert kept.is_dir()
    shutil.rmtree(kept)
