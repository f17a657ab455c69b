"""A daemon whose registry is a real Redis server (``registry = "redis"``): agents are
registered in Redis, tasks run, a coordinator restart keeps them registered, and a stop
takes them out.  Every test runs its own redis-server on a unix socket."""

from __future__ import annotations

import os
import signal

import pytest

from runtime.config import parse_config
from runtime.errors import InvalidInput
from runtime.registry.backends import make_backend
from tests.support.daemons import config, running_daemon
from tests.support.helpers import eventually
from tests.support.redis_server import redis_server, require_redis  # noqa: F401  (a fixture)


def _redis_config(url: str) -> str:
    return config(size=2, daemon=f'drain_s = 3.0\nregistry = "redis"\nredis_url = "{url}"\n'
                                 f'redis_namespace = "agora-test"')


def _keys(url: str) -> list[str]:
    reader = make_backend("redis", redis_url=url, namespace="agora-test", lease_keeper=False)
    try:
        return sorted(e.key for e in reader.select(capability="echo"))
    finally:
        reader.close()


def test_redis_registry_needs_a_url(tmp_path):
    with pytest.raises(InvalidInput, match="redis_url"):
        parse_config({"daemon": {"registry": "redis"}}, tmp_path, tmp_path)


def test_agents_register_in_redis_and_serve(agora_env, redis_server):  # noqa: F811
    with running_daemon(agora_env, _redis_config(redis_server.url)) as (c, _):
        assert eventually(lambda: _keys(redis_server.url) == ["echo.0", "echo.1"] or None,
                          "both agents in Redis")
        assert c.call("submit", task={"capability": "echo", "input": {"x": 1}}, result=True,
                      )["result"]["echo"] == {"x": 1}
        listed = c.call("registry_ls", capability="echo")
        assert sorted(e["key"] for e in listed) == ["echo.0", "echo.1"]
    assert _keys(redis_server.url) == [], "a stopped daemon leaves no entries in Redis"


def test_coordinator_restart_keeps_agents_registered(agora_env, redis_server):  # noqa: F811
    with running_daemon(agora_env, _redis_config(redis_server.url)) as (c, _):
        eventually(lambda: len(_keys(redis_server.url)) == 2 or None, "both agents in Redis")
        coord = next(p for p in c.call("ps") if p["path"].endswith("coordinator"))["pid"]
        os.kill(coord, signal.SIGKILL)
        eventually(lambda: _ping_new_coordinator(c, coord), "a new coordinator", timeout=20)
        assert c.call("submit", task={"capability": "echo", "input": 2}, result=True,
                      )["result"]["echo"] == 2
        assert _keys(redis_server.url) == ["echo.0", "echo.1"]


def _ping_new_coordinator(c, old_pid: int):
    try:
        return any(p["path"].endswith("coordinator") and p["pid"] != old_pid for p in c.call("ps"))
    except Exception:  # the old one is gone and the new one not yet listening
        return None
