"""CLI commands for collective decisions and coordination primitives::

    agora vote --question Q --option A --option B [--method schulze] [--pool P] [--json]
    agora votes [--id ID] [--json]         recent votes, negotiations and bargains
    agora negotiate --question Q --option A --option B [--threshold 0.6] [--rounds 3]
    agora locks [--json]                   leases and locks: holder, token, waiters
    agora leaders [--json]                 election groups: leader, term, candidates

Thin: each command is one call to the daemon (coordination.services.decisions /
coordination.services.primitives serve them); ``--json`` prints the daemon's answer as it is.
"""

from __future__ import annotations

from typing import Any

import click

from coordination.voting import METHODS
from runtime.cli.group import call, cli, json_option, out

__all__ = ["vote", "votes", "negotiate", "locks", "leaders"]



def _show_outcome(rec: dict[str, Any]) -> None:
    outcome = rec.get("outcome") or {}
    click.echo(f"{rec['id']}  {rec.get('question', '')!r}  method={rec.get('method')}  "
               f"winner={outcome.get('winner')}  support={outcome.get('support', 0):.2f}  "
               f"ballots={outcome.get('ballots_counted')}/{len(rec.get('voters') or [])}")
    for b in rec.get("ballots") or []:
        mark = "" if b.get("counted") else f"  (not counted: {b.get('refused')})"
        click.echo(f"  {b['voter']:<20} {b['ballot']}{mark}")
    if rec.get("missing"):
        click.echo(f"  no answer: {', '.join(rec['missing'])}")


@cli.command()
@click.option("--question", "-q", required=True, help="What is being decided.")
@click.option("--option", "options", multiple=True, required=True, help="An option (repeat).")
@click.option("--method", type=click.Choice(METHODS), default="plurality", show_default=True,
              help="How the ballots are counted.")
@click.option("--pool", default=None, help="Voters: the agents of this pool (default: all agents).")
@click.option("--deadline", "deadline_s", type=float, default=5.0, show_default=True,
              help="Seconds the agents have to vote.")
@click.option("--quorum", default=None, callback=lambda c, p, v: _quorum(v),
              help="Minimum ballots for a valid outcome: a count (3) or a share of the voters (60%).")
@click.option("--weights", default=None, callback=lambda c, p, v: _weights(v),
              help="Weigh the voters: reputation, stake, quality, or explicit a=2,b=1.")
@click.option("--until-deadline", is_flag=True, help="Keep the vote open for re-votes until the deadline.")
@json_option
@click.pass_context
def vote(ctx: click.Context, question: str, options: tuple[str, ...], method: str, pool: str | None,
         deadline_s: float, quorum: Any, weights: Any, until_deadline: bool, as_json: bool) -> None:
    """Ask the agents to vote; prints every ballot and the outcome with its tally."""
    args: dict[str, Any] = {"question": question, "options": list(options), "method": method,
                            "deadline_s": deadline_s}
    if pool is not None:
        args["pool"] = pool
    for name, value in (("quorum", quorum), ("weights", weights)):
        if value is not None:
            args[name] = value
    if until_deadline:
        args["until_deadline"] = True
    out(call(ctx, "vote", timeout=2 * deadline_s + 10, **args), as_json, _show_outcome)


