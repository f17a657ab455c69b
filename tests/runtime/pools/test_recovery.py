"""Pool recovery's pure parts: the backoff, one pool's recovery state over a fake clock,
and which capabilities are down (runtime.pools.recovery, runtime.scaling.health)."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.config import parse_config
from runtime.errors import InvalidInput
from runtime.pools.recovery import PoolRecovery, Recovery, backoff_delay
from runtime.scaling.health import down_capabilities
from runtime.supervision import ChildSpec, Restart, SupervisorSpec, Tree
from tests.support.helpers import WAIT, FakeClock


def test_backoff_doubles_up_to_its_cap():
    assert [backoff_delay(n, 1.0, 60.0) for n in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(10_000, 0.5, 7.0) == 7.0  # no overflow however many failures


@given(st.integers(1, 200), st.floats(0.01, 100), st.floats(0.01, 1000))
def test_backoff_is_monotonic_and_bounded(n, base, extra):
    cap = base + extra
    assert base <= backoff_delay(n, base, cap) <= cap
    assert backoff_delay(n, base, cap) <= backoff_delay(n + 1, base, cap)


def test_recovery_schedules_retries_and_resets_after_a_stable_run():
    rec = PoolRecovery("p", base=1.0, cap=8.0)
    assert not rec.due(0.0) and rec.row(0.0)["state"] == "running"
    assert rec.failed(10.0, [{"child": "agent:p.0", "reason": "exit code 1"}]) == 1.0
    assert rec.row(10.5) == {"pool": "p", "state": "failed", "failures": 1, "retry_in_s": 0.5,
                             "last_exits": [{"child": "agent:p.0", "reason": "exit code 1"}]}
    assert not rec.due(10.9) and rec.due(11.0)
    rec.restarted(11.0)
    assert rec.failed(12.0, []) == 2.0  # failed again soon: doubled
    rec.restarted(14.0)
    assert rec.failed(15.0, []) == 4.0
    rec.restarted(19.0)
    assert rec.failed(19.0 + 8.0, []) == 1.0  # it had stayed up for the cap: a new story
    assert rec.row(100.0)["retry_in_s"] == 0.0


def test_recovery_keeps_the_last_five_exits():
    rec = PoolRecovery("p")
    for i in range(4):
        rec.failed(float(i), [{"child": f"c{i}", "reason": "r"}, {"child": f"d{i}", "reason": "r"}])
    assert [e["child"] for e in rec.exits] == ["d1", "c2", "d2", "c3", "d3"]


def test_a_capability_is_down_when_every_pool_serving_it_failed():
    serving = {"a": ["p1"], "b": ["p1", "p2"], "c": ["p2"]}
    failed = {"p1": "pool 'p1' failed"}
    assert down_capabilities(serving, failed, park=set()) == {
        "a": {"pools": ["p1"], "reason": "pool 'p1' failed", "refuse": True}}
    both = down_capabilities(serving, {**failed, "p2": "pool 'p2' failed"}, park={"p2"})
    assert both["a"]["refuse"] and not both["b"]["refuse"] and not both["c"]["refuse"]
    assert down_capabilities(serving, {}, park=set()) == {}


def test_recovery_knobs_are_checked_at_load(tmp_path):
    pool = {"agent": "m:A"}
    cfg = parse_config({"pools": {"p": pool}}, tmp_path, tmp_path)
    p = cfg.pool("p")
    assert (p.restart_backoff_s, p.restart_backoff_max_s, p.when_down) == (1.0, 60.0, "refuse")
    for bad in ({"when_down": "drop"}, {"restart_backoff_s": 0}, {"restart_backoff_s": 5, "restart_backoff_max_s": 2}):
        with pytest.raises(InvalidInput):
            parse_config({"pools": {"p": {**pool, **bad}}}, tmp_path, tmp_path)
    park = parse_config({"pools": {"p": {**pool, "when_down": "park", "restart_backoff_s": 2}}},
                        tmp_path, tmp_path).pool("p")
    assert (park.when_down, park.restart_backoff_s) == ("park", 2.0)


# -- the root's driver over a real tree of processes, on a fake clock ---------------------

def _serve_unless_flag(ctx, flag):
    if os.path.exists(flag):
        raise RuntimeError("the flag is up")
    ctx.ready()
    while True:
        signal.pause()


def test_the_driver_restarts_a_pool_that_gave_up_after_its_backoff(tmp_path):
    flag = str(tmp_path / "flag")
    clock = FakeClock(100.0)
    pool = SupervisorSpec("pool:p", (ChildSpec("agent:p.0", _serve_unless_flag, (flag,), shutdown=1.0),),
                          intensity=1, period=10.0, restart=Restart.TRANSIENT)
    events = []
    tree = Tree(SupervisorSpec("root", (pool,), intensity=5, period=10.0), clock=clock)
    recovery = Recovery(tree, {"p": ("root/pool:p", 1.0, 4.0)}, lambda t, **f: events.append((t, f)))
    tree.start()
    try:
        open(flag, "w").close()
        os.kill(tree.pids()[0], signal.SIGKILL)
        tree.wait_and_handle(WAIT)  # the restart fails at start-up, twice: the pool gives up
        sup = tree.find("root/pool:p")
        assert sup.state == "failed" and tree.pids() == []
        recovery.step(clock())
        row = recovery.rows(clock())[0]
        assert (row["state"], row["failures"], row["retry_in_s"]) == ("failed", 1, 1.0)
        assert any("the flag is up" in e["reason"] for e in row["last_exits"]), row
        clock.t += 0.9
        recovery.step(clock())
        assert recovery.rows(clock())[0]["failures"] == 1  # not due yet
        clock.t += 0.1
        recovery.step(clock())  # due: restarted, and it fails again (the flag is still up)
        assert recovery.rows(clock())[0]["failures"] == 2 and recovery.next_in(clock()) == 2.0
        os.unlink(flag)
        # an agent added while the pool is down (a replacement) starts with the pool
        sup.start_child(ChildSpec("agent:p.1", _serve_unless_flag, (flag,), shutdown=1.0),
                        start=sup.state != "failed")
        assert tree.pids() == []
        clock.t += 2.0
        recovery.step(clock())
        assert sup.state == "running" and len(tree.pids()) == 2
        assert recovery.rows(clock())[0] == {"pool": "p", "state": "running", "failures": 2,
                                             "retry_in_s": None, "last_exits": []}
        assert [t for t, _ in events] == ["pool.failed", "pool.restarting", "pool.failed",
                                          "pool.restarting", "pool.restarted"]
    finally:
        tree.stop()
