"""Every number of agora.toml is finite and in range, refused at load naming its key.

TOML has ``inf`` and ``nan``; before these checks ``drain_s = inf`` made a stop that never
ended, ``size = 1000000`` a fork bomb, ``cost = nan`` a market whose bids compare false,
``[services.x] rate = 1e-300`` a call waiting 1e300 s, and ``backoff = inf`` or
``batch_window_ms = 1e308`` an OverflowError inside an agent's call (runtime.bounds).
The sweep feeds each numeric key every bad number and asserts a typed error, never another
exception and never acceptance."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordination.services.market import MarketConfig, configure
from runtime.config import parse_config
from runtime.daemon.composition import check_config
from runtime.errors import InvalidInput
from runtime.guards import LimiterConfig, RateLimiter, Throttled
from runtime.bounds import MAX_WAIT_S
from runtime.guards.service import Service, ServiceConfig
from tests.support.helpers import FakeClock

POOL = {"agent": "mypkg.agents:Echo", "size": 1, "max": 2}
NAN, INF = float("nan"), float("inf")


def load(raw):
    cfg = parse_config(raw, Path("/nonexistent-home"), Path("/base"))
    check_config(cfg)
    return cfg


def pool(**extra):
    return {"pools": {"p": {**POOL, **extra}}}


# (a config, the words its refusal must hold), for every bad number of every kind of key
CASES = [
    *[({"daemon": {k: v}}, f"daemon.{k}") for k in ("drain_s", "retention_age_s", "redis_lease_ttl")
      for v in (NAN, INF, -1.0)],
    *[({"daemon": {k: v}}, f"daemon.{k}") for k, v in (("arena_mib", 0), ("arena_mib", 10**9),
                                                         ("retention_tasks", -1))],
    *[(pool(**{k: v}), f"pools.p.{k}") for k, v in (("timeout_s", -1.0), ("timeout_s", INF), ("timeout_s", NAN),
                                                     ("mailbox_messages", 0), ("mailbox_bytes", -1))],
    (pool(size=10**6, max=10**6), "pools.p.size"),
    *[(pool(capabilities={"work": {"cost": v}}), "pools.p.capabilities.work.cost") for v in (NAN, INF, -3.0, "cheap")],
    (pool(capabilities={"work": 1}), "pools.p.capabilities.work"),
    *[(pool(scaling={k: v}), k) for k in ("cooldown_down", "sustain_up", "forecast_horizon", "scale_up_at")
      for v in (NAN, INF)],
    *[(pool(scaling={"memory_floor_mib": v}), "memory_floor_mib") for v in (NAN, INF)],
    (pool(scaling={"max_step_up": 1.5}), "max_step_up"),
    *[({"market": {k: v}}, k) for k in ("contract_timeout_s", "min_success") for v in (NAN, INF, -1.0)],
    ({"market": {"min_success": 1.5}}, "min_success"),
    *[({"services": {"llm": {k: v}}}, k) for k in ("timeout_s", "max_wait_s", "hedge_after_s", "cache_ttl_s",
                                                   "batch_window_ms", "rate", "tokens_per_s", "burst")
      for v in (NAN, INF, -1.0)],
    *[({"services": {"llm": {k: v}}}, k) for k, v in (("rate", 1e-300), ("batch_window_ms", 1e308),
                                                      ("timeout_s", 1e308), ("retries", 10**9))],
    *[({"services": {"llm": {"backoff": {k: INF}}}}, k) for k in ("base_s", "cap_s", "max_retry_after_s")],
    *[({"services": {"llm": {"breaker": {k: v}}}}, k) for k in ("open_s", "window_s") for v in (NAN, INF)],
]


@pytest.mark.parametrize("raw, words", CASES, ids=[str(w) for _, w in CASES])
def test_every_bad_number_is_refused_naming_its_key(raw, words):
    with pytest.raises(InvalidInput) as info:
        load(raw)
    assert words in str(info.value), info.value


def test_in_range_values_still_load():
    cfg = load({"daemon": {"drain_s": 0.3, "retention_tasks": 0},
                **pool(timeout_s=0.0, capabilities={"work": {"cost": 0.0, "quality": 0.8}},
                       scaling={"cooldown_down": 0.0, "memory_floor_mib": 0}),
                "market": {"contract_timeout_s": 5, "min_success": 0},
                "services": {"llm": {"timeout_s": 1, "rate": 1 / MAX_WAIT_S, "backoff": 0, "cache_ttl_s": 0}}})
    assert cfg.drain_s == 0.3 and cfg.pool("p").timeout_s is None


NUMBERS = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.text(max_size=3), st.none())
SERVICE_KEYS = ("timeout_s", "retries", "backoff", "rate", "burst", "tokens_per_s", "token_burst", "max_wait_s",
                "cache_ttl_s", "cache_size", "batch_window_ms", "batch_max", "hedge_after_s", "hedge_budget",
                "retry_budget")


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(SERVICE_KEYS), NUMBERS, max_size=4))
def test_a_service_table_either_loads_with_every_wait_bounded_or_is_invalid_input(table):
    try:
        cfg = ServiceConfig.from_dict("x", table)
    except InvalidInput:
        return
    for value in (cfg.timeout_s, cfg.max_wait_s, cfg.hedge_after_s, cfg.base_s, cfg.cap_s, cfg.max_retry_after_s,
                  cfg.batch_window_ms / 1000):
        assert value is None or 0 <= value <= MAX_WAIT_S
    assert 0 < cfg.hedge_budget <= 1 and (cfg.retry_budget is None or 0 < cfg.retry_budget <= 100)
    lim = RateLimiter("x", cfg.limiter, clock=FakeClock())
    for _ in range(3):
        assert 0 <= lim.acquire() <= MAX_WAIT_S


def test_a_wait_longer_than_a_day_is_throttled_not_slept():
    lim = RateLimiter("llm", LimiterConfig(rate=1.0, tokens_per_s=1.0), clock=FakeClock())
    with pytest.raises(Throttled) as info:
        lim.acquire(tokens=1e12)  # 1e12 s: time.sleep would raise OverflowError
    assert info.value.retry_after > MAX_WAIT_S
    for bad in (NAN, INF, -1.0):
        with pytest.raises(InvalidInput, match="tokens"):
            lim.acquire(tokens=bad)


def test_the_market_command_checks_the_same_bounds():
    with pytest.raises(InvalidInput, match="min_success"):
        configure(MarketConfig(), {"min_success": NAN})
    assert configure(MarketConfig(), {"min_success": 0.9}).min_success == 0.9


def test_a_service_refuses_bad_numbers_at_construction_too():
    with pytest.raises(InvalidInput, match="batch_window_ms"):
        Service("x", {"batch_window_ms": INF})


def test_an_integer_past_a_floats_range_is_refused_not_an_overflow():
    huge = 10**400  # tomllib reads any number of digits
    for raw, words in (({"daemon": {"drain_s": huge}}, "daemon.drain_s"), (pool(size=huge), "pools.p.size"),
                       (pool(capabilities={"work": {"cost": huge}}), "cost"),
                       ({"services": {"llm": {"retries": huge}}}, "retries"),
                       ({"services": {"llm": {"timeout_s": huge}}}, "timeout_s")):
        with pytest.raises(InvalidInput, match=words):
            load(raw)
