"""Agent pools in the supervision tree.

``pools`` (one_for_one, permanent) holds one ``pool:<name>`` supervisor per configured
pool.  A pool supervisor is ``transient`` with intensity ``max(5, 2 * max)`` restarts in
10 s: a poison task that kills its agent ``max_attempts`` times costs a few restarts and
no more; a real restart storm makes the pool give up and report ``failed`` (degraded),
and, being transient, it is not restarted by ``pools``: the daemon and the other pools
keep serving (RELIABILITY 3).  The root restarts it after a backoff instead (1 s doubling
to 60 s by default, ``restart_backoff_s`` / ``restart_backoff_max_s``:
``runtime.pools.recovery``), or at once on ``agora pools restart NAME``.

Agents are dynamic children: the coordinator asks the root to start and stop them
(scaling, recycling); the initial ``size`` are in the spec so they start with the daemon.
"""

from __future__ import annotations

from typing import Any

from runtime.agents.process import agent_main
from runtime.config import Config, RunPaths
from runtime.supervision.child_spec import ChildSpec, Restart, SupervisorSpec

__all__ = ["pools_spec", "agent_spec", "pool_path"]


def pool_path(pool: str) -> str:
    return f"root/core/pools/pool:{pool}"


def agent_spec(cfg: Config, run: RunPaths, pool: str, index: int, slots: Any) -> ChildSpec:
    """An agent's spec; its payload-arena slot is taken now, in the root, before the fork."""
    slot = slots.take(pool, f"{pool}.{index}")
    return ChildSpec(f"agent:{pool}.{index}", agent_main, (cfg, run, pool, index, slot),
                     restart=Restart.PERMANENT, shutdown=2.0,
                     title=f"agora:{pool}.{index}")


def pools_spec(cfg: Config, run: RunPaths, slots: Any) -> SupervisorSpec:
    pools = tuple(
        SupervisorSpec(f"pool:{p.name}",
                       tuple(agent_spec(cfg, run, p.name, i, slots) for i in range(p.size)),
                       intensity=max(5, 2 * p.max), period=10.0, restart=Restart.TRANSIENT,
                       start_together=True)
        for p in cfg.pools)
    return SupervisorSpec("pools", pools, intensity=len(pools) + 3, period=10.0)
