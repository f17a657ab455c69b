"""``agora resources``, ``agora resource-create NAME``, ``agora subcontracts``: the agents'
economy as the daemon sees it (coordination.services.sales serves ``resources`` and
``resource_create``, coordination.services.economy ``subcontracts``).

Prices are shown in credits; ``--json`` prints the daemon's answer unchanged (milli-credits).
"""

from __future__ import annotations

from typing import Any

import click

from runtime.cli.group import call, cli, json_option, out

__all__ = ["resources", "resource_create", "subcontracts"]

SALE_KINDS = ("sealed-first", "vickrey", "english", "dutch")  # coordination.services.sales's


def _credits(mc: Any) -> str:
    return "-" if mc is None else f"{mc / 1000:.3f}"


def _show_resources(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("no resources: declare [resources.NAME] in agora.toml or `agora resource-create NAME`")
    for r in rows:
        click.echo(f"{r['name']}: {len(r['held'])}/{r['quantity']} held  auction {r['auction']}  "
                   f"reserve {_credits(r['reserve_mc'])}  seller {r['seller']}  last token {r['token']}  "
                   f"waiting bids {len(r['waiting'])}")
        for h in r["held"]:
            click.echo(f"  unit {h['unit']}: {h['holder']} (token {h['token']}, paid {_credits(h['price_mc'])})")
        for s in r["sales"]:
            winner = s["winner"]["agent"] if s["winner"] else "-"
            click.echo(f"  sale {s['auction_id']}: {len(s['bids'])} bids, won by {winner} "
                       f"at {_credits(s['price_mc'])}  {s['reason'] or ''}")


@cli.command()
@click.option("--limit", default=5, show_default=True, help="Recent sales to show per resource.")
@json_option
@click.pass_context
def resources(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Resources agents buy in sale auctions: units, holders, waiting bids, recent sales."""
    out(call(ctx, "resources", limit=limit), as_json, _show_resources)


@cli.command("resource-create")
@click.argument("name")
@click.option("--quantity", type=int, default=1, show_default=True, help="Units, each sold in its own auction.")
@click.option("--auction", type=click.Choice(SALE_KINDS), default="vickrey", show_default=True,
              help="The sale format.")
@click.option("--reserve", type=float, default=0.0, show_default=True, help="Lowest price, in credits.")
@json_option
@click.pass_context
def resource_create(ctx: click.Context, name: str, quantity: int, auction: str, reserve: float,
                    as_json: bool) -> None:
    """Create a resource (durable) that agents can bid for with task.acquire(NAME, limit=...)."""
    out(call(ctx, "resource_create", name=name, quantity=quantity, auction=auction, reserve=reserve),
        as_json, lambda r: click.echo(f"created {r['name']}: {r['quantity']} units, {r['auction']}"))


@cli.command()
@click.option("--limit", default=20, show_default=True, help="Subcontracts to show, newest first.")
@json_option
@click.pass_context
def subcontracts(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Subcontracts agents paid for from their balances (budget, paid, state)."""
    def show(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            click.echo(f"{r['child']}  by {r['parent_agent']}  budget {_credits(r['budget_mc'])}  "
                       f"paid {_credits(r['paid_mc'])}  {r['state']}")
    out(call(ctx, "subcontracts", limit=limit), as_json, show)
