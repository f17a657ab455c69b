"""The agent process's two threads (runtime.agents.process.AgentRunner), driven over a
socketpair by the test playing the coordinator: handlers never overlap, the control path
answers while a handler runs, queued tasks run in order, EOF ends the runner.  Every wait
is bounded."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from runtime.agents.agent import Agent, capability
from runtime.agents.process import AgentRunner
from runtime.observability.events import Emitter
from runtime.wire.server import InternalReader, encode_internal

WAIT = 10.0


class Recorder(Agent):
    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    @capability("work")
    def work(self, input: Any, task: Any) -> Any:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if input.get("hold"):
                assert self.release.wait(WAIT)
            return input["n"]
        finally:
            with self.lock:
                self.running -= 1


class Coordinator:
    """The test's end of the agent's socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.reader, self.pending = sock, InternalReader(), []
        sock.settimeout(WAIT)

    def send(self, msg: dict) -> None:
        self.sock.sendall(encode_internal(msg))

    def task(self, n: int, hold: bool = False) -> None:
        self.send({"t": "tasks", "tasks": [{"id": f"t{n}", "attempt": 1, "cap": "work",
                                             "input": {"n": n, "hold": hold}}]})

    def next(self) -> dict:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            assert data, "the agent closed its socket"
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)


@pytest.fixture
def world():
    ours, theirs = socket.socketpair()
    agent = Recorder()
    emit = Emitter(None, "agent:test")
    runner = AgentRunner(agent, theirs, emit, "w.0")
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    yield Coordinator(ours), agent, thread
    agent.release.set()
    ours.close()
    thread.join(WAIT)
    assert not thread.is_alive(), "EOF from the coordinator did not end the runner"
    theirs.close()
    emit.close()


def test_quick_tasks_each_get_their_result(world):
    coord, agent, _ = world
    for n in range(200):
        coord.task(n)
        msg = coord.next()
        assert msg["t"] == "results" and msg["results"] == [{"id": f"t{n}", "attempt": 1, "ok": n}]
    assert agent.most == 1


def test_bids_are_answered_while_a_handler_runs_and_queued_tasks_follow_in_order(world):
    coord, agent, _ = world
    coord.task(1, hold=True)
    for rid in range(3):  # the handler holds: the other thread must be reading
        coord.send({"t": "ask", "rid": rid, "kind": "bid", "request": {"capability": "work"}})
        answer = coord.next()
        assert answer["t"] == "answer" and answer["rid"] == rid
    coord.task(2)
    coord.task(3)
    agent.release.set()
    ids = []
    while len(ids) < 3:
        msg = coord.next()
        assert msg["t"] == "results"
        ids += [r["id"] for r in msg["results"]]
    assert ids == ["t1", "t2", "t3"]
    assert agent.most == 1  # handlers never overlap


class Caller(Recorder):
    runner: AgentRunner | None = None

    @capability("ask")
    def ask(self, input: Any, task: Any) -> Any:
        return self.runner.call("probe", {"n": input["n"]}, timeout=WAIT)


def _short(n: int, cap: str = "work") -> dict:
    return {"t": "tasks", "tasks": [{"id": f"s{n}", "attempt": 1, "cap": cap, "input": {"n": n},
                                     "short": True}]}


def test_short_tasks_run_on_the_reading_thread_and_asks_are_still_answered(world):
    coord, agent, _ = world
    for n in range(50):
        coord.send(_short(n))
        assert coord.next()["results"] == [{"id": f"s{n}", "attempt": 1, "ok": n}]
        coord.send({"t": "ask", "rid": n, "kind": "bid", "request": {"capability": "work"}})
        assert coord.next()["rid"] == n
    coord.task(99, hold=True)  # not short: handed over as before, and asks answered meanwhile
    coord.send({"t": "ask", "rid": 99, "kind": "bid", "request": {"capability": "work"}})
    assert coord.next()["rid"] == 99
    agent.release.set()
    assert coord.next()["results"][0]["id"] == "t99"
    assert agent.most == 1


def test_a_short_handler_that_calls_the_coordinator_gets_its_reply():
    ours, theirs = socket.socketpair()
    agent, emit = Caller(), Emitter(None, "agent:test")
    runner = AgentRunner(agent, theirs, emit, "w.0")
    agent.runner = runner
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    coord = Coordinator(ours)
    try:
        for n in range(3):  # run inline, the handler's call hands the reading role over
            coord.send(_short(n, "ask"))
            call = coord.next()
            assert call["t"] == "call" and call["args"] == {"n": n}
            coord.send({"t": "reply", "rid": call["rid"], "ok": n * 10})
            assert coord.next()["results"] == [{"id": f"s{n}", "attempt": 1, "ok": n * 10}]
            coord.send(_short(100 + n))  # and the runner reads and runs on afterwards
            assert coord.next()["results"][0]["ok"] == 100 + n
    finally:
        ours.close()
        thread.join(WAIT)
        theirs.close()
        emit.close()
    assert not thread.is_alive()
