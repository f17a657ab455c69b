"""The scaling policy against scripted load traces on a fake clock (one tick per second).

``simulate`` plays a trace of concurrent load (tasks in the system) against a pool whose
size follows every decision at once; each task takes one second, so the arrival rate
equals the load.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import InvalidInput
from runtime.scaling.policy import (
    Decision,
    PoolInputs,
    ScalingConfig,
    ScalingState,
    decide,
    holt_forecast,
    holt_update,
    should_recycle,
)

GiB = 1024**3
FAST = dict(sustain_up=3.0, sustain_down=5.0, cooldown_up=2.0, cooldown_down=10.0)


def inputs(
    now: float,
    size: int,
    load: float,
    *,
    available: int = 8 * GiB,
    agent_memory: int = 100 * 1024**2,
    p95: float = 1.0,
) -> PoolInputs:
    busy = int(min(load, size))
    return PoolInputs(
        now=now,
        size=size,
        busy=busy,
        queue_depth=int(load) - busy,
        arrival_rate=float(load),
        p95_latency=p95,
        available_memory=available,
        agent_memory=agent_memory,
    )


def simulate(loads: list[float], config: ScalingConfig, size: int, **kw) -> list[Decision]:
    state, out = ScalingState(), []
    for t, load in enumerate(loads):
        decision, state = decide(state, inputs(float(t), size, load, **kw), config)
        size = decision.target
        out.append(decision)
    return out


def resizes(decisions: list[Decision]) -> list[tuple[float, int]]:
    return [(d.inputs.now, d.delta) for d in decisions if d.delta]


def test_sustained_ramp_scales_up_after_the_sustain_window():
    config = ScalingConfig(min_size=1, max_size=8, **FAST)
    decisions = simulate([1.0] * 5 + [6.0] * 20, config, size=2)
    ups = [(t, d) for t, d in resizes(decisions) if d > 0]
    assert ups, [d.reason for d in decisions]
    assert ups[0][0] == 5 + 3  # the load rose at t=5; sustain_up is 3 s
    assert decisions[5].reason == "sustaining"
    assert decisions[-1].target >= 6 / 0.85  # ends above the scale-up threshold
    assert all(d <= config.max_step_up for _, d in ups)


def test_a_single_spike_does_not_scale():
    config = ScalingConfig(min_size=1, max_size=8, **FAST)
    loads = [2.0] * 10 + [30.0] + [2.0] * 10 + [30.0, 30.0] + [2.0] * 10  # spikes of 1 and 2 ticks
    decisions = simulate(loads, config, size=3)
    assert resizes(decisions) == []
    assert decisions[10].reason == "sustaining"


def test_scales_down_only_after_cooldown_and_sustain():
    config = ScalingConfig(min_size=1, max_size=8, **FAST)
    decisions = simulate([6.0] * 12 + [0.0] * 100, config, size=2)
    events = resizes(decisions)
    last_up = max(t for t, d in events if d > 0)
    downs = [t for t, d in events if d < 0]
    assert downs, events
    assert downs[0] >= last_up + config.cooldown_down
    assert downs[0] >= 12 + config.sustain_down
    gaps = [b - a for a, b in zip(downs, downs[1:], strict=False)]
    assert all(g >= config.cooldown_down for g in gaps)
    assert decisions[-1].target == config.min_size


@settings(max_examples=60, deadline=None)
@given(
    loads=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60),
    min_size=st.integers(min_value=0, max_value=3),
    extra=st.integers(min_value=0, max_value=6),
    start=st.integers(min_value=0, max_value=12),
    forecast=st.booleans(),
)
def test_size_never_leaves_min_max_and_steps_are_limited(loads, min_size, extra, start, forecast):
    config = ScalingConfig(
        min_size=min_size,
        max_size=max(1, min_size + extra),
        forecast=forecast,
        sustain_up=0.0,
        sustain_down=0.0,
        cooldown_up=0.0,
        cooldown_down=0.0,
    )
    decisions = simulate([float(x) for x in loads], config, size=start)
    for d in decisions:
        if config.min_size <= d.inputs.size <= config.max_size:  # start may be out of bounds
            assert config.min_size <= d.target <= config.max_size
            assert -config.max_step_down <= d.delta <= config.max_step_up
    assert config.min_size <= decisions[-1].target <= config.max_size or len(decisions) == 1


def test_never_scales_up_below_the_memory_floor():
    config = ScalingConfig(min_size=2, max_size=8, memory_floor=GiB, **FAST)
    decisions = simulate([20.0] * 30, config, size=2, available=GiB - 1)
    assert resizes(decisions) == []
    assert decisions[-1].reason == "memory_floor"


def test_growth_is_capped_by_memory_above_the_floor():
    mib = 1024**2
    config = ScalingConfig(
        min_size=1,
        max_size=8,
        memory_floor=1000 * mib,
        max_step_up=4,
        sustain_up=0.0,
        cooldown_up=0.0,
    )
    decision, _ = decide(
        ScalingState(), inputs(0.0, 2, 20.0, available=1250 * mib, agent_memory=100 * mib), config
    )
    assert (decision.target, decision.reason) == (
        4,
        "scale_up",
    )  # 250 MiB above the floor: 2 agents


def test_below_min_and_above_max_are_corrected_at_once():
    config = ScalingConfig(min_size=2, max_size=4, **FAST)
    low, _ = decide(ScalingState(), inputs(0.0, 0, 0.0), config)
    high, _ = decide(ScalingState(), inputs(0.0, 9, 9.0), config)
    assert (low.target, low.reason) == (2, "below_min")
    assert (high.target, high.reason) == (4, "above_max")


def test_latency_above_target_is_up_pressure():
    config = ScalingConfig(
        min_size=1, max_size=8, latency_target=0.5, sustain_up=0.0, cooldown_up=0.0
    )
    decision, _ = decide(
        ScalingState(), inputs(0.0, 4, 3.0, p95=2.0), config
    )  # utilisation 0.75: holds
    assert (decision.delta, decision.reason) == (1, "scale_up")


def test_forecast_scales_earlier_on_a_ramp():
    ramp = [0.25 * t for t in range(60)]
    base = dict(min_size=1, max_size=20, **FAST)
    plain = resizes(simulate(ramp, ScalingConfig(**base), size=2))
    ahead = resizes(
        simulate(ramp, ScalingConfig(**base, forecast=True, forecast_horizon=8.0), size=2)
    )
    assert plain and ahead
    assert ahead[0][0] < plain[0][0]
    first_target = lambda rs, t: sum(d for at, d in rs if at <= t)  # noqa: E731
    assert first_target(ahead, 30) >= first_target(plain, 30)


def test_forecast_does_not_act_without_arrivals():
    config = ScalingConfig(forecast=True, sustain_up=0.0, sustain_down=0.0, cooldown_down=0.0)
    decision, _ = decide(ScalingState(), inputs(0.0, 2, 0.0), config)
    assert decision.demand == 0.0 and decision.reason == "scale_down"


def test_holt_tracks_level_and_trend():
    level, trend = None, 0.0
    for t in range(40):
        level, trend = holt_update(level, trend, 3.0 + 2.0 * t, 1.0, 0.5, 0.3)
    assert trend == pytest.approx(2.0, rel=0.05)
    assert holt_forecast(level, trend, 5.0) == pytest.approx(3.0 + 2.0 * 44, rel=0.05)
    assert holt_forecast(0.0, -1.0, 10.0) == 0.0


def test_decision_event_is_json_with_its_inputs():
    decision, _ = decide(
        ScalingState(), inputs(1.5, 0, 3.0), ScalingConfig(min_size=0, sustain_up=0.0)
    )
    event = orjson.loads(orjson.dumps(decision.to_event()))
    assert event["inputs"]["now"] == 1.5 and event["inputs"]["queue_depth"] == 3
    assert event["utilisation"] is None  # infinite: an empty pool with demand
    assert event["target"] == 2 and event["reason"] == "scale_up"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(min_size=5, max_size=2), "min_size <= max_size.*got: min_size=5, max_size=2"),
        (dict(target_utilisation=0.0), "target_utilisation"),
        (dict(scale_up_at=0.5), "hysteresis band"),
        (dict(cooldown_down=-1), r"cooldown_up, cooldown_down >= 0.*cooldown_down=-1"),
        (dict(max_step_up=0), "max_step_up"),
        (dict(forecast_alpha=1.5), "forecast_alpha"),
        (dict(recycle_after_tasks=0), "recycle_after_tasks"),
        (dict(max_size="8"), "max_size=.8."),
    ],
)
def test_config_is_validated(kwargs, fragment):
    with pytest.raises(InvalidInput, match=fragment) as info:
        ScalingConfig(**kwargs)
    assert "agora.toml" in info.value.hint


def test_inputs_are_validated():
    with pytest.raises(InvalidInput, match="queue_depth"):
        PoolInputs(
            now=0.0,
            size=1,
            busy=0,
            queue_depth=-1,
            arrival_rate=0.0,
            p95_latency=0.0,
            available_memory=0,
            agent_memory=0,
        )


def test_should_recycle():
    config = ScalingConfig(recycle_after_tasks=100, memory_ceiling=500)
    assert should_recycle(99, 100, config) is None
    assert should_recycle(100, 100, config) == "max_tasks"
    assert should_recycle(1, 501, config) == "memory_ceiling"
    assert should_recycle(1, None, config) is None
    assert should_recycle(10**6, 10**12, ScalingConfig()) is None  # both off by default
