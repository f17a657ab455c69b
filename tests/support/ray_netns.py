"""Daemons with Ray pools, run only inside a loopback-only network namespace.

Ray probes cloud metadata addresses and uses the external interface even with its
dashboard and usage stats off, so a daemon with a Ray pool is started as
``unshare --net sh -c 'ip link set lo up && exec agora up --foreground'``: it and every
process it starts (the Ray head, raylet, workers, the agents as Ray drivers) see nothing
but loopback.  The test process stays outside and talks to the daemon over its unix
sockets, which are paths in the file system, not network addresses, so they work across
network namespaces.

Without ray or unshare the tests are skipped with the reason, unless
``AGORA_REQUIRE_RAY=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.daemon.launch import stop, wait_up
from runtime.wire.client import Client
from tests.support.daemons import REPO

__all__ = ["require_ray", "netns_works", "running_ray_daemon", "NETNS_PREFIX"]

NETNS_PREFIX = ("unshare", "--net", "sh", "-c")


def netns_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run([*NETNS_PREFIX, f"ip link set lo up && {shlex.quote(sys.executable)} -c "
                            "'from runtime.agents.engines import loopback_only; print(loopback_only())'"],
                           capture_output=True, text=True, timeout=30, cwd=str(REPO))
    return probe.returncode == 0 and probe.stdout.strip() == "True"


def require_ray() -> None:
    missing = []
    try:
        import ray  # noqa: F401
    except ImportError:
        missing.append("the ray package (pip install 'agora[ray]')")
    if not netns_works():
        missing.append("a loopback-only network namespace (unshare --net, as root or with user namespaces)")
    if not missing:
        return
    reason = "the Ray engine tests need " + " and ".join(missing)
    if os.environ.get("AGORA_REQUIRE_RAY") == "1":
        pytest.fail(reason + "; AGORA_REQUIRE_RAY=1 makes that a failure", pytrace=False)
    pytest.skip(reason)


def spawn_in_netns(home: Path, config_text: str) -> subprocess.Popen:
    (home / "agora.toml").write_text(config_text)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    up = shlex.join([sys.executable, "-m", "runtime.cli.main", "--home", str(home), "up", "--foreground"])
    log = open(home / "agora.log", "ab")
    try:
        return subprocess.Popen([*NETNS_PREFIX, f"ip link set lo up && exec {up}"], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, env=env, cwd=str(REPO))
    finally:
        log.close()


@contextmanager
def running_ray_daemon(home: Path, config_text: str, timeout: float = 120.0):
    proc = spawn_in_netns(home, config_text)
    try:
        wait_up(home, proc, timeout=timeout)
        with Client(str(home), timeout=60.0) as c:
            yield c, proc
    finally:
        stop(home, proc, timeout=60.0)
