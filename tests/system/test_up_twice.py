"""``agora up`` on a home whose daemon runs (issue 15, item 7): an error naming the pid and
its config, unless ``--replace``; two ``up``s racing on one home leave exactly one daemon."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from runtime.daemon.root import running
from tests.support.daemons import REPO, config, spawn, stop, wait_up


def _agora(home, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=env)


def _daemons() -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "environ"]):
        try:
            if (p.info["name"] or "").startswith("agora:daemon") and \
                    (p.info["environ"] or {}).get("AGORA_RUNTIME_DIR") == os.environ["AGORA_RUNTIME_DIR"]:
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_up_on_a_running_home_is_an_error_unless_replace(agora_env, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text(config(size=1))
    proc = spawn(agora_env, config(size=2))
    try:
        wait_up(agora_env, proc)
        got = _agora(agora_env, "up", "--config", str(other))
        assert got.returncode == 5, got
        assert f"pid {proc.pid}" in got.stderr and str(agora_env / "agora.toml") in got.stderr, got.stderr
        assert proc.poll() is None  # the running daemon is untouched
        got = _agora(agora_env, "up", "--replace", "--config", str(other))
        assert got.returncode == 0, got.stderr
        assert proc.wait(30) == 0  # the old one stopped gracefully
        pid, cfg = running(agora_env)
        assert pid != proc.pid and cfg == str(other.resolve())
        assert len(_agora(agora_env, "agents", "--json").stdout.strip().splitlines()) >= 1
        assert _agora(agora_env, "down").returncode == 0
    finally:
        stop(agora_env, proc)


def test_two_ups_racing_leave_exactly_one_daemon(agora_env):
    (agora_env / "agora.toml").write_text(config(size=1))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "runtime.cli.main", "--home", str(agora_env), "up"]
    ups = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO), env=env) for _ in range(2)]
    try:
        results = [(p.wait(60), *p.communicate()) for p in ups]
        codes = sorted(r[0] for r in results)
        assert codes == [0, 5], results
        loser = next(r for r in results if r[0] == 5)
        pid, _ = running(agora_env)
        assert f"pid {pid}" in loser[2], loser
        assert [p.pid for p in _daemons()] == [pid]
    finally:
        _agora(agora_env, "down")
