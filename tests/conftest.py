"""Suite-wide fixtures: every test runs in its own AGORA_HOME and runtime directory,
and fails if it leaves a process, a socket file, a /dev/shm segment or a thread behind.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time

import psutil
import pytest

SHM_PREFIX = "agora"
_counter = itertools.count()


def _shm_entries() -> set[str]:
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX)}
    except FileNotFoundError:
        return set()


def _owned_by_a_stranger(name: str) -> bool:
    """A segment of a live run that is not ours (another test session on this machine)."""
    try:
        pid = int(name.split(".")[1].split("-")[0])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid() or not psutil.pid_exists(pid):
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and os.getpid() not in {
            p.pid for p in proc.parents()}
    except psutil.Error:
        return False


def _left_by_this_test(name: str, tmp_path) -> bool:
    """A segment of a dead run is this test's only with evidence in the test's directory:
    a manifest of its run (``shm.<run>*.json``) or a pid file naming its root.  Runs of
    other test sessions on this machine (several share /dev/shm) die too, and a segment
    one of them leaves during this test is not this test's leak."""
    try:
        run = name.split(".")[1]
        pid = int(run.split("-")[0])
    except (IndexError, ValueError):
        return True
    if pid == os.getpid() or psutil.pid_exists(pid):
        return True  # ours, or alive and not a stranger's (_owned_by_a_stranger said so)
    if any(tmp_path.rglob(f"shm.{run}*.json")):
        return True
    for pid_file in tmp_path.rglob("agora.pid"):
        try:
            if pid_file.read_text().split("\n", 1)[0].strip() == str(pid):
                return True
        except OSError:
            pass
    return False


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _wait_gone(deadline: float) -> list[psutil.Process]:
    """Poll with backoff until no child is left (bounded), reaping zombies."""
    delay = 0.005
    while True:
        alive = []
        for p in _children():
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    try:
                        os.waitpid(p.pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                    continue
                alive.append(p)
            except psutil.Error:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@pytest.fixture(autouse=True)
def agora_env(tmp_path, monkeypatch):
    """A private home and a short runtime dir per test; leak checks afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    run_dir = f"/tmp/agt-{os.getpid()}-{next(_counter)}"
    monkeypatch.setenv("AGORA_HOME", str(home))
    monkeypatch.setenv("AGORA_RUNTIME_DIR", run_dir)
    shm_before = _shm_entries()
    threads_before = set(threading.enumerate())
    yield home
    problems = []
    left = _wait_gone(time.monotonic() + 3.0)
    if left:
        problems.append("processes left: " + ", ".join(f"{p.pid} {p.name()}" for p in left))
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        _wait_gone(time.monotonic() + 2.0)
    new_shm = {n for n in _shm_entries() - shm_before
               if not _owned_by_a_stranger(n) and _left_by_this_test(n, tmp_path)}
    if new_shm:
        problems.append(f"/dev/shm segments left: {sorted(new_shm)}")
        for n in new_shm:
            try:
                os.unlink(os.path.join("/dev/shm", n))
            except OSError:
                pass
    if os.path.exists(run_dir):
        files = [os.path.join(d, f) for d, _, fs in os.walk(run_dir) for f in fs]
        if files:
            problems.append(f"socket/runtime files left: {files}")
        shutil.rmtree(run_dir, ignore_errors=True)
    extra = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    deadline = time.monotonic() + 2.0
    while extra and time.monotonic() < deadline:
        extra[0].join(0.05)
        extra = [t for t in extra if t.is_alive()]
    if extra:
        problems.append(f"threads left: {[t.name for t in extra]}")
    if problems:
        pytest.fail("leak check failed: " + "; ".join(problems), pytrace=False)
