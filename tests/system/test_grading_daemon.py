"""Measured quality on a live daemon (issue 18 item 6): real agents, a real grader pool.

Two writers compete for ``write`` under the market: ``sloppy`` is cheaper and claims
quality 0.99 but delivers 0.1; ``honest`` delivers what it claims, 0.9.  Both pools
declare ``[pools.NAME.grader] capability = "grade"``, served by the ``judge`` pool, which
reads each result and scores it.  Tasks go one at a time, so each auction sees both
writers idle.  What must happen, derived from the evaluation weights (price 0.25,
quality 0.15, load 0.4, reputation 0.2):

* tasks 1-5 go to sloppy (cheaper, higher claim); each is graded 0.1 < min_quality 0.5:
  a quality breach, its penalty (10% of the price) paid to the client through the ledger,
  and sloppy's reputation falls;
* from task 6 sloppy has MIN_MEASURED graded deliveries: its claim is capped at its
  measured 0.1 (``market.quality_capped``) and honest wins; its graded 0.9 completes and pays;
* the judge's own contracts are not graded: their quality is unknown (null), not 1.0.
"""

from __future__ import annotations

from click.testing import CliRunner

from coordination.grading import MIN_MEASURED
from tests.support.daemons import config, running_daemon
from tests.support.fake_host import wait_for_event
from tests.support.helpers import eventually

POOLS = """
[pools.honest]
agent = "tests.support.agents_grading:Honest"
size = 1
[pools.honest.capabilities.write]
cost = 1.0
quality = 0.9
[pools.honest.grader]
capability = "grade"
min_quality = 0.5
[pools.sloppy]
agent = "tests.support.agents_grading:Sloppy"
size = 1
[pools.sloppy.capabilities.write]
cost = 0.5
quality = 0.9
[pools.sloppy.grader]
capability = "grade"
min_quality = 0.5
[pools.judge]
agent = "tests.support.agents_grading:Judge"
size = 1
[pools.judge.capabilities.grade]
cost = 0.1
"""


def _settled(c, tid):
    """The contract of ``tid``'s (only) attempt once its grade settled it, else None."""
    for k in c.call("market", limit=1000)["contracts"]:
        if k["task_id"] == tid and k["state"] in ("completed", "breached"):
            return k
    return None


def test_a_grader_pool_scores_results_breaches_the_poor_and_caps_the_inflated_claim(agora_env):
    from runtime.cli import market  # noqa: F401  (registers the commands)
    from runtime.cli.main import cli
    cfg = config(size=1, daemon='allocation = "market"\nregistry = "local"\ndrain_s = 3.0', extra=POOLS)
    with running_daemon(agora_env, cfg) as (c, _):
        c.call("market_config", window_ms=3000)  # every writer's bid is in (rounds close early)
        settled = []
        for i in range(MIN_MEASURED + 2):
            tid = c.call("submit", task={"capability": "write", "input": {"topic": i}})
            rec = c.call("result", id=tid, wait=True, timeout_s=30)
            assert rec["state"] == "succeeded", rec
            settled.append(eventually(lambda tid=tid: _settled(c, tid), f"the grade of task {tid}", timeout=30))
        sloppy, rest = settled[:MIN_MEASURED], settled[MIN_MEASURED:]
        assert [k["agent"] for k in sloppy] == ["sloppy.0"] * MIN_MEASURED, settled
        assert all((k["state"], k["breach"], k["delivered_quality"]) == ("breached", "quality", 0.1)
                   for k in sloppy), sloppy
        assert (rest[0]["agent"], rest[0]["state"], rest[0]["delivered_quality"]) == ("honest.0", "completed", 0.9)

        # each quality breach's penalty went through the ledger, to the client
        penalties = {e["contract_id"]: e["amount"] for e in c.call("ledger", agent="client", limit=1000)["entries"]
                     if e["kind"] == "penalty"}
        assert all(penalties.get(k["id"]) == k["price"] // 10 for k in sloppy), (penalties, sloppy)
        assert c.call("ledger")["conserved"]

        # the claim was capped by the measured record, and that is why honest won task 6
        capped = wait_for_event(c, "market.quality_capped")
        assert (capped["agent"], capped["claimed"], capped["graded"]) == ("sloppy.0", 0.99, MIN_MEASURED)
        assert abs(capped["measured"] - 0.1) < 1e-9

        drops = eventually(lambda: [e for e in c.call("events", type="market.reputation", limit=1000)
                                    if e.get("agent") == "sloppy.0"] or None, "sloppy's reputation events")
        assert drops[0]["after"] < drops[0]["before"] == 0.5, drops[0]  # its first breach: down from the prior
        rep = {r["agent"]: r for r in c.call("reputation", capability="write")}
        assert rep["sloppy.0"]["score"] < 0.5 < rep["honest.0"]["score"], rep
        assert rep["sloppy.0"]["graded"] >= MIN_MEASURED and abs(rep["sloppy.0"]["measured_quality"] - 0.1) < 1e-9
        assert rep["sloppy.0"]["quality"] < 0.5 < rep["honest.0"]["quality"]

        # graders are not graded: the judge's contracts have unknown quality, not 1.0
        judged = [k for k in c.call("market", limit=1000)["contracts"] if k["agent"] == "judge.0"]
        assert judged and all(k["delivered_quality"] is None for k in judged if k["state"] == "completed")
        assert c.call("reputation", capability="grade")[0]["quality"] is None
        graded = wait_for_event(c, "market.graded")
        assert graded["trace_id"] and graded["min_quality"] == 0.5

        runner, home = CliRunner(), ["--home", str(agora_env)]
        res = runner.invoke(cli, [*home, "market", "--limit", "100"])
        assert res.exit_code == 0 and "unknown" in res.output and "0.100" in res.output, res.output
        res = runner.invoke(cli, [*home, "market", "show", sloppy[0]["task_id"]])
        assert res.exit_code == 0 and "breached (quality): delivered quality 0.100, contracted 0.500" \
            in res.output, res.output
        res = runner.invoke(cli, [*home, "reputation"])
        assert res.exit_code == 0 and "unknown" in res.output and "sloppy.0" in res.output, res.output


FUNCTION_POOLS = """
[pools.sloppy]
agent = "tests.support.agents_grading:Sloppy"
size = 1
[pools.sloppy.capabilities.write]
cost = 0.5
[pools.sloppy.grader]
function = "tests.support.graders:by_text"
min_quality = 0.5
"""


def test_a_grader_function_runs_in_the_coordinator_on_each_result(agora_env):
    cfg = config(size=1, daemon='allocation = "market"\nregistry = "local"\ndrain_s = 3.0',
                 extra=FUNCTION_POOLS)
    with running_daemon(agora_env, cfg) as (c, _):
        tid = c.call("submit", task={"capability": "write", "input": {"topic": "x"}})
        assert c.call("result", id=tid, wait=True, timeout_s=30)["state"] == "succeeded"
        k = eventually(lambda: _settled(c, tid), "the grade", timeout=30)
        assert (k["state"], k["breach"], k["delivered_quality"]) == ("breached", "quality", 0.1)
        graded = wait_for_event(c, "market.grading")
        assert graded["grader"] == "function:tests.support.graders:by_text"
