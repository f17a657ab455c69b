"""Configuration: ``agora.toml`` (read with tomllib) and the run directory's layout.

::

    [daemon]
    registry = "partitioned"      # or "local" (in the coordinator; for tests, embedding)
    partitions = 4                # registry partition processes
    allocation = "least-loaded"   # "static" | "least-loaded" | "p2c" | "market"
    drain_s = 10.0                # graceful stop: how long running tasks may finish
    durability = "process"        # "process": a commit survives kill -9 of any process
                                  # (WAL, synchronous=NORMAL); "power": also a power loss
                                  # (synchronous=FULL, one fsync per group commit)
    agent_inflight = 1            # tasks sent to one agent before it answers (1: no prefetch,
                                  # so a short task never queues behind a long one in an agent)
    arena_mib = 256               # payload arena (anonymous shared memory, made at start)
    tracing = true                # false: no process emits events (to measure their cost)
    retention_age_s = 604800.0    # finished tasks/pipelines older than this are compacted
    retention_tasks = 1000000     # ... and beyond this many finished ones (0 = no count limit)

    [market]                      # allocation = "market": the same knobs as `agora market-config`
    auction = "sealed-second"     # sealed-first | sealed-second | english | dutch
    window_ms = 5.0               # also: round_ms, tick_ms, min_decrement, clock_steps,
                                  # ceiling_factor, penalty_fraction, contract_timeout_s,
                                  # min_success, weights = {price=..., quality=..., ...}

    [resources.gpu]               # a scarce resource agents buy units of with credits
    quantity = 2                  # (coordination.services.sales: auction, reserve, seller...)

    [context]                     # published into shared memory at start
    embeddings = "data/embeddings.npy"

    [pools.summarize]
    agent = "mypkg.agents:Summarizer"   # import path, imported in the agent after fork
    size = 2                      # initial size; min/max bound the scaler
    min = 1
    max = 8
    mailbox_messages = 1000       # queued tasks per pool before submit pushes back
    mailbox_bytes = 16777216
    max_tasks = 0                 # recycle an agent after N tasks (0 = never)
    memory_ceiling_mib = 0        # recycle an agent whose USS exceeds this (0 = never)
    timeout_s = 0.0               # per-attempt time limit of its tasks (0 = none; a task's
                                  # options.timeout_s wins)
    cancel_grace_s = 5.0          # a cancelled attempt's time to stop before the agent is
                                  # killed and replaced
    retryable = []                # exception type names retried (empty: all but fatal ones)
    fatal = []                    # exception type names that end a task at once
    concurrency = 1               # attempts one agent runs at once (async def handlers on its
                                  # event loop, plain ones on a thread pool of this size)
    restart_backoff_s = 1.0       # a pool that gave up is restarted after this, doubling
    restart_backoff_max_s = 60.0  # up to this (runtime.pools.recovery)
    when_down = "refuse"          # while no live pool serves a capability, submissions get
                                  # UNAVAILABLE ("refuse") or are accepted and wait ("park")
    [pools.summarize.scaling]     # autoscaler knobs; keys and defaults: runtime.scaling.policy
    autoscale = true              # the default when the pool states a max above its size
    [pools.summarize.capabilities.summarize]
    cost = 1.0                    # declared price basis for bids
    quality = 0.8                 # declared capability score
    [pools.summarize.grader]      # optional: who scores this pool's results (market only;
    capability = "grade"          # keys and defaults: coordination.grading): another pool's
    min_quality = 0.5             # capability, or function = "mypkg.grading:score"

    [services.llm]                # an external service's guards (keys: runtime.guards.service),
    timeout_s = 20                # checked at load time; breaker and limiter state is shared by
    rate = 50                     # every agent of the machine (ctx.service("llm"))
    cache_ttl_s = 600

Unknown keys are refused with the key named: a typo must not silently change nothing.
Every number is finite (TOML has ``inf`` and ``nan``) and in its key's range (``_RANGES``;
the [services], [market] and [scaling] tables check their own), refused at load naming the
key: an out-of-range value would otherwise fail later, far away, or never end.
Relative paths are relative to the config file's directory, and an agent's module is
looked for there as well as on the path and in the current directory
(``runtime.agents.loading``); ``agent = "script.py:Class"`` imports a file by path.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runtime.bounds import check_number
from runtime.errors import InvalidInput
from runtime.registry.model import BACKENDS
from runtime.wire import paths

__all__ = ["Config", "PoolConfig", "RunPaths", "RunResources", "load_config", "parse_config", "ALLOCATIONS"]


@dataclass
class RunResources:
    """What the root makes before it forks anything (``runtime.daemon.resources``) and every
    child inherits through the fork: the run's id (it names the run's segments), the payload
    arena and its slot table, and the registry partitions' shared tables.

    ``agent_secret`` proves an agent's kinship (``runtime.supervision.kinship``): it lives
    only in memory, inherited through fork.  ``coordinator_starts`` is an anonymous shared
    counter (an 8-byte MAP_SHARED mmap) the coordinator bumps at each start: above one, it
    is a restart within this run and agents are expected to reconnect."""

    run_id: str
    slots: Any = None                 # runtime.tasks.payloads.SlotTable
    arena: Any = None                 # shm.Arena
    registry_tables: list[Any] = field(default_factory=list)  # runtime.registry.table tables
    agent_secret: bytes = b""         # per-run kinship secret (never in env or a file)
    coordinator_starts: Any = None    # mmap.mmap(-1, 8): starts of the coordinator this run
    guard_table: Any = None           # shm.guard_state.GuardStateTable ([services.*] breakers, limiters)
    ray_address: str = ""             # pools with engine = "ray": the cluster's address (runtime.pools.ray_head)
    ray_token: str = ""               # the local Ray head's auth token, per run (never in a file)


@dataclass(frozen=True)
class RunPaths:
    """Where a daemon's sockets live: a private directory per home (see runtime.wire.paths)."""

    dir: str
    control: str
    root_sock: str
    agents_sock: str
    events: str

    def registry(self, i: int) -> str:
        return os.path.join(self.dir, f"reg.{i}.sock")

    @classmethod
    def for_home(cls, home: Path | str) -> RunPaths:
        d = str(paths.socket_dir(home))
        return cls(d, os.path.join(d, paths.CONTROL_SOCKET), os.path.join(d, paths.ROOT_SOCKET),
                   os.path.join(d, paths.AGENTS_SOCKET), os.path.join(d, paths.EVENTS_SOCKET))


