"""Coordination primitives served by a real daemon to real agent processes.

Lock safety under SIGKILL of holders: agents take one lock, write "token pid start t",
hold it, write "token pid end t" and release; the test kills whichever agent holds the
lock, several times.  Afterwards the file must show strictly increasing fencing tokens
and no section starting while another is open — unless the open one's holder had been
killed before the new section started.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.daemons import config, running_daemon
from tests.support.helpers import eventually

pytestmark = pytest.mark.timeout(120)

LOCKERS = """
[pools.lockers]
agent = "tests.support.agents_consensus:Locker"
size = {size}
max = 4
[pools.lockers.capabilities.locked_append]
cost = 1.0
[pools.lockers.capabilities.barrier]
cost = 1.0
[pools.lockers.capabilities.elect]
cost = 1.0
[pools.lockers.capabilities.count]
cost = 1.0
"""
DAEMON = 'drain_s = 3.0\nallocation = "least-loaded"'  # spreads a batch over idle agents


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [ln.split() for ln in path.read_text().splitlines() if ln.strip()]


def _holder_to_kill(path: Path, killed: set[int]):
    rows = _lines(path)
    if rows and rows[-1][2] == "start" and int(rows[-1][1]) not in killed:
        return int(rows[-1][0]), int(rows[-1][1])
    return None


def check_sections(rows: list[list[str]], kill_times: dict[int, float]) -> int:
    """Asserts mutual exclusion and token order; returns how many sections completed."""
    last_token, open_, completed = 0, None, 0
    for token_s, pid_s, what, ts_s in rows:
        token, pid, ts = int(token_s), int(pid_s), float(ts_s)
        if what == "start":
            assert token > last_token, f"token {token} after {last_token}: tokens must increase"
            if open_ is not None:
                dead_pid = open_[1]
                assert dead_pid in kill_times, f"pid {pid} started while {open_} held the lock"
                assert ts > kill_times[dead_pid], \
                    f"pid {pid} started before holder {dead_pid} was killed"
            last_token, open_ = token, (token, pid)
        else:
            assert open_ == (token, pid), f"end of {(token, pid)} while {open_} was open"
            open_, completed = None, completed + 1
    return completed


def test_lock_holders_killed_in_a_loop_never_overlap(agora_env):
    out = agora_env / "sections.log"
    cfg = config(size=1, daemon=DAEMON, extra=LOCKERS.format(size=3))
    n_tasks, kills = 14, 3
    with running_daemon(agora_env, cfg) as (c, _):
        wait_agents(c, "lockers", 3)
        ids = c.call("submit_many", tasks=[
            {"capability": "locked_append", "input": {"file": str(out), "hold_s": 0.15},
             "options": {"max_attempts": 5}} for _ in range(n_tasks)])
        kill_times: dict[int, float] = {}
        for _ in range(kills):
            token, pid = eventually(lambda: _holder_to_kill(out, set(kill_times)), "a lock holder")
            kill_times[pid] = time.monotonic()
            os.kill(pid, signal.SIGKILL)
        results = [c.call("result", id=i, wait=True, timeout_s=60, timeout=65) for i in ids]
        locks = c.call("locks")
    assert [r["state"] for r in results] == ["succeeded"] * n_tasks, results
    rows = _lines(out)
    completed = check_sections(rows, kill_times)
    assert completed == n_tasks
    cut_short = sum(r[2] == "start" for r in rows) - completed
    assert 1 <= cut_short <= kills, f"{cut_short} sections cut short by {kills} kills:\n{rows}"
    tokens = sorted(r["result"]["token"] for r in results)
    assert len(set(tokens)) == n_tasks
    assert locks == [] or all(row["holder"] is None for row in locks)


def test_check_sections_catches_overlap_and_stale_tokens():
    ok = [["1", "10", "start", "1.0"], ["1", "10", "end", "2.0"], ["2", "11", "start", "3.0"],
          ["3", "12", "start", "5.0"], ["3", "12", "end", "6.0"]]
    assert check_sections(ok, {11: 4.0}) == 2
    with pytest.raises(AssertionError, match="held the lock"):
        check_sections(ok, {})
    with pytest.raises(AssertionError, match="before holder"):
        check_sections(ok, {11: 5.5})
    stale = [["2", "10", "start", "1.0"], ["2", "10", "end", "2.0"], ["1", "11", "start", "3.0"]]
    with pytest.raises(AssertionError, match="must increase"):
        check_sections(stale, {})


def wait_agents(c, pool: str, n: int) -> None:
    eventually(lambda: sum(a["pool"] == pool for a in c.call("agents")) >= n,
              f"{n} agents of {pool}")


def _events(c, type_: str) -> list[dict]:
    return c.call("events", type=type_, limit=1000)


def test_barrier_election_counter_vclock_and_death(agora_env):
    cfg = config(size=1, daemon=DAEMON, extra=LOCKERS.format(size=3))
    members = ["lockers.0", "lockers.1", "lockers.2"]
    with running_daemon(agora_env, cfg) as (c, _):
        wait_agents(c, "lockers", 3)
        # counters and vector clocks: every increment counted once, clocks merge
        counted = c.call("submit_many", tasks=[{"capability": "count", "input": {"name": "n"}}] * 6)
        values = [c.call("result", id=i, wait=True, timeout_s=30)["result"] for i in counted]
        assert sorted(v["value"] for v in values) == [1, 2, 3, 4, 5, 6]
        # each tick merges and bumps one entry: the group clock's sums run 1..6 too, and each
        # agent's entry counts its own ticks (the two calls may interleave across agents)
        assert sorted(sum(v["clock"].values()) for v in values) == [1, 2, 3, 4, 5, 6]
        final = max((v["clock"] for v in values), key=lambda cl: sum(cl.values()))
        agents = {v["agent"] for v in values}
        assert final == {a: sum(v["agent"] == a for v in values) for a in agents}

        # a named barrier: all three arrive -> released
        done = c.call("submit_many", tasks=[{"capability": "barrier", "input": {
            "name": "b1", "parties": members}}] * 3)
        ok = [c.call("result", id=i, wait=True, timeout_s=30) for i in done]
        # three tasks may not land on three distinct agents: then the barrier breaks at its
        # deadline, which is also a bounded, clear end; the least-loaded policy spreads them
        assert [r["state"] for r in ok] == ["succeeded"] * 3, ok
        assert all(r["result"]["state"] == "released" for r in ok)

        # one party waits; another named party dies before arriving -> broken, no hang
        waiting = c.call("submit", task={
            "capability": "barrier", "options": {"max_attempts": 1},
            "input": {"name": "b2", "parties": members, "timeout": 20}})
        eventually(lambda: any(e.get("barrier") == "b2" for e in _events(c, "barrier.arrived")),
                  "the first arrival at b2")
        dying = c.call("submit", task={
            "capability": "barrier", "options": {"max_attempts": 1},
            "input": {"name": "b2", "parties": members, "die_before": True}})
        broken = c.call("result", id=waiting, wait=True, timeout_s=15)
        assert broken["state"] == "failed"
        assert "BarrierBroken" in broken["error"]["type"] or "died" in broken["error"]["message"]
        assert "died" in broken["error"]["message"]
        assert c.call("result", id=dying, wait=True, timeout_s=15)["state"] == "dead_lettered"

        # election: the senior candidate leads; killing it elects the other, term + 1
        elected = c.call("submit_many",
                         tasks=[{"capability": "elect", "input": {"group": "g"}}] * 2)
        got = [c.call("result", id=i, wait=True, timeout_s=30)["result"] for i in elected]
        first = [g for g in got if g["is_leader"]]
        assert len(first) == 1 and first[0]["term"] >= 1
        term = first[0]["term"]
        os.kill(first[0]["pid"], signal.SIGKILL)
        old = first[0]["agent"]
        row = eventually(lambda: [r for r in c.call("leaders")
                                 if r["group"] == "g" and r["leader"] not in (None, old)],
                        "a new leader of g")[0]
        assert row["term"] == term + 1
        eventually(lambda: any(e.get("group") == "g" and e.get("term") == term + 1
                              and e.get("trace_id") for e in _events(c, "election.leader")),
                  "the election event")


# ---------------------------------------------------------------- driver on a fake clock

class FakeLoop:
    """The coordinator services Primitives uses: a fake clock, timers, an event list."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object]] = []
        self.events: list[tuple[str, object, dict]] = []

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, fn) -> None:
        self.timers.append((self.now + delay, fn))

    def emit(self, type_: str, trace=None, **fields) -> None:
        self.events.append((type_, trace, fields))

    def advance(self, dt: float) -> None:
        self.now += dt
        while due := sorted((t for t in self.timers if t[0] <= self.now), key=lambda t: t[0]):
            self.timers.remove(due[0])
            due[0][1]()

    def types(self) -> list[str]:
        return [e[0] for e in self.events]


