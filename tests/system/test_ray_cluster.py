"""Two Ray nodes on this machine (``ray.cluster_utils.Cluster``), a Ray pool placed on each
(``[pools.NAME.ray] resources``): both serve, and removing the second node while its pool
runs a task reroutes that task to the pool on the first.  The scenario runs inside a
loopback-only network namespace (tests/support/ray_cluster_scenario.py)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import orjson

from tests.support.daemons import REPO
from tests.support.ray_netns import NETNS_PREFIX, require_ray


def test_removing_a_node_reroutes_its_tasks_to_the_pool_on_the_other(agora_env):
    require_ray()
    cmd = shlex.join([sys.executable, "-m", "tests.support.ray_cluster_scenario", str(agora_env)])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([*NETNS_PREFIX, f"ip link set lo up && exec {cmd}"], capture_output=True,
                         text=True, timeout=400, cwd=str(REPO), env=env)
    assert run.returncode == 0, run.stderr[-4000:] + (agora_env / "agora.log").read_text()[-3000:]
    got = orjson.loads(run.stdout.strip().splitlines()[-1])
    assert len(got["started_on"]) == 2 and got["second"] in got["started_on"]  # one task per node
    assert all(r["state"] == "succeeded" for r in got["results"]), got
    rerouted = [r for r in got["results"] if r["attempts"] == 2]
    assert len(rerouted) == 1 and rerouted[0]["node"] != got["second"], got