@dataclass(frozen=True)
class PoolConfig:
    name: str
    agent: str
    size: int = 2
    min: int = 1
    max: int = 8
    mailbox_messages: int = 1000
    mailbox_bytes: int = 16 << 20
    max_tasks: int = 0
    memory_ceiling_mib: int = 0
    timeout_s: float | None = None
    cancel_grace_s: float = 5.0
    retryable: tuple[str, ...] = ()
    fatal: tuple[str, ...] = ()
    concurrency: int = 1  # attempts one agent runs at once (runtime.agents.executor)
    engine: str = "local"  # where handlers run: ENGINES (runtime.agents.engines)
    ray: dict[str, Any] = field(default_factory=dict)  # engine = "ray": actor options (placement)
    scaling: dict[str, Any] = field(default_factory=dict)  # see runtime.scaling.policy.pool_scaling
    capabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    # pool recovery (runtime.pools.recovery, runtime.scaling.health)
    restart_backoff_s: float = 1.0       # a failed pool's first retry
    restart_backoff_max_s: float = 60.0  # ... doubling up to this
    when_down: str = "refuse"            # submissions while no pool serves: refuse | park
    grader: dict[str, Any] = field(default_factory=dict)  # [pools.NAME.grader] (coordination.grading)


@dataclass(frozen=True)
class Config:
    home: Path
    pools: tuple[PoolConfig, ...] = ()
    contexts: dict[str, str] = field(default_factory=dict)
    market: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # [resources.NAME] (sales)
    registry: str = "partitioned"
    partitions: int = 4
    redis_url: str = ""            # registry = "redis": unix:///path.sock or redis://127.0.0.1:PORT/DB
    redis_namespace: str = "agora"  # key prefix in Redis: one per daemon sharing a server
    redis_lease_ttl: float = 10.0   # an owner's entries expire this long after its last renewal
    allocation: str = "least-loaded"
    drain_s: float = 10.0
    agent_inflight: int = 1
    durability: str = "process"
    arena_mib: int = 256
    tracing: bool = True
    retention_age_s: float = 7 * 86400.0
    retention_tasks: int = 1_000_000
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # [services.NAME] tables
    ray: dict[str, Any] = field(default_factory=dict)  # [ray]: address, num_cpus, allow_network, ...
    config_dir: Path | None = None  # the config file's directory: agent imports look there too

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise InvalidInput(f"no pool named {name!r}", hint=f"pools: {[p.name for p in self.pools]}")


