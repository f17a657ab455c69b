"""The registry inside the daemon: partition processes under a supervisor, and the
client every process of the tree uses.

``registry`` (one_for_one, 10 restarts in 10 s) supervises ``registry.0 .. N-1``.  Their
shared tables are anonymous MAP_SHARED mappings the root makes before forking anything
(``runtime.daemon.resources.prepare_root``): every process of the tree inherits them, so lookups
and selects read shared memory with no round trip, and a restarted partition rebuilds
from its predecessor's table (no registration of a live owner is lost).

With ``registry = "local"`` there are no partition processes: the coordinator keeps a
LocalBackend in its own memory (for tests and embedding).

With ``registry = "redis"`` there are no partition processes either: the registry is a
Redis server (``redis_url``), under the key prefix ``redis_namespace``, four hash-tagged
partitions (``runtime.registry._redis``).  The coordinator is the only process of the tree
that registers (agents join through it), so it is the one that runs the lease keeper
thread: it does not fork (the root does), which the keeper needs.  A coordinator restart
re-registers each agent as it says hello again; entries of agents that died meanwhile
go at the new keeper's first pass (``lease_ttl / 3``), and those of a whole machine that
died within ``redis_lease_ttl``.  One namespace belongs to one daemon: the agent ids
(``pool.N``) are the keys, so two daemons sharing a Redis server need two namespaces.
"""

from __future__ import annotations

from typing import Any

from runtime.config import Config, RunPaths, RunResources
from runtime.observability.events import Emitter
from runtime.supervision.child_spec import ChildSpec, SupervisorSpec

__all__ = ["registry_spec", "open_registry", "TABLE_CAPACITY"]

TABLE_CAPACITY = 4096  # live entries per partition


def _partition_child(ctx: Any, index: int, n: int, sock_path: str, events: str) -> None:
    from runtime.registry._partition import partition_main
    emit = Emitter(events, f"registry.{index}")
    try:
        partition_main(index, n, sock_path, ctx.resources.registry_tables[index], emit=emit,
                       ready=ctx.ready)
    finally:
        emit.close()


def registry_spec(cfg: Config, run: RunPaths) -> SupervisorSpec:
    n = cfg.partitions if cfg.registry == "partitioned" else 0
    parts = tuple(ChildSpec(f"registry.{i}", _partition_child, (i, n, run.registry(i), run.events),
                            shutdown=2.0) for i in range(n))
    return SupervisorSpec("registry", parts, intensity=10, period=10.0, start_together=True)


def open_registry(cfg: Config, run: RunPaths, res: RunResources) -> Any:
    """The registry backend for a process of the tree (the coordinator, an agent)."""
    if cfg.registry == "local":
        from runtime.registry._local import LocalBackend
        return LocalBackend()
    if cfg.registry == "redis":
        from runtime.registry.backends import make_backend
        return make_backend("redis", redis_url=cfg.redis_url, namespace=cfg.redis_namespace,
                            partitions=cfg.partitions, lease_ttl=float(cfg.redis_lease_ttl))
    from runtime.registry._client import PartitionedBackend
    return PartitionedBackend([run.registry(i) for i in range(cfg.partitions)],
                              res.registry_tables)
