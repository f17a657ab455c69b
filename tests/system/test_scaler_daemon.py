"""The scaler in a running daemon: manual scaling, graceful retire, recycling, autoscaling.

Daemon tests are few (a start costs 1-2 s): each covers one behaviour end to end.  Every
wait polls with backoff up to a bound; nothing asserts on timing.  The pure parts
(pool config, the p2c policy, the scaler's membership logic on a fake coordinator) are
tested without processes at the end.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

import runtime.cli.scale  # noqa: F401  (registers `agora scale` / `agora pools`)
from runtime.cli.main import cli
from runtime.config import parse_config
from runtime.errors import InvalidInput
from runtime.scaling.policy import pool_scaling
from runtime.scaling.service import Scaler
from runtime.tasks.balancing import PowerOfTwoPolicy
from tests.support.daemons import config, running_daemon
from tests.support.helpers import eventually

pytestmark = pytest.mark.timeout(120)

LOCAL = 'registry = "local"\ndrain_s = 3.0'


def echo_agents(c: Any) -> list[dict[str, Any]]:
    return [a for a in c.call("agents") if a["pool"] == "echo"]


def events(c: Any, type_: str) -> list[dict[str, Any]]:
    return c.call("events", type=type_, limit=1000)


def results(c: Any, ids: list[str]) -> list[dict[str, Any]]:
    return [c.call("result", id=i, wait=True, timeout_s=30.0) for i in ids]


def run_cli(home: Path, *args: str) -> Any:
    res = CliRunner().invoke(cli, ["--home", str(home), *args])
    assert res.exit_code == 0, res.output
    return res.output


# ---------------------------------------------------------------- daemon tests


def test_manual_scale_up_then_down_lets_retiring_agents_finish(agora_env: Path) -> None:
    with running_daemon(agora_env, config(size=1, daemon=LOCAL)) as (c, _):
        eventually(lambda: len(echo_agents(c)) == 1, "1 echo agent")
        run_cli(agora_env, "scale", "echo", "4")
        eventually(lambda: len(echo_agents(c)) == 4, "4 echo agents")
        ids = [c.call("submit", task={"capability": "sleep", "input": {"s": 1.5}}) for _ in range(4)]
        eventually(lambda: all(a["inflight"] == 1 for a in echo_agents(c)), "one task on each agent")
        out = run_cli(agora_env, "scale", "echo", "1")
        assert "4 -> 1" in out
        draining = [a for a in echo_agents(c) if a["draining"]]
        assert len(draining) == 3 and all(a["inflight"] == 1 for a in draining)
        done = results(c, ids)
        assert [r["state"] for r in done] == ["succeeded"] * 4
        assert [r["attempts"] for r in done] == [1] * 4  # finished where they ran: none re-routed
        eventually(lambda: len(echo_agents(c)) == 1, "one echo agent left")
        retired = eventually(lambda: len(events(c, "scaling.retired")) == 3
                             and events(c, "scaling.retired"), "3 retired events")
        assert all(e["drained"] and e["reason"] == "manual" for e in retired)
        pools = c.call("pools")
        assert pools[0]["pool"] == "echo" and pools[0]["target"] == 1 and pools[0]["size"] == 1
        assert "echo" in run_cli(agora_env, "pools")


def test_recycling_after_max_tasks_loses_no_task(agora_env: Path) -> None:
    extra = "max_tasks = 5\n"
    text = config(size=2, daemon=LOCAL).replace("max = 4\n", "max = 4\n" + extra)
    with running_daemon(agora_env, text) as (c, _):
        eventually(lambda: len(echo_agents(c)) == 2, "2 echo agents")
        tasks = [{"capability": "sleep", "input": {"s": 0.02}} for _ in range(40)]
        ids = c.call("submit_many", tasks=tasks)
        done = results(c, ids)
        assert [r["state"] for r in done] == ["succeeded"] * 40  # nothing lost
        assert all(r["attempts"] == 1 for r in done)  # nothing crashed or re-routed
        pids = {r["result"]["pid"] for r in done}
        assert len(pids) > 2  # replacements did part of the work
        retired = eventually(lambda: events(c, "scaling.retired"), "recycle events")
        assert {e["reason"] for e in retired} == {"max_tasks"}
        assert all(e["drained"] for e in retired)
        eventually(lambda: len(echo_agents(c)) == 2
                   and not c.call("pools")[0]["retiring"], "pool back at size 2")


def test_autoscale_grows_under_load_and_shrinks_when_idle(agora_env: Path) -> None:
    scaling = ("[pools.echo.scaling]\nautoscale = true\nsustain_up = 0.0\nsustain_down = 0.3\n"
               "cooldown_up = 0.2\ncooldown_down = 0.3\nmax_step_up = 2\n")
    text = config(size=1, daemon=LOCAL, extra=scaling).replace("max = 4\n", "max = 4\nmin = 1\n")
    with running_daemon(agora_env, text) as (c, _):
        eventually(lambda: len(echo_agents(c)) == 1, "1 echo agent")
        ids = c.call("submit_many", tasks=[{"capability": "sleep", "input": {"s": 0.3}}
                                           for _ in range(24)])
        eventually(lambda: c.call("pools")[0]["size"] == 4, "the pool grew to 4")
        assert all(r["state"] == "succeeded" for r in results(c, ids))
        eventually(lambda: c.call("pools")[0]["target"] == 1
                   and len(echo_agents(c)) == 1, "the pool shrank to 1")
        decisions = events(c, "scaling.decision")
        ups = [d for d in decisions if d["reason"] == "scale_up"]
        assert ups and all("queue_depth" in d["inputs"] for d in ups)
        assert any(d["reason"] == "scale_down" for d in decisions)


# ---------------------------------------------------------------- without processes


def parse_pool(**table: Any) -> Any:
    raw = {"pools": {"p": {"agent": "x:Y", **table}}}
    return parse_config(raw, Path("/tmp"), Path("/tmp")).pools[0]


def test_pool_scaling_reads_pool_keys_and_table() -> None:
    pool = parse_pool(min=2, max=6, size=3, max_tasks=50, memory_ceiling_mib=300,
                      scaling={"autoscale": True, "sustain_up": 0.2, "memory_floor_mib": 64})
    s = pool_scaling(pool)
    assert s.autoscale and s.retire_timeout == 30.0
    assert (s.config.min_size, s.config.max_size, s.config.recycle_after_tasks) == (2, 6, 50)
    assert s.config.memory_ceiling == 300 << 20 and s.config.memory_floor == 64 << 20
    assert s.config.sustain_up == 0.2
    assert pool_scaling(parse_pool()).autoscale is False


@pytest.mark.parametrize("table, named", [
    ({"autoscal": True}, "autoscal"),
    ({"sustain_up": -1}, "sustain_up"),
    ({"autoscale": 1}, "autoscale"),
    ({"min_size": 2}, "min_size"),  # comes from [pools.NAME] min, not the table
    ({"scale_down_at": 0.9}, "scale_down_at"),
])
def test_bad_scaling_table_is_refused_at_load_naming_the_key(table: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        parse_pool(scaling=table)


def test_p2c_policy_picks_the_less_loaded_of_two() -> None:
    seed = random.randrange(1 << 30)
    policy = PowerOfTwoPolicy(random.Random(seed))
    links = [SimpleNamespace(id=f"a.{i}", inflight={str(j): 1 for j in range(load)})
             for i, load in enumerate([3, 0, 2])]
    picks = [policy.choose(None, links).id for _ in range(200)]
    assert "a.0" not in picks, f"seed {seed}: the most loaded of three can never win a pair"
    assert policy.choose(None, []) is None
    assert policy.choose(None, links[:1]) is links[0]


class FakeRoot:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def submit(self, cmd: str, args: dict[str, Any], on_done: Callable[..., None]) -> None:
        self.calls.append((cmd, args))
        on_done(True, None)

    def collect(self) -> None:
        pass


def fake_coord(pool_table: dict[str, Any]) -> Any:
    """Enough of a Coordinator for the Scaler: a scheduler with links, a clock, events."""
    cfg = parse_config({"pools": {"p": {"agent": "x:Y", **pool_table}}}, Path("/tmp"), Path("/tmp"))
    now = [100.0]
    sched = SimpleNamespace(agents={}, queued=lambda cap: 0, on_final=lambda t, r: None)
    coord = SimpleNamespace(
        cfg=cfg, scheduler=sched, registry=None, stopping=False, clock=lambda: now[0],
        run=SimpleNamespace(root_sock="/nonexistent"), emitted=[], now=now,
        call_later=lambda d, fn: None,
        root=SimpleNamespace(request=lambda cmd, args, on_done, timeout=0: on_done([], None)))  # no pool failed
    coord.emit = lambda type_, trace, **f: coord.emitted.append((type_, f))
    return coord


def link(agent_id: str, inflight: int = 0, done: int = 0) -> Any:
    return SimpleNamespace(id=agent_id, pool="p", pid=os.getpid(), caps={"c": {}}, draining=False,
                           inflight={f"t{i}": 1 for i in range(inflight)}, done=done)


def test_scale_down_retires_the_least_busy_newest_agents_after_they_drain() -> None:
    coord = fake_coord({"size": 3, "max": 4})
    scaler = Scaler(coord)
    scaler.root = FakeRoot()
    links = {f"p.{i}": link(f"p.{i}", inflight=n) for i, n in enumerate([0, 2, 0])}
    coord.scheduler.agents.update(links)
    scaler.cmd_scale({"pool": "p", "size": 1}, None)
    assert links["p.2"].draining and links["p.0"].draining and not links["p.1"].draining
    scaler.tick()  # p.0 and p.2 are idle: both terminated at once
    assert sorted(a["child"] for _, a in scaler.root.calls) == ["agent:p.0", "agent:p.2"]
    assert scaler.pools["p"].members == {1}


def test_a_busy_retiring_agent_is_terminated_only_when_drained_or_late() -> None:
    coord = fake_coord({"size": 2, "max": 4, "scaling": {"retire_timeout_s": 5.0}})
    scaler = Scaler(coord)
    scaler.root = FakeRoot()
    busy = link("p.1", inflight=1)
    coord.scheduler.agents.update({"p.0": link("p.0", inflight=1), "p.1": busy})
    scaler.cmd_scale({"pool": "p", "size": 1}, None)
    scaler.tick()
    assert busy.draining and scaler.root.calls == []  # still running its task
    busy.inflight.clear()
    scaler.tick()
    assert scaler.root.calls == [("terminate_child", {"supervisor": "root/core/pools/pool:p",
                                                      "child": "agent:p.1"})]
    # A second retire that never drains is terminated at its deadline.
    coord.scheduler.agents["p.0"].inflight = {"t": 1}
    scaler.cmd_scale({"pool": "p", "size": 2}, None)
    scaler.cmd_scale({"pool": "p", "size": 1}, None)
    coord.now[0] += 5.0
    scaler.tick()
    retired = [f for t, f in coord.emitted if t == "scaling.retired"]
    assert retired[-1]["drained"] is False


def test_recycle_starts_the_replacement_first_one_at_a_time() -> None:
    coord = fake_coord({"size": 2, "max": 4, "max_tasks": 10})
    scaler = Scaler(coord)
    scaler.root = FakeRoot()
    coord.scheduler.agents.update({"p.0": link("p.0", inflight=1, done=12),
                                   "p.1": link("p.1", done=11)})
    scaler.tick()
    calls = scaler.root.calls
    assert calls[0] == ("start_agent", {"pool": "p", "index": 2})
    assert coord.scheduler.agents["p.0"].draining  # first found; p.1 waits its turn
    assert not coord.scheduler.agents["p.1"].draining
    with pytest.raises(InvalidInput, match="takes 1..4"):
        scaler.cmd_scale({"pool": "p", "size": 9}, None)


def test_memory_ceiling_recycles_the_agent_above_it() -> None:
    from runtime.scaling.sampler import MachineSample, ProcessSample, Sample
    coord = fake_coord({"size": 2, "max": 4, "memory_ceiling_mib": 100})
    scaler = Scaler(coord)
    scaler.root = FakeRoot()
    fat, lean = link("p.0"), link("p.1")
    fat.pid, lean.pid = 1001, 1002
    coord.scheduler.agents.update({"p.0": fat, "p.1": lean})
    scaler.take_sample = lambda: None  # the sample below stands for psutil's
    scaler.sample = Sample(at=0.0, machine=MachineSample(None, 8 << 30, 16 << 30), processes={
        1001: ProcessSample(1001, None, rss=300 << 20, uss=150 << 20),
        1002: ProcessSample(1002, None, rss=300 << 20, uss=50 << 20)})
    scaler.tick()
    assert fat.draining and not lean.draining
    assert scaler.root.calls[0] == ("start_agent", {"pool": "p", "index": 2})
    assert [f["reason"] for t, f in coord.emitted if t == "scaling.retire"] == ["memory_ceiling"]


def test_measure_counts_waiting_tasks_inside_agents_and_arrivals_by_conservation() -> None:
    coord = fake_coord({"size": 2, "max": 4})
    scaler = Scaler(coord)
    a, b = link("p.0", inflight=3), link("p.1", inflight=0)
    coord.scheduler.agents.update({"p.0": a, "p.1": b})
    coord.scheduler.queued = lambda cap: 2 if cap == "c" else 0
    pool = scaler.pools["p"]
    scaler.measure(pool, 100.0)
    assert (pool.inputs.busy, pool.inputs.queue_depth) == (1, 4)  # 2 queued + 2 behind a's task
    # 0.5 s later: a finished 2 tasks (ended), 3 new tasks arrived (1 at b, 2 queued more).
    a.inflight = {"t0": 1}
    b.inflight = {"x": 1}
    coord.scheduler.queued = lambda cap: 4 if cap == "c" else 0
    pool.ended = 2
    scaler.measure(pool, 100.5)
    # backlog went 5 -> 6, 2 ended: 3 arrivals within the 1 s window
    assert pool.inputs.arrival_rate == 3.0
    assert pool.inputs.size == 2


def test_latency_p95_covers_the_window_but_at_most_the_latest_samples() -> None:
    from runtime.scaling.service import LATENCY_SAMPLES, LATENCY_WINDOW_S
    coord = fake_coord({"size": 1, "max": 2})
    scaler = Scaler(coord)
    pool = scaler.pools["p"]
    pool.caps = {"c"}
    task = SimpleNamespace(capability="c")
    for _ in range(LATENCY_SAMPLES):  # slow tasks first, then as many fast ones
        scaler.task_final(task, SimpleNamespace(created=0.0, updated=5.0))
    assert scaler.latency_p95(pool, 100.0) == 5.0
    for _ in range(LATENCY_SAMPLES):
        scaler.task_final(task, SimpleNamespace(created=0.0, updated=0.1))
    assert len(pool.latencies) == LATENCY_SAMPLES
    assert scaler.latency_p95(pool, 100.0) == 0.1  # the slow ones fell out of the sample
    assert scaler.latency_p95(pool, 100.0 + LATENCY_WINDOW_S) == 0.0  # and all out of the window


def test_load_metadata_is_published_on_change_only() -> None:
    from runtime.registry.backends import make_backend
    coord = fake_coord({"size": 1, "max": 2})
    coord.registry = registry = make_backend("local")
    writes: list[str] = []
    update = registry.update
    registry.update = lambda key, patch, **kw: (writes.append(key), update(key, patch, **kw))[1]
    registry.register("p.0", {"capabilities": ["c"], "metadata": {"load": 0}}, os.getpid())
    scaler = Scaler(coord)
    agent = link("p.0", inflight=2)
    coord.scheduler.agents["p.0"] = agent
    scaler.tick()
    scaler.tick()  # nothing changed: no second write
    assert writes == ["p.0"]
    assert registry.lookup("p.0").metadata == {"load": 2, "health": "ok"}
    agent.draining = True
    scaler.tick()
    assert registry.lookup("p.0").metadata == {"load": 2, "health": "draining"}
    registry.close()


def test_down_pressure_does_not_shrink_below_the_target_size() -> None:
    from runtime.scaling.policy import PoolInputs, ScalingConfig, ScalingState, decide
    config = ScalingConfig(min_size=1, max_size=8, target_utilisation=0.75, scale_down_at=0.5,
                           scale_up_at=0.9, sustain_down=0.0, cooldown_down=0.0)

    def at(size: int, demand: float) -> Any:
        state = ScalingState()
        return decide(state, PoolInputs(now=10.0, size=size, busy=demand, queue_depth=0,
                                        arrival_rate=1.0, p95_latency=0.1,
                                        available_memory=8 << 30, agent_memory=0), config)[0]

    assert (at(2, 0.9).target, at(2, 0.9).reason) == (2, "hold")  # 1 agent would run at 0.9
    assert (at(2, 0.7).target, at(2, 0.7).reason) == (1, "scale_down")
    assert at(6, 0.5).target == 5  # still one step (max_step_down) at a time
