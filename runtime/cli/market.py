"""``agora market [show ID]``, ``agora market-config``, ``agora ledger [AGENT]``, ``agora reputation``:
the market as the daemon sees it (coordination.services.market serves the ``market``,
``market_config``, ``ledger`` and ``reputation`` commands).

``agora market-config --auction english`` switches the auction kind of a running daemon
(sealed-first, sealed-second, english, dutch) for auctions opened afterwards; without options
it prints the current knobs.

Prices are shown in credits (the ledger keeps milli-credits: 1 credit = 1000 mc); ``--json``
prints the daemon's answer unchanged, in milli-credits.
"""

from __future__ import annotations

from typing import Any

import click

from runtime.cli.group import CliError, call, cli, json_option, out
from runtime.errors import NotFound

__all__ = ["market", "market_show", "find_auctions", "market_config", "ledger", "reputation"]

AUCTION_KINDS = ("sealed-first", "sealed-second", "english", "dutch")  # coordination.services.market's


def _credits(mc: Any) -> str:
    return "-" if mc is None else f"{mc / 1000:.3f}"


def _show_market(m: dict[str, Any]) -> None:
    cfg = m["config"]
    click.echo(f"allocation {m['allocation']}  auction {cfg.get('auction', 'sealed-first')}  "
               f"window {cfg['window_ms']:g} ms  "
               f"open auctions {m['open_auctions']}  open contracts {m['open_contracts']}")
    click.echo("\nrecent auctions")
    click.echo(f"  {'auction':<28} {'kind':<13} {'bids':>4} {'rounds':>6} {'winner':<16} {'price':>9} "
               f"{'ms':>7}  reason")
    for a in m["auctions"]:
        click.echo(f"  {a['auction_id']:<28} {a.get('kind', '-'):<13} {len(a['bids']):>4} "
                   f"{a.get('rounds', 0):>6} {a['winner'] or '-':<16} "
                   f"{_credits(a['price_mc']):>9} {a['auction_ms']:>7.3f}  {a['reason'] or ''}")
    click.echo("\nrecent contracts")
    click.echo(f"  {'contract':<28} {'agent':<16} {'price':>9}  {'state':<10} {'quality':>8} breach")
    for c in m["contracts"]:
        click.echo(f"  {c['id']:<28} {c['agent']:<16} {_credits(c['price']):>9}  "
                   f"{c['state']:<10} {_quality(c.get('delivered_quality')):>8} {c['breach'] or ''}")


def _quality(q: Any) -> str:
    """A measured quality, or ``unknown`` (issue 18: nothing graded it; never shown as 1.0)."""
    return "unknown" if q is None else f"{q:.3f}"