_DAEMON_KEYS = {"registry": str, "partitions": int, "allocation": str, "drain_s": (int, float),
                "arena_mib": int, "agent_inflight": int, "durability": str,
                "tracing": bool, "retention_age_s": (int, float), "retention_tasks": int,
                "redis_url": str, "redis_namespace": str, "redis_lease_ttl": (int, float)}
#: Allocation policies by name: the scheduler's own (static, least-loaded, p2c) and the
#: market's; the composition root (runtime.daemon.composition) builds each.
ALLOCATIONS = ("static", "least-loaded", "p2c", "market")
#: [market] is kept as a table here; its keys and values are the market's own
#: (coordination.services.market.MARKET_KNOBS), checked by the composition root at load time
#: with the same check as `agora market-config`.
_POOL_KEYS = {"agent": str, "size": int, "min": int, "max": int, "mailbox_messages": int,
              "mailbox_bytes": int, "max_tasks": int, "capabilities": dict,
              "memory_ceiling_mib": int, "scaling": dict, "timeout_s": (int, float),
              "cancel_grace_s": (int, float), "retryable": list, "fatal": list, "concurrency": int,
              "engine": str, "ray": dict}


MAX_AGENTS = 4096  # agents per pool (size, min, max): more processes than one machine runs

#: The range of every number of [daemon] and [pools.NAME] (inclusive; a value must also be
#: finite: TOML has ``inf`` and ``nan``).  A value outside it would fail later and far away
#: (``drain_s = inf``: a stop that never ends; ``size = 1000000``: a fork bomb; a negative
#: ``timeout_s``: every attempt timed out at once), so it is refused at load, naming the key.
_RANGES: dict[str, tuple[float, float]] = {
    "drain_s": (0.0, 3600.0), "arena_mib": (1, 65536), "retention_age_s": (1.0, 100 * 365 * 86400.0),
    "retention_tasks": (0, 10**12), "redis_lease_ttl": (1.0, 3600.0),
    "size": (0, MAX_AGENTS), "min": (0, MAX_AGENTS), "max": (1, MAX_AGENTS),
    "mailbox_messages": (1, 10**9), "mailbox_bytes": (1, 1 << 40), "timeout_s": (0.0, 30 * 86400.0),
}


