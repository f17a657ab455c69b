"""Durable primitives (issue 18, item 1): the Primitives driver over the journal's SQLite
file, "restarted" by building a new driver on the same file, on a fake clock.

A restart here is what a SIGKILLed coordinator leaves: whatever was written through the
store (the turn's transaction committed) and nothing else.  The live version, with real
processes and SIGKILLs, is tests/system/test_primitives_restart.py.
"""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.reputation import Observation, Reputation
from coordination.services.store import MarketMemory, Store
from coordination.services.primitives import Primitives
from runtime.coordinator.reconcile import RECONCILE_S
from runtime.errors import AgoraError


class Loop:
    """Clock, timers and events of one coordinator incarnation; ``wall`` is shared."""

    def __init__(self, wall: list[float], start: float) -> None:
        self.now, self.wall = start, wall
        self.timers: list[tuple[float, object]] = []
        self.events: list[tuple[str, dict]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, fn) -> None:
        self.timers.append((self.now + delay, fn))

    def emit(self, type_: str, trace=None, **fields) -> None:
        self.events.append((type_, fields))

    def advance(self, dt: float) -> None:
        self.now += dt
        self.wall[0] += dt
        while due := sorted((t for t in self.timers if t[0] <= self.now), key=lambda t: t[0]):
            self.timers.remove(due[0])
            due[0][1]()


def link(agent: str, pid: int, **inflight: int):
    return SimpleNamespace(id=agent, pid=pid, inflight=dict(inflight))


class Coordinator:
    """One incarnation: a Primitives on its own connection to the shared file."""

    def __init__(self, path, wall: list[float], start: float, agents: dict) -> None:
        self.loop = Loop(wall, start)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.agents = agents
        self.p = Primitives(self.loop.clock, self.loop.emit, self.loop.call_later,
                            store=Store(self.conn, wall=lambda: wall[0]), agents=agents)
        self.p.restore()

    def hello(self, lk) -> None:
        self.agents[lk.id] = lk
        self.p.agent_joined(lk)

    def kill(self) -> None:  # SIGKILL: nothing but the store survives
        self.conn.close()


@pytest.fixture
def world(tmp_path):
    wall = [1_000_000.0]
    db = tmp_path / "journal.db"
    made: list[Coordinator] = []

    def start(agents: dict, start_clock: float = 50.0) -> Coordinator:
        c = Coordinator(str(db), wall, start_clock, agents)
        made.append(c)
        return c
    yield start
    for c in made:
        c.conn.close()


def _bound(d) -> list[dict]:
    got: list[dict] = []
    d.bind(got.append)
    return got


def test_tokens_terms_and_counters_continue_and_a_held_lock_stays_held(world):
    a, b = link("a", 11), link("b", 12)
    c1 = world({"a": a, "b": b})
    assert c1.p.lock_acquire("a", {"name": "L", "ttl": 20}, None)["token"] == 1
    assert c1.p.election_join("a", {"group": "g"}, None)["term"] == 1
    c1.p.election_join("b", {"group": "g"}, None)
    c1.p.counter_add("a", {"name": "n", "delta": 5}, None)
    c1.loop.advance(3.0)
    c1.kill()

    c2 = world({}, start_clock=9000.0)        # another process: another monotonic origin
    c2.hello(link("a", 11))
    c2.hello(link("b", 12))
    held = c2.p.cmd_locks({}, None)
    assert [(r["holder"], r["token"]) for r in held] == [("a", 1)]
    assert held[0]["expires_in"] == pytest.approx(17.0)   # the time it had left
    assert c2.p.lock_check("a", {"name": "L", "token": 1}, None)
    queued = _bound(c2.p.lock_acquire("b", {"name": "L", "ttl": 5, "timeout": 30}, None))
    assert queued == []                                   # still held: b waits
    c2.p.lock_release("a", {"name": "L", "token": 1}, None)
    assert queued[0]["ok"]["token"] == 2
    assert c2.p.cmd_leaders({}, None)[0] == {"group": "g", "leader": "a", "term": 1,
                                             "candidates": ["a", "b"]}
    assert c2.p.counter_add("a", {"name": "n"}, None) == 6
    c2.p.agent_died("a")
    assert c2.p.cmd_leaders({}, None)[0]["term"] == 2
    c2.kill()

    c3 = world({}, start_clock=5.0)
    c3.hello(link("b", 12))
    assert c3.p.lock_release("b", {"name": "L", "token": 2}, None)["released"]
    assert c3.p.lock_acquire("b", {"name": "L", "ttl": 5}, None)["token"] == 3
    assert c3.p.election_join("a", {"group": "g"}, None)["term"] == 2
    assert c3.p.cmd_leaders({}, None)[0]["leader"] == "b"


def test_a_holder_that_does_not_come_back_or_comes_back_as_another_pid_is_released(world):
    c1 = world({"a": link("a", 11), "b": link("b", 12)})
    c1.p.lock_acquire("a", {"name": "A", "ttl": 60}, None)
    c1.p.lock_acquire("b", {"name": "B", "ttl": 60}, None)
    c1.p.election_join("a", {"group": "g"}, None)
    c1.kill()
    c2 = world({})
    c2.hello(link("a", 99))                               # a new incarnation of "a"
    assert [r["resource"] for r in c2.p.cmd_locks({}, None)] == ["lock:B"]
    assert c2.p.cmd_leaders({}, None)[0]["leader"] is None
    c2.loop.advance(RECONCILE_S - 0.1)
    assert [r["resource"] for r in c2.p.cmd_locks({}, None)] == ["lock:B"]
    c2.loop.advance(0.2)                                  # b never said hello: dead
    assert c2.p.cmd_locks({}, None) == []
    assert c2.p.lock_acquire("a", {"name": "B", "ttl": 5}, None)["token"] == 2


