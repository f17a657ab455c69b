"""``agora market show ID`` against a daemon allocating by market: per auction, each
bidder's price and score and the winner, in credits (issue 17, item 5)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from runtime.cli.main import cli
from tests.support.daemons import config, running_daemon

POOLS = """
[pools.fast]
agent = "tests.support.agents_market:Fast"
size = 2
[pools.fast.capabilities.work]
cost = 1.0
quality = 0.9
"""


def test_market_show_prints_each_bid_and_the_winner_in_credits(agora_env):
    cfg = config(size=1, daemon='allocation = "market"\nregistry = "local"\ndrain_s = 3.0', extra=POOLS)
    with running_daemon(agora_env, cfg) as (c, _):
        c.call("market_config", window_ms=200)  # a loaded machine still answers in time
        tid = c.call("submit", task={"capability": "work", "input": {"n": 1}})
        assert c.call("result", id=tid, wait=True, timeout_s=20)["state"] == "succeeded"
        auction = next(a for a in c.call("market", limit=100)["auctions"] if a["task_id"] == tid)
        assert auction["bids"] and auction["winner"]
        home = ["--home", str(agora_env)]
        for ident in (auction["auction_id"], tid):
            res = CliRunner().invoke(cli, ["market", "show", ident, *home])
            assert res.exit_code == 0, res.output
            assert f"auction {auction['auction_id']}" in res.output
            for b in auction["bids"]:
                assert f"{b['bidder']:<20} {b['price'] / 1000:>10.3f}" in res.output
            assert f"winner {auction['winner']} at {auction['price_mc'] / 1000:.3f} credits" in res.output
            assert "<- winner" in res.output
        res = CliRunner().invoke(cli, ["market", "show", tid, "--json", *home])
        assert res.exit_code == 0 and json.loads(res.stdout)["auction_id"] == auction["auction_id"]
        res = CliRunner().invoke(cli, ["market", "show", "no-such-auction", *home])
        assert res.exit_code == 3 and "no remembered auction" in res.stderr
        res = CliRunner().invoke(cli, ["market", "--limit", "5", *home])  # the overview still works
        assert res.exit_code == 0 and "recent auctions" in res.output
