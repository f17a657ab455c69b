"""The main job from the command line: ``agora run FILE`` and ``agora demo`` start an
embedded runtime, print results and leave nothing running (the leak fixture checks)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runtime.cli.main import main
from tests.support.daemons import config


def test_run_a_pipeline_file(agora_env, tmp_path, capsys):
    cfg = tmp_path / "agora.toml"
    cfg.write_text(config(size=2))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"name": "two-steps", "steps": [
        {"id": "sum", "capability": "add", "input": {"a": 20, "b": 22}},
        {"id": "show", "capability": "echo", "input": {"answer": {"$ref": "sum"}}}]}))
    assert main(["run", "--config", str(cfg), "--json", str(job)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["state"] == "succeeded"
    assert [s["result"] for s in res["steps"]][-1]["echo"] == {"answer": 42}


def test_run_tasks_and_report_a_failure(agora_env, tmp_path, capsys):
    cfg = tmp_path / "agora.toml"
    cfg.write_text(config(size=1))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"tasks": [
        {"capability": "add", "input": {"a": 1, "b": 1}},
        {"capability": "flaky", "input": {"succeed_on": 9}, "options": {"max_attempts": 1}}]}))
    assert main(["run", "--config", str(cfg), str(job)]) == 1  # one task failed
    captured = capsys.readouterr()
    assert "succeeded" in captured.out and "failed" in captured.out
    # a failed job keeps its home for inspection; this test removes it (it was left in
    # the temporary directory by every run of the suite)
    home = Path(captured.err.split("home kept for inspection: ")[1].split()[0])
    try:
        assert (home / "journal.db").is_file()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_demo(agora_env, capsys):
    assert main(["demo", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    steps = res["result"]["steps"]
    assert [s["state"] for s in steps] == ["succeeded"] * 4
    answer = steps[2]["result"]  # summarize (consult follows: tests/system/test_demo_services.py)
    assert answer["best_score"] > 0 and len(answer["themes"]) > 0


def test_demo_says_what_it_did_and_keep_leaves_a_home_to_trace(agora_env, capsys):
    assert main(["demo", "--keep"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "What happened:" in out and "Try next:" in out and "class Echo(agora.Agent):" in out
    trace_cmd = next(line.strip() for line in out.splitlines() if " trace p-" in line)
    home = Path(trace_cmd.split("--home ")[1].split()[0])
    try:
        assert home.is_dir() and f"home kept for inspection: {home}" in captured.err
        assert main(trace_cmd.split()[1:] + ["--brief"]) == 0  # post-mortem, from the kept log
        assert "pipeline p-" in capsys.readouterr().out
    finally:
        shutil.rmtree(home, ignore_errors=True)
