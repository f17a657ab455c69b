"""What the root prepares before it forks anything, and releases after the last child.

* Sweeps /dev/shm segments of dead runs (a daemon killed with -9 left them; RELIABILITY 6).
* Makes the registry's shared tables (anonymous MAP_SHARED: inherited by every child,
  invisible in /dev/shm, gone with the last process that maps them: they cannot leak).
* Maps the payload arena (anonymous shared memory too) and numbers its slots: slot 0 for
  the coordinator, a slot per agent (``runtime.tasks.payloads.SlotTable``).
* Makes the per-run agent secret (``runtime.supervision.kinship``) and the coordinator's
  start counter (anonymous shared memory): both are inherited through fork only.
* Makes the service guards' shared state table (``shm.guard_state.GuardStateTable``, a
  /dev/shm segment named after the run) when agora.toml has ``[services.NAME]`` tables: the
  breakers and rate limiters of every agent of the machine live there.  Agents use the table
  they inherit across the fork (POSIX record locks are per process, so the inherited mapping is
  theirs to lock); the root closes it and unlinks the run's segments when it stops.
* Names this run (``shm.segment.RunId``): context segments carry it in their names; the
  coordinator, which the root names owner of the context store, lists them in the run's
  manifest, and the root removes whatever the manifest still lists when it stops.
"""

from __future__ import annotations

from typing import Any

from runtime.config import Config, RunPaths, RunResources

__all__ = ["prepare_root", "release_root"]


def prepare_root(cfg: Config, run: RunPaths, emit: Any) -> dict[str, Any]:
    from shm import sweep
    from shm.segment import RunId
    swept = sweep(str(cfg.home))
    if swept:
        emit("shm.swept", segments=swept)
    import mmap

    from runtime.supervision.kinship import new_secret
    from runtime.tasks.payloads import SlotTable
    from shm.arena import Arena
    run_id = RunId.new()
    res = RunResources(run_id=str(run_id), agent_secret=new_secret(), coordinator_starts=mmap.mmap(-1, 8))
    slots = SlotTable([(p.name, p.max) for p in cfg.pools])
    res.slots = slots
    res.arena = Arena.create(cfg.arena_mib << 20, slots.size)
    if cfg.registry == "partitioned":
        from runtime.registry.service import TABLE_CAPACITY
        from runtime.registry.table import make_tables
        res.registry_tables = make_tables(cfg.partitions, TABLE_CAPACITY)
    if cfg.services:
        res.guard_table = _guard_table(run_id, len(cfg.services))
    from runtime.pools.ray_head import ray_address, ray_token
    res.ray_address, res.ray_token = ray_address(cfg), ray_token(cfg)
    return res


def _guard_table(run_id: Any, services: int) -> Any:
    """The records of every service (breaker, limiter, hedge and retry budgets, the shards
    of its in-flight board), with room to spare."""
    from runtime.guards.flights import SHARDS
    from shm.guard_state import GuardStateTable
    return GuardStateTable.create(run_id, slots=max(64, (5 + SHARDS) * services), slot_size=2048)


def release_root(res: RunResources | None) -> None:
    if res is None:
        return
    for table in res.registry_tables:
        table.close()
    if res.guard_table is not None:
        res.guard_table.close()
    if res.arena is not None:
        res.arena.close()
    if res.coordinator_starts is not None:
        res.coordinator_starts.close()
    _unlink_run(res.run_id)


def _unlink_run(run_id: str) -> None:
    """The last word on this run's segments: whatever is still named after it goes."""
    import os

    from shm.segment import SHM_DIR, parse_segment_name, unlink_segment
    for entry in os.listdir(SHM_DIR):
        parsed = parse_segment_name(entry)
        if parsed is not None and str(parsed[0]) == run_id:
            unlink_segment(entry)
