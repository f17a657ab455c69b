"""Starting and stopping real daemons in tests (imported by test modules, not a conftest).

``running_daemon(home, config_text)`` starts ``agora up --foreground`` as a child process
(its own session, like ``agora up``), waits until it answers ``ping`` (bounded), yields a
connected Client, and always stops it: ``down`` first, SIGKILL of the whole session if
that does not end it within the bound.  The leak fixture then checks that nothing is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from runtime.daemon.root import wait_until_up
from runtime.errors import AgoraError
from runtime.wire.client import Client

REPO = Path(__file__).resolve().parents[2]

ECHO_POOL = """
[pools.echo]
agent = "tests.support.agents:Echo"
size = {size}
max = 4
[pools.echo.capabilities.echo]
cost = 1.0
"""


def config(size: int = 2, daemon: str = "drain_s = 3.0", extra: str = "") -> str:
    return f"[daemon]\n{daemon}\n" + ECHO_POOL.format(size=size) + extra


def spawn(home: Path, config_text: str | None = None, *flags: str) -> subprocess.Popen:
    if config_text is not None:
        (home / "agora.toml").write_text(config_text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(home / "agora.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "--home", str(home), "up",
                                 "--foreground", *flags], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, env=env, cwd=str(REPO))
    finally:
        log.close()


def wait_up(home: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    try:
        wait_until_up(lambda: Client(str(home), timeout=2.0), time.monotonic() + timeout, proc)
    except AgoraError:
        print((home / "agora.log").read_text()[-4000:])
        raise


def stop(home: Path, proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """Graceful down, then SIGKILL of the process group if it overstays."""
    if proc.poll() is None:
        try:
            with Client(str(home), timeout=5.0) as c:
                c.call("down")
        except AgoraError:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the root only (its children must follow by themselves) and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@contextmanager
def running_daemon(home: Path, config_text: str | None = None, *flags: str):
    proc = spawn(home, config_text, *flags)
    try:
        wait_up(home, proc)
        with Client(str(home), timeout=30.0) as c:
            yield c, proc
    finally:
        stop(home, proc)
