"""runtime.observability.tracing: span trees from events (pure), and `agora trace` on a log alone."""

from __future__ import annotations

import random

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.observability.tracing import build_trace, render

T = "aaaaaaaaaaaaaaaa"


def ev(ts, type_, span, parent=None, trace=T, **fields):
    return {"ts": ts, "type": type_, "source": "coordinator", "pid": 1, "trace_id": trace,
            "span_id": span, "parent_span_id": parent, "system": False, **fields}


def retried_task_events():
    """A task whose first agent died; the second attempt emitted a handler event."""
    return [
        ev(100.0, "task.submitted", "t1", task_id="k1", capability="sleep"),
        ev(100.1, "task.attempt", "a1", "t1", task_id="k1", attempt=1, agent="echo.0"),
        ev(100.5, "task.rerouted", "t1", task_id="k1", attempt=1),
        ev(100.6, "task.attempt", "a2", "t1", task_id="k1", attempt=2, agent="echo.1"),
        {**ev(100.7, "sleep.started", "a2", "t1", task_id="k1"), "source": "agent:echo.1"},
        ev(101.0, "task.succeeded", "t1", task_id="k1", attempts=2),
    ]


def find(node, pred):
    if pred(node):
        return node
    for c in node["children"]:
        hit = find(c, pred)
        if hit is not None:
            return hit
    return None


def test_a_retried_task_is_one_tree_with_an_attempt_per_agent():
    evs = retried_task_events()
    random.Random(3).shuffle(evs)  # arrival order is not time order across processes
    tr = build_trace(evs)
    root = tr["root"]
    assert (tr["trace_id"], tr["spans"], tr["events"], tr["adopted"]) == (T, 3, 6, 0)
    assert (root["kind"], root["label"], root["outcome"]) == ("task", "task k1 (sleep)", "succeeded")
    assert root["duration_s"] == 1.0
    a1, a2 = root["children"]
    assert (a1["label"], a1["outcome"], a1["duration_s"]) == ("attempt 1 on echo.0", "crashed", 0.4)
    assert (a2["label"], a2["outcome"], a2["duration_s"]) == ("attempt 2 on echo.1", "succeeded", 0.4)
    assert [e["type"] for e in a2["events"]] == ["task.attempt", "sleep.started"]


def test_render_shows_offsets_durations_outcomes_and_events():
    lines = render(build_trace(retried_task_events()))
    text = "\n".join(lines)
    assert lines[0].startswith(f"trace {T}  3 spans, 6 events")
    assert "task k1 (sleep)  1.000s succeeded" in text
    assert "attempt 1 on echo.0  0.400s crashed" in text
    assert "+   0.600s" in text and "sleep.started [agent:echo.1]" in text
    assert "sleep.started" not in "\n".join(render(build_trace(retried_task_events()), details=False))


def test_attempt_outcomes_follow_the_task_events():
    evs = [ev(1.0, "task.submitted", "t", task_id="k"),
           ev(1.1, "task.attempt", "a1", "t", task_id="k", attempt=1, agent="p.0"),
           ev(1.2, "task.retry_scheduled", "t", task_id="k", attempt=1, error="boom"),
           ev(1.5, "task.attempt", "a2", "t", task_id="k", attempt=2, agent="p.0"),
           ev(1.6, "task.failed", "t", task_id="k", attempts=2),
           ev(2.0, "task.attempt", "a3", "t", task_id="k", attempt=3, agent="p.1")]
    kids = build_trace(evs)["root"]["children"]
    assert [(k["outcome"], k["open"]) for k in kids] == [("failed", False), ("failed", False), (None, True)]


