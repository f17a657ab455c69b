"""The scaling policy: how many agents a pool should have, as a pure function.

The coordinator samples each pool once per tick (``runtime.scaling.sampler`` for CPU and memory,
the scheduler for queue depth, arrival rate and latency), builds a :class:`PoolInputs`
and calls::

    decision, state = decide(state, inputs, config)

``decide`` does no I/O and reads no clock: time is ``inputs.now`` (seconds on the
coordinator's monotonic clock).  Every :class:`Decision` carries the inputs it was taken
on, and ``Decision.to_event()`` is the JSON-able body of the ``scaling.decision`` event,
so every resize (and every refusal to resize) can be explained afterwards.

How a decision is taken (in this order):

1. Bounds.  A pool outside ``[min_size, max_size]`` is brought back at once (no sustain,
   no cooldown); growing back to ``min_size`` still respects the memory floor.
2. Demand.  ``demand = busy + queue_depth``: the agents the pool would need to serve
   everything in it right now.  With ``forecast`` on, the arrival rate is smoothed with
   Holt's linear (double exponential) method and projected ``forecast_horizon`` seconds
   ahead; by Little's law (L = lambda * W, with W assumed constant over the horizon) the
   projected demand is ``demand * rate_ahead / rate_now`` and the policy plans for the
   larger of the two.  With no arrivals now (rate 0) there is nothing to scale from and
   the forecast is not applied.
3. Pressure.  ``utilisation = demand / size``.  Above ``scale_up_at`` (or p95 latency
   above ``latency_target``, when set) the pool is under *up* pressure; below
   ``scale_down_at`` (and latency fine) *down* pressure; in between it *holds*.  The gap
   between the two thresholds is the hysteresis band that stops flapping.
4. Sustain.  A pressure must persist: the policy scales up only after up pressure has
   been seen continuously for ``sustain_up`` seconds, down after ``sustain_down``.  A
   single spike (one tick, or any burst shorter than ``sustain_up``) therefore never
   scales the pool.  The first tick of a pressure starts its window; with ticks every
   ``T`` seconds a pressure acts on the first tick at or after ``sustain_up`` from the
   start, so choose ``sustain_up`` as a multiple of the tick.  ``0`` acts at once.  After a
   resize the window starts again: each further step must be earned anew.
5. Cooldown.  After any resize the pool waits ``cooldown_up`` seconds before growing
   again and ``cooldown_down`` before shrinking (both measured from the last resize in
   either direction, so a scale-down never follows a scale-up within ``cooldown_down``).
6. Size.  The target is ``ceil(demand / target_utilisation)``, moved at most
   ``max_step_up`` / ``max_step_down`` agents per decision, clamped to the bounds.  A
   scale-down never goes below that target: under down pressure with the pool already at
   it (e.g. 2 agents, demand 0.9, target 0.75) the pool holds, because one agent fewer
   would run above the target and scale straight back up (seen as flapping at the end
   of a ramp down in perf/scaling.py).
7. Memory.  No scale-up while ``available_memory < memory_floor``; otherwise the
   increase is capped so that the new agents (``agent_memory`` bytes each) leave at
   least ``memory_floor`` bytes available.

Recycling: :func:`should_recycle` says whether one agent should be replaced gracefully
(after ``recycle_after_tasks`` tasks, or when its USS/RSS is above ``memory_ceiling``).

Defaults (sizes in agents, times in seconds, memory in bytes)::

    min_size 1, max_size 8, target_utilisation 0.7,
    scale_up_at 0.85, scale_down_at 0.4, latency_target None (off),
    sustain_up 3.0, sustain_down 15.0, cooldown_up 5.0, cooldown_down 30.0,
    max_step_up 2, max_step_down 1, memory_floor 256 MiB,
    forecast False, forecast_alpha 0.5, forecast_beta 0.3, forecast_horizon 10.0,
    recycle_after_tasks None (off), memory_ceiling None (off)

Pool config (``agora.toml``): ``min``/``max`` of ``[pools.NAME]`` are ``min_size``/
``max_size``, ``max_tasks`` (0 = off) is ``recycle_after_tasks``, ``memory_ceiling_mib``
(0 = off) is ``memory_ceiling``; the ``[pools.NAME.scaling]`` table holds the rest, under
the field names above, with memory in MiB (``memory_floor_mib``), plus two keys of the
scaler's own: ``autoscale`` (bool, default false here: the policy only runs for pools that
ask for it; runtime.config asks for a pool that states a ``max`` above its ``size``;
recycling and ``agora scale`` work either way) and ``retire_timeout_s`` (default
30.0: how long a retiring agent may take to finish its tasks before it is terminated and
its tasks re-routed).  :func:`pool_scaling` reads them; unknown keys are refused.

Scaling up is quick and scaling down slow (as Kubernetes' HPA does): a pool that is too
small loses latency at once, one that is too large only costs memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from runtime.errors import InvalidInput

__all__ = [
    "PoolInputs",
    "ScalingConfig",
    "ScalingState",
    "Decision",
    "decide",
    "should_recycle",
    "holt_update",
    "holt_forecast",
    "PoolScaling",
    "pool_scaling",
]

_MiB = 1024 * 1024

#: Decision reasons (``Decision.reason``).
BELOW_MIN, ABOVE_MAX = "below_min", "above_max"
SCALE_UP, SCALE_DOWN, HOLD = "scale_up", "scale_down", "hold"
SUSTAINING, COOLDOWN, MEMORY_FLOOR, AT_LIMIT = "sustaining", "cooldown", "memory_floor", "at_limit"


@dataclass(frozen=True)
class PoolInputs:
    """One pool's measurements at one tick."""

    now: float  # seconds, coordinator's monotonic clock
    size: int  # agents alive (or starting) in the pool
    busy: int  # agents running a task
    queue_depth: int  # tasks waiting for an agent of this pool
    arrival_rate: float  # tasks per second over the last window
    p95_latency: float  # seconds, task end-to-end
    available_memory: int  # bytes, machine-wide (psutil virtual_memory().available)
    agent_memory: int  # bytes, typical USS of one agent of this pool

    def __post_init__(self) -> None:
        for name in (
            "size",
            "busy",
            "queue_depth",
            "arrival_rate",
            "p95_latency",
            "available_memory",
            "agent_memory",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise InvalidInput(
                    f"expected {name} to be a number >= 0 in the scaling inputs, got: {value!r}",
                    hint="this is a bug in the sampler that built the inputs",
                )


@dataclass(frozen=True)
class ScalingConfig:
    """A pool's scaling settings; see the module docstring for each rule and default."""

    min_size: int = 1
    max_size: int = 8
    target_utilisation: float = 0.7
    scale_up_at: float = 0.85
    scale_down_at: float = 0.4
    latency_target: float | None = None
    sustain_up: float = 3.0
    sustain_down: float = 15.0
    cooldown_up: float = 5.0
    cooldown_down: float = 30.0
    max_step_up: int = 2
    max_step_down: int = 1
    memory_floor: int = 256 * _MiB
    forecast: bool = False
    forecast_alpha: float = 0.5
    forecast_beta: float = 0.3
    forecast_horizon: float = 10.0
    recycle_after_tasks: int | None = None
    memory_ceiling: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):  # TOML has inf and nan, and nan fails no `min(x, nan) >= 0`
            if not _is_finite(getattr(self, f.name)):
                raise InvalidInput(f"expected a finite number for {f.name} in the scaling config, "
                                   f"got: {getattr(self, f.name)!r}", hint="fix the pool's [scaling] table in agora.toml")
        for expected, holds in _CONFIG_RULES:
            try:
                ok = holds(self)
            except TypeError:  # a value of the wrong type (e.g. a string from a config file)
                ok = False
            if not ok:
                raise InvalidInput(
                    f"expected {expected} in the scaling config, got: {self._named_in(expected)}",
                    hint="fix the pool's [scaling] table in agora.toml",
                )

    def _named_in(self, text: str) -> str:
        names = [f.name for f in fields(self) if re.search(rf"\b{f.name}\b", text)]
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in names)


