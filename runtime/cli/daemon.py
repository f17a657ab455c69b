"""``agora up``, ``down``, ``status``, ``ps``, ``agents``: the daemon and its processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from runtime.cli.group import CliError, EXIT_CODES, call, cli, client, guard, json_option, out
from runtime.config import ALLOCATIONS
from runtime.errors import AgoraError, DaemonNotRunning
from runtime.registry.model import BACKENDS

__all__ = ['up', 'start_detached', 'StartFailed', 'log_tail', 'down', 'status', 'ps', 'agents']


# -- daemon ------------------------------------------------------------------------------

@cli.command()
@click.option("--foreground", is_flag=True, help="Stay attached (logs to stderr).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="agora.toml to run with (default: HOME/agora.toml, else the defaults).")
@click.option("--registry", type=click.Choice(BACKENDS), default=None,
              help="Registry backend (overrides the config's).")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=None,
              help="How tasks find agents (overrides the config's).")
@click.option("--wait", "wait_s", default=30.0, show_default=True, help="Seconds to wait for start-up.")
@click.option("--replace", is_flag=True, help="If a daemon runs on this home, stop it first "
              "(graceful down), then start with this config.")
@json_option
@click.pass_context
def up(ctx: click.Context, foreground: bool, config_file: str | None, registry: str | None,
       allocation: str | None, wait_s: float, replace: bool, as_json: bool) -> None:
    """Start the daemon (detached unless --foreground).

    A daemon already running on the home is an error (exit code 5, naming its pid and its
    config) unless ``--replace``: a config must never silently not apply.  Two ``up``s
    racing on one home leave one daemon (the pid file's flock); the loser says which.
    """
    home = ctx.obj["home"]
    guard(_make_room, Path(home), replace, wait_s)
    if foreground:
        from runtime.daemon.root import run_daemon
        raise click.exceptions.Exit(guard(run_daemon, home, config_file, registry=registry,
                                           allocation=allocation))
    proc = guard(start_detached, home, config_file, registry, allocation, wait_s)
    proc.returncode = 0  # detached on purpose: this process will not wait for it
    out({"pid": proc.pid, "home": home, "log": str(Path(home) / "agora.log")}, as_json,
        lambda d: click.echo(f"agora daemon up (pid {d['pid']}, home {d['home']})"))


def _make_room(home: Path, replace: bool, wait_s: float) -> None:
    """Refuse to start over a running daemon, or (``--replace``) stop it first, bounded."""
    from runtime.daemon.root import already_running, running, wait_gone
    from runtime.wire.client import Client
    found = running(home)
    if found is None:
        return
    pid, config = found
    if not replace:
        raise already_running(home, pid, config)
    try:
        with Client(str(home), timeout=5.0) as c:
            c.call("down")
    except AgoraError:  # no coordinator to ask (it is restarting): the root takes SIGTERM
        os.kill(pid, 15)
    wait_gone(home, pid, time.monotonic() + max(wait_s, 60.0))


def _lost_the_race(home: str, proc: subprocess.Popen) -> None:
    """The daemon that answered is not ours (another ``up`` won the pid lock): say whose."""
    from runtime.daemon.root import already_running, running
    found = running(Path(home))
    if found is not None and found[0] != proc.pid:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        raise already_running(Path(home), *found)


def start_detached(home: str, config_file: str | None, registry: str | None,
                   allocation: str | None, wait_s: float) -> subprocess.Popen:
    """Start ``agora up --foreground`` in its own session; return once it serves.

    A daemon that fails to start raises :class:`StartFailed`: its exit code (2 for an
    invalid config) and the lines it wrote to its log during this start-up."""
    from runtime.daemon.root import wait_until_up
    from runtime.wire.client import Client
    Path(home).mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = Path(home) / "agora.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = _spawn_foreground(home, config_file, registry, allocation, log_path)
    try:
        wait_until_up(lambda: Client(home, timeout=2.0), time.monotonic() + wait_s, proc)
    except AgoraError as e:
        _lost_the_race(home, proc)
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        raise StartFailed(e, proc.returncode, log_path, offset) from e
    _lost_the_race(home, proc)
    return proc


def _spawn_foreground(home: str, config_file: str | None, registry: str | None,
                      allocation: str | None, log_path: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "runtime.cli.main", "--home", home, "up", "--foreground"]
    for flag, val in (("--config", config_file), ("--registry", registry), ("--allocation", allocation)):
        if val:
            argv += [flag, str(val)]
    # the daemon imports this very agora, installed or not (bin/agora from a checkout);
    # user agent modules resolve from the caller's directory and path, as they would here
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH", ""), os.getcwd()) if p)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=os.getcwd(), env=env)


#: How much of the log a failed start-up shows (the error is at its end).
LOG_TAIL_LINES = 15


class StartFailed(AgoraError):
    """The daemon did not come up: why (the tail of its log), where the log is, and the
    daemon's own exit code (2: invalid config, 4: a child failed to start, ...)."""

    code = "DAEMON_START_FAILED"

    def __init__(self, cause: AgoraError, returncode: int | None, log_path: Path, offset: int) -> None:
        tail = log_tail(log_path, offset)
        body = "\n".join(f"  | {line}" for line in tail) or "  | (the log is empty)"
        super().__init__(f"the daemon did not start: {cause.message}\n"
                         f"last lines of its log ({log_path}):\n{body}",
                         hint=f"the whole log: {log_path}")
        known = {code for code, _ in EXIT_CODES}
        self.exit_code = returncode if returncode in known and returncode else cause.exit_code


def log_tail(log_path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines the log got after ``offset`` (this start-up's, not older)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


@cli.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_context
def down(ctx: click.Context, timeout: float, as_json: bool) -> None:
    """Stop the daemon gracefully (drain, then exit).  A stopped daemon is not an error:
    `down` says so and exits 0 (as systemctl stop does)."""
    from runtime.daemon.root import read_pid, running, wait_gone
    home = Path(ctx.obj["home"])
    pid = read_pid(home)
    try:
        client(ctx).call("down")
    except DaemonNotRunning as e:
        if running(home) is not None:  # the root lives, its coordinator does not answer
            raise CliError(e) from e
        out({"home": str(home), "was_running": False, "stopped": True}, as_json,
            lambda d: click.echo(f"agora daemon is not running on home {d['home']}: nothing to stop"))
        return
    except AgoraError as e:
        raise CliError(e) from e
    guard(wait_gone, home, pid, time.monotonic() + timeout)
    out({"home": str(home), "was_running": True, "stopped": True, "pid": pid}, as_json,
        lambda d: click.echo(f"agora daemon stopped (pid {d['pid']}, home {d['home']})"))


def duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``: an uptime at a glance; ``-`` if unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h" if d else f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _print_tree(node: dict[str, Any], depth: int = 0) -> None:
    pad = "  " * depth
    if node["kind"] == "supervisor":
        click.echo(f"{pad}{node['id']:<28} supervisor {node['strategy']:<13} {node['state']:<8} "
                   f"restarts={node['restarts']}")
        for c in node["children"]:
            _print_tree(c, depth + 1)
    else:
        up_s = duration(node.get("uptime_s"))
        click.echo(f"{pad}{node['id']:<28} pid={str(node['pid']):<8} {node['state']:<8} "
                   f"restarts={node['restarts']:<3} uptime={up_s}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The daemon's uptime and its supervision tree: child, pid, state, restarts, each
    process's own uptime."""
    def human(s: dict[str, Any]) -> None:
        click.echo(f"home {s['home']}  root pid {s['root_pid']}  "
                   f"daemon up {duration(s.get('daemon_uptime_s'))}  "
                   f"(coordinator up {duration(s['uptime_s'])})  "
                   f"allocation {s['allocation']}  agents {s['agents']}")
        click.echo("tasks " + (", ".join(f"{k}={v}" for k, v in sorted(s["tasks"].items())) or "none"))
        _print_tree(s["tree"])
    out(call(ctx, "status"), as_json, human)


@cli.command()
@json_option
@click.pass_context
def ps(ctx: click.Context, as_json: bool) -> None:
    """The daemon's processes with pid, memory and CPU time."""
    def human(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'PID':>8} {'RSS MiB':>8} {'CPU s':>7} {'RESTARTS':>8}  PATH")
        for r in rows:
            click.echo(f"{str(r['pid']):>8} {r.get('rss_mib', '-'):>8} {r.get('cpu_s', '-'):>7} "
                       f"{r['restarts']:>8}  {r['path']}")
    out(call(ctx, "ps"), as_json, human)



@cli.command()
@json_option
@click.pass_context
def agents(ctx: click.Context, as_json: bool) -> None:
    """Live agents: pool, pid, capabilities, load."""
    def human(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'AGENT':<20} {'PID':>8} {'INFLIGHT':>8} {'DONE':>8}  CAPABILITIES")
        for a in rows:
            click.echo(f"{a['id']:<20} {a['pid']:>8} {a['inflight']:>8} {a['done']:>8}  "
                       f"{','.join(a['capabilities'])}")
    out(call(ctx, "agents"), as_json, human)


