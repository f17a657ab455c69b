"""A two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``) under a daemon
with one Ray pool on each node; run inside a loopback-only namespace by
tests/system/test_ray_cluster.py (``python -m tests.support.ray_cluster_scenario HOME``).
Prints one JSON line: the nodes each pool's tasks ran on, and what became of a task whose
node was removed while it ran."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson

from runtime.daemon.launch import stop, wait_up
from runtime.wire.client import Client

CONFIG = """
[daemon]
drain_s = 3.0
[ray]
address = "{address}"
[pools.far]
agent = "tests.support.agents_ray:NodeEcho"
engine = "ray"
size = 1
max = 1
[pools.far.ray]
resources = {{ second_node = 1 }}
[pools.near]
agent = "tests.support.agents_ray:NodeEcho"
engine = "ray"
size = 1
max = 1
[pools.near.ray]
resources = {{ head_node = 1 }}
"""
BOUND = 120.0


def main(home: Path) -> dict:
    from ray.cluster_utils import Cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head_node": 4}})
    try:
        second = cluster.add_node(num_cpus=1, resources={"second_node": 4})
        cluster.wait_for_nodes()
        (home / "agora.toml").write_text(CONFIG.format(address=cluster.address))
        log = open(home / "agora.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.main", "--home", str(home), "up",
                                 "--foreground"], stdout=log, stderr=log, start_new_session=True)
        try:
            wait_up(home, proc, timeout=BOUND)
            with Client(str(home), timeout=BOUND) as c:
                return {"second": second.node_id, **_scenario(c, cluster, second, home)}
        finally:
            stop(home, proc, timeout=60.0)
    finally:
        cluster.shutdown()


def _scenario(c: Client, cluster, second, home: Path) -> dict:
    deadline = time.monotonic() + BOUND
    while len({a["pool"] for a in c.call("agents")}) < 2:
        assert time.monotonic() < deadline, "the two pools' agents did not join"
        time.sleep(0.2)
    mark = home / "marks"
    ids = [c.call("submit", task={"capability": "where", "input": {"mark": str(mark), "s": 4}})
           for _ in range(2)]
    while len(set(mark.read_text().split()) if mark.exists() else ()) < 2:
        assert time.monotonic() < deadline, "the two tasks did not start on the two nodes"
        time.sleep(0.05)
    started = sorted(set(mark.read_text().split()))
    cluster.remove_node(second)
    done = [c.call("result", id=t, wait=True, timeout_s=BOUND) for t in ids]
    return {"started_on": started, "results": [
        {"state": d["state"], "attempts": d["attempts"], "node": (d.get("result") or {}).get("node")}
        for d in done]}


if __name__ == "__main__":
    print(orjson.dumps(main(Path(sys.argv[1]))).decode())
