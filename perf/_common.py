"""What every perf script shares: the command line, percentiles, a private daemon, and the
closing JSON line.  Not a benchmark itself (the before-stop hook skips ``perf/_*``)."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402


def parse_args(doc: str | None, *, seed: int = 1, quick: str = "a shorter run with the same figures",
               **extra: Any) -> argparse.Namespace:
    """``--quick``, ``--seed N``, ``--json`` (plus ``extra`` as name -> add_argument kwargs)."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--json", action="store_true", help="end with one JSON object on a line")
    for name, kw in extra.items():
        ap.add_argument(name, **kw)
    return ap.parse_args()


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of a non-empty list."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# ---------------------------------------------------------------- the pipe floor
# The two ends of a pipe round trip land on one core (about 3 us here) or on two (60-90
# us), at the scheduler's whim, and a run that drew one core made every ratio against
# the floor jump 20-fold.  The daemon's processes work on both cores, so the floor is
# measured across two: the echoing child on one CPU, the measuring parent on another.

def floor_cpus() -> tuple[int, int] | None:
    """(parent's CPU, child's CPU) for a cross-core round trip; None with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def pin_echo(cpus: tuple[int, int] | None) -> None:
    """In the echoing child: run on the child's CPU."""
    if cpus is not None:
        os.sched_setaffinity(0, {cpus[1]})


@contextlib.contextmanager
def pinned_parent(cpus: tuple[int, int] | None) -> Any:
    """The measuring loop on the parent's CPU; the old affinity comes back after."""
    if cpus is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _exit_on_sigterm() -> None:
    """A script stopped by SIGTERM (``kill``, ``timeout``) unwinds as on Ctrl-C: its ``finally``
    blocks stop the daemons it started (the default action left them running, with their
    homes, after the script was gone)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return
    me = os.getpid()

    def on_term(signum: int, frame: Any) -> None:
        if os.getpid() != me:  # a forked child of the script: die as before, unwinding nothing
            os._exit(128 + signum)
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)


def private_runtime_dir() -> None:
    """Sockets of the daemons this script starts go in a directory of their own, removed
    when the script exits (forked children leave through ``os._exit``: not they)."""
    _exit_on_sigterm()
    if "AGORA_RUNTIME_DIR" not in os.environ:
        path = tempfile.mkdtemp(prefix="agora-perf-rt-")
        os.environ["AGORA_RUNTIME_DIR"] = path
        atexit.register(shutil.rmtree, path, True)


class Daemon:
    """A daemon in a temporary home for one measurement; ``close`` stops it and cleans up."""

    def __init__(self, config_text: str, timeout: float = 120.0) -> None:
        from runtime.daemon.launch import spawn, wait_up
        from runtime.wire.client import Client
        private_runtime_dir()
        self.home = Path(tempfile.mkdtemp(prefix="agora-perf-"))
        self.proc = spawn(self.home, config_text, path=[str(REPO)])
        try:
            wait_up(self.home, self.proc)
            self.client = Client(str(self.home), timeout=timeout)
        except BaseException:  # failed or interrupted (SIGTERM, Ctrl-C) while it started
            from runtime.daemon.launch import stop
            stop(self.home, self.proc)
            shutil.rmtree(self.home, ignore_errors=True)
            raise

    def wait_agents(self, n: int, timeout: float = 120.0) -> None:
        """Until ``n`` agents have joined (``status``), or TimeoutError."""
        deadline = time.monotonic() + timeout
        while self.client.call("status")["agents"] < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} agents did not join within {timeout} s")
            time.sleep(0.05)

    def close(self) -> None:
        from runtime.daemon.launch import stop
        self.client.close()
        stop(self.home, self.proc)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def emit_json(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        print(orjson.dumps(result).decode())
