"""Starting a daemon as a child process and stopping it, for programs that own one:
the test suite, perf scripts, an embedded runtime.

``spawn(home, config_text)`` starts ``agora up --foreground`` in its own session (as
``agora up`` detaches), ``wait_up`` waits until it answers ``ping`` (bounded), ``stop``
asks it ``down`` and SIGKILLs the whole session if it overstays the bound, and
``running_daemon`` is all three around a connected Client.  ``path`` entries are put on
the child's PYTHONPATH, so that agents defined next to the caller import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from runtime.daemon.root import wait_until_up
from runtime.errors import AgoraError
from runtime.wire.client import Client

__all__ = ["spawn", "wait_up", "stop", "kill_root", "running_daemon"]


def spawn(home: Path, config_text: str | None = None, *flags: str, path: Sequence[str] = (),
          cwd: str | None = None) -> subprocess.Popen:
    if config_text is not None:
        (home / "agora.toml").write_text(config_text)
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([*path, *filter(None, [env.get("PYTHONPATH")])])
    log = open(home / "agora.log", "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "--home", str(home), "up",
                                 "--foreground", *flags], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True, env=env, cwd=cwd)
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


def kill_root(proc: subprocess.Popen) -> None:
    """SIGKILL the root only (its children must follow by themselves) and reap it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


@contextmanager
def running_daemon(home: Path, config_text: str | None = None, *flags: str,
                   path: Sequence[str] = (), cwd: str | None = None) -> Iterator[tuple[Client, subprocess.Popen]]:
    proc = spawn(home, config_text, *flags, path=path, cwd=cwd)
    try:
        wait_up(home, proc)
        with Client(str(home), timeout=30.0) as c:
            yield c, proc
    finally:
        stop(home, proc)
