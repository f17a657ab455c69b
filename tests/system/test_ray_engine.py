"""Pools on Ray (``engine = "ray"``): the same Agent class runs in Ray actors, the
coordinator treats them as it treats local agents.  Every daemon here runs in a
loopback-only network namespace (tests/support/ray_netns.py)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from coordination.voting import tally
from tests.support.agents_consensus import estimate, rank_options
from tests.support.helpers import eventually
from tests.support.ray_netns import require_ray, running_ray_daemon

VEC = 100_000
CONFIG = """
[daemon]
drain_s = 3.0
allocation = "market"
[market]
window_ms = 5000   # an actor call is milliseconds, more on a loaded machine; all bids close it early
[ray]
num_cpus = 2
[pools.rayecho]
agent = "tests.support.agents:Echo"
engine = "ray"
size = 2
max = 2
[pools.vr]
agent = "tests.support.agents:Vectors"
engine = "ray"
size = 2
max = 2
[pools.gl]
agent = "tests.support.agents_consensus:Guesser"
size = 1
max = 1
[pools.gr]
agent = "tests.support.agents_consensus:Guesser"
engine = "ray"
size = 1
max = 1
"""


@pytest.fixture
def ray_daemon(agora_env):
    require_ray()
    np.save(agora_env / "vec.npy", np.arange(VEC, dtype=np.float32))
    text = CONFIG.replace("[market]", f'[context]\nvec = "{agora_env / "vec.npy"}"\n[market]')
    with running_ray_daemon(agora_env, text) as got:
        # a Ray agent is ready for the root at once and joins once its actor is placed
        eventually(lambda: len(got[0].call("agents")) == 6 or None, "the six agents joined", timeout=120)
        yield got


def _agent_pids(c) -> set[int]:
    return {row["pid"] for row in c.call("ps") if "agent:" in row["path"]}


def test_a_ray_pool_serves_tasks_in_ray_actors(ray_daemon):
    c, _ = ray_daemon
    out = [c.call("submit", task={"capability": "echo", "input": i},
                  result=True) for i in range(4)]
    assert [o["result"]["echo"] for o in out] == [0, 1, 2, 3]
    # the handler ran in a Ray worker, not in an agent process of the tree
    assert {o["result"]["pid"] for o in out} - _agent_pids(c)


def test_an_actor_death_is_a_lost_attempt_and_the_task_is_rerouted(ray_daemon, tmp_path):
    c, _ = ray_daemon
    pid_file = tmp_path / "pids"
    tid = c.call("submit", task={"capability": "sleep",
                                 "input": {"s": 1.0, "pid_file": str(pid_file)}})
    line = eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), "the actor's pid", timeout=60)
    os.kill(int(line.split()[0]), signal.SIGKILL)
    rec = c.call("result", id=tid, wait=True, timeout_s=60)
    assert rec["state"] == "succeeded" and rec["attempts"] == 2, rec
    assert [a["outcome"] for a in c.call("attempts", id=tid)] == ["crashed", "succeeded"]


def test_a_local_and_a_ray_pool_answer_one_vote_and_bid_in_one_auction(ray_daemon):
    c, _ = ray_daemon
    voters = eventually(lambda: (ids := sorted(a["id"] for a in c.call("agents")
                                               if a["pool"] in ("gl", "gr"))) == ["gl.0", "gr.0"] and ids,
                        "both guessers joined", timeout=60)
    options = ["3", "8", "14"]
    got = c.call("vote", question="how many?", options=options, method="borda", voters=voters,
                 deadline_s=30)
    rankings = {v: rank_options(options, estimate(0)) for v in voters}  # both are index 0
    assert sorted(b["voter"] for b in got["ballots"]) == voters and got["missing"] == []
    assert got["outcome"]["winner"] == tally("borda", options, rankings).winner
    rec = c.call("submit", task={"capability": "guess", "input": {"base": 1.0}}, result=True)
    assert rec["state"] == "succeeded"
    auctions = c.call("market", limit=10)["auctions"]
    guess = [a for a in auctions if a.get("capability") == "guess"]
    assert guess and all(a["invited"] == ["gl.0", "gr.0"] for a in guess), auctions
    assert {b["bidder"] for a in guess for b in a["bids"]} == {"gl.0", "gr.0"}, auctions


def test_ray_agents_read_the_shared_context_zero_copy_from_the_object_store(ray_daemon):
    c, _ = ray_daemon
    ids = c.call("submit_many", tasks=[{"capability": "colsum", "input": {"name": "vec"}} for _ in range(6)])
    done = [c.call("result", id=t, wait=True, timeout_s=60) for t in ids]
    assert all(d["state"] == "succeeded" for d in done), done
    want = float(np.arange(VEC, dtype=np.float32).sum())
    assert all(d["result"] == {"sum": want, "writeable": False} for d in done), done
