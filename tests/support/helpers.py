"""Small tools the tests share: a settable clock, bounded polling, forked children."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import orjson
import pytest

WAIT = 30.0  # seconds: a bound only a deadlock reaches


class FakeClock:
    """A clock the test moves by hand (``clock.t += 5`` or ``clock.now = 7``)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    @property
    def now(self) -> float:
        return self.t

    @now.setter
    def now(self, value: float) -> None:
        self.t = value


def eventually(probe: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``probe()`` with backoff until it is truthy (returned); fail after ``timeout``."""
    deadline, delay = time.monotonic() + timeout, 0.001
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last value: {got!r}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def fork_running(body: Callable[[int], None]) -> tuple[int, int]:
    """Fork; the child runs ``body(write_fd)`` and exits 0 (1 on an exception, printed).
    Returns (pid, read_fd); the caller reaps the pid and closes the fd."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            body(w)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def read_message(fd: int, timeout: float = WAIT) -> bytes:
    """One line from a ``fork_running`` child's pipe, within ``timeout``."""
    deadline, data = time.monotonic() + timeout, b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            pytest.fail(f"no message from a child within {timeout} s (got {data!r})")
        chunk = os.read(fd, 65536)
        if not chunk:
            pytest.fail(f"a child closed its pipe early (got {data!r}); see its traceback above")
        data += chunk
    return data


def send(fd: int, obj: Any) -> None:
    """A child's one-line JSON message to its parent (``read_message``)."""
    os.write(fd, orjson.dumps(obj) + b"\n")


def reap(pid: int, timeout: float = WAIT) -> int:
    """Wait (bounded) for a child; returns its wait status; SIGKILLs it and fails past the bound."""
    deadline, delay = time.monotonic() + timeout, 0.001
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"child {pid} did not exit within {timeout} s")