def pipeline_events():
    """Pipeline span P (derived id), step spans S1/S2 known only through their events,
    an auction span closed by an explicit outcome, a resumed task span with no parent."""
    return [
        ev(10.0, "pipeline.submitted", "P", pipeline_id="p1", steps=["a", "b"]),
        ev(10.1, "auction.cfp", "AU", "S1", task_id="ka", auction_id="u1"),
        ev(10.2, "auction.bid", "AU", "S1", auction_id="u1", agent="echo.0", price=2.0),
        ev(10.3, "auction.awarded", "AU", "S1", auction_id="u1", winner="echo.0", outcome="awarded",
           duration_s=0.25),
        ev(10.4, "task.attempt", "A1", "S1", task_id="ka", attempt=1, agent="echo.0"),
        ev(10.9, "task.succeeded", "S1", "P", task_id="ka", attempts=1),
        ev(11.0, "task.attempt", "A2", "S2", task_id="kb", attempt=1, agent="echo.1"),
        ev(11.2, "task.succeeded", "S2", "P", task_id="kb", attempts=1),
        ev(11.3, "ledger.transfer", "L", "S2", amount=3, outcome="committed"),
        ev(11.5, "task.succeeded", "R", None, task_id="kc", attempts=1),
        ev(11.6, "pipeline.succeeded", "P", pipeline_id="p1"),
    ]


def test_a_pipeline_trace_links_steps_auctions_transfers_and_adopts_orphans():
    tr = build_trace(pipeline_events())
    root = tr["root"]
    assert (root["span_id"], root["kind"], root["outcome"]) == ("P", "pipeline", "succeeded")
    assert tr["adopted"] == 1
    adopted = find(root, lambda n: n["span_id"] == "R")
    assert adopted["adopted"] and adopted["parent_span_id"] == "P"
    auction = find(root, lambda n: n["span_id"] == "AU")
    # the span starts duration_s before its closing event, earlier than its first event
    assert (auction["outcome"], auction["label"]) == ("awarded", "auction u1")
    assert auction["start"] == pytest.approx(10.05)
    assert find(root, lambda n: n["span_id"] == "L")["outcome"] == "committed"
    step = find(root, lambda n: n["span_id"] == "S1")
    assert [c["span_id"] for c in step["children"]] == ["AU", "A1"]
    assert "(adopted)" in "\n".join(render(tr))


def test_a_parent_without_events_becomes_a_node_and_others_traces_are_ignored():
    evs = [ev(5.0, "task.attempt", "A", "S", task_id="k", attempt=1, agent="x.0"),
           ev(5.0, "task.attempt", "Z", "S", trace="bbbbbbbbbbbbbbbb", task_id="k", attempt=1),
           {"ts": 5.0, "type": "agent.joined", "system": True}]
    tr = build_trace(evs)
    assert tr["root"]["span_id"] == "S" and tr["root"]["events"] == []
    assert tr["root"]["label"] == "(span with no events of its own)" and tr["events"] == 1
    assert render(build_trace([])) == ["trace None: no events"]


def test_a_cycle_of_bad_parent_ids_still_gives_a_tree():
    tr = build_trace([ev(1.0, "x.a", "A", "B"), ev(2.0, "x.b", "B", "A")])
    assert tr["root"]["span_id"] == "A" and tr["root"]["children"][0]["span_id"] == "B"


@st.composite
def span_forests(draw):
    n = draw(st.integers(1, 25))
    parents = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1))) for i in range(1, n)]
    events = []
    for i, p in enumerate(parents):
        for _ in range(draw(st.integers(1, 3))):
            events.append(ev(draw(st.floats(0, 100)), draw(st.sampled_from(
                ["task.attempt", "vote.ballot", "task.succeeded", "x.y"])), f"s{i}",
                None if p is None else f"s{p}", attempt=1, task_id="k", outcome=None))
    return n, events, draw(st.randoms())


@settings(max_examples=60, deadline=None)
@given(span_forests())
def test_every_span_and_event_lands_in_one_tree(case):
    n, events, rnd = case
    rnd.shuffle(events)
    tr = build_trace(events)
    seen_spans, seen_events = [], 0
    stack = [tr["root"]]
    while stack:
        node = stack.pop()
        seen_spans.append(node["span_id"])
        seen_events += len(node["events"])
        assert node["start"] is None or node["end"] is None or node["start"] <= node["end"]
        stack.extend(node["children"])
    assert sorted(seen_spans) == sorted(f"s{i}" for i in range(n))
    assert seen_events == len(events) == tr["events"]
    assert len(render(tr)) >= n + 1


