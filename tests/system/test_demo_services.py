"""The demo's service-calling step (runtime.demo.agents.Consultant): run with the demo's own
agora.toml and pipeline.json in a daemon, the consult step's trace shows a batch join, a cache
hit and the breaker's transitions (closed -> open -> half_open -> closed) against the fake API
the agent runs on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.demo.agents import make_corpus
from tests.support.daemons import running_daemon

pytest.importorskip("httpx")
pytestmark = pytest.mark.timeout(120)

DEMO = Path(__file__).resolve().parents[2] / "runtime" / "demo"


def _events(node) -> list[dict]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if "type" in n:
                out.append(n)
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return out


def test_the_demos_trace_shows_a_breaker_transition_a_cache_hit_and_a_batch_join(tmp_path, agora_env):
    corpus = make_corpus(tmp_path)
    text = (DEMO / "agora.toml").read_text() + "\n[context]\n" + "".join(f'{k} = "{v}"\n' for k, v in corpus.items())
    job = json.loads((DEMO / "pipeline.json").read_text())
    with running_daemon(agora_env, text) as (c, _):
        p = c.call("pipeline", spec=job)
        done = c.call("pipeline_result", id=p["id"], wait=True, timeout_s=60)
        assert done["state"] == "succeeded", done
        consult = {s["step_id"]: s for s in done["steps"]}["consult"]["result"]
        assert consult["cached"] is True
        assert consult["breaker"][:2] == ["closed", "open"] and consult["breaker"][-1] == "closed"
        events = _events(c.call("trace", id=p["id"])["trace"])
    kinds = {e["type"] for e in events}
    assert {"service.batch_join", "service.batch_flush", "service.cache_hit", "breaker.transition"} <= kinds
    moves = sorted({(e.get("old"), e.get("state")) for e in events if e["type"] == "breaker.transition"})
    assert moves == [("closed", "open"), ("half_open", "closed"), ("open", "half_open")], moves
    flushes = [e for e in events if e["type"] == "service.batch_flush"]
    assert flushes and max(int(e.get("size", 0)) for e in flushes) > 1  # the themes went as one batch
