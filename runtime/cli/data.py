"""``agora context ...`` and ``agora registry ...``: shared context and the registry.
"""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from runtime.cli.group import call, cli, json_option, out

__all__ = ['context', 'registry']


@cli.group()
def context() -> None:
    """Shared read-only context (numpy arrays and blobs in shared memory)."""


@context.command("put")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
@click.pass_context
def context_put(ctx: click.Context, name: str, file: str, as_json: bool) -> None:
    """Publish FILE (.npy -> array, else bytes) as a new version of NAME."""
    info = call(ctx, "context_put", name=name, path=str(Path(file).resolve()))
    out(info, as_json, lambda i: click.echo(f"{i['name']} v{i['version']} {i['nbytes']} bytes"))


@context.command("ls")
@json_option
@click.pass_context
def context_ls(ctx: click.Context, as_json: bool) -> None:
    """Published contexts."""
    out(call(ctx, "context_ls"), as_json, lambda rows: [click.echo(
        f"{r['name']:<20} v{r['version']:<4} {r['kind']:<6} {r['nbytes']:>12} bytes") for r in rows])


@context.command("rm")
@click.argument("name")
@json_option
@click.pass_context
def context_rm(ctx: click.Context, name: str, as_json: bool) -> None:
    """Unpublish NAME (agents holding a view keep it until they let go)."""
    out(call(ctx, "context_rm", name=name), as_json, lambda r: click.echo(f"removed {r['removed']}"))


@cli.group()
def registry() -> None:
    """The registry: who is alive and what each can do."""


@registry.command("ls")
@click.option("--capability", default=None, help="Only entries offering this capability.")
@click.option("--where", multiple=True, help="A filter such as 'load<0.5' or 'pool=echo'.")
@json_option
@click.pass_context
def registry_ls(ctx: click.Context, capability: str | None, where: tuple[str, ...], as_json: bool) -> None:
    """Entries, optionally offering a capability and matching filters."""
    rows = call(ctx, "registry_ls", capability=capability, where=list(where))
    out(rows, as_json, lambda rs: [click.echo(
        f"{r['key']:<24} owner={r['owner']:<8} v{r['version']:<4} {','.join(r['capabilities'])} "
        f"{orjson.dumps(r['metadata']).decode()}") for r in rs])


@registry.command("get")
@click.argument("key")
@json_option
@click.pass_context
def registry_get(ctx: click.Context, key: str, as_json: bool) -> None:
    """One entry (always printed as JSON: its metadata is free-form)."""
    out(call(ctx, "registry_get", key=key), True)


