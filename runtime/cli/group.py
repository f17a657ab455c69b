"""What every ``agora`` command shares: the click group, the Client it talks through, and
how an AgoraError leaves (message, hint, the class's exit code).  Command modules import
this; ``runtime.cli.main`` imports the command modules.

``EXIT_CODES`` is the one exit-code table: ``agora --help`` prints it, the README's "Exit
codes" section repeats it (a test compares the two), and every error class's
``exit_code`` (runtime.errors) is one of its rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from runtime.errors import AgoraError
from runtime.wire import paths

__all__ = ["CliError", "client", "call", "out", "guard", "cli", "EXIT_CODES", "EX_FAILED",
           "EX_USAGE", "EX_TEMPFAIL", "exit_table", "version", "json_option",
           "add_global_options"]

#: A task (pipeline, job) ended failed, dead-lettered or cancelled; ``cancel`` had nothing to cancel.
EX_FAILED = 1
#: Bad usage, bad input or an invalid config (click's own usage errors exit 2 as well).
EX_USAGE = 2
#: sysexits.h EX_TEMPFAIL: a wait timed out; the work goes on, ask again later.
EX_TEMPFAIL = 75

#: The exit-code table (code, meaning): the only place it is written down.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "success"),
    (EX_FAILED, "a task, pipeline or job failed (or was cancelled); nothing to cancel"),
    (EX_USAGE, "bad usage, invalid input or invalid config"),
    (3, "not found (unknown task, pipeline, key or file)"),
    (4, "broken: a process of the daemon failed (e.g. an agent failed to start)"),
    (5, "conflict: a daemon already runs on this home; a version moved on"),
    (6, "resource exhausted (shared memory full, mailbox full, budget spent)"),
    (8, "internal error in agora (a bug: the log has the incident)"),
    (69, "unavailable: the daemon is not running or is restarting"),
    (EX_TEMPFAIL, "timed out waiting (the work goes on; ask again later)"),
    (77, "permission denied"),
    (130, "interrupted (Ctrl-C)"),
)


def exit_table() -> str:
    """The table as ``agora --help`` and the README show it."""
    return "\n".join(f"{code:>5}  {meaning}" for code, meaning in EXIT_CODES)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version
    try:
        return dist_version("agora")
    except PackageNotFoundError:  # a checkout run through bin/agora, not installed
        return "unknown (not installed)"


class CliError(click.ClickException):
    """An AgoraError on its way out: message, hint, and the class's exit code."""

    def __init__(self, err: AgoraError) -> None:
        super().__init__(f"{err.code}: {_message(err)}")
        self.err = err
        self.exit_code = err.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        if self.err.hint:
            click.echo(f"hint: {self.err.hint}", err=True)


def _message(err: AgoraError) -> str:
    """The error's facts; "not running" also names the home (the socket path alone is a
    hash of it), so that a wrong --home or $AGORA_HOME shows at once."""
    from runtime.errors import DaemonNotRunning
    ctx = click.get_current_context(silent=True)
    home = (ctx.obj or {}).get("home") if ctx is not None else None
    if isinstance(err, DaemonNotRunning) and home:
        detail = err.message.replace("no agora daemon is listening on ", "socket ")
        return f"no agora daemon is running on home {home} ({detail})"
    return err.message


class _TimedClient:
    """The command's one Client (a poll loop must not open a socket per poll), with this
    caller's default timeout applied to each call."""

    def __init__(self, c: Any, timeout: float) -> None:
        self._c, self._timeout = c, timeout

    def call(self, cmd: str, /, *, timeout: float | None = None, **args: Any) -> Any:
        return self._c.call(cmd, timeout=self._timeout if timeout is None else timeout, **args)


def client(ctx: click.Context, timeout: float = 30.0) -> Any:
    """A Client to the daemon of the command's home, opened once per command and closed
    when the command ends (ctx.with_resource)."""
    from runtime.wire.client import Client
    root = ctx.find_root()
    c = root.meta.get("agora.client")
    if c is None or c.home != Path(ctx.obj["home"]):
        c = root.meta["agora.client"] = root.with_resource(Client(ctx.obj["home"], timeout=timeout))
    return _TimedClient(c, timeout)


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


JSON_HELP = "Print the answer as JSON (the daemon's own fields) instead of a table."

#: ``--json``, the same on every command that prints data.
json_option = click.option("--json", "as_json", is_flag=True, help=JSON_HELP)

HOME_HELP = "State directory (default: $AGORA_HOME or ~/.local/state/agora)."


def _epilog() -> str:
    # \b keeps click from re-wrapping the table's lines
    return "\b\nExit codes:\n" + exit_table()


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=_epilog())
@click.option("--home", envvar="AGORA_HOME", type=click.Path(file_okay=False), help=HOME_HELP)
@click.version_option(version(), "--version", "-V", prog_name="agora",
                      message="%(prog)s %(version)s", help="Print agora's version and exit.")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """agora: cooperating agents on one machine.

    Global options (--home) go before or after the command: `agora --home H status` and
    `agora status --home H` are the same.
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = str(paths.home_dir(home))


def _home_after(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--home`` given after the command: it wins over the group's (and $AGORA_HOME)."""
    if value is not None:
        ctx.ensure_object(dict)
        ctx.obj["home"] = str(paths.home_dir(value))


def add_global_options(group: click.Group) -> None:
    """Give every command of ``group`` (recursively) the global ``--home`` as well, so a
    global option works after the subcommand too, as users of systemctl expect."""
    for cmd in group.commands.values():
        for p in cmd.params:  # a --json declared without json_option still says what it does
            if isinstance(p, click.Option) and p.name == "as_json" and not p.help:
                p.help = JSON_HELP
        if not any(p.name == "home" for p in cmd.params):
            cmd.params.append(click.Option(["--home"], type=click.Path(file_okay=False),
                                           expose_value=False, is_eager=True,
                                           callback=_home_after, help=HOME_HELP))
        if isinstance(cmd, click.Group):
            add_global_options(cmd)

