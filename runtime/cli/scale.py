"""``agora scale POOL N``, ``agora pools`` and ``agora pools restart NAME``: the scaler's
commands (runtime.scaling.service).

``agora scale`` resizes a pool at once (within its configured min..max); retiring agents
finish their tasks first; on a failed pool it is an UNAVAILABLE error (exit 69).
``agora pools`` shows each pool's state (``running``, or ``failed (retry in N s)`` with its
last exit reasons below the table), size, target, load and the scaler's latest decision.
``agora pools restart NAME`` restarts a failed pool now (exit 69 if it does not start, 5 if
it is running).  All take ``--json``.
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


_COLUMNS = ("pool", "state", "size", "target", "starting", "retiring", "inflight", "queued", "load",
            "arrival_rate", "p95_ms", "cpu_percent", "memory_mib")


def _decision(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    return f"{d['reason']} -> {d['target']} ({d['age_s']:.1f}s ago)"


def _state(r: dict[str, Any]) -> str:
    if r.get("state") != "failed":
        return str(r.get("state", "running"))
    wait = r.get("retry_in_s")
    return "failed (retry in %d s)" % round(wait) if wait is not None else "failed"


def _cell(r: dict[str, Any], column: str) -> str:
    return _state(r) if column == "state" else str(r[column])


def _print_pools(rows: list[dict[str, Any]]) -> None:
    header = (*_COLUMNS, "autoscale", "last decision")
    table = [[_cell(r, c) for c in _COLUMNS] + ["on" if r["autoscale"] else "off",
                                                _decision(r["last_decision"])] for r in rows]
    widths = [max([len(h), *(len(row[i]) for row in table)]) for i, h in enumerate(header)]
    for row in (list(header), *table):
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in rows:
        if r.get("state") == "failed":
            click.echo(f"pool {r['pool']} failed {r.get('failures')} time(s); {r['queued']} queued "
                       f"task(s) wait for it; last exits:")
            for e in r.get("last_exits") or []:
                click.echo(f"  {e.get('child')}: {e.get('reason')}")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pools(ctx: click.Context, as_json: bool) -> None:
    """Pools: state, size, target, load and the scaler's last decision."""
    if ctx.invoked_subcommand is None:
        out(call(ctx, "pools"), as_json, _print_pools)


@pools.command("restart")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def restart(ctx: click.Context, name: str, as_json: bool) -> None:
    """Restart the failed pool NAME now, without waiting for its backoff."""
    out(call(ctx, "pool_restart", pool=name), as_json,
        lambda r: click.echo(f"pool {r['pool']}: {_state(r)}, {r['size']} agent(s)"))