def _typed(section: str, table: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    for k, v in table.items():
        if k not in schema:
            raise InvalidInput(f"unknown key {section}.{k} in the config",
                               hint=f"known keys: {sorted(schema)}")
        if not isinstance(v, schema[k]) or (isinstance(v, bool) and schema[k] is not bool):
            raise InvalidInput(f"{section}.{k}: expected {schema[k]}, got {v!r}")
        if k in _RANGES:
            check_number(f"{section}.{k}", v, *_RANGES[k])
    return table


def _capabilities(pool: str, raw: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``[pools.NAME.capabilities.CAP]`` tables of declared numbers (cost, quality, ...), each
    finite and in 0..1e12: a bid is priced from them and the ledger pays it."""
    caps: dict[str, dict[str, float]] = {}
    for cap, table in raw.items():
        if not isinstance(table, dict):
            raise InvalidInput(f"pools.{pool}.capabilities.{cap}: expected a table such as {{cost = 1.0}}, "
                               f"got {table!r}")
        for k, v in table.items():
            check_number(f"pools.{pool}.capabilities.{cap}.{k}", v, 0, 1e12)
        caps[str(cap)] = {str(k): float(v) for k, v in table.items()}
    return caps


def _pool(name: str, table: dict[str, Any]) -> PoolConfig:
    t = _typed(f"pools.{name}", dict(table), _POOL_KEYS)
    if "agent" not in t:
        raise InvalidInput(f"pools.{name}.agent is missing", hint="e.g. agent = 'mypkg.agents:MyAgent'")
    caps = _capabilities(name, t.get("capabilities", {}))
    from runtime.tasks.task import type_names
    lists = {k: type_names(t[k], f"pools.{name}.{k}") for k in ("retryable", "fatal") if k in t}
    if "timeout_s" in t:
        t["timeout_s"] = float(t["timeout_s"]) or None  # 0 = no limit
    if not 0 < float(t.get("cancel_grace_s", 5.0)) <= 3600:
        raise InvalidInput(f"expected pools.{name}.cancel_grace_s in (0, 3600] seconds, "
                           f"got: {t['cancel_grace_s']!r}")
    _check_recovery(name, t)
    pc = PoolConfig(name=name, **{**t, **lists, "capabilities": caps})
    from runtime.agents.engines import check_pool_engine
    check_pool_engine(pc)
    if not (0 <= pc.min <= pc.size <= pc.max) or pc.max < 1:
        raise InvalidInput(f"pools.{name}: expected 0 <= min <= size <= max and max >= 1, "
                           f"got min={pc.min} size={pc.size} max={pc.max}")
    if not 1 <= pc.concurrency <= 4096:
        raise InvalidInput(f"pools.{name}.concurrency: expected an integer in 1..4096, got {pc.concurrency}",
                           hint="the number of tasks one agent runs at once (1: one at a time)")
    if "max" in t and pc.max > pc.size and "autoscale" not in pc.scaling:
        # a pool given room to grow (max > size) is autoscaled unless it says otherwise;
        # one that states no max keeps its size (issue 17: as the README promises)
        pc = replace(pc, scaling={**pc.scaling, "autoscale": True})
    from runtime.scaling.policy import pool_scaling
    pool_scaling(pc)  # refuse bad [pools.NAME.scaling] knobs at load time, not in the coordinator
    return pc


_POOL_KEYS.update({"restart_backoff_s": (int, float), "restart_backoff_max_s": (int, float),
                   "when_down": str,  # pool recovery (checked by _check_recovery); grader: the
                   "grader": dict})   # keys of coordination.grading, checked by the composition root
WHEN_DOWN = ("refuse", "park")


def _check_recovery(name: str, t: dict[str, Any]) -> None:
    """A failed pool's restart backoff and what submissions get while it is down."""
    base, cap = float(t.get("restart_backoff_s", 1.0)), float(t.get("restart_backoff_max_s", 60.0))
    if not 0 < base <= cap <= 86400:
        raise InvalidInput(f"pools.{name}: expected 0 < restart_backoff_s <= restart_backoff_max_s "
                           f"<= 86400, got {base} and {cap}")
    t.update({k: float(t[k]) for k in ("restart_backoff_s", "restart_backoff_max_s") if k in t})
    if t.get("when_down", "refuse") not in WHEN_DOWN:
        raise InvalidInput(f"pools.{name}.when_down: expected one of {list(WHEN_DOWN)}, got {t['when_down']!r}",
                           hint="refuse: submissions get UNAVAILABLE; park: accepted, they wait for the pool")


def _services(raw: Any) -> dict[str, dict[str, Any]]:
    """``[services.NAME]`` tables, each checked now (a typo must fail at load, not mid-task)."""
    from runtime.guards.service import ServiceConfig
    if not isinstance(raw, dict):
        raise InvalidInput(f"[services] must hold tables [services.NAME], got {type(raw).__name__}")
    for name, table in raw.items():
        # the name becomes part of file names (runtime.guards.shared_cache, flights) and of a
        # 64-byte shared-table key: letters, digits, "_", "-", ".", at most 48, no leading dot
        if not (isinstance(name, str) and 0 < len(name) <= 48 and name[0] != "."
                and all(c.isascii() and (c.isalnum() or c in "_-.") for c in name)):
            raise InvalidInput(f"[services.{name}]: a service name is 1-48 of letters, digits, '_', '-', '.' "
                               f"(not starting with '.'), got {name!r}", hint="e.g. [services.llm]")
        ServiceConfig.from_dict(name, table)
    return {str(n): dict(t) for n, t in raw.items()}


def _check_integers(value: Any, path: str) -> None:
    """TOML integers are 64-bit (the spec) but tomllib reads any number of digits, and one
    past a float's range overflows the first ``float()`` that meets it: refused, named."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_integers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_integers(v, f"{path}[{i}]")
    elif isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        raise InvalidInput(f"{path}: an integer of {len(str(abs(value)))} digits; TOML integers are 64-bit")


def parse_config(raw: dict[str, Any], home: Path, base: Path, **overrides: Any) -> Config:
    _check_integers(raw, "")
    unknown = set(raw) - {"daemon", "pools", "context", "market", "services", "ray", "resources"}
    if unknown:
        raise InvalidInput(f"unknown config sections {sorted(unknown)}",
                           hint="sections: [daemon], [context], [market], [pools.NAME], [services.NAME], "
                                "[resources.NAME], [ray]")
    market = dict(raw.get("market", {}))
    daemon = _typed("daemon", dict(raw.get("daemon", {})), _DAEMON_KEYS)
    daemon.update({k: v for k, v in overrides.items() if v is not None})
    pools = tuple(_pool(n, t) for n, t in raw.get("pools", {}).items())
    contexts = {n: str((base / p).resolve()) for n, p in raw.get("context", {}).items()}
    services = _services(raw.get("services", {}))
    from runtime.agents.engines import check_ray_section
    ray = check_ray_section(raw.get("ray", {}))
    resources = raw.get("resources", {})
    if not isinstance(resources, dict) or not all(isinstance(t, dict) for t in resources.values()):
        raise InvalidInput("[resources] must hold tables [resources.NAME]", hint="[resources.gpu] quantity = 2")
    cfg = Config(home=home, pools=pools, contexts=contexts, market=market, services=services,
                 ray=ray, resources={str(n): dict(t) for n, t in resources.items()}, config_dir=base, **daemon)
    if cfg.registry not in BACKENDS:
        raise InvalidInput(f"daemon.registry: expected one of {list(BACKENDS)}, got {cfg.registry!r}")
    if cfg.registry == "redis" and not cfg.redis_url:
        raise InvalidInput("daemon.registry = 'redis' needs daemon.redis_url",
                           hint="e.g. redis_url = 'unix:///run/redis/redis.sock' or 'redis://127.0.0.1:6379/0'")
    if cfg.allocation not in ALLOCATIONS:
        raise InvalidInput(f"daemon.allocation: expected one of {list(ALLOCATIONS)}, got {cfg.allocation!r}")
    if cfg.durability not in ("process", "power"):
        raise InvalidInput(f"daemon.durability: expected 'process' or 'power', got {cfg.durability!r}")
    if not 1 <= cfg.agent_inflight <= 1024:
        raise InvalidInput(f"expected daemon.agent_inflight in 1..1024, got: {cfg.agent_inflight}")
    if not 1 <= cfg.partitions <= 64:
        raise InvalidInput(f"expected daemon.partitions to be an integer in 1..64, got: {cfg.partitions}")
    return cfg


def load_config(home: str | Path | None = None, config_file: str | Path | None = None,
                **overrides: Any) -> Config:
    """Read the config (``config_file`` or ``<home>/agora.toml`` if it exists)."""
    home_path = paths.home_dir(home)
    file = Path(config_file) if config_file else home_path / "agora.toml"
    raw: dict[str, Any] = {}
    if config_file or file.exists():
        try:
            raw = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidInput(f"cannot read config {file}: {e}") from e
    return parse_config(raw, home_path, file.parent.resolve(), **overrides)
