"""Registry backends by name: the one place that knows every backend.

``BACKENDS`` is the vocabulary config validation and the CLI read (``registry = ...`` in
agora.toml, ``agora up --registry``).
"""

from __future__ import annotations

from typing import Any

from runtime.errors import InvalidInput
from runtime.registry._client import PartitionedBackend
from runtime.registry._local import LocalBackend
from runtime.registry._redis import RedisBackend
from runtime.registry.model import BACKENDS, Backend

__all__ = ["BACKENDS", "make_backend"]


def make_backend(kind: str = "partitioned", **options: Any) -> Backend:
    """A registry backend by name.

    ``make_backend("local")``; ``make_backend("partitioned", sock_paths=[...],
    tables=[...], timeout=0.25, fast_reads=True)`` (tables from
    :func:`runtime.registry.table.make_tables`, made by the root before forking);
    ``make_backend("redis", redis_url="unix:///run/redis.sock", lease_ttl=10.0)``
    (``runtime.registry._redis``, needs the ``redis`` extra).
    """
    if kind == "local":
        return LocalBackend(**options)
    if kind == "partitioned":
        return PartitionedBackend(**options)
    if kind == "redis":
        return RedisBackend(**options)
    raise InvalidInput(f"unknown registry backend {kind!r}", hint=f"use one of {list(BACKENDS)}")