def test_agora_trace_reads_the_log_when_no_daemon_runs(agora_env):
    import runtime.cli.observe  # noqa: F401  (registers the commands)
    from runtime.cli.main import cli
    log = agora_env / "events.jsonl"
    log.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in retried_task_events()) + b'{"torn')
    runner = CliRunner()
    res = runner.invoke(cli, ["--home", str(agora_env), "trace", "k1"])
    assert res.exit_code == 0, res.output
    assert "attempt 1 on echo.0  0.400s crashed" in res.output
    res = runner.invoke(cli, ["--home", str(agora_env), "trace", "--json", T])
    assert res.exit_code == 0 and orjson.loads(res.output)["trace"]["spans"] == 3
    res = runner.invoke(cli, ["--home", str(agora_env), "trace", "nope"])
    assert res.exit_code == 3 and "no event in the log" in res.output


def test_market_and_consensus_spans_close_with_their_own_events():
    """Event shapes as coordination.services.market and coordination.services.decisions emit them."""
    evs = [ev(1.0, "task.submitted", "T", task_id="k", capability="echo"),
           ev(1.0, "market.cfp", "AU", "T", task_id="k", auction_id="k.a1", invited=["w.0", "w.1"]),
           ev(1.01, "market.bid", "AU", "T", auction_id="k.a1", agent="w.0", price_mc=1000, accepted=True),
           ev(1.02, "market.award", "AU", "T", auction_id="k.a1", agent="w.0", price_mc=1000,
              auction_ms=20.0),
           ev(1.02, "market.contract", "C", "AU", task_id="k", contract_id="k.c1", agent="w.0"),
           ev(1.02, "market.transfer", "X1", "C", contract_id="k.c1", action="hold", amount_mc=1000),
           ev(1.03, "task.attempt", "A1", "T", task_id="k", attempt=1, agent="w.0"),
           ev(1.20, "market.completion", "C", "AU", task_id="k", contract_id="k.c1"),
           ev(1.20, "market.transfer", "X2", "C", contract_id="k.c1", action="pay", amount_mc=1000),
           ev(1.21, "vote.opened", "V", "T", vote_id="v1", method="borda"),
           ev(1.22, "vote.ballot", "V", "T", vote_id="v1", agent="w.1", ballot=["a", "b"]),
           ev(1.25, "vote.outcome", "V", "T", vote_id="v1", winner="a", elapsed_ms=40.0),
           ev(1.26, "consensus.started", "CS", "T", task_id="k", attempt=2, k=3, method="borda"),
           ev(1.40, "consensus.succeeded", "T", task_id="k", attempt=2, winner="a"),
           ev(1.41, "task.succeeded", "T", task_id="k", attempts=2)]
    root = build_trace(evs)["root"]
    spans = {s["span_id"]: s for s in _walk(root)}
    assert (spans["AU"]["label"], spans["AU"]["outcome"]) == ("auction k.a1", "awarded")
    assert (spans["C"]["outcome"], spans["C"]["duration_s"]) == ("completed", pytest.approx(0.18))
    assert [spans[x]["label"] for x in ("X1", "X2")] == [
        "transfer hold 1000 mc (k.c1)", "transfer pay 1000 mc (k.c1)"]
    assert [spans[x]["outcome"] for x in ("X1", "X2")] == ["hold", "pay"]
    assert (spans["V"]["label"], spans["V"]["outcome"]) == ("vote v1", "winner a")
    assert (spans["CS"]["kind"], spans["CS"]["outcome"]) == ("attempt", "succeeded")
    assert spans["CS"]["label"] == "attempt 2: consensus of 3 (borda)"
    assert spans["A1"]["open"]  # its end was never reported: drawn as open, not invented
    text = "\n".join(render(build_trace(evs)))
    assert "market.bid [coordinator] auction_id=k.a1 agent=w.0 price_mc=1000 accepted=True" in text
    assert "vote.ballot [coordinator] vote_id=v1 agent=w.1 ballot=['a', 'b']" in text


def _walk(node):
    yield node
    for c in node["children"]:
        yield from _walk(c)
