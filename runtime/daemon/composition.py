"""The composition root: the one place that decides which services the coordinator runs
and which allocation policy it uses, and hands them over as objects.

    composition(cfg) -> Composition(services=((name, factory), ...), policy=...)

The coordinator (``runtime.coordinator``) never imports ``coordination``: it calls each
factory with itself (a ``ServiceHost``) at start, then builds the policy.  The market
service *is* the policy when ``allocation = "market"``; otherwise it still serves the
ledger, reputation and market commands.  ``ALLOCATIONS`` (``runtime.config``) names every
policy; ``POLICY_FACTORIES`` covers exactly those names (a test checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from coordination import grading
from coordination.services import decisions, economy, market, primitives, sales
from coordination.services.market import MarketConfig
from runtime.config import ALLOCATIONS, Config
from runtime.coordinator import retention
from runtime.coordinator.host import ServiceHost
from runtime.coordinator.loop import Composition, builtin_policy
from runtime.observability import service as observability
from runtime.scaling import replacement
from runtime.scaling import service as scaling

__all__ = ["composition", "check_config", "SERVICES", "POLICY_FACTORIES"]

#: Services in the order they are built (the order changes nothing: hooks are listener lists).
SERVICES: tuple[tuple[str, Callable[[ServiceHost], Any]], ...] = (
    ("market", market.install),
    ("decisions", decisions.install),
    ("primitives", primitives.install),
    ("economy", economy.install),          # agents' subcontracts (issue 18 item 7)
    ("sales", sales.install),              # sale auctions of resources (issue 18 item 5)
    ("scaling", scaling.install),
    ("replacement", replacement.install),  # agents that ignore a cancel past its grace
    ("retention", retention.install),      # the journal's finished work, compacted
    ("observability", observability.install),
)

POLICY_FACTORIES: dict[str, Callable[[ServiceHost, dict[str, Any]], Any]] = {
    **{name: builtin_policy(name) for name in ALLOCATIONS if name != "market"},
    "market": lambda host, services: services["market"],
}


def composition(cfg: Config) -> Composition:
    """The services, with the market and the economy sharing one map: subcontracted task
    id -> the budget account that pays its contracts (coordination.services.economy)."""
    payers: dict[str, str] = {}
    shared = {"market": partial(market.install, payers=payers), "economy": partial(economy.install, payers=payers)}
    services = tuple((name, shared.get(name, make)) for name, make in SERVICES)
    return Composition(services=services, policy=POLICY_FACTORIES[cfg.allocation])


def check_config(cfg: Config) -> None:
    """What only the services can check, done at load time so that a bad value is an error
    of ``agora up``, not a coordinator that fails to start: the ``[market]`` knobs and the
    pools' ``[pools.NAME.grader]`` tables (their shape only: a grader function is imported
    by the coordinator, never by the root)."""
    market.configure(MarketConfig(), dict(cfg.market))
    grading.graders(cfg.pools)
    for name, table in cfg.resources.items():
        sales.parse_resource(name, table)