def test_a_lease_that_expired_while_the_coordinator_was_down_is_reaped(world):
    c1 = world({"a": link("a", 11)})
    c1.p.lease_acquire("a", {"name": "R", "ttl": 2}, None)
    c1.kill()
    c1.loop.wall[0] += 5.0                                # down for 5 s (wall clock)
    c2 = world({})
    c2.hello(link("a", 11))
    assert not c2.p.lease_check("a", {"name": "R", "token": 1}, None)
    c2.loop.advance(0.0)
    assert c2.p.cmd_locks({}, None) == []
    assert c2.p.lease_acquire("a", {"name": "R", "ttl": 2}, None)["token"] == 2


def test_barrier_arrivals_survive_and_a_retry_hears_released(world):
    c1 = world({"x": link("x", 1), "y": link("y", 2)})
    _bound(c1.p.barrier_wait("x", {"name": "b", "parties": 2, "timeout": 30}, None))
    c1.loop.advance(0.0)
    c1.kill()
    c2 = world({})
    c2.hello(link("x", 1))
    c2.hello(link("y", 2))
    y = _bound(c2.p.barrier_wait("y", {"name": "b", "parties": 2}, None))
    c2.loop.advance(0.0)
    assert y[0]["ok"]["state"] == "released"
    x = _bound(c2.p.barrier_wait("x", {"name": "b", "parties": 2}, None))  # its call had died
    c2.loop.advance(0.0)
    assert x[0]["ok"]["state"] == "released"


def test_task_held_lock_is_released_when_the_attempt_ends_and_survives_a_restart(world):
    agents = {"a": link("a", 11, **{"t-1": 1}), "b": link("b", 12)}
    c1 = world(agents)
    task = {"id": "t-1", "attempt": 1}
    got = c1.p.lock_acquire("a", {"name": "L", "task": task}, None)
    assert got["holder"] == "task:t-1:1"
    with pytest.raises(AgoraError, match="not running on 'b'"):
        c1.p.lock_acquire("b", {"name": "M", "task": task}, None)
    with pytest.raises(AgoraError, match="cannot release"):
        c1.p.lock_release("a", {"name": "L", "token": 1}, None)  # the agent is not the holder
    c1.kill()
    c2 = world({})
    c2.hello(link("a", 11, **{"t-1": 1}))
    waiting = _bound(c2.p.lock_acquire("b", {"name": "L", "timeout": 30}, None))
    assert waiting == []
    c2.p.attempt_ended(SimpleNamespace(id="t-1"), 1, None, False)  # the handler raised
    assert waiting[0]["ok"]["token"] == 2 and waiting[0]["ok"]["holder"] == "b"
    assert ("lease.task_ended", {"resource": "lock:L", "holder": "task:t-1:1", "token": 1}) \
        in c2.loop.events


def test_task_held_lock_goes_with_its_agent():
    loop = Loop([0.0], 0.0)
    agents = {"a": link("a", 1, **{"t-9": 2})}
    p = Primitives(loop.clock, loop.emit, loop.call_later, agents=agents)
    p.lock_acquire("a", {"name": "L", "task": {"id": "t-9", "attempt": 2}}, None)
    p.agent_died("a")
    assert p.cmd_locks({}, None) == [] and p.owners == {}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["grant", "release", "restart", "expire", "die"]), max_size=30))
def test_tokens_never_repeat_over_random_restarts(tmp_path_factory, ops):
    wall = [0.0]
    db = str(tmp_path_factory.mktemp("j") / "journal.db")
    agents = {"a": link("a", 1)}
    c = Coordinator(db, wall, 0.0, agents)
    seen: list[int] = []
    try:
        for op in ops:
            held = c.p.leases.holder_of("R")
            if op == "grant" and held is None:
                seen.append(c.p.lease_acquire("a", {"name": "R", "ttl": 1}, None)["token"])
            elif op == "release" and held is not None:
                c.p.lease_release("a", {"name": "R", "token": held.token}, None)
            elif op == "expire":
                c.loop.advance(2.0)
            elif op == "die":
                c.p.agent_died("a")
            elif op == "restart":
                c.kill()
                c = Coordinator(db, wall, 7.0, {})
                c.hello(link("a", 1))
    finally:
        c.kill()
    assert seen == sorted(set(seen)), seen


def test_market_memory_keeps_reputation_and_service_times(tmp_path):
    wall = [500.0]
    conn = sqlite3.connect(str(tmp_path / "j.db"), isolation_level=None)
    mem = MarketMemory(Store(conn, wall=lambda: wall[0]), clock=lambda: 10.0)
    rep = Reputation()
    for i in range(rep.config.window + 5):
        obs = Observation(10.0, 1.0 if i % 2 else 0.0, 1.0, 0.5)
        rep.record("a", "cap", obs)
        mem.observed("a", "cap", obs, rep.config.window)
    mem.measured("a", "cap", 0.25)
    again, times = Reputation(), {}
    MarketMemory(Store(conn, wall=lambda: wall[0]), clock=lambda: 99.0).load(again, times)
    assert again.count("a", "cap") == rep.config.window
    assert again.score("a", "cap", 99.0) == pytest.approx(rep.score("a", "cap", 10.0))
    assert times == {("a", "cap"): 0.25}
    conn.close()
