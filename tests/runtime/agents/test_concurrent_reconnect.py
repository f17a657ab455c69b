"""ConcurrentRunner across a coordinator restart: an attempt that finishes while the
coordinator is away is neither lost nor reported as still running; the next hello carries
its result (``results``) and no longer lists it in ``inflight``, as AgentRunner does.  The
test plays both coordinators on a Unix socket (challenge, hello).  Every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

from runtime.agents.agent import Agent, capability
from runtime.agents.process import ConcurrentRunner
from runtime.observability.events import Emitter
from runtime.tasks.payloads import Payloads
from runtime.wire.server import InternalReader, encode_internal

WAIT = 10.0


class Holder(Agent):
    """``async def`` work that holds until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.started = threading.Event()

    @capability("work")
    async def work(self, input: Any, task: Any) -> Any:
        self.started.set()
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        return input["n"]


def _listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    s.settimeout(WAIT)
    return s


def _accept_hello(listener: socket.socket) -> tuple[socket.socket, dict[str, Any]]:
    """One coordinator's side of the handshake: challenge, then read the hello."""
    conn, _ = listener.accept()
    conn.settimeout(WAIT)
    conn.sendall(encode_internal({"t": "challenge", "nonce": "n0"}))
    reader, frames = InternalReader(), []
    while not frames:
        data = conn.recv(1 << 16)
        assert data, "the agent closed before its hello"
        frames = reader.feed(data)
    assert frames[0]["t"] == "hello"
    return conn, frames[0]


def _until(cond: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_result_finished_while_the_coordinator_is_away_is_re_announced(tmp_path):
    path = str(tmp_path / "agents.sock")
    agent, emit = Holder(), Emitter(None, "agent:test")
    runner = ConcurrentRunner(agent, None, emit, "w.0", Payloads(None, 0), 4)  # type: ignore[arg-type]
    runner.path, runner.secret = path, b"s" * 32
    runner.hello = {"t": "hello", "agent": "w.0", "pool": "w", "index": 0, "pid": os.getpid(), "caps": {}}
    listener = _listen(path)
    thread = None
    try:
        t = threading.Thread(target=runner.connect_once, daemon=True)
        t.start()
        first, hello = _accept_hello(listener)
        t.join(WAIT)
        assert hello["inflight"] == [] and hello["results"] == []
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        first.sendall(encode_internal({"t": "tasks", "tasks": [
            {"id": "t1", "attempt": 1, "cap": "work", "input": {"n": 7}}]}))
        assert agent.started.wait(WAIT)
        # the coordinator dies (and its socket path with it) while the attempt runs
        listener.close()
        os.unlink(path)
        first.close()
        _until(lambda: runner.sock is None, "the agent to see the coordinator's EOF")
        agent.release.set()
        _until(lambda: runner.executor.running() == 0 and not runner._sending, "the attempt to end")
        listener = _listen(path)  # the restarted coordinator
        second, hello = _accept_hello(listener)
        [result] = hello["results"]
        assert {k: result[k] for k in ("id", "attempt", "ok")} == {"id": "t1", "attempt": 1, "ok": 7}
        assert hello["inflight"] == []
        runner.path = ""  # this EOF ends the runner (no third coordinator)
        second.close()
    finally:
        agent.release.set()
        listener.close()
        if thread is not None:
            thread.join(WAIT)
            assert not thread.is_alive(), "EOF from the coordinator did not end the runner"
        if runner.sock is not None:
            runner.sock.close()
        emit.close()
        if os.path.exists(path):
            os.unlink(path)
