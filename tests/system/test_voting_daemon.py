"""Voting with real agents (issue 18, items 3 and 8): a live majority runoff, weights on a
ranked method, unknown weighted voters refused, a fractional quorum, live re-votes,
negotiation with every method.  Expected outcomes come from the pure tallies over the
ballots the agents' own (plain, importable) preference function gives.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from coordination.voting import METHODS, runoff, tally
from runtime.errors import AgoraError
from tests.support.agents_voting import choice
from tests.support.daemons import config, running_daemon
from tests.support.helpers import eventually

pytestmark = pytest.mark.timeout(180)

VOTERS = """
[pools.voters]
agent = "tests.support.agents_voting:Chooser"
size = 3
max = 3
[pools.voters.capabilities.noop]
cost = 1.0
[pools.revoters]
agent = "tests.support.agents_voting:Revoter"
size = 2
max = 2
[pools.revoters.capabilities.noop]
cost = 1.0
"""
NAMES = ["voters.0", "voters.1", "voters.2"]
OPTIONS = ["a", "b", "c"]


def _ballots(options: list[str]) -> dict[str, str]:
    return {n: choice(int(n.rsplit(".", 1)[1]), options) for n in NAMES}


def _vote(c, **args):
    return c.call("vote", question="pick", options=OPTIONS, pool="voters", deadline_s=10, **args)


def _daemon(agora_env):
    return running_daemon(agora_env, config(size=1, extra=VOTERS))


def _wait_voters(c) -> None:
    eventually(lambda: sum(a["pool"] in ("voters", "revoters") for a in c.call("agents")) >= 5,
               "5 voters")


def test_live_runoff_weights_quorum_and_revotes(agora_env):
    with _daemon(agora_env) as (c, _):
        _wait_voters(c)
        # majority among three single choices (1-1-1): the agents are asked a second time
        rec = _vote(c, method="majority")
        first = tally("majority", OPTIONS, _ballots(OPTIONS))
        assert first.runoff_finalists is not None
        expected = runoff(first, _ballots(list(first.runoff_finalists)))
        assert rec["first_round"]["winner"] is None
        assert rec["first_round"]["tally"]["finalists"] == list(first.runoff_finalists)
        assert rec["outcome"]["winner"] == expected.winner
        assert rec["outcome"]["tally"]["second_ballot"] is True
        assert sorted(b["round"] for b in rec["ballots"]) == [1, 1, 1, 2, 2, 2]
        assert all(b["counted"] for b in rec["ballots"])
        assert len(eventually(lambda: [e for e in c.call("events", type="vote.runoff", limit=10)
                                       if e.get("vote_id") == rec["id"]], "the vote.runoff event")) == 1

        # weights on every method that takes them: the tally of the same ballots, same weights
        weights = {"voters.0": 3, "voters.1": 1, "voters.2": 2}
        for method in [m for m in METHODS if m != "majority"]:
            got = _vote(c, method=method, weights=weights)
            want = tally(method, OPTIONS, _ballots(OPTIONS), weights=weights)
            assert (got["outcome"]["winner"], got["outcome"]["tally"]) == (want.winner, want.tally), method
            assert got["weights_by"] == "explicit"
        with pytest.raises(AgoraError, match="voters.9"):
            _vote(c, method="borda", weights={**weights, "voters.9": 1})
        assert _vote(c, method="plurality", weights="reputation")["weights_by"] == "reputation"

        # a quorum as a share of the electorate: 100% of 3 voters is met, 4 ballots is not
        assert _vote(c, method="plurality", quorum="100%")["outcome"]["quorum_met"]
        short = _vote(c, method="plurality", quorum=4)["outcome"]
        assert not short["quorum_met"] and short["winner"] is None

        # re-votes replace the ballot until the deadline: each revoter ends on its 2nd option
        rec = c.call("vote", question="change", options=["x", "y"], pool="revoters",
                     deadline_s=2, until_deadline=True)
        final = {b["voter"]: b["ballot"] for b in rec["ballots"] if b["counted"]}
        assert final == {"revoters.0": "y", "revoters.1": "y"}, rec["ballots"]
        assert rec["outcome"]["winner"] == "y" and rec["outcome"]["ballots_counted"] == 2

        # the CLI: a quorum as a share, weights as pairs, negotiate --method weighted
        import orjson

        import runtime.cli.consensus  # noqa: F401  (registers the commands on the group)
        from runtime.cli.main import cli
        runner, home = CliRunner(), ["--home", str(agora_env)]
        base = [*home, "vote", "-q", "pick", "--option", "a", "--option", "b", "--option", "c",
                "--pool", "voters", "--json"]
        r = runner.invoke(cli, [*base, "--quorum", "60%", "--method", "borda",
                                "--weights", "voters.0=3,voters.1=1,voters.2=2"])
        assert r.exit_code == 0, r.output
        got = orjson.loads(r.output)
        assert got["quorum"] == {"min_ballots": 0, "fraction": 0.6}
        assert got["outcome"]["winner"] == tally("borda", OPTIONS, _ballots(OPTIONS), weights=weights).winner
        r = runner.invoke(cli, [*base, "--quorum", "sixty"])
        assert r.exit_code == 2 and "60%" in r.output
        r = runner.invoke(cli, [*home, "negotiate", "-q", "pick", "--option", "a", "--option", "b",
                                "--pool", "voters", "--method", "weighted", "--rounds", "1"])
        assert r.exit_code == 0, r.output


def test_negotiate_works_with_every_method(agora_env):
    with _daemon(agora_env) as (c, _):
        _wait_voters(c)
        for method in METHODS:
            got = c.call("negotiate", question="pick", options=OPTIONS, method=method,
                         pool="voters", threshold=0.3, max_rounds=2, round_s=5)
            assert got["state"] in ("agreed", "failed"), (method, got)
            first = got["rounds"][0]
            assert first["outcome"] is not None and first["outcome"]["method"] == method
            if method == "majority":  # single choices 1-1-1: the round's runoff ran live
                assert first["first_ballot"]["outcome"]["winner"] is None
                assert first["outcome"]["winner"] is not None
            else:
                assert first["outcome"]["winner"] == tally(method, OPTIONS, _ballots(OPTIONS),
                                                           weights=None if method != "weighted"
                                                           else dict.fromkeys(NAMES, 0.5)).winner
        stake = c.call("negotiate", question="pick", options=OPTIONS, method="borda",
                       pool="voters", threshold=0.3, max_rounds=1, round_s=5, weights="stake",
                       quorum="60%")
        credits = {n: max(0, _balance(c, n)) / 1000 for n in NAMES}
        want = tally("borda", OPTIONS, _ballots(OPTIONS), weights=credits)
        assert stake["rounds"][0]["outcome"]["tally"] == want.tally, credits


def _balance(c, agent: str) -> int:
    try:
        return c.call("ledger", agent=agent)["balance_mc"]
    except AgoraError:  # no account: it stakes nothing
        return 0