# Each rule: (what is expected, naming the fields it reads; the check).
_CONFIG_RULES: tuple[tuple[str, Callable[[ScalingConfig], bool]], ...] = (
    ("forecast to be true or false", lambda c: isinstance(c.forecast, bool)),
    (
        "integers for max_step_up, max_step_down",
        lambda c: all(isinstance(v, int) and not isinstance(v, bool) for v in (c.max_step_up, c.max_step_down)),
    ),
    (
        "0 <= min_size <= max_size and max_size >= 1",
        lambda c: 0 <= c.min_size <= c.max_size and c.max_size >= 1,
    ),
    ("0 < target_utilisation <= 1", lambda c: 0 < c.target_utilisation <= 1),
    (
        "0 <= scale_down_at < target_utilisation < scale_up_at (the hysteresis band)",
        lambda c: 0 <= c.scale_down_at < c.target_utilisation < c.scale_up_at,
    ),
    ("latency_target > 0 or None", lambda c: c.latency_target is None or c.latency_target > 0),
    ("sustain_up, sustain_down >= 0", lambda c: min(c.sustain_up, c.sustain_down) >= 0),
    ("cooldown_up, cooldown_down >= 0", lambda c: min(c.cooldown_up, c.cooldown_down) >= 0),
    ("max_step_up, max_step_down >= 1", lambda c: min(c.max_step_up, c.max_step_down) >= 1),
    ("memory_floor >= 0", lambda c: c.memory_floor >= 0),
    (
        "forecast_alpha, forecast_beta in (0, 1]",
        lambda c: 0 < c.forecast_alpha <= 1 and 0 < c.forecast_beta <= 1,
    ),
    ("forecast_horizon >= 0", lambda c: c.forecast_horizon >= 0),
    (
        "recycle_after_tasks >= 1 or None",
        lambda c: c.recycle_after_tasks is None or c.recycle_after_tasks >= 1,
    ),
    ("memory_ceiling > 0 or None", lambda c: c.memory_ceiling is None or c.memory_ceiling > 0),
)


