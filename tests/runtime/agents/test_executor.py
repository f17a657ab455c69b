"""Concurrency inside an agent (runtime.agents.executor), driven over a socketpair by the test
playing the coordinator: async handlers run N at once on the loop, sync handlers N at once on
threads, cancellation follows the contract (the handler sees it; a Cancelled result frame),
the control path answers with the executor's load.  Every wait is bounded; events, not sleeps."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from runtime.agents.agent import Agent, Cancelled, capability, current_task
from runtime.agents.process import ConcurrentRunner, InlineRunner, make_runner
from runtime.observability.events import Emitter
from runtime.tasks.payloads import Payloads
from runtime.wire.server import InternalReader, encode_internal

WAIT = 10.0


class Both(Agent):
    """An async and a sync capability that count how many run at once and hold until released."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.saw: list[Any] = []

    def _enter(self) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.release()

    def _leave(self) -> None:
        with self.lock:
            self.running -= 1

    @capability("aio")
    async def aio(self, input: Any, task: Any) -> Any:
        self._enter()
        try:
            assert current_task() is task
            while not self.release.is_set():
                await asyncio.sleep(0.001)
            task.emit("aio.done")
            return input["n"]
        finally:
            self._leave()

    @capability("sync")
    def sync(self, input: Any, task: Any) -> Any:
        self._enter()
        try:
            assert current_task() is task
            while not self.release.wait(0.001):
                task.check()  # a long handler looks between steps
            return input["n"]
        except Cancelled:
            self.saw.append(task.cancelled)
            raise
        finally:
            self._leave()


class Coordinator:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.reader, self.pending = sock, InternalReader(), []
        sock.settimeout(WAIT)

    def send(self, msg: dict) -> None:
        self.sock.sendall(encode_internal(msg))

    def tasks(self, cap: str, ns: range) -> None:
        self.send({"t": "tasks", "tasks": [{"id": f"t{n}", "attempt": 1, "cap": cap, "input": {"n": n}}
                                           for n in ns]})

    def next(self) -> dict:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            assert data, "the agent closed its socket"
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def results(self, n: int) -> dict[str, dict]:
        got: dict[str, dict] = {}
        while len(got) < n:
            msg = self.next()
            if msg["t"] == "results":
                got.update({r["id"]: r for r in msg["results"]})
        return got


@pytest.fixture
def world(request):
    concurrency = request.param
    ours, theirs = socket.socketpair()
    agent = Both()
    emit = Emitter(None, "agent:test")
    runner = make_runner(agent, theirs, emit, "w.0", Payloads(None, 0), concurrency)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    yield Coordinator(ours), agent, runner
    agent.release.set()
    ours.close()
    thread.join(WAIT)
    assert not thread.is_alive(), "EOF from the coordinator did not end the runner"
    theirs.close()
    emit.close()


def _wait_started(agent: Both, n: int) -> None:
    for _ in range(n):
        assert agent.started.acquire(timeout=WAIT)


@pytest.mark.parametrize("world", [4], indirect=True)
@pytest.mark.parametrize("cap", ["aio", "sync"])
def test_n_attempts_run_at_once_and_the_rest_wait_their_turn(world, cap):
    coord, agent, runner = world
    assert isinstance(runner, ConcurrentRunner)
    coord.tasks(cap, range(10))
    _wait_started(agent, 4)
    coord.send({"t": "ask", "rid": 1, "kind": "bid", "request": {"capability": cap}})
    answer = coord.next()  # the control path answers while every slot is busy
    assert answer["t"] == "answer" and answer["answer"]["price"] == pytest.approx(1.0 * (1 + 6))
    agent.release.set()
    got = coord.results(10)
    assert {k: v["ok"] for k, v in got.items()} == {f"t{n}": n for n in range(10)}
    assert agent.most == 4


@pytest.mark.parametrize("world", [3], indirect=True)
def test_a_cancelled_async_handler_reports_cancelled_and_the_others_finish(world):
    coord, agent, _ = world
    coord.tasks("aio", range(3))
    _wait_started(agent, 3)
    coord.send({"t": "cancel", "tasks": [{"id": "t1", "attempt": 1}], "reason": "by the test"})
    got = coord.results(1)
    assert got["t1"]["error"]["type"] == "Cancelled" and got["t1"]["error"]["code"] == "CANCELLED"
    assert "by the test" in got["t1"]["error"]["message"] and "ok" not in got["t1"]
    agent.release.set()
    rest = coord.results(2)
    assert rest["t0"]["ok"] == 0 and rest["t2"]["ok"] == 2


