"""Per-node vector clocks against the ground truth: random message histories among N
nodes, happens-before computed from the history graph, compare() checked on every pair."""

from __future__ import annotations

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from coordination.clocks import NodeClock, Order, VectorClock, compare
from runtime.errors import InvalidInput


@st.composite
def histories(draw):
    """(n, ops): ops are ("local", node), ("send", node, to) or ("recv", message index);
    a receive takes a message sent earlier and not yet received (delivery in any order)."""
    n = draw(st.integers(2, 4))
    ops, inflight = [], []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["local", "send", "recv"] if inflight else ["local", "send"]))
        if kind == "recv":
            ops.append(("recv", inflight.pop(draw(st.integers(0, len(inflight) - 1)))))
            continue
        node = draw(st.integers(0, n - 1))
        if kind == "local":
            ops.append(("local", node))
        else:
            to = draw(st.integers(0, n - 2))
            ops.append(("send", node, to + (to >= node)))   # never to itself
            inflight.append(sum(1 for op in ops if op[0] == "send") - 1)
    return n, ops


def run(n, ops):
    """Play the history on NodeClocks; return each event's (node, stamp) and the graph
    edges (same-node successor, send -> receive), independently of the clocks."""
    clocks = [NodeClock(f"n{i}") for i in range(n)]
    events, edges, last, sends = [], [], [None] * n, []
    for op in ops:
        if op[0] == "local":
            node, stamp = op[1], clocks[op[1]].tick()
        elif op[0] == "send":
            node, stamp = op[1], clocks[op[1]].send()
            sends.append((len(events), op[2], stamp.to_json()))   # carried as JSON
        else:
            sent_at, node, carried = sends[op[1]]
            stamp = clocks[node].receive(carried)
            edges.append((sent_at, len(events)))
        if last[node] is not None:
            edges.append((last[node], len(events)))
        last[node] = len(events)
        events.append((node, stamp))
    return events, edges


def happens_before(count, edges):
    """Transitive closure of the history graph: reach[e] = events e happened before."""
    succ = {e: [] for e in range(count)}
    for a, b in edges:
        succ[a].append(b)
    reach = {}
    for e in reversed(range(count)):        # every edge goes forward in the list
        reach[e] = set()
        for f in succ[e]:
            reach[e] |= {f} | reach[f]
    return reach


@settings(max_examples=300, deadline=None)
@given(histories())
def test_compare_is_exactly_happens_before_of_the_history(history):
    n, ops = history
    events, edges = run(n, ops)
    reach = happens_before(len(events), edges)
    note(f"events {events}")
    for e, (_, a) in enumerate(events):
        for f, (_, b) in enumerate(events):
            expected = (Order.EQUAL if e == f else Order.BEFORE if f in reach[e]
                        else Order.AFTER if e in reach[f] else Order.CONCURRENT)
            assert compare(a, b) is expected, (e, f, a, b)


def test_two_agents_independent_events_are_concurrent_and_a_message_orders_them():
    a, b = NodeClock("a"), NodeClock("b")
    ea, eb = a.tick(), b.tick()
    assert compare(ea, eb) is Order.CONCURRENT and compare(eb, ea) is Order.CONCURRENT
    stamp = a.send()
    got = b.receive(stamp)
    assert got == VectorClock({"a": 2, "b": 2}) and b.now == got
    assert compare(ea, got) is Order.BEFORE and compare(got, stamp) is Order.AFTER
    assert compare(eb, stamp) is Order.CONCURRENT     # b's first event never reached a
    assert compare(got, got) is Order.EQUAL
    later = a.tick()
    assert compare(later, got) is Order.CONCURRENT    # a has not heard from b


def test_a_node_clock_refuses_bad_stamps_and_names():
    with pytest.raises(InvalidInput):
        NodeClock("")
    with pytest.raises(InvalidInput, match="counter"):
        NodeClock("a").receive({"b": -1})
    with pytest.raises(InvalidInput, match="JSON object"):
        NodeClock("a").receive([1])
    resumed = NodeClock("a", VectorClock({"a": 4, "b": 1}))
    assert resumed.tick() == VectorClock({"a": 5, "b": 1})