def _prims():
    from coordination.services.primitives import Primitives
    loop = FakeLoop()
    return loop, Primitives(loop.clock, loop.emit, loop.call_later)


def _bound(d) -> list[dict]:
    got: list[dict] = []
    d.bind(got.append)
    return got


def test_lock_wait_grant_on_death_and_on_expiry_and_timeout():
    from runtime.errors import AgoraError
    loop, p = _prims()
    first = p.lock_acquire("a", {"name": "L", "ttl": 5}, None)
    assert first["token"] == 1
    b = _bound(p.lock_acquire("b", {"name": "L", "ttl": 5, "timeout": 30}, None))
    c = _bound(p.lock_acquire("c", {"name": "L", "ttl": 5, "timeout": 1}, None))
    p.agent_died("a")                                   # holder death: b gets it at once
    assert b == [{"ok": {"resource": "lock:L", "holder": "b", "token": 2, "ttl": 5,
                         "expires_in": 5.0}}]
    loop.advance(1.0)                                   # c's wait times out: a clear error
    assert c and c[0]["error"]["code"] == "DEADLINE_EXCEEDED" and "'b'" in c[0]["error"]["message"]
    d = _bound(p.lock_acquire("d", {"name": "L", "ttl": 5, "timeout": 30}, None))
    loop.advance(4.5)                                   # b stuck past its TTL: d gets token 3
    assert d[0]["ok"]["token"] == 3
    assert not p.lock_check("b", {"name": "L", "token": 2}, None)
    with pytest.raises(AgoraError, match="cannot release"):
        p.lock_release("b", {"name": "L", "token": 2}, None)
    assert p.lock_release("d", {"name": "L", "token": 3}, None)["released"]
    assert p.cmd_locks({}, None) == []
    assert {"lease.granted", "lease.holder_died", "lease.expired", "lease.wait_timeout",
            "lease.released"} <= set(loop.types())
    assert all(e[1] is not None for e in loop.events if e[0].startswith("lease."))


