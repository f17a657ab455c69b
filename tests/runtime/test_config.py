"""agora.toml parsing: defaults, typed keys, refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ALLOCATIONS, load_config, parse_config
from runtime.errors import InvalidInput
from runtime.registry.model import BACKENDS

HOME = Path("/nonexistent-home")
POOL = {"agent": "mypkg.agents:Echo", "size": 2, "max": 4, "capabilities": {"echo": {"cost": 1}}}


def parse(raw, **overrides):
    return parse_config(raw, HOME, Path("/base"), **overrides)


def test_defaults():
    cfg = parse({})
    assert cfg.allocation == "least-loaded" and cfg.registry == "partitioned" and cfg.partitions == 4
    assert cfg.pools == () and cfg.contexts == {} and cfg.market == {}


def test_a_pool_with_its_capabilities_and_relative_context_paths():
    cfg = parse({"pools": {"echo": POOL}, "context": {"vocab": "data/v.npy"}})
    pool = cfg.pool("echo")
    assert (pool.size, pool.max, pool.capabilities) == (2, 4, {"echo": {"cost": 1.0}})
    assert cfg.contexts == {"vocab": "/base/data/v.npy"}


@pytest.mark.parametrize("name", ALLOCATIONS)
def test_every_allocation_name_is_accepted(name):
    assert parse({"daemon": {"allocation": name}}).allocation == name


@pytest.mark.parametrize("name", BACKENDS)
def test_every_registry_backend_name_is_accepted(name):
    extra = {"redis_url": "unix:///tmp/redis.sock"} if name == "redis" else {}
    assert parse({"daemon": {"registry": name, **extra}}).registry == name


def test_overrides_win_over_the_file():
    assert parse({"daemon": {"allocation": "static"}}, allocation="p2c").allocation == "p2c"


@pytest.mark.parametrize("raw, words", [
    ({"deamon": {}}, "unknown config sections ['deamon']"),
    ({"daemon": {"alocation": "static"}}, "unknown key daemon.alocation"),
    ({"daemon": {"allocation": "round-robin"}}, "daemon.allocation"),
    ({"daemon": {"registry": "etcd"}}, "daemon.registry"),
    ({"daemon": {"partitions": "4"}}, "daemon.partitions"),
    ({"daemon": {"drain_s": True}}, "daemon.drain_s"),
    ({"daemon": {"durability": "disk"}}, "daemon.durability"),
    ({"daemon": {"agent_inflight": 0}}, "agent_inflight"),
    ({"pools": {"p": {"size": 1}}}, "pools.p.agent is missing"),
    ({"pools": {"p": {**POOL, "sise": 1}}}, "unknown key pools.p.sise"),
    ({"pools": {"p": {**POOL, "size": 5, "max": 4}}}, "min <= size <= max"),
    ({"services": {"../../x": {}}}, "a service name is 1-48"),  # it becomes part of file names
    ({"services": {"a" * 49: {}}}, "a service name is 1-48"),
    ({"services": {".hidden": {}}}, "a service name is 1-48"),
    ({"services": {"llm": {"hedge_after_s": "soon"}}}, "hedge_after_s"),
])
def test_bad_configs_are_refused_naming_the_key(raw, words):
    with pytest.raises(InvalidInput) as info:
        parse(raw)
    assert words in str(info.value)


def test_load_config_reads_toml_relative_to_the_file(tmp_path):
    (tmp_path / "agora.toml").write_text('[daemon]\nallocation = "p2c"\n[context]\nv = "v.npy"\n')
    cfg = load_config(tmp_path / "home", tmp_path / "agora.toml")
    assert cfg.allocation == "p2c" and cfg.contexts == {"v": str(tmp_path / "v.npy")}


def test_a_toml_syntax_error_is_invalid_input(tmp_path):
    (tmp_path / "agora.toml").write_text("[daemon\n")
    with pytest.raises(InvalidInput):
        load_config(tmp_path / "home", tmp_path / "agora.toml")


@pytest.mark.parametrize("table,autoscale", [
    ({"size": 2, "max": 4}, True),                                   # room to grow: autoscaled
    ({"size": 2, "max": 2}, False),                                  # fixed by its own bounds
    ({"size": 2}, False),                                            # no max stated: fixed size
    ({"size": 2, "max": 4, "scaling": {"autoscale": False}}, False),  # the pool's word wins
])
def test_autoscaling_is_on_by_default_when_max_exceeds_size(tmp_path, table, autoscale):
    from runtime.scaling.policy import pool_scaling
    cfg = parse_config({"pools": {"p": {"agent": "m:A", **table}}}, tmp_path, tmp_path)
    assert pool_scaling(cfg.pools[0]).autoscale is autoscale
