"""What every ``agora`` command shares: the click group, the Client it talks through, and
how an AgoraError leaves (message, hint, the class's exit code).  Command modules import
this; ``runtime.cli.main`` imports the command modules.
"""

from __future__ import annotations

from typing import Any

import click
import orjson

from runtime.errors import AgoraError
from runtime.wire import paths

__all__ = ["CliError", "client", "call", "out", "guard", "cli"]


class CliError(click.ClickException):
    """An AgoraError on its way out: message, hint, and the class's exit code."""

    def __init__(self, err: AgoraError) -> None:
        super().__init__(f"{err.code}: {err.message}")
        self.err = err
        self.exit_code = err.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        if self.err.hint:
            click.echo(f"hint: {self.err.hint}", err=True)


def client(ctx: click.Context, timeout: float = 30.0) -> Any:
    from runtime.wire.client import Client
    return ctx.with_resource(Client(ctx.obj["home"], timeout=timeout))


def call(ctx: click.Context, cmd: str, timeout: float = 30.0, **args: Any) -> Any:
    try:
        return client(ctx, timeout).call(cmd, **args)
    except AgoraError as e:
        raise CliError(e) from e


def out(data: Any, as_json: bool, human: Any = None) -> None:
    if as_json or human is None:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        human(data)



def guard(fn: Any, *a: Any, **kw: Any) -> Any:
    try:
        return fn(*a, **kw)
    except AgoraError as e:
        raise CliError(e) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="AGORA_HOME", type=click.Path(file_okay=False),
              help="State directory (default: $AGORA_HOME or ~/.local/state/agora).")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """agora: cooperating agents on one machine."""
    ctx.ensure_object(dict)
    ctx.obj["home"] = str(paths.home_dir(home))

