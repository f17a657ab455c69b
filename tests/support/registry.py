"""Registry test support: partition processes forked for a test, a live owner process,
a pid that is surely dead, and the entry shorthand the conformance suite uses.
"""

from __future__ import annotations

import os
import select
import signal

import multiprocess

from runtime.registry._partition import partition_main
from runtime.registry.backends import make_backend
from runtime.registry.table import make_tables

__all__ = ["BOUND", "FORK", "ME", "Owner", "Partitions", "dead_pid", "spec"]

FORK = multiprocess.get_context("fork")
BOUND = 10.0  # seconds; reached only on a deadlock


# ---------------------------------------------------------------------------- process helpers

class Partitions:
    """N partition processes over shared tables, started and stopped by the test."""

    def __init__(self, n: int, capacity: int = 1024, emit_fd: int | None = None) -> None:
        run_dir = os.environ["AGORA_RUNTIME_DIR"]
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.n, self.emit_fd = n, emit_fd
        self.tables = make_tables(n, capacity)
        self.paths = [os.path.join(run_dir, f"registry.{i}.sock") for i in range(n)]
        self.procs: list = [None] * n
        for i in range(n):
            self.start(i)

    def start(self, i: int) -> None:
        r, w = os.pipe()
        emit = _pipe_emit(self.emit_fd) if self.emit_fd is not None else None
        proc = FORK.Process(target=partition_main, args=(i, self.n, self.paths[i], self.tables[i]),
                            kwargs={"ready": lambda: os.write(w, b"R"), "emit": emit,
                                    "lookup_sample": 1}, daemon=True)
        proc.start()
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], BOUND)
            assert ready and os.read(r, 1) == b"R", f"partition {i} did not start"
        finally:
            os.close(r)
        self.procs[i] = proc

    def kill(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].join(BOUND)
        assert self.procs[i].exitcode == -signal.SIGKILL

    def backend(self, **kw):
        kw.setdefault("timeout", 5.0)
        return make_backend("partitioned", sock_paths=self.paths, tables=self.tables, **kw)

    def stop(self) -> None:
        live = [p for p in self.procs if p is not None and p.exitcode is None]
        for p in live:
            p.terminate()
        for p in live:
            p.join(BOUND)
            if p.exitcode is None:
                p.kill()
                p.join(BOUND)


def _pipe_emit(fd: int):
    import orjson

    def emit(type_: str, **fields) -> None:
        os.write(fd, orjson.dumps({"type": type_, **fields}) + b"\n")
    return emit


def _wait_for_signals() -> None:
    while True:
        signal.pause()


class Owner:
    """A live process to own entries until the test ``kill()``s or ``stop()``s it."""

    def __init__(self) -> None:
        self.proc = FORK.Process(target=_wait_for_signals, daemon=True)
        self.proc.start()
        self.pid = self.proc.pid

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.join(BOUND)

    def stop(self) -> None:
        if self.proc.exitcode is None:
            self.kill()


def dead_pid() -> int:
    p = FORK.Process(target=os._exit, args=(0,))
    p.start()
    p.join(BOUND)
    return p.pid



ME = os.getpid()


def spec(*caps, **meta):
    return {"capabilities": list(caps), "metadata": meta}

