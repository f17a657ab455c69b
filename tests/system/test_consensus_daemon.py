"""Votes, negotiations, bargaining and consensus pipeline steps with real agents.

The drivers are first checked on a fake coordinator (fake clock, asks answered by the
test), then end to end against a daemon whose ``Guesser`` agents answer through their
real ``vote``/``propose``/``bid`` hooks; the expected outcomes are computed with the same
pure tally functions and the agents' own ranking functions.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from coordination.negotiation import Negotiation
from coordination.services.decisions import AskRound, Ports, VoteRun
from coordination.voting import BallotBox, tally
from runtime.observability.trace_context import TraceContext
from tests.support.agents_consensus import Guesser, estimate, rank_candidates, rank_options
from tests.support.daemons import config, running_daemon

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------- fake coordinator

class FakeCoord:
    """Timers on a fake clock; asks recorded for the test to answer."""

    def __init__(self, connected: set[str]) -> None:
        self.now = 0.0
        self.connected = connected
        self.asked: dict[str, Any] = {}
        self.timers: list[tuple[float, Any]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ports = Ports(self.ask, self.call_later, lambda: self.now, self.emit)

    def ask(self, agent: str, kind: str, request: dict[str, Any], on_answer: Any) -> bool:
        if agent not in self.connected:
            return False
        self.asked[agent] = (kind, request, on_answer)
        return True

    def answer(self, agent: str, value: Any, error: str | None = None) -> None:
        msg = {"answer": value, **({"error": error} if error else {})}
        self.asked[agent][2](agent, msg)

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


def _vote(fake: FakeCoord, voters: list[str], method: str = "plurality") -> tuple[VoteRun, list]:
    done: list[VoteRun] = []
    box = BallotBox("q", ["a", "b", "c"], method, voters, deadline=fake.now + 5,
                    clock=lambda: fake.now)
    run = VoteRun(fake.ports, "v1", box, voters, 5.0, TraceContext.new_trace(), done.append)
    run.start()
    return run, done


def test_vote_closes_early_when_every_voter_answered():
    fake = FakeCoord({"x", "y", "z"})
    run, done = _vote(fake, ["x", "y", "z"])
    fake.answer("x", "a")
    fake.answer("y", None)  # abstains: a blank ballot
    assert not done
    fake.answer("z", "a")
    assert done and run.outcome.winner == "a" and run.outcome.ballots_counted == 3
    assert [e[0] for e in fake.events].count("vote.ballot") == 3
    assert fake.events[-1][0] == "vote.outcome" and fake.events[-1][1]["missing"] == []


def test_vote_deadline_bad_ballots_late_answers_and_deaths():
    fake = FakeCoord({"x", "y", "z"})  # "w" is not connected: never waited for
    run, done = _vote(fake, ["w", "x", "y", "z"])
    fake.answer("x", "nonsense")           # refused, recorded
    fake.answer("y", "b", error="ValueError: boom")
    fake.advance(5.0)
    assert done and run.outcome.winner is None and run.missing == ["z"]
    fake.answer("z", "a")                  # too late: ignored
    assert run.outcome.ballots_counted == 0
    refused = [e[1] for e in fake.events if e[0] == "vote.ballot"]
    assert [r["counted"] for r in refused] == [False, False] and "unknown" in refused[0]["refused"]
    fake2 = FakeCoord({"x", "y"})
    run2, done2 = _vote(fake2, ["x", "y"])
    fake2.answer("x", "c")
    run2.round.agent_died("y")             # a dead voter no longer holds the vote open
    assert done2 and run2.outcome.winner == "c"


def test_ask_round_is_done_once():
    fake = FakeCoord({"a"})
    seen: list[Any] = []
    r = AskRound(fake.ports, "vote", {}, ["a"], 1.0, lambda a, m: seen.append(a), seen.append)
    r.start()
    fake.answer("a", 1)
    fake.advance(2.0)
    assert seen == ["a", []]


# ---------------------------------------------------------------------------- the daemon

GUESSERS = """
[pools.guessers]
agent = "tests.support.agents_consensus:Guesser"
size = 3
max = 4
[pools.guessers.capabilities.guess]
cost = 2.0
quality = 0.8
[pools.abstainers]
agent = "tests.support.agents_consensus:Abstainer"
size = 2
[pools.abstainers.capabilities.opine]
cost = 1.0
"""


def _index(agent_id: str) -> int:
    return int(agent_id.rsplit(".", 1)[1])


def _wait_agents(c: Any, pool: str, n: int) -> list[str]:
    deadline = time.monotonic() + 30
    while True:
        ids = sorted(a["id"] for a in c.call("agents") if a["pool"] == pool)
        if len(ids) >= n:
            return ids
        assert time.monotonic() < deadline, f"only {ids} of pool {pool} joined"
        time.sleep(0.02)


def _simulate_negotiation(voters: list[str], options: list[str], threshold: float,
                          rounds: int) -> Any:
    """The same negotiation played locally with the agents' own hooks."""
    agents = {v: Guesser() for v in voters}
    for v, a in agents.items():
        a.ctx = SimpleNamespace(index=_index(v), declared={})
    neg = Negotiation("q", options, "plurality", threshold, rounds, electorate=voters)
    while neg.state not in ("agreed", "failed"):
        for v in voters:
            neg.cast(v, agents[v].vote(neg.request()))
        neg.end_round()
        if neg.state == "proposing":
            for v in voters:
                neg.propose_from(v, agents[v].propose(neg.request()))
            neg.next_round()
    return neg


