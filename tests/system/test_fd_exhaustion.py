"""A coordinator out of file descriptors keeps serving (issue 15: no input may crash the
daemon).  A same-uid process can open connections until the coordinator's descriptor
limit is reached; ``accept`` then fails with EMFILE, which used to escape the loop and
kill the coordinator (and restart it).  Now the listener pauses briefly (event
``control.accept_failed``) and the coordinator serves the connections it has; once the
flood is closed, new clients are served again, by the same coordinator."""

from __future__ import annotations

import socket
import time

import psutil

from runtime.config import RunPaths
from runtime.wire.client import Client
from tests.support.daemons import config, running_daemon
from tests.support.fuzz import Tree
from tests.support.helpers import eventually


def _flood(path: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2.0)
        try:
            s.connect(path)
        except OSError:
            s.close()
            break
        out.append(s)
    return out


def _limit(pid: int, spare: int) -> None:
    p = psutil.Process(pid)
    p.rlimit(psutil.RLIMIT_NOFILE, (p.num_fds() + spare, p.rlimit(psutil.RLIMIT_NOFILE)[1]))


def test_the_root_and_the_partitions_out_of_descriptors_keep_serving(agora_env):
    """The root's socket and the registry partitions' take the same flood (the root's
    death would end the whole daemon)."""
    with running_daemon(agora_env, config(size=1)) as (c, proc):
        run = RunPaths.for_home(agora_env)
        tree = Tree(proc.pid)
        parts = [pid for pid, name in tree.pids.items() if name.startswith("agora:registry")]
        assert len(parts) == 4, tree.pids
        for pid in [proc.pid, *parts]:
            _limit(pid, 16)
        flood = _flood(run.root_sock, 48)
        for i in range(4):
            flood += _flood(run.registry(i), 48)
        try:
            time.sleep(0.5)  # they meet EMFILE on their accepts meanwhile
        finally:
            for s in flood:
                s.close()
        assert c.call("status")["tree"]  # the root answers the coordinator's asks
        tid = c.call("submit", task={"capability": "echo", "input": 6})
        assert c.call("result", id=tid, wait=True, timeout_s=10)["result"]["echo"] == 6
        assert tree.gone() == {}, f"restarted: {tree.gone()}"


def test_a_coordinator_out_of_descriptors_keeps_serving(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, _):
        pid = c.call("ping")["pid"]
        coord = psutil.Process(pid)
        spare = 16
        _limit(pid, spare)
        run = RunPaths.for_home(agora_env)
        flood = _flood(run.control, 3 * spare) + _flood(run.agents_sock, spare)
        try:
            time.sleep(0.5)  # the coordinator meets EMFILE on its accepts meanwhile
            assert c.call("ping")["pid"] == pid  # the connection it had is still served
        finally:
            for s in flood:
                s.close()

        def fresh_ping():
            try:
                with Client(str(agora_env), timeout=2.0) as c2:
                    return c2.call("ping")["pid"]
            except Exception:  # noqa: BLE001 - retried until the bound
                return None
        assert eventually(fresh_ping, "a new client served after the flood", timeout=20) == pid
        tid = c.call("submit", task={"capability": "echo", "input": 5})
        assert c.call("result", id=tid, wait=True, timeout_s=10)["result"]["echo"] == 5
        assert coord.is_running()
