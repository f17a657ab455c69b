"""Starting and stopping real daemons in tests (imported by test modules, not a conftest).

``running_daemon(home, config_text)`` starts ``agora up --foreground`` as a child process
(its own session, like ``agora up``), waits until it answers ``ping`` (bounded), yields a
connected Client, and always stops it: ``down`` first, SIGKILL of the whole session if
that does not end it within the bound.  The leak fixture then checks that nothing is left.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import psutil

from runtime.daemon import launch
from runtime.daemon.launch import stop, wait_up
from runtime.errors import AgoraError
from runtime.wire.client import Client

__all__ = ["REPO", "ECHO_POOL", "config", "spawn", "wait_up", "stop", "kill_tree", "running_daemon",
           "coordinator_pid", "serves"]

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
    """The echo pool; not autoscaled (a pool whose max exceeds its size is, by default)
    unless ``extra`` has its own ``[pools.echo.scaling]``: tests scale by hand, and an
    agent retired by the autoscaler mid-test would read as a restart."""
    pool = ECHO_POOL.format(size=size)
    if "[pools.echo.scaling]" not in extra:
        pool += "[pools.echo.scaling]\nautoscale = false\n"
    return f"[daemon]\n{daemon}\n" + pool + extra


def spawn(home: Path, config_text: str | None = None, *flags: str) -> subprocess.Popen:
    return launch.spawn(home, config_text, *flags, path=[str(REPO)], cwd=str(REPO))


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the root only (its children must follow by themselves) and reap it."""
    launch.kill_root(proc)


@contextmanager
def running_daemon(home: Path, config_text: str | None = None, *flags: str):
    with launch.running_daemon(home, config_text, *flags, path=[str(REPO)], cwd=str(REPO)) as got:
        yield got


def coordinator_pid(root: int, not_pid: int | None = None) -> int | None:
    """The pid of the root's live coordinator child (other than ``not_pid``), or None."""
    try:
        kids = psutil.Process(root).children()
    except psutil.NoSuchProcess:
        return None
    for p in kids:
        try:
            if p.name().startswith("agora:coordin") and p.status() != psutil.STATUS_ZOMBIE \
                    and p.pid != not_pid:
                return p.pid
        except psutil.NoSuchProcess:
            continue
    return None


def serves(home: Path) -> bool:
    """The daemon of ``home`` answers ``ping`` now."""
    try:
        with Client(str(home), timeout=0.5) as c:
            c.call("ping")
            return True
    except AgoraError:
        return False