def test_barrier_released_broken_by_death_and_by_deadline():
    loop, p = _prims()
    x = _bound(p.barrier_wait("x", {"name": "b", "parties": 2}, None))
    y = _bound(p.barrier_wait("y", {"name": "b", "parties": 2}, None))
    loop.advance(0.0)
    assert x[0]["ok"]["state"] == y[0]["ok"]["state"] == "released"
    x = _bound(p.barrier_wait("x", {"name": "b", "parties": ["x", "y", "z"]}, None))
    loop.advance(0.0)
    p.agent_died("z")
    assert x[0]["error"]["code"] == "BARRIER_BROKEN" and "'z' died" in x[0]["error"]["message"]
    late = _bound(p.barrier_wait("y", {"name": "b", "parties": ["x", "y", "z"]}, None))
    loop.advance(0.0)
    assert late[0]["error"]["code"] == "BARRIER_BROKEN"
    loop.advance(31.0)                                  # the broken barrier is forgotten
    w = _bound(p.barrier_wait("w", {"name": "b", "parties": 2, "timeout": 2}, None))
    loop.advance(2.5)
    assert w[0]["error"]["code"] == "DEADLINE_EXCEEDED"


def test_election_and_counters_on_the_driver():
    loop, p = _prims()
    assert p.election_join("a", {"group": "g"}, None)["is_leader"]
    assert not p.election_join("b", {"group": "g"}, None)["is_leader"]
    p.agent_died("a")
    assert p.cmd_leaders({}, None) == [{"group": "g", "leader": "b", "term": 2,
                                        "candidates": ["b"]}]
    assert [p.counter_add("a", {"name": "n", "delta": 2}, None) for _ in range(2)] == [2, 4]
    assert p.vclock_tick("a", {"group": "v", "clock": {"b": 3}}, None) == {"a": 1, "b": 3}
