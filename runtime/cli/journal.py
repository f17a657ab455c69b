"""``agora journal stats``: how big the journal is and what it holds.

Asks the daemon (``journal_stats``); with no daemon running it reads the journal file of
the home directly (SQLite's WAL lets a reader in beside a writer, and here there is none).
"""

from __future__ import annotations

from typing import Any

import click

from runtime.cli.group import CliError, call, cli, json_option, out
from runtime.errors import AgoraError, Unavailable

__all__ = ["journal", "stats"]


@cli.group()
def journal() -> None:
    """The durable journal of tasks, attempts and pipelines."""


def _read_local(home: str) -> dict[str, Any]:
    from runtime.tasks.journal import Journal
    try:
        with Journal(home) as j:
            return j.stats()
    except AgoraError as e:
        raise CliError(e) from e


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def _human(s: dict[str, Any]) -> None:
    click.echo(f"journal   {s['path']}")
    click.echo(f"file      {_mib(s['file_bytes'])}  (wal {_mib(s['wal_bytes'])}; "
               f"{s['pages']} pages of {s['page_size']} B, {s['free_pages']} free for reuse)")
    click.echo("rows      " + "  ".join(f"{t}={n}" for t, n in sorted(s["rows"].items())))
    click.echo("tasks     " + "  ".join(f"{k}={v}" for k, v in s["tasks_by_state"].items() if v))
    if s.get("retention"):
        click.echo(f"retention {s['retention']}")


@journal.command()
@json_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """File size, rows per table, tasks per state, retention."""
    try:
        data = call(ctx, "journal_stats")
    except CliError as e:
        if not isinstance(e.err, Unavailable):
            raise
        data = _read_local(ctx.obj["home"])
    out(data, as_json, _human)
