"""Ray in the perf scripts: only inside a loopback-only network namespace, and bare Ray's
own figures for a trivial task (a remote function and an actor method) to set beside
agora's.  Not a benchmark itself.

Ray sends traffic beyond loopback even with its dashboard and usage stats off, so
:func:`in_netns_or_reexec` re-runs the calling script inside ``unshare --net`` (``lo``
up) and never lets Ray start anywhere else.
"""

from __future__ import annotations

import os
import secrets
import shlex
import statistics
import subprocess
import sys
import time

__all__ = ["in_netns_or_reexec", "ray_bare"]

# Ray reads its auth settings once, when it is imported: a token of this run's own, set
# before any import of ray (without one, Ray writes ~/.ray/auth_token for every cluster).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if "RAY_AUTH_TOKEN" not in os.environ:
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))


def in_netns_or_reexec() -> str | None:
    """None when Ray may run here; else re-run this script in a namespace (and exit with
    its code), or say why Ray is skipped."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not importable (pip install 'agora[ray]')"
    from runtime.agents.engines import loopback_only
    if loopback_only():
        return None
    if os.environ.get("AGORA_PERF_IN_NETNS") == "1":
        return "could not enter a loopback-only namespace"
    cmd = shlex.join([sys.executable, *sys.argv])
    env = {**os.environ, "AGORA_PERF_IN_NETNS": "1"}
    try:
        rc = subprocess.call(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {cmd}"], env=env)
    except FileNotFoundError:
        return "unshare is not installed: no loopback-only namespace"
    sys.exit(rc)


def ray_bare(n: int, total: int) -> dict[str, tuple[float, float]]:
    """(round trip p50 in us, tasks/s with ``total`` in flight) for ``ray_bare`` (a task:
    ``ray.get(f.remote())``) and ``ray_actor`` (two actors' method calls), 2 CPUs."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        @ray.remote
        def add(a: int, b: int) -> int:
            return a + b

        @ray.remote
        class Adder:
            def add(self, a: int, b: int) -> int:
                return a + b

        actors = [Adder.remote(), Adder.remote()]
        calls = {"ray_bare": lambda i: add.remote(i, 1), "ray_actor": lambda i: actors[i % 2].add.remote(i, 1)}
        return {name: _measure(ray, call, n, total) for name, call in calls.items()}
    finally:
        ray.shutdown()


def _measure(ray, call, n: int, total: int) -> tuple[float, float]:
    ray.get([call(i) for i in range(20)])  # warm: workers leased, actors up
    rtts = []
    for i in range(n):
        t0 = time.perf_counter()
        ray.get(call(i))
        rtts.append((time.perf_counter() - t0) * 1e6)
    t0 = time.perf_counter()
    ray.get([call(i) for i in range(total)])
    return statistics.median(rtts), total / (time.perf_counter() - t0)
