"""The ``agora`` command line: a thin layer over :class:`runtime.client.Client`.

Every command that talks to the daemon goes through the Client; errors come back typed
and leave with the exit code of their class (``runtime.errors.EXIT_CODES``: 2 invalid
input, 3 not found, 69 unavailable / daemon not running, 77 permission denied, ...).
``--json`` prints the daemon's answer as JSON instead of a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from runtime import paths
from runtime.errors import AgoraError, InvalidInput

__all__ = ["main", "cli"]


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
    from runtime.client import Client
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


def _guard(fn: Any, *a: Any, **kw: Any) -> Any:
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


# -- daemon ------------------------------------------------------------------------------

@cli.command()
@click.option("--foreground", is_flag=True, help="Stay attached (logs to stderr).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True))
@click.option("--registry", type=click.Choice(["partitioned", "local"]), default=None)
@click.option("--allocation", type=click.Choice(["static", "least-loaded", "p2c", "market"]), default=None)
@click.option("--wait", "wait_s", default=30.0, show_default=True, help="Seconds to wait for start-up.")
@click.pass_context
def up(ctx: click.Context, foreground: bool, config_file: str | None, registry: str | None,
       allocation: str | None, wait_s: float) -> None:
    """Start the daemon (detached unless --foreground)."""
    home = ctx.obj["home"]
    if foreground:
        from runtime.daemon import run_daemon
        raise click.exceptions.Exit(_guard(run_daemon, home, config_file, registry=registry,
                                           allocation=allocation))
    proc = _guard(start_detached, home, config_file, registry, allocation, wait_s)
    proc.returncode = 0  # detached on purpose: this process will not wait for it
    click.echo(f"agora daemon up (pid {proc.pid}, home {home})")


def start_detached(home: str, config_file: str | None, registry: str | None,
                   allocation: str | None, wait_s: float) -> subprocess.Popen:
    """Start ``agora up --foreground`` in its own session; return once it serves."""
    from runtime.client import Client
    from runtime.daemon import wait_until_up
    Path(home).mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [sys.executable, "-m", "runtime.cli", "--home", home, "up", "--foreground"]
    for flag, val in (("--config", config_file), ("--registry", registry), ("--allocation", allocation)):
        if val:
            argv += [flag, str(val)]
    # the daemon imports this very agora, installed or not (bin/agora from a checkout);
    # user agent modules resolve from the caller's directory and path, as they would here
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH", ""), os.getcwd()) if p)}
    with open(Path(home) / "agora.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=os.getcwd(), env=env)
    deadline = time.monotonic() + wait_s
    try:
        wait_until_up(lambda: Client(home, timeout=2.0), deadline, proc)
    except AgoraError:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
        raise
    return proc


@cli.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the exit.")
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop the daemon gracefully (drain, then exit)."""
    from runtime.daemon import read_pid, wait_gone
    home = Path(ctx.obj["home"])
    pid = read_pid(home)
    call(ctx, "down")
    _guard(wait_gone, home, pid, time.monotonic() + timeout)
    click.echo("agora daemon stopped")


