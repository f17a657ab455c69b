"""``agora market``, ``agora ledger [AGENT]``, ``agora reputation``: the market as the daemon
sees it (coordination.market serves the ``market``, ``ledger`` and ``reputation`` commands).

Prices are shown in credits (the ledger keeps milli-credits: 1 credit = 1000 mc); ``--json``
prints the daemon's answer unchanged, in milli-credits.
"""

from __future__ import annotations

from typing import Any

import click

from runtime.cli import call, cli, out

__all__ = ["market", "ledger", "reputation"]


def _credits(mc: Any) -> str:
    return "-" if mc is None else f"{mc / 1000:.3f}"


def _show_market(m: dict[str, Any]) -> None:
    cfg = m["config"]
    click.echo(f"allocation {m['allocation']}  window {cfg['window_ms']:g} ms  "
               f"open auctions {m['open_auctions']}  open contracts {m['open_contracts']}")
    click.echo("\nrecent auctions")
    click.echo(f"  {'auction':<28} {'bids':>4} {'winner':<16} {'price':>9} {'ms':>7}  reason")
    for a in m["auctions"]:
        click.echo(f"  {a['auction_id']:<28} {len(a['bids']):>4} {a['winner'] or '-':<16} "
                   f"{_credits(a['price_mc']):>9} {a['auction_ms']:>7.3f}  {a['reason'] or ''}")
    click.echo("\nrecent contracts")
    click.echo(f"  {'contract':<28} {'agent':<16} {'price':>9}  {'state':<10} breach")
    for c in m["contracts"]:
        click.echo(f"  {c['id']:<28} {c['agent']:<16} {_credits(c['price']):>9}  "
                   f"{c['state']:<10} {c['breach'] or ''}")


@cli.command()
@click.option("--limit", default=20, show_default=True, help="Auctions and contracts to show.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def market(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Recent auctions and contracts."""
    out(call(ctx, "market", limit=limit), as_json, _show_market)


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
@click.option("--json", "as_json", is_flag=True)
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
                   f"{r['timely']:>7.3f} {r['quality']:>8.3f} {r['observations']:>4}  "
                   f"{'yes' if r['gated'] else ''}")


@cli.command()
@click.option("--capability", default=None, help="Only this capability.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def reputation(ctx: click.Context, capability: str | None, as_json: bool) -> None:
    """Reputation per agent and capability (decaying success, timeliness, quality)."""
    args = {} if capability is None else {"capability": capability}
    out(call(ctx, "reputation", **args), as_json, _show_reputation)
