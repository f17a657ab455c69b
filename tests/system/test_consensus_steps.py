"""Consensus pipeline steps with real agents (ConsensusSteps): outputs of any size, room
taken at the agents and given back, a hung candidate cancelled at the candidate timeout,
a quorum of candidates.

One daemon with three ``Drafter`` agents (tests/support/agents_consensus_steps.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.daemons import config, running_daemon
from tests.support.fake_host import wait_for_event

pytestmark = pytest.mark.timeout(180)

DRAFTERS = """
[pools.drafters]
agent = "tests.support.agents_consensus_steps:Drafter"
size = 3
max = 3
cancel_grace_s = 2.0
timeout_s = 3.0
[pools.drafters.capabilities.draft]
cost = 1.0
quality = 0.8
"""


def _agents(c: Any, n: int) -> list[str]:
    deadline = time.monotonic() + 60
    while True:
        ids = sorted(a["id"] for a in c.call("agents") if a["pool"] == "drafters")
        if len(ids) >= n:
            return ids
        assert time.monotonic() < deadline, f"only {ids} joined"
        time.sleep(0.05)


def _step(c: Any, input: dict[str, Any], k: int = 3) -> dict[str, Any]:
    p = c.call("pipeline", spec={"name": "d", "steps": [
        {"id": "d", "capability": "draft", "input": input, "options": {"max_attempts": 1},
         "consensus": {"k": k, "method": "plurality"}}]})
    done = c.call("pipeline_result", id=p["id"], wait=True, timeout_s=120)
    return done["steps"][0]


def test_large_outputs_hung_candidates_and_quorum(agora_env):
    cfg = config(size=1, daemon='drain_s = 3.0', extra=DRAFTERS)
    with running_daemon(agora_env, cfg) as (c, _):
        agents = _agents(c, 3)

        # 100 KiB candidates travel by handle: resolved (not null), blocks released
        before = c.call("status")["payloads"]["received_by_handle"]
        step = _step(c, {"big_kib": 100})
        assert step["state"] == "succeeded", step
        res = step["result"]
        assert [cd["agent"] for cd in res["candidates"]] == agents
        assert all(len(cd["output"]["blob"]) == 100 * 1024 for cd in res["candidates"])
        assert res["winner"] == "c1" and res["output"]["value"] == 0
        assert c.call("status")["payloads"]["received_by_handle"] - before == 3

        # voters read large candidates themselves (by handle, not a 256-byte preview):
        # ranking on content, the last agent's (highest value) candidate wins
        step = _step(c, {"big_kib": 100, "vote_on_content": True})
        assert step["state"] == "succeeded", step
        assert step["result"]["output"]["value"] == 2, step["result"]["tally"]

        # one candidate hangs: cancelled at the candidate timeout (the pool's timeout_s),
        # the other two are voted on
        step = _step(c, {"hang": [1]})
        assert step["state"] == "succeeded", step
        res = step["result"]
        assert [cd["agent"] for cd in res["candidates"]] == [agents[0], agents[2]]
        assert res["failed"][agents[1]]["code"] == "CANDIDATE_TIMEOUT"
        assert wait_for_event(c, "consensus.candidate_cancelled")["agent"] == agents[1]

        # two of three hang: one candidate is no quorum (a majority of 3), a clear failure
        step = _step(c, {"hang": [0, 1]})
        assert step["state"] == "failed" and step["error"]["code"] == "CONSENSUS_NO_QUORUM", step

        # the room a candidate took is given back: a plain task runs on every agent again
        for _ in range(3):
            tid = c.call("submit", task={"capability": "draft", "input": {}})
            assert c.call("result", id=tid, wait=True, timeout_s=30)["state"] == "succeeded"
