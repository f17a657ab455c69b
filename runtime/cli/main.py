"""The ``agora`` command line: a thin layer over :class:`runtime.wire.client.Client`.

Every command that talks to the daemon goes through the Client; errors come back typed
and leave with the exit code of their class (the table is ``runtime.cli.group.EXIT_CODES``,
printed by ``agora --help``: 1 a task failed, 2 invalid input or config, 3 not found,
69 daemon not running, 75 a wait timed out, ...).  ``--json`` prints the daemon's answer
as JSON instead of a table.
"""

from __future__ import annotations

import sys

import click

# Command modules register themselves on the group (one concept per module).
from runtime.cli import consensus, daemon, data, economy, journal, market, observe, run, scale, tasks  # noqa: F401
from runtime.cli.group import add_global_options, cli

__all__ = ["main", "cli"]

add_global_options(cli)  # once every command module has registered its commands


def main(argv: list[str] | None = None) -> int:
    try:
        rc = cli.main(args=argv, prog_name="agora", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    return rc if isinstance(rc, int) else 0  # click returns an Exit's code without raising


if __name__ == "__main__":
    sys.exit(main())
