"""A one-node Ray cluster of the daemon's own, for pools with ``engine = "ray"`` when
``[ray] address`` is empty (runtime.agents.engines).

``ray-head`` is a child of the core, started before the pools: it runs ``ray start --head
--block`` bound to 127.0.0.1 on a port the root picked before forking anything
(``RunResources.ray_address``, so agents and a restarted head agree on it), with Ray's
session files in a private directory under /tmp (Ray's unix socket paths must stay short)
that it removes when it stops.  It is ready when the cluster's GCS accepts connections.
Ray's own processes (GCS, raylet, workers) are children of ``ray start``, which ends them
when it gets SIGTERM: this child sends it on its own stop, and the kernel sends it if this
child dies (PR_SET_PDEATHSIG), so no Ray process outlives the daemon.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from runtime.config import Config
from runtime.errors import Unavailable
from runtime.supervision.child_spec import ChildSpec

__all__ = ["ray_address", "ray_token", "ray_head_spec", "START_S"]

START_S = 90.0  # bound on the head's start (Ray takes several seconds on a loaded machine)
REAP_S = 3.0
STOP_S = 5.0


def ray_address(cfg: Config) -> str:
    """The cluster the Ray pools join: ``[ray] address``, or a local head's port picked now."""
    from runtime.agents.engines import uses_ray
    if not uses_ray(cfg):
        return ""
    if cfg.ray.get("address"):
        return str(cfg.ray["address"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def ray_token(cfg: Config) -> str:
    """A per-run token for the local head's token authentication: only processes of this
    tree (which inherit it through the fork) can join the cluster.  Ray would otherwise
    read or write ~/.ray/auth_token, shared by every cluster of the user."""
    import secrets

    from runtime.agents.engines import uses_ray
    return secrets.token_hex(32) if uses_ray(cfg) and not cfg.ray.get("address") else ""


def ray_head_spec(cfg: Config) -> ChildSpec | None:
    """The head's child spec, or None (no Ray pool, or a cluster given by address)."""
    from runtime.agents.engines import uses_ray
    if not uses_ray(cfg) or cfg.ray.get("address"):
        return None
    return ChildSpec("ray-head", _head_main, (int(cfg.ray.get("num_cpus", os.cpu_count() or 1)),
                                              bool(cfg.ray.get("allow_network"))),
                     shutdown=STOP_S + 2 * REAP_S + 5, start_timeout=START_S + 5)


def _head_main(ctx: Any, num_cpus: int, allow_network: bool) -> None:
    from runtime.agents.engines import loopback_only
    if not (loopback_only() or allow_network):
        raise Unavailable("refusing to start Ray: this process sees network interfaces other than "
                          "loopback, and Ray sends traffic beyond them",
                          hint="run the daemon in a loopback-only namespace (unshare --net, then "
                               "`ip link set lo up`), or set [ray] allow_network = true")
    host, port = ctx.resources.ray_address.rsplit(":", 1)
    tmp = tempfile.mkdtemp(prefix="agora-ray-", dir="/tmp")
    proc = _start(host, int(port), num_cpus, tmp, ctx.resources.ray_token)
    signal.set_wakeup_fd(-1)  # the root's wake-up pipe is not ours (closed after the fork)
    # the stop itself runs below, in the main thread: a handler that waited on ``proc``
    # would spin on the waitpid lock the interrupted ``proc.wait()`` holds
    signal.signal(signal.SIGTERM, lambda *_: proc.send_signal(signal.SIGTERM))
    try:
        _wait_ready(proc, host, int(port))
        ctx.ready()
        proc.wait()
    finally:
        _stop(proc, tmp)


def _start(host: str, port: int, num_cpus: int, tmp: str, token: str) -> subprocess.Popen:
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    from runtime.agents.engines import ray_env
    # no drain on SIGTERM (Ray waits up to 30 s on detached actors, e.g. the context store):
    # the cluster is the daemon's own and ends with it
    env = {**os.environ, **ray_env(token), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    log = open(os.path.join(tmp, "head.log"), "ab")
    try:
        return subprocess.Popen(
            [ray_cli, "start", "--head", "--block", f"--port={port}", f"--node-ip-address={host}",
             f"--num-cpus={num_cpus}", f"--temp-dir={tmp}", "--include-dashboard=false",
             "--disable-usage-stats"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, preexec_fn=_die_with_parent)
    finally:
        log.close()


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _wait_ready(proc: subprocess.Popen, host: str, port: int) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"`ray start --head` exited with {proc.returncode} (see its head.log)")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)  # bounded by the deadline
    raise Unavailable(f"the Ray head did not listen on {host}:{port} within {START_S} s")


def _stop(proc: subprocess.Popen, tmp: str) -> None:
    """SIGTERM to ``ray start`` (it ends its processes, after a drain), SIGKILL if it is not
    done within STOP_S, then SIGKILL to whatever of Ray is still alive: nothing of Ray may
    outlive the head; then its files go.  Bounded by about STOP_S + 2 * REAP_S."""
    import psutil
    try:
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        ray_procs = []
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(REAP_S)
    for p in ray_procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(ray_procs, timeout=REAP_S)
    shutil.rmtree(tmp, ignore_errors=True)
    os._exit(0)