def test_votes_negotiation_bargain_and_consensus_step(agora_env):
    cfg = config(size=1, daemon="drain_s = 3.0", extra=GUESSERS)
    with running_daemon(agora_env, cfg) as (c, _):
        voters = _wait_agents(c, "guessers", 3)

        # a vote: every ballot recorded, the outcome is the pure tally of the agents' rankings
        options = ["3", "8", "14", "x"]
        got = c.call("vote", question="how many?", options=options, method="schulze",
                     pool="guessers", deadline_s=10)
        rankings = {v: rank_options(options, estimate(_index(v))) for v in voters}
        expected = tally("schulze", options, rankings)
        assert got["outcome"]["winner"] == expected.winner
        assert got["outcome"]["tally"] == expected.to_json()["tally"]
        assert sorted(b["voter"] for b in got["ballots"]) == voters and got["missing"] == []
        listed = c.call("votes")
        assert listed[0]["id"] == got["id"] and listed[0]["state"] == "closed"

        # negotiation: rounds with compromise proposals, as the local simulation plays it
        neg = c.call("negotiate", question="q", options=["4", "20"], threshold=0.9, max_rounds=3,
                     pool="guessers", round_s=10)
        local = _simulate_negotiation(voters, ["4", "20"], 0.9, 3)
        assert neg["state"] == local.state and len(neg["rounds"]) == local.round_number >= 2
        assert [r["outcome"]["winner"] for r in neg["rounds"]] == \
            [r["outcome"]["winner"] for r in local.to_json()["rounds"]]
        assert neg["compromises"] == local.to_json()["compromises"] and neg["compromises"]

        # bilateral bargaining with one agent (its bid() hook concedes from 2x cost)
        deal = c.call("bargain", agent=voters[0], capability="guess", initial=1.0, reservation=5.0,
                      max_rounds=8, move_s=10)
        assert deal["state"] == "deal" and 2.0 <= deal["price"] <= 5.0
        roles = [o["role"] for o in deal["offers"]]
        assert roles == (["buyer", "seller"] * 8)[:len(roles)]

        # a consensus step: 3 agents guess, the same 3 rank the candidates, borda decides
        p = c.call("pipeline", spec={"name": "guess", "steps": [
            {"id": "g", "capability": "guess", "input": {"base": 10},
             "consensus": {"k": 3, "method": "borda"}},
            {"id": "e", "capability": "echo", "input": {"$ref": "g.output.value"}}]})
        done = c.call("pipeline_result", id=p["id"], wait=True, timeout_s=30)
        step = {s["step_id"]: s for s in done["steps"]}
        assert done["state"] == "succeeded", done
        res = step["g"]["result"]
        cands = {cd["label"]: cd["output"] for cd in res["candidates"]}
        assert [cd["agent"] for cd in res["candidates"]] == voters
        rankings = {v: rank_candidates(cands, estimate(_index(v))) for v in voters}
        want = tally("borda", list(cands), rankings)
        assert res["winner"] == want.winner and res["method"] == "borda"
        assert res["tally"] == want.tally and res["output"] == cands[want.winner]
        assert step["e"]["result"]["echo"] == res["output"]["value"]
        assert step["g"]["attempts"] == 1

        # one of the k agents dies mid-candidate: the others' candidates are voted on
        p = c.call("pipeline", spec={"name": "guess", "steps": [
            {"id": "g", "capability": "guess", "input": {"base": 10, "die_index": 1},
             "consensus": {"k": 3, "method": "borda"}}]})
        done = c.call("pipeline_result", id=p["id"], wait=True, timeout_s=30)
        res = done["steps"][0]["result"]
        assert done["state"] == "succeeded", done
        assert [cd["agent"] for cd in res["candidates"]] == [voters[0], voters[2]]
        assert res["failed"][voters[1]]["code"] == "AGENT_DIED" and res["k_run"] == 3
        # guessers.0 ranks 10 first, guessers.2 ranks 8 first, a restarted guessers.1 (if it
        # rejoined in time to vote) ranks 10 first: c1 wins either way (ties: lexicographic)
        assert res["winner"] == "c1" and res["output"]["value"] == estimate(0)

        # agents with no opinion (the default vote() abstains): no winner, a clear failure
        _wait_agents(c, "abstainers", 2)
        p = c.call("pipeline", spec={"name": "mute", "steps": [
            {"id": "o", "capability": "opine", "input": {}, "options": {"max_attempts": 1},
             "consensus": {"k": 2, "method": "plurality"}}]})
        mute = c.call("pipeline_result", id=p["id"], wait=True, timeout_s=30)
        err = mute["steps"][0]["error"]
        assert mute["steps"][0]["state"] == "failed" and err["code"] == "CONSENSUS_NO_WINNER", mute
        assert "implement vote()" in err["hint"]

        # the CLI over the same daemon
        import runtime.cli.consensus  # noqa: F401  (registers the commands on the group)
        from runtime.cli.main import cli
        runner = CliRunner()
        home = ["--home", str(agora_env)]
        r = runner.invoke(cli, [*home, "vote", "--question", "pick", "--option", "9",
                                "--option", "30", "--pool", "guessers", "--method", "borda",
                                "--json"])
        assert r.exit_code == 0, r.output
        assert '"winner": "9"' in r.output
        r = runner.invoke(cli, ["--home", str(agora_env), "votes"])
        assert r.exit_code == 0 and "pick" in r.output and "schulze" in r.output
        for cmd in ("locks", "leaders"):
            r = runner.invoke(cli, ["--home", str(agora_env), cmd, "--json"])
            assert r.exit_code == 0 and r.output.strip() == "[]", r.output
        r = runner.invoke(cli, [*home, "vote", "--question", "q", "--option", "a", "--option", "a"])
        assert r.exit_code == 2 and "twice" in r.output
