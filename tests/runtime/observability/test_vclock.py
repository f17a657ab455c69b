"""The vector clocks agora's messages carry (runtime.observability.vclock), against the
ground truth: random message histories among simulated agents and a coordinator, played
on the same LiveClock the runtime uses (stamps carried as JSON bytes, as on the wire),
happens-before computed from the history graph alone, compare() checked on every pair."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

import agora
from coordination.clocks import VectorClock
from runtime.errors import InvalidInput
from runtime.observability.vclock import COORDINATOR, LiveClock, check_stamp, compare


@st.composite
def histories(draw):
    """(nodes, ops) where node 0 is the coordinator and the others agents; ops are
    ("local", node) (task start, task.emit), ("send", node, to) (a task frame, a result, an
    answer) or ("recv", message index): a message sent earlier and not yet received, taken
    in any order (frames to different agents, results of different agents interleave)."""
    n = draw(st.integers(2, 5))
    ops, inflight, sent = [], [], 0
    for _ in range(draw(st.integers(0, 50))):
        kind = draw(st.sampled_from(["local", "send", "recv"] if inflight else ["local", "send"]))
        if kind == "recv":
            ops.append(("recv", inflight.pop(draw(st.integers(0, len(inflight) - 1)))))
            continue
        node = draw(st.integers(0, n - 1))
        if kind == "local":
            ops.append(("local", node))
            continue
        to = draw(st.integers(0, n - 2))
        ops.append(("send", node, to + (to >= node)))  # never to itself
        inflight.append(sent)
        sent += 1
    return [COORDINATOR] + [f"w-{i}" for i in range(1, n)], ops


def play(nodes, ops):
    """Each event's stamp, and the history's edges (same-node successor, send -> receive)
    found from the ops alone, never from the clocks."""
    clocks = [LiveClock(name) for name in nodes]
    stamps, edges, last, sends = [], [], [None] * len(nodes), []
    for op in ops:
        if op[0] == "local":
            node, stamp = op[1], clocks[op[1]].tick()
        elif op[0] == "send":
            node, stamp = op[1], clocks[op[1]].tick()
            sends.append((len(stamps), op[2], orjson.dumps({"vc": stamp})))
        else:
            sent_at, node, wire = sends[op[1]]
            stamp = clocks[node].receive(orjson.loads(wire)["vc"])
            edges.append((sent_at, len(stamps)))
        if last[node] is not None:
            edges.append((last[node], len(stamps)))
        last[node] = len(stamps)
        stamps.append(stamp)
    return stamps, edges


def reachable(count, edges):
    succ = {e: [] for e in range(count)}
    for a, b in edges:
        succ[a].append(b)
    reach = {}
    for e in reversed(range(count)):  # edges go forward in time: successors are done
        reach[e] = set().union(*({s} | reach[s] for s in succ[e])) if succ[e] else set()
    return reach


@settings(max_examples=300, deadline=None)
@given(histories())
def test_compare_is_happens_before(history):
    nodes, ops = history
    note(f"nodes={nodes} ops={ops}")
    stamps, edges = play(nodes, ops)
    reach = reachable(len(stamps), edges)
    for i, a in enumerate(stamps):
        for j, b in enumerate(stamps):
            truth = ("equal" if i == j else "before" if j in reach[i]
                     else "after" if i in reach[j] else "concurrent")
            assert compare(a, b) == truth, (i, j, a, b)
            assert VectorClock(a).compare(VectorClock(b)).value == truth  # the same order


@settings(max_examples=100, deadline=None)
@given(histories())
def test_stamps_hold_only_nodes_that_ticked(history):
    nodes, ops = history
    stamps, _ = play(nodes, ops)
    ticked = {nodes[op[1]] for op in ops if op[0] != "recv"} | {
        nodes[ops_send[2]] for ops_send in ops if ops_send[0] == "send"}  # receivers tick too
    for stamp in stamps:
        assert set(stamp) <= ticked and all(c > 0 for c in stamp.values())


def test_agora_exports_the_runtime_compare():
    assert agora.compare_clocks is compare
    a, b = LiveClock("a"), LiveClock("b")
    sa, sb = a.tick(), b.tick()
    assert compare(sa, sb) == "concurrent"
    assert compare(sa, b.receive(sa)) == "before"
    assert compare(b.now, sa) == "after"
    assert compare(sa, dict(sa)) == "equal"


@pytest.mark.parametrize("bad", [[1], {"a": -1}, {"a": 1.5}, {"": 1}, {"a": True}, {1: 2}, "x"])
def test_bad_stamps_are_refused(bad):
    with pytest.raises(InvalidInput):
        check_stamp(bad)
    with pytest.raises(InvalidInput):
        LiveClock("a").receive(bad)


def test_receive_without_a_stamp_is_a_local_event():
    clock = LiveClock("a")
    assert clock.receive(None) == {"a": 1}
    assert clock.receive({"b": 0, "c": 2}) == {"a": 2, "c": 2}  # zero counters dropped