@dataclass(frozen=True)
class ScalingState:
    """What the policy remembers between ticks; start from ``ScalingState()``."""

    pressure: str = HOLD  # "up", "down" or "hold"
    pressure_since: float | None = None  # when the current pressure was first seen
    last_resize: float | None = None  # when the pool was last resized
    level: float | None = None  # Holt: smoothed arrival rate
    trend: float = 0.0  # Holt: change of the rate per second
    last_tick: float | None = None


@dataclass(frozen=True)
class Decision:
    """What to do with one pool; ``delta == 0`` means leave it as it is (see ``reason``)."""

    target: int
    delta: int
    reason: str
    inputs: PoolInputs
    utilisation: float
    demand: float
    forecast_rate: float | None = None

    def to_event(self) -> dict[str, Any]:
        """The JSON-able body of the ``scaling.decision`` event."""
        body = {k: v for k, v in asdict(self).items() if k != "inputs"}
        body["utilisation"] = _finite(self.utilisation)
        body["inputs"] = asdict(self.inputs)
        return body


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------- Holt forecast


def holt_update(
    level: float | None, trend: float, rate: float, dt: float, alpha: float, beta: float
) -> tuple[float, float]:
    """One step of Holt's linear smoothing over an irregular interval ``dt`` seconds.

    The trend is kept per second so that ticks need not be evenly spaced.
    """
    if level is None:
        return rate, 0.0
    predicted = level + trend * dt
    new_level = alpha * rate + (1 - alpha) * predicted
    slope = (new_level - level) / dt if dt > 0 else trend
    return new_level, beta * slope + (1 - beta) * trend


def holt_forecast(level: float, trend: float, horizon: float) -> float:
    """The rate expected ``horizon`` seconds ahead (never negative)."""
    return max(0.0, level + trend * horizon)


def _advance_forecast(
    state: ScalingState, inputs: PoolInputs, config: ScalingConfig
) -> ScalingState:
    dt = 0.0 if state.last_tick is None else max(0.0, inputs.now - state.last_tick)
    level, trend = holt_update(
        state.level,
        state.trend,
        inputs.arrival_rate,
        dt,
        config.forecast_alpha,
        config.forecast_beta,
    )
    return replace(state, level=level, trend=trend, last_tick=inputs.now)