@pytest.mark.parametrize("world", [2], indirect=True)
def test_a_cancelled_sync_handler_sees_it_and_a_waiting_attempt_never_runs(world):
    coord, agent, _ = world
    coord.tasks("sync", range(3))  # t2 waits for a slot
    _wait_started(agent, 2)
    coord.send({"t": "cancel", "tasks": [{"id": "t0", "attempt": 1}, {"id": "t2", "attempt": 1}]})
    got = coord.results(2)
    assert got["t0"]["error"]["code"] == "CANCELLED" and got["t2"]["error"]["code"] == "CANCELLED"
    assert agent.saw == [True]  # t0's handler raised from check(); t2 never started
    agent.release.set()
    assert coord.results(1)["t1"]["ok"] == 1


@pytest.mark.parametrize("world", [1], indirect=True)
def test_one_at_a_time_sync_agents_keep_the_inline_runner_and_can_be_cancelled(world):
    coord, agent, runner = world
    assert isinstance(runner, ConcurrentRunner)  # Both has an async handler: it needs the loop
    ours, theirs = socket.socketpair()
    plain = type("Plain", (Agent,), {"sync": capability("sync")(Both.sync), "_enter": Both._enter,
                                     "_leave": Both._leave})
    a = plain()
    a.lock, a.running, a.most, a.started, a.release, a.saw = (threading.Lock(), 0, 0, threading.Semaphore(0),
                                                              threading.Event(), [])
    emit = Emitter(None, "agent:plain")
    r = make_runner(a, theirs, emit, "p.0", Payloads(None, 0), 1)
    assert isinstance(r, InlineRunner)
    thread = threading.Thread(target=r.run, daemon=True)
    thread.start()
    c = Coordinator(ours)
    c.tasks("sync", range(1))
    assert a.started.acquire(timeout=WAIT)
    c.send({"t": "cancel", "tasks": [{"id": "t0", "attempt": 1}]})
    assert c.results(1)["t0"]["error"]["code"] == "CANCELLED"
    ours.close()
    thread.join(WAIT)
    assert not thread.is_alive()
    theirs.close()
    emit.close()


@pytest.mark.parametrize("world", [64], indirect=True)
def test_64_async_attempts_in_flight_at_once(world):
    coord, agent, _ = world
    coord.tasks("aio", range(64))
    _wait_started(agent, 64)
    assert agent.running == 64
    agent.release.set()
    assert len(coord.results(64)) == 64


@pytest.mark.parametrize("world", [1, 4], indirect=True)
@pytest.mark.parametrize("cap", ["sync", "aio"])
def test_results_and_answers_carry_the_agents_own_clock(world, cap):
    """The agent merges the frame's stamp at the task's start and stamps the result with its
    own clock (runtime.observability.vclock); every event of the agent gets a distinct stamp.
    Async results too, and both report their run time (the scheduler's prefetch reads it)."""
    coord, agent, runner = world
    agent.release.set()
    coord.send({"t": "tasks", "tasks": [{"id": f"t{n}", "attempt": 1, "cap": cap, "input": {"n": n},
                                         "vc": {"coordinator": n + 1}} for n in range(3)]})
    got = coord.results(3)
    stamps = [got[f"t{n}"]["vc"] for n in range(3)]
    assert all(got[f"t{n}"]["run_us"] >= 0 for n in range(3))
    assert all(set(s) == {"coordinator", "w.0"} for s in stamps), stamps
    assert all(s["coordinator"] >= n + 1 for n, s in enumerate(stamps))  # merged at the start
    assert len({s["w.0"] for s in stamps}) == 3  # start + result: two ticks each, all distinct
    coord.send({"t": "ask", "rid": 9, "kind": "bid", "request": {"capability": "sync"}})
    answer = coord.next()
    assert answer["t"] == "answer" and answer["vc"]["w.0"] > max(s["w.0"] for s in stamps)
    assert runner.clock.now == answer["vc"]