def _print_tree(node: dict[str, Any], depth: int = 0) -> None:
    pad = "  " * depth
    if node["kind"] == "supervisor":
        click.echo(f"{pad}{node['id']:<28} supervisor {node['strategy']:<13} {node['state']:<8} "
                   f"restarts={node['restarts']}")
        for c in node["children"]:
            _print_tree(c, depth + 1)
    else:
        up_s = f"{node['uptime_s']:.1f}s" if node.get("uptime_s") is not None else "-"
        click.echo(f"{pad}{node['id']:<28} pid={str(node['pid']):<8} {node['state']:<8} "
                   f"restarts={node['restarts']:<3} uptime={up_s}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The supervision tree: child, pid, state, restarts, uptime."""
    def human(s: dict[str, Any]) -> None:
        click.echo(f"home {s['home']}  root pid {s['root_pid']}  up {s['uptime_s']:.1f}s  "
                   f"allocation {s['allocation']}  agents {s['agents']}")
        click.echo("tasks " + (", ".join(f"{k}={v}" for k, v in sorted(s["tasks"].items())) or "none"))
        _print_tree(s["tree"])
    out(call(ctx, "status"), as_json, human)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ps(ctx: click.Context, as_json: bool) -> None:
    """The daemon's processes with pid, memory and CPU time."""
    def human(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'PID':>8} {'RSS MiB':>8} {'CPU s':>7} {'RESTARTS':>8}  PATH")
        for r in rows:
            click.echo(f"{str(r['pid']):>8} {r.get('rss_mib', '-'):>8} {r.get('cpu_s', '-'):>7} "
                       f"{r['restarts']:>8}  {r['path']}")
    out(call(ctx, "ps"), as_json, human)


# -- tasks -------------------------------------------------------------------------------

def read_json_arg(value: str) -> Any:
    """``JSON`` or ``@file`` (``@-`` reads standard input)."""
    try:
        if value.startswith("@"):
            text = sys.stdin.read() if value == "@-" else Path(value[1:]).read_text()
        else:
            text = value
        return json.loads(text)
    except (OSError, ValueError) as e:
        raise CliError(InvalidInput(f"cannot read JSON from {value[:60]!r}: {e}",
                                    hint="pass JSON text or @path/to/file.json")) from e


@cli.command()
@click.argument("capability")
@click.option("--input", "input_", default="null", help="JSON, or @file.")
@click.option("--priority", type=int, default=None)
@click.option("--max-attempts", type=int, default=None)
@click.option("--deadline", type=float, default=None, help="Seconds from now.")
@click.option("--idempotency-key", default=None)
@click.option("--wait", is_flag=True, help="Wait for the result, showing progress.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def submit(ctx: click.Context, capability: str, input_: str, priority: int | None,
           max_attempts: int | None, deadline: float | None, idempotency_key: str | None,
           wait: bool, as_json: bool) -> None:
    """Submit one task; prints its id (durable once printed)."""
    opts = {k: v for k, v in (("priority", priority), ("max_attempts", max_attempts),
                              ("deadline", deadline), ("idempotency_key", idempotency_key)) if v is not None}
    task = {"capability": capability, "input": read_json_arg(input_), "options": opts}
    tid = call(ctx, "submit", task=task)
    if not wait:
        out({"id": tid}, as_json, lambda d: click.echo(d["id"]))
        return
    _show_result(wait_with_progress(ctx, tid, quiet=as_json), as_json)


def wait_with_progress(ctx: click.Context, tid: str, quiet: bool = False) -> dict[str, Any]:
    t0 = time.monotonic()
    spin = "|/-\\"
    i = 0
    while True:
        rec = _poll_result(ctx, tid)
        if rec["state"] in ("succeeded", "failed", "dead_lettered", "cancelled", "deadline_exceeded"):
            if not quiet and sys.stderr.isatty():
                click.echo("\r" + " " * 60 + "\r", nl=False, err=True)
            return rec
        if not quiet and sys.stderr.isatty():
            click.echo(f"\r{spin[i % 4]} {tid} {rec['state']} attempt {rec.get('attempts', 0)} "
                       f"{time.monotonic() - t0:5.1f}s", nl=False, err=True)
        i += 1


def _poll_result(ctx: click.Context, tid: str) -> dict[str, Any]:
    try:
        return client(ctx).call("result", id=tid, wait=True, timeout_s=0.25)
    except AgoraError as e:
        if e.code == "DEADLINE_EXCEEDED":
            return client(ctx).call("result", id=tid)
        raise CliError(e) from e


def _show_result(rec: dict[str, Any], as_json: bool) -> None:
    out(rec, as_json, lambda r: click.echo(
        orjson.dumps(r["result"], option=orjson.OPT_INDENT_2).decode() if r["state"] == "succeeded"
        else f"{r['id']} {r['state']} after {r.get('attempts')} attempt(s): {r.get('error')}"))
    if rec["state"] != "succeeded":
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("pipeline_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--wait", is_flag=True, help="Wait until every step has ended.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def pipeline(ctx: click.Context, pipeline_file: str, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Submit a pipeline (a DAG of steps in a JSON file); validated at submit."""
    p = call(ctx, "pipeline", spec=read_json_arg("@" + pipeline_file))
    if wait:
        p = call(ctx, "pipeline_result", timeout=timeout_s + 10, id=p["id"], wait=True, timeout_s=timeout_s)

    def human(d: dict[str, Any]) -> None:
        click.echo(f"{d['id']} {d.get('state', 'submitted')}")
        for s in d.get("steps", []) if isinstance(d.get("steps"), list) else []:
            click.echo(f"  {s['step_id']:<16} {s['state']:<14} attempts={s['attempts']}")
    out(p, as_json, human)


@cli.group()
def context() -> None:
    """Shared read-only context (numpy arrays and blobs in shared memory)."""


@context.command("put")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def context_put(ctx: click.Context, name: str, file: str) -> None:
    """Publish FILE (.npy -> array, else bytes) as a new version of NAME."""
    info = call(ctx, "context_put", name=name, path=str(Path(file).resolve()))
    click.echo(f"{info['name']} v{info['version']} {info['nbytes']} bytes")


@context.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def context_ls(ctx: click.Context, as_json: bool) -> None:
    """Published contexts."""
    out(call(ctx, "context_ls"), as_json, lambda rows: [click.echo(
        f"{r['name']:<20} v{r['version']:<4} {r['kind']:<6} {r['nbytes']:>12} bytes") for r in rows])


@context.command("rm")
@click.argument("name")
@click.pass_context
def context_rm(ctx: click.Context, name: str) -> None:
    """Unpublish NAME (agents holding a view keep it until they let go)."""
    call(ctx, "context_rm", name=name)
    click.echo(f"removed {name}")


@cli.group()
def registry() -> None:
    """The registry: who is alive and what each can do."""


@registry.command("ls")
@click.option("--capability", default=None)
@click.option("--where", multiple=True, help="A filter such as 'load<0.5' or 'pool=echo'.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def registry_ls(ctx: click.Context, capability: str | None, where: tuple[str, ...], as_json: bool) -> None:
    """Entries, optionally offering a capability and matching filters."""
    rows = call(ctx, "registry_ls", capability=capability, where=list(where))
    out(rows, as_json, lambda rs: [click.echo(
        f"{r['key']:<24} owner={r['owner']:<8} v{r['version']:<4} {','.join(r['capabilities'])} "
        f"{orjson.dumps(r['metadata']).decode()}") for r in rs])


@registry.command("get")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def registry_get(ctx: click.Context, key: str, as_json: bool) -> None:
    """One entry."""
    out(call(ctx, "registry_get", key=key), True)


@cli.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def result(ctx: click.Context, task_id: str, wait: bool, as_json: bool) -> None:
    """A task's state and result."""
    rec = wait_with_progress(ctx, task_id, as_json) if wait else call(ctx, "result", id=task_id)
    out(rec, True if as_json else False, lambda r: click.echo(
        f"{r['id']} {r['state']} attempts={r.get('attempts')}\n"
        + orjson.dumps({"result": r.get("result"), "error": r.get("error")},
                       option=orjson.OPT_INDENT_2).decode()))


@cli.command()
@click.option("--state", default=None)
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tasks(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """Recent tasks, optionally of one state."""
    def human(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'ID':<20} {'CAPABILITY':<16} {'STATE':<16} ATTEMPTS")
        for r in rows:
            click.echo(f"{r['id']:<20} {r['capability']:<16} {r['state']:<16} {r.get('attempts')}")
    out(call(ctx, "tasks", state=state, limit=limit), as_json, human)


@cli.command()
@click.argument("task_id")
@click.pass_context
def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a task that has not finished."""
    r = call(ctx, "cancel", id=task_id)
    click.echo(f"{r['id']} {r['state']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def agents(ctx: click.Context, as_json: bool) -> None:
    """Live agents: pool, pid, capabilities, load."""
    def human(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'AGENT':<20} {'PID':>8} {'INFLIGHT':>8} {'DONE':>8}  CAPABILITIES")
        for a in rows:
            click.echo(f"{a['id']:<20} {a['pid']:>8} {a['inflight']:>8} {a['done']:>8}  "
                       f"{','.join(a['capabilities'])}")
    out(call(ctx, "agents"), as_json, human)


@cli.command()
@click.option("--type", "type_", default=None, help="Event type prefix, e.g. task. or supervisor.")
@click.option("--agent", default=None)
@click.option("--since", type=float, default=None, help="Epoch seconds.")
@click.option("--limit", default=200, show_default=True)
@click.option("--follow", is_flag=True, help="Keep printing new events until the daemon stops.")
@click.pass_context
def events(ctx: click.Context, type_: str | None, agent: str | None, since: float | None,
           limit: int, follow: bool) -> None:
    """The event log (JSON lines); --follow reads on by file position, losing nothing."""
    c = client(ctx)
    for ev in call(ctx, "events", type=type_, agent=agent, since=since, limit=limit):
        click.echo(orjson.dumps(ev).decode())
    if not follow:
        return
    cursor = None
    while True:
        try:
            page = c.call("events_after", cursor=cursor, type=type_, agent=agent)
        except AgoraError as e:
            if e.code in ("DAEMON_NOT_RUNNING", "UNAVAILABLE"):
                return  # the daemon stopped: a follow ends cleanly
            raise CliError(e) from e
        for ev in page["events"]:  # (the first call, cursor None, only takes the position)
            click.echo(orjson.dumps(ev).decode())
        cursor = page["cursor"]
        if not page["events"]:
            time.sleep(0.25)


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


# Command modules register themselves on the group (one concept per module).
from runtime import cli_consensus, cli_market, cli_observe, cli_run, cli_scale  # noqa: E402,F401

if __name__ == "__main__":
    # `python -m runtime.cli` runs this file as __main__: go through the real module so
    # that commands registered on it by other modules (run, demo, ...) are there.
    from runtime.cli import main as _main
    sys.exit(_main())
