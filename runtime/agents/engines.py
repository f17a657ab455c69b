"""Engines: where an agent's handlers run.

The coordinator, the journal, the market and voting see every agent alike: a process of
the tree that says hello on the agents' socket, takes task frames, answers asks and
cancels, and whose death is a lost attempt.  An engine decides what stands behind that
process:

``local`` (the default)  the user's Agent runs in the agent process itself (forked,
                         supervised: runtime.agents.process).
``ray``                  the agent process drives one Ray actor that wraps the user's
                         Agent class (same class, no code change): tasks, bids, ballots and
                         proposals are actor calls (runtime.agents._ray).  The actor may be
                         on any node of the Ray cluster; the agent process stays on this
                         machine, so supervision, kinship and the journal do not change.  An
                         actor's death (RayActorError, node loss) ends its agent process, so
                         the coordinator sees a dead agent: its attempts are lost and
                         rerouted, and the pool supervisor starts a new agent (and actor).

``[ray]`` in agora.toml: ``address`` (a running cluster, ``ray://`` or ``host:port``; empty:
the daemon starts a one-node cluster of its own, a supervised child of the core, bound to
127.0.0.1), ``num_cpus`` (that local cluster's CPUs), ``runtime_env`` (passed to
``ray.init``: how workers on other nodes import your agents), ``allow_network`` (default
false).  Ray probes cloud metadata addresses and uses the external interface even with
its dashboard and usage stats off, so agora refuses to start or join Ray from a process
that sees any network interface but loopback (run the daemon in ``unshare --net`` with lo
up) unless ``allow_network = true`` says the user means it.
Per pool, ``[pools.NAME.ray]`` holds actor options passed through to Ray: ``num_cpus``,
``num_gpus``, ``memory``, ``resources`` (custom resources, e.g. a node's label resource)
and ``label_selector``.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import InvalidInput

__all__ = ["ENGINES", "RAY_KEYS", "RAY_POOL_KEYS", "check_pool_engine", "check_ray_section",
           "loopback_only", "ray_env", "uses_ray"]

#: Engines by name (config validation and docs read this).
ENGINES = ("local", "ray")
RAY_KEYS = {"address": str, "num_cpus": int, "runtime_env": dict, "allow_network": bool}
RAY_POOL_KEYS = {"num_cpus": (int, float), "num_gpus": (int, float), "memory": int,
                 "resources": dict, "label_selector": dict}


def check_pool_engine(pc: Any) -> None:
    if pc.engine not in ENGINES:
        raise InvalidInput(f"pools.{pc.name}.engine: expected one of {list(ENGINES)}, got {pc.engine!r}")
    if pc.ray and pc.engine != "ray":
        raise InvalidInput(f"[pools.{pc.name}.ray] is set but pools.{pc.name}.engine is {pc.engine!r}",
                           hint='add engine = "ray" to the pool, or drop its [ray] table')
    _check_keys(f"pools.{pc.name}.ray", pc.ray, RAY_POOL_KEYS)


def check_ray_section(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(f"[ray] must be a table, got {type(raw).__name__}")
    _check_keys("ray", raw, RAY_KEYS)
    if "num_cpus" in raw and not 1 <= raw["num_cpus"] <= 4096:
        raise InvalidInput(f"ray.num_cpus: expected an integer in 1..4096, got {raw['num_cpus']}")
    return dict(raw)


def _check_keys(section: str, table: dict[str, Any], schema: dict[str, Any]) -> None:
    for k, v in table.items():
        if k not in schema:
            raise InvalidInput(f"unknown key {section}.{k} in the config", hint=f"known keys: {sorted(schema)}")
        if not isinstance(v, schema[k]) or (isinstance(v, bool) and schema[k] is not bool):
            raise InvalidInput(f"{section}.{k}: expected {schema[k]}, got {v!r}")


def uses_ray(cfg: Any) -> bool:
    return any(p.engine == "ray" for p in cfg.pools)


def loopback_only(net_dev: str = "/proc/self/net/dev") -> bool:
    """True when this process's network namespace has no interface but ``lo``
    (``/proc/self/net/dev`` is per namespace; /sys/class/net is not, unless remounted)."""
    try:
        with open(net_dev) as f:
            names = {line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line}
    except OSError:
        return False
    return names <= {"lo"}


def ray_env(token: str) -> dict[str, str]:
    """The environment a process needs to start or join this run's local Ray head."""
    env = {"RAY_USAGE_STATS_ENABLED": "0"}
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env
