"""The demo's service-calling step (runtime.demo.agents.Consultant): run with the demo's own
agora.toml and pipeline.json in a daemon, the consult step's trace shows a batch join, a cache
hit and the breaker's transitions (closed -> open -> half_open -> closed) against the fake API
the agent runs on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.demo.agents import make_corpus
from runtime.errors import NotFound
from tests.support.daemons import running_daemon
from tests.support.helpers import eventually

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


WANTED = {"service.batch_join", "service.batch_flush", "service.cache_hit", "breaker.transition"}


def _trace_events(c, pipeline_id: str) -> list[dict]:
    try:
        return _events(c.call("trace", id=pipeline_id)["trace"])
    except NotFound:  # no event of the trace in the log yet
        return []


def _arrived(events: list[dict]) -> list[dict] | None:
    """The events once the guard events and the breaker's three transitions are all in."""
    kinds = {e["type"] for e in events}
    moves = sum(e["type"] == "breaker.transition" for e in events)
    return events if WANTED <= kinds and moves >= 3 else None


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
        # the agent's events reach the event log within ~0.1 s of the step, not with its
        # result: read the trace until they are in (a loaded machine showed it without them)
        events = eventually(lambda: _arrived(_trace_events(c, p["id"])),
                            "the consult step's guard events in the trace", timeout=30)
    kinds = {e["type"] for e in events}
    assert WANTED <= kinds
    moves = sorted({(e.get("old"), e.get("state")) for e in events if e["type"] == "breaker.transition"})
    assert moves == [("closed", "open"), ("half_open", "closed"), ("open", "half_open")], moves
    flushes = [e for e in events if e["type"] == "service.batch_flush"]
    assert flushes and max(int(e.get("size", 0)) for e in flushes) > 1  # the themes went as one batch