def _demand(
    state: ScalingState, inputs: PoolInputs, config: ScalingConfig
) -> tuple[float, float | None]:
    """Agents needed now, or by the forecast horizon when the forecast is on."""
    now_demand = float(inputs.busy + inputs.queue_depth)
    if not config.forecast or state.level is None:
        return now_demand, None
    ahead = holt_forecast(state.level, state.trend, config.forecast_horizon)
    if inputs.arrival_rate <= 0:
        return now_demand, ahead
    return max(now_demand, now_demand * ahead / inputs.arrival_rate), ahead


# ---------------------------------------------------------------- the policy


def _utilisation(demand: float, size: int) -> float:
    if size == 0:
        return math.inf if demand > 0 else 0.0
    return demand / size


def _pressure(utilisation: float, inputs: PoolInputs, config: ScalingConfig) -> str:
    slow = config.latency_target is not None and inputs.p95_latency > config.latency_target
    if utilisation > config.scale_up_at or slow:
        return "up"
    if utilisation < config.scale_down_at:
        return "down"
    return HOLD


def _track_pressure(state: ScalingState, pressure: str, now: float) -> ScalingState:
    if pressure == state.pressure and state.pressure_since is not None:
        return state
    return replace(state, pressure=pressure, pressure_since=now)


def _memory_room(inputs: PoolInputs, config: ScalingConfig) -> int:
    """How many more agents fit above the memory floor."""
    spare = inputs.available_memory - config.memory_floor
    if spare < 0:
        return 0
    if inputs.agent_memory == 0:
        return config.max_size
    return int(spare // inputs.agent_memory)


def _grow(inputs: PoolInputs, config: ScalingConfig, wanted: int) -> tuple[int, str]:
    """Target for a scale-up towards ``wanted``: step limit, max_size, memory floor."""
    target = min(wanted, inputs.size + config.max_step_up, config.max_size)
    if target <= inputs.size:
        return inputs.size, AT_LIMIT
    room = _memory_room(inputs, config)
    if room == 0:
        return inputs.size, MEMORY_FLOOR
    return min(target, inputs.size + room), SCALE_UP


def _shrink(inputs: PoolInputs, config: ScalingConfig, wanted: int) -> tuple[int, str]:
    target = max(wanted, inputs.size - config.max_step_down, config.min_size)
    if target >= inputs.size:
        return inputs.size, AT_LIMIT
    return target, SCALE_DOWN


def _bounds(inputs: PoolInputs, config: ScalingConfig) -> tuple[int, str] | None:
    if inputs.size > config.max_size:
        return config.max_size, ABOVE_MAX
    if inputs.size < config.min_size:
        room = _memory_room(inputs, config)
        if room == 0:
            return inputs.size, MEMORY_FLOOR
        return min(config.min_size, inputs.size + room), BELOW_MIN
    return None


def _sustained_and_cool(
    state: ScalingState, now: float, sustain: float, cooldown: float
) -> str | None:
    """None when the pressure may act now, else the reason it may not."""
    assert state.pressure_since is not None
    if now - state.pressure_since < sustain:
        return SUSTAINING
    if state.last_resize is not None and now - state.last_resize < cooldown:
        return COOLDOWN
    return None


def _choose(
    state: ScalingState, inputs: PoolInputs, config: ScalingConfig, demand: float
) -> tuple[int, str]:
    bounded = _bounds(inputs, config)
    if bounded is not None:
        return bounded
    if state.pressure == HOLD:
        return inputs.size, HOLD
    up = state.pressure == "up"
    blocked = _sustained_and_cool(
        state,
        inputs.now,
        config.sustain_up if up else config.sustain_down,
        config.cooldown_up if up else config.cooldown_down,
    )
    if blocked is not None:
        return inputs.size, blocked
    wanted = math.ceil(demand / config.target_utilisation - 1e-9)
    if up:
        return _grow(inputs, config, max(wanted, inputs.size + 1))
    if wanted >= inputs.size:  # one agent fewer would run above target_utilisation: it flaps
        return inputs.size, HOLD
    return _shrink(inputs, config, wanted)


def decide(
    state: ScalingState, inputs: PoolInputs, config: ScalingConfig
) -> tuple[Decision, ScalingState]:
    """Decide one pool's size for this tick; returns the decision and the state to keep."""
    state = _advance_forecast(state, inputs, config) if config.forecast else state
    demand, ahead = _demand(state, inputs, config)
    utilisation = _utilisation(demand, inputs.size)
    state = _track_pressure(state, _pressure(utilisation, inputs, config), inputs.now)
    target, reason = _choose(state, inputs, config, demand)
    if target != inputs.size:
        # A resize restarts the sustain window: the next step must be earned again.
        state = replace(state, last_resize=inputs.now, pressure_since=inputs.now)
    decision = Decision(
        target=target,
        delta=target - inputs.size,
        reason=reason,
        inputs=inputs,
        utilisation=utilisation,
        demand=demand,
        forecast_rate=ahead,
    )
    return decision, state


# ---------------------------------------------------------------- recycling


def should_recycle(tasks_done: int, memory: int | None, config: ScalingConfig) -> str | None:
    """Why an agent should be replaced gracefully, or None.

    ``memory`` is the agent's USS (or RSS where USS cannot be read), in bytes; ``None``
    when it could not be sampled.  Returns ``"max_tasks"`` or ``"memory_ceiling"``.
    """
    if config.recycle_after_tasks is not None and tasks_done >= config.recycle_after_tasks:
        return "max_tasks"
    if config.memory_ceiling is not None and memory is not None and memory > config.memory_ceiling:
        return "memory_ceiling"
    return None


# ---------------------------------------------------------------- pool config


@dataclass(frozen=True)
class PoolScaling:
    """A pool's scaling settings as read from agora.toml (see the module docstring)."""

    config: ScalingConfig
    autoscale: bool = False
    retire_timeout: float = 30.0


_TABLE_ONLY = {"autoscale", "retire_timeout_s", "memory_floor_mib"}
_FROM_POOL = {"min_size", "max_size", "recycle_after_tasks", "memory_ceiling", "memory_floor"}


def _table_keys() -> set[str]:
    return {f.name for f in fields(ScalingConfig)} - _FROM_POOL | _TABLE_ONLY


def pool_scaling(pool: Any) -> PoolScaling:
    """The scaling settings of a ``runtime.config.PoolConfig``; InvalidInput names the key."""
    table = dict(pool.scaling)
    unknown = sorted(set(table) - _table_keys())
    if unknown:
        raise InvalidInput(
            f"unknown key(s) {unknown} in [pools.{pool.name}.scaling]",
            hint=f"known keys: {sorted(_table_keys())}",
        )
    autoscale = table.pop("autoscale", False)
    retire = table.pop("retire_timeout_s", 30.0)
    if not isinstance(autoscale, bool) or not _positive_number(retire):
        raise InvalidInput(
            f"expected pools.{pool.name}.scaling.autoscale to be a bool and retire_timeout_s "
            f"a number > 0, got: autoscale={autoscale!r}, retire_timeout_s={retire!r}"
        )
    floor_mib = table.pop("memory_floor_mib", 256)
    if not _is_finite(retire) or not _is_finite(floor_mib):
        raise InvalidInput(f"expected pools.{pool.name}.scaling.retire_timeout_s and memory_floor_mib to be "
                           f"finite numbers, got: retire_timeout_s={retire!r}, memory_floor_mib={floor_mib!r}")
    config = ScalingConfig(
        min_size=pool.min,
        max_size=pool.max,
        recycle_after_tasks=pool.max_tasks or None,
        memory_ceiling=pool.memory_ceiling_mib * _MiB or None,
        memory_floor=int(floor_mib * _MiB) if _number(floor_mib) else floor_mib,
        **table,
    )
    return PoolScaling(config, autoscale, float(retire))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_finite(x: Any) -> bool:
    """Not inf or nan (True for what is not a float: the other rules judge its type)."""
    return not isinstance(x, float) or math.isfinite(x)


def _positive_number(x: Any) -> bool:
    return _number(x) and x > 0