@cli.group(invoke_without_command=True)
@click.option("--limit", default=20, show_default=True, help="Auctions and contracts to show.")
@json_option
@click.pass_context
def market(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Recent auctions and contracts; `agora market show ID` for one auction's bids."""
    if ctx.invoked_subcommand is None:
        out(call(ctx, "market", limit=limit), as_json, _show_market)


#: ``show`` searches every auction the daemon remembers (``[market] history`` of them).
_ALL_REMEMBERED = 1_000_000


@market.command("show")
@click.argument("ident")
@json_option
@click.pass_context
def market_show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """One auction (by auction id or task id): each bidder's price and score, the winner,
    in credits.  The daemon remembers the latest auctions only ([market] history)."""
    remembered = call(ctx, "market", limit=_ALL_REMEMBERED)
    found = find_auctions(remembered["auctions"], ident)
    for a in found:  # what the award led to: each contract of the task, its delivered quality
        a["contracts"] = [c for c in remembered["contracts"] if c.get("task_id") == a.get("task_id")]
    if not found:
        raise CliError(NotFound(f"no remembered auction has id or task id {ident!r}",
                                hint="`agora market --limit 50` lists the recent auctions; "
                                     "older ones are forgotten ([market] history)"))
    out(found if len(found) > 1 else found[0], as_json,
        lambda d: [_show_auction(a) for a in (d if isinstance(d, list) else [d])])


def find_auctions(auctions: list[dict[str, Any]], ident: str) -> list[dict[str, Any]]:
    """The auctions named ``ident`` (an auction id, or a task's: a retried task has several)."""
    return [a for a in auctions if ident in (a.get("auction_id"), a.get("task_id"))]


def _show_auction(a: dict[str, Any]) -> None:
    click.echo(f"auction {a['auction_id']}  {a.get('kind', '-')}  task {a.get('task_id', '-')} "
               f"({a.get('capability', '-')})  rounds {a.get('rounds', 0)}  "
               f"{a['auction_ms']:.3f} ms")
    click.echo(f"  {'bidder':<20} {'price':>10} {'score':>8}")
    for b in sorted(a["bids"], key=lambda b: (b["bidder"] != a["winner"], b["price"])):
        mark = "  <- winner" if b["bidder"] == a["winner"] else ""
        score = "-" if b.get("score") is None else f"{b['score']:.3f}"
        click.echo(f"  {b['bidder']:<20} {_credits(b['price']):>10} {score:>8}{mark}")
    silent = sorted(set(a.get("invited") or ()) - {b["bidder"] for b in a["bids"]})
    if silent:
        click.echo(f"  no bid from: {', '.join(silent)}")
    click.echo(f"  winner {a['winner'] or 'none'} at {_credits(a['price_mc'])} credits"
               + (f" ({a['reason']})" if a.get("reason") else ""))
    for c in a.get("contracts", ()):
        click.echo(f"  contract {c['id']} {c['agent']} {c['state']}"
                   + (f" ({c['breach']})" if c.get("breach") else "")
                   + f": delivered quality {_quality(c.get('delivered_quality'))}"
                   f", contracted {c.get('min_quality', 0.0):.3f}")


def _show_config(cfg: dict[str, Any]) -> None:
    for key in sorted(cfg):
        value = cfg[key]
        shown = ", ".join(f"{k} {v:.3g}" for k, v in value.items()) if isinstance(value, dict) else value
        click.echo(f"{key:<20} {shown}")


@cli.command("market-config")
@click.option("--auction", type=click.Choice(AUCTION_KINDS), default=None, help="Auction kind.")
@click.option("--window-ms", type=float, default=None, help="Sealed bid window.")
@click.option("--round-ms", type=float, default=None, help="English: time to answer a round.")
@click.option("--tick-ms", type=float, default=None, help="Dutch: clock tick.")
@click.option("--min-decrement", type=float, default=None, help="English: least price step (credits).")
@click.option("--clock-steps", type=int, default=None, help="English/Dutch: clock moves over the range.")
@json_option
@click.pass_context
def market_config(ctx: click.Context, as_json: bool, **knobs: Any) -> None:
    """Show the market's knobs, or change them on the running daemon."""
    args = {k: v for k, v in knobs.items() if v is not None}
    out(call(ctx, "market_config", **args), as_json, _show_config)


def _show_accounts(data: dict[str, Any]) -> None:
    click.echo(f"{'account':<32} {'balance':>16} {'floor':>10}")
    for a in data["accounts"]:
        click.echo(f"{a['name']:<32} {_credits(a['balance_mc']):>16} {_credits(a['floor_mc']):>10}")
    verdict = "conserved" if data["conserved"] else "NOT CONSERVED (audit ledger_transfers)"
    click.echo(f"\nissued {_credits(data['issued_mc'])} credits; {verdict}")


def _show_entries(data: dict[str, Any]) -> None:
    click.echo(f"{data['account']}: balance {_credits(data['balance_mc'])} credits "
               f"({data['count']} entries, last {len(data['entries'])} shown)")
    click.echo(f"  {'#':>6} {'kind':<12} {'amount':>12} {'counterparty':<28} contract / trace")
    for e in data["entries"]:
        click.echo(f"  {e['transfer_id']:>6} {e['kind']:<12} {_credits(e['amount']):>12} "
                   f"{e['counterparty']:<28} {e['contract_id'] or '-'} / {e['trace_id'] or '-'}")


@cli.command()
@click.argument("agent", required=False)
@click.option("--limit", default=50, show_default=True, help="Entries to show for AGENT.")
@json_option
@click.pass_context
def ledger(ctx: click.Context, agent: str | None, limit: int, as_json: bool) -> None:
    """Balances of every account, or AGENT's entries (AGENT: an agent id, or `client`)."""
    if agent is None:
        out(call(ctx, "ledger"), as_json, _show_accounts)
    else:
        out(call(ctx, "ledger", agent=agent, limit=limit), as_json, _show_entries)


def _show_reputation(rows: list[dict[str, Any]]) -> None:
    click.echo(f"{'agent':<20} {'capability':<16} {'score':>6} {'success':>8} {'timely':>7} "
               f"{'quality':>8} {'n':>4}  gated")
    for r in rows:
        click.echo(f"{r['agent']:<20} {r['capability']:<16} {r['score']:>6.3f} {r['success']:>8.3f} "
                   f"{r['timely']:>7.3f} {_quality(r['quality']):>8} {r['observations']:>4}  "
                   f"{'yes' if r['gated'] else ''}")


@cli.command()
@click.option("--capability", default=None, help="Only this capability.")
@json_option
@click.pass_context
def reputation(ctx: click.Context, capability: str | None, as_json: bool) -> None:
    """Reputation per agent and capability (decaying success, timeliness, quality)."""
    args = {} if capability is None else {"capability": capability}
    out(call(ctx, "reputation", **args), as_json, _show_reputation)
