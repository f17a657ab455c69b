"""The vote and negotiation drivers on a fake coordinator (fake clock, asks answered by the
test): majority's live runoff, re-votes through ``vote.cast``, rounds held open until the
deadline (issue 18, item 3)."""

from __future__ import annotations

from typing import Any

import pytest

from coordination.negotiation import Negotiation
from coordination.services.decisions import NegotiationRun, Ports, VoteRun
from coordination.voting import BallotBox
from runtime.errors import AgoraError
from runtime.observability.trace_context import TraceContext


class Fake:
    def __init__(self) -> None:
        self.now = 0.0
        self.asked: dict[str, list[Any]] = {}
        self.timers: list[tuple[float, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ports = Ports(self.ask, self.call_later, lambda: self.now, self.emit)

    def ask(self, agent: str, kind: str, request: dict[str, Any], on_answer: Any) -> bool:
        self.asked.setdefault(agent, []).append((kind, request, on_answer))
        return True

    def answer(self, agent: str, value: Any) -> None:
        self.asked[agent][-1][2](agent, {"answer": value})

    def call_later(self, delay: float, fn: Any) -> None:
        self.timers.append((self.now + delay, fn))

    def advance(self, dt: float) -> None:
        self.now += dt
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, fn in due:
            fn()

    def emit(self, type_: str, trace: Any, **fields: Any) -> None:
        self.events.append((type_, fields))


def _run(fake: Fake, voters, method="majority", options=("a", "b", "c"), **kw) -> tuple[VoteRun, list]:
    done: list[VoteRun] = []
    box = BallotBox("q", options, method, voters, deadline=fake.now + 5, clock=lambda: fake.now)
    run = VoteRun(fake.ports, "v1", box, voters, 5.0, TraceContext.new_trace(), done.append, **kw)
    run.start()
    return run, done


def test_majority_without_a_majority_asks_the_finalists_again():
    fake = Fake()
    run, done = _run(fake, ["x", "y", "z"])
    for voter, ballot in (("x", "a"), ("y", "b"), ("z", "c")):
        fake.answer(voter, ballot)
    assert not done and run.first is not None and run.first.runoff_finalists == ("a", "b")
    second = {a: asks[-1][1] for a, asks in fake.asked.items()}
    assert all(r["options"] == ["a", "b"] and r["round"] == 2 and r["runoff"] for r in second.values())
    for voter, ballot in (("x", "a"), ("y", "b"), ("z", "b")):
        fake.answer(voter, ballot)
    assert done and run.outcome.winner == "b" and run.outcome.tally["second_ballot"]
    assert run.to_json()["first_round"]["tally"]["finalists"] == ["a", "b"]
    assert [e[0] for e in fake.events].count("vote.runoff") == 1


def test_a_majority_at_once_needs_no_runoff():
    fake = Fake()
    run, done = _run(fake, ["x", "y", "z"])
    for voter, ballot in (("x", "a"), ("y", "a"), ("z", "c")):
        fake.answer(voter, ballot)
    assert done and run.first is None and run.outcome.winner == "a"


def test_a_revote_replaces_the_ballot_until_the_deadline():
    fake = Fake()
    run, done = _run(fake, ["x", "y"], method="plurality", until_deadline=True)
    fake.answer("x", "a")
    fake.answer("y", "a")
    assert not done                                  # everyone answered: open until the deadline
    assert run.recast("x", "b")["counted"]
    assert run.recast("y", "b")["counted"]
    with pytest.raises(AgoraError, match="not a voter"):
        run.recast("w", "b")
    fake.advance(5.0)
    assert done and run.outcome.winner == "b" and run.box.ballots == {"x": "b", "y": "b"}
    with pytest.raises(AgoraError, match="too late"):
        run.recast("x", "a")


def test_a_recast_before_the_answer_counts_as_the_answer():
    fake = Fake()
    run, done = _run(fake, ["x", "y"], method="plurality")
    run.recast("x", "c")
    fake.answer("x", "a")                            # its pending answer: late, not counted
    fake.answer("y", "c")
    assert done and run.box.ballots == {"x": "c", "y": "c"}


def test_a_negotiation_round_runs_its_runoff_within_the_round():
    fake = Fake()
    done: list[Any] = []
    neg = Negotiation("q", ["a", "b", "c"], "majority", 0.5, 1, electorate=["x", "y", "z"],
                      clock=lambda: fake.now)
    run = NegotiationRun(fake.ports, "n1", neg, ["x", "y", "z"], 5.0, TraceContext.new_trace(),
                         done.append)
    run.start()
    for voter, ballot in (("x", "a"), ("y", "b"), ("z", "c")):
        fake.answer(voter, ballot)
    assert not done and neg.round_number == 1 and neg.box.options == ("a", "b")
    for voter, ballot in (("x", "b"), ("y", "b"), ("z", "b")):
        fake.answer(voter, ballot)
    assert done and neg.state == "agreed" and neg.agreed_option == "b"
    rnd = neg.to_json()["rounds"][0]
    assert rnd["first_ballot"]["outcome"]["winner"] is None and rnd["outcome"]["winner"] == "b"