def _quorum(value: str | None) -> Any:
    """``3`` (ballots), ``60%`` or ``0.6`` (a share of the electorate), as the daemon takes it."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    if text.endswith("%"):
        return text
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(f"expected a count (3) or a share (60% or 0.6), got {value!r}") from None


def _weights(value: str | None) -> Any:
    """A source name, or ``voter=weight,...`` pairs."""
    if value is None or "=" not in value:
        return value
    out: dict[str, float] = {}
    for pair in value.split(","):
        name, _, weight = pair.partition("=")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise click.BadParameter(f"expected voter=weight pairs, got {pair!r}") from None
    return out


@cli.command()
@click.option("--id", "vote_id", default=None, help="One vote, in full.")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many records.")
@json_option
@click.pass_context
def votes(ctx: click.Context, vote_id: str | None, limit: int, as_json: bool) -> None:
    """Recent votes, negotiations and bargains (kept in the daemon's memory)."""
    if vote_id is not None:
        out(call(ctx, "votes", id=vote_id), as_json, _show_outcome)
        return

    def human(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["kind"] == "vote":
                winner = (r.get("outcome") or {}).get("winner")
                click.echo(f"{r['id']:<22} vote         {r['state']:<7} {r['method']:<10} "
                           f"winner={winner}  {r['question']!r}")
            elif r["kind"] == "negotiation":
                click.echo(f"{r['id']:<22} negotiation  {r['state']:<7} {r['method']:<10} "
                           f"agreed={r.get('agreed_option')}  rounds={len(r['rounds'])}  "
                           f"{r['question']!r}")
            else:
                click.echo(f"{r['id']:<22} bargain      {r['state']:<7} seller={r['seller']}  "
                           f"price={r.get('price')}  offers={len(r['offers'])}")

    out(call(ctx, "votes", limit=limit), as_json, human)


@cli.command()
@click.option("--question", "-q", required=True, help="What is being negotiated.")
@click.option("--option", "options", multiple=True, required=True, help="An option (repeat).")
@click.option("--method", type=click.Choice(METHODS), default="plurality", show_default=True,
              help="How each round's ballots are counted.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Support the winner needs to agree.")
@click.option("--rounds", "max_rounds", type=int, default=3, show_default=True,
              help="At most this many rounds.")
@click.option("--round-s", "round_s", type=float, default=5.0, show_default=True,
              help="Seconds the agents have to answer each round.")
@click.option("--pool", default=None, help="Negotiators: the agents of this pool (default: all).")
@click.option("--quorum", default=None, callback=lambda c, p, v: _quorum(v),
              help="Minimum ballots per round: a count (3) or a share of the parties (60%).")
@click.option("--weights", default=None, callback=lambda c, p, v: _weights(v),
              help="Weigh the parties: reputation, stake, quality, or explicit a=2,b=1.")
@json_option
@click.pass_context
def negotiate(ctx: click.Context, question: str, options: tuple[str, ...], method: str,
              threshold: float, max_rounds: int, round_s: float, pool: str | None,
              quorum: Any, weights: Any, as_json: bool) -> None:
    """Vote in rounds; between rounds the agents may propose compromises."""
    args: dict[str, Any] = {"question": question, "options": list(options), "method": method,
                            "threshold": threshold, "max_rounds": max_rounds, "round_s": round_s}
    if pool is not None:
        args["pool"] = pool
    for name, value in (("quorum", quorum), ("weights", weights)):
        if value is not None:
            args[name] = value

    def human(r: dict[str, Any]) -> None:
        click.echo(f"{r['id']}  {r['state']}  agreed={r.get('agreed_option')}")
        for rnd in r["rounds"]:
            o = rnd["outcome"] or {}
            click.echo(f"  round {rnd['round']}: options={rnd['options']} winner={o.get('winner')} "
                       f"support={o.get('support', 0):.2f} "
                       f"proposals={[p['name'] for p in rnd['proposals']]}")

    out(call(ctx, "negotiate", timeout=max_rounds * 3 * round_s + 10, **args), as_json, human)


@cli.command()
@json_option
@click.pass_context
def locks(ctx: click.Context, as_json: bool) -> None:
    """Leases and locks held or waited for, with their fencing tokens."""

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no lease is held or waited for")
        for r in rows:
            click.echo(f"{r['resource']:<24} holder={r.get('holder')}  "
                       f"token={r.get('token', '-')}  "
                       f"expires_in={r.get('expires_in', '-')}  waiters={r['waiters']}")

    out(call(ctx, "locks"), as_json, human)


@cli.command()
@json_option
@click.pass_context
def leaders(ctx: click.Context, as_json: bool) -> None:
    """Leader election groups: the leader, its term (a fencing token) and the candidates."""

    def human(rows: list[dict[str, Any]]) -> None:
        if not rows:
            click.echo("no election group")
        for r in rows:
            click.echo(f"{r['group']:<20} leader={r['leader']}  term={r['term']}  "
                       f"candidates={r['candidates']}")

    out(call(ctx, "leaders"), as_json, human)
