"""``agora scale POOL N`` and ``agora pools``: the scaler's commands (runtime.scaling.service).

``agora scale`` resizes a pool at once (within its configured min..max); retiring agents
finish their tasks first.  ``agora pools`` shows each pool's size, target, load and the
scaler's latest decision.  Both take ``--json``.
"""

from __future__ import annotations

from typing import Any

import click

from runtime.cli.group import call, cli, json_option, out

__all__ = ["scale", "pools"]


@cli.command()
@click.argument("pool")
@click.argument("size", type=int)
@json_option
@click.pass_context
def scale(ctx: click.Context, pool: str, size: int, as_json: bool) -> None:
    """Resize POOL to SIZE agents now (agents leaving finish their tasks first)."""
    res = call(ctx, "scale", pool=pool, size=size)
    out(res, as_json, lambda r: click.echo(f"pool {r['pool']}: {r['from']} -> {r['to']} agents"))


_COLUMNS = ("pool", "size", "target", "starting", "retiring", "inflight", "queued", "load",
            "arrival_rate", "p95_ms", "cpu_percent", "memory_mib")


def _decision(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    return f"{d['reason']} -> {d['target']} ({d['age_s']:.1f}s ago)"


def _print_pools(rows: list[dict[str, Any]]) -> None:
    header = (*_COLUMNS, "autoscale", "last decision")
    table = [[str(r[c]) for c in _COLUMNS] + ["on" if r["autoscale"] else "off",
                                                  _decision(r["last_decision"])] for r in rows]
    widths = [max([len(h), *(len(row[i]) for row in table)]) for i, h in enumerate(header)]
    for row in (list(header), *table):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pools(ctx: click.Context, as_json: bool) -> None:
    """Pools: size, target, load and the scaler's last decision."""
    out(call(ctx, "pools"), as_json, _print_pools)
