"""The engine vocabulary and its config checks (pure: no Ray needed)."""

from __future__ import annotations

import pytest

from runtime.agents.engines import ENGINES, loopback_only
from runtime.config import parse_config
from runtime.errors import InvalidInput

POOL = {"agent": "tests.support.agents:Echo"}


def parse(raw, tmp_path):
    return parse_config(raw, tmp_path, tmp_path)


@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_name_is_accepted(engine, tmp_path):
    cfg = parse({"pools": {"p": {**POOL, "engine": engine}}}, tmp_path)
    assert cfg.pool("p").engine == engine


@pytest.mark.parametrize("pool, words", [
    ({"engine": "k8s"}, "engine"),
    ({"ray": {"num_cpus": 1}}, "engine"),                       # options without the engine
    ({"engine": "ray", "ray": {"gpus": 1}}, "unknown key pools.p.ray.gpus"),
    ({"engine": "ray", "ray": {"num_cpus": "one"}}, "pools.p.ray.num_cpus"),
])
def test_bad_pool_engine_settings_are_refused_at_load(pool, words, tmp_path):
    with pytest.raises(InvalidInput, match=words):
        parse({"pools": {"p": {**POOL, **pool}}}, tmp_path)


@pytest.mark.parametrize("ray, words", [
    ({"adress": "x"}, "unknown key ray.adress"),
    ({"num_cpus": 0}, "ray.num_cpus"),
    ({"allow_network": "yes"}, "ray.allow_network"),
])
def test_bad_ray_section_is_refused_at_load(ray, words, tmp_path):
    with pytest.raises(InvalidInput, match=words):
        parse({"ray": ray}, tmp_path)


def test_loopback_only_reads_the_namespace_interfaces(tmp_path):
    head = "Inter-|   Receive\n face |bytes\n"
    only_lo, with_eth = tmp_path / "a", tmp_path / "b"
    only_lo.write_text(head + "    lo: 0 0\n")
    with_eth.write_text(head + "    lo: 0 0\n  eth0: 1 2\n")
    assert loopback_only(str(only_lo)) and not loopback_only(str(with_eth))
    assert not loopback_only(str(tmp_path / "missing"))
