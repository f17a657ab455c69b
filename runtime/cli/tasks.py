"""``agora submit``, ``pipeline``, ``result``, ``tasks``, ``cancel``, ``retry``: work and
its results.

Waiting is bounded: ``submit --wait``, ``result --wait`` and ``pipeline --wait`` take
``--timeout`` (default ``WAIT_TIMEOUT_S``, 300 s; pipelines 600 s); past it the command
prints the task's (pipeline's) current state and exits 75 (EX_TEMPFAIL: try again later;
the work goes on).  ``cancel`` exits 0 when the task was cancelled or its running attempt
was asked to stop, 1 when it had already ended (its state is printed), 3 for an unknown id.
``agora tasks --state dead`` lists the dead letters; ``agora retry ID...`` re-drives them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from runtime.cli.group import CliError, EX_FAILED, EX_TEMPFAIL, call, cli, client, json_option, out
from runtime.errors import AgoraError, DeadlineExceeded, InvalidInput
from runtime.tasks.task import TERMINAL

__all__ = ['submit', 'pipeline', 'result', 'tasks', 'cancel', 'retry', 'read_json_arg',
           'wait_with_progress', 'wait_pipeline', 'error_text', 'step_line', 'WAIT_TIMEOUT_S']

#: How long ``--wait`` waits by default: long enough for interactive work, never forever.
WAIT_TIMEOUT_S = 300.0
#: Short names for states on the command line.
STATE_ALIASES = {"dead": "dead_lettered"}


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
@click.option("--priority", type=int, default=None, help="Higher runs sooner (default 0).")
@click.option("--max-attempts", type=int, default=None,
              help="Attempts before the task is dead-lettered (default: the pool's).")
@click.option("--deadline", type=float, default=None, help="Seconds from now.")
@click.option("--idempotency-key", default=None,
              help="A second submit with the same key returns the first task's id.")
@click.option("--task-timeout", "task_timeout", type=float, default=None,
              help="Seconds one attempt may run (options.timeout_s).")
@click.option("--wait", is_flag=True, help="Wait for the result, showing progress.")
@click.option("--timeout", "timeout_s", type=float, default=WAIT_TIMEOUT_S, show_default=True,
              help="With --wait: give up waiting after this many seconds (exit 75).")
@json_option
@click.pass_context
def submit(ctx: click.Context, capability: str, input_: str, priority: int | None,
           max_attempts: int | None, deadline: float | None, idempotency_key: str | None,
           task_timeout: float | None, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Submit one task; prints its id (durable once printed)."""
    opts = {k: v for k, v in (("priority", priority), ("max_attempts", max_attempts),
                              ("deadline", deadline), ("idempotency_key", idempotency_key),
                              ("timeout_s", task_timeout)) if v is not None}
    task = {"capability": capability, "input": read_json_arg(input_), "options": opts}
    tid = call(ctx, "submit", task=task)
    if not wait:
        out({"id": tid}, as_json, lambda d: click.echo(d["id"]))
        return
    _show_result(wait_with_progress(ctx, tid, quiet=as_json, timeout_s=timeout_s), as_json)


def _timed_out(what: str, state: str, waited: float, detail: str = "") -> None:
    """The wait's bound passed: say where the work is, exit 75 (it goes on)."""
    click.echo(f"{what} {state}{detail}: still not finished after waiting {waited:g} s "
               f"(it goes on; ask again with `agora result {what} --wait`)", err=True)
    raise click.exceptions.Exit(EX_TEMPFAIL)


def wait_with_progress(ctx: click.Context, tid: str, quiet: bool = False,
                       timeout_s: float = WAIT_TIMEOUT_S) -> dict[str, Any]:
    t0 = time.monotonic()
    spin = "|/-\\"
    i = 0
    while True:
        rec = _poll_result(ctx, tid)
        if rec["state"] in TERMINAL:
            if not quiet and sys.stderr.isatty():
                click.echo("\r" + " " * 60 + "\r", nl=False, err=True)
            return rec
        if time.monotonic() - t0 >= timeout_s:
            _timed_out(tid, rec["state"], timeout_s, f" (attempt {rec.get('attempts', 0)})")
        if not quiet and sys.stderr.isatty():
            click.echo(f"\r{spin[i % 4]} {tid} {rec['state']} attempt {rec.get('attempts', 0)} "
                       f"{time.monotonic() - t0:5.1f}s", nl=False, err=True)
        i += 1


def _poll_result(ctx: click.Context, tid: str) -> dict[str, Any]:
    try:
        return client(ctx).call("result", id=tid, wait=True, timeout_s=0.25)
    except AgoraError as e:
        if isinstance(e, DeadlineExceeded):
            return client(ctx).call("result", id=tid)
        raise CliError(e) from e


def error_text(err: Any) -> str:
    """A task's error as one readable line (the agent's exception type and message)."""
    if isinstance(err, dict):
        return f"{err.get('type') or err.get('code') or 'error'}: {err.get('message', '')}".strip()
    return str(err)


def _show_result(rec: dict[str, Any], as_json: bool) -> None:
    out(rec, as_json, lambda r: click.echo(
        orjson.dumps(r["result"], option=orjson.OPT_INDENT_2).decode() if r["state"] == "succeeded"
        else f"{r['id']} {r['state']} after {r.get('attempts')} attempt(s): {error_text(r.get('error'))}"))
    if rec["state"] != "succeeded":
        raise click.exceptions.Exit(EX_FAILED)


# -- pipelines -------------------------------------------------------------------------------

def _steps_done(p: dict[str, Any]) -> int:
    return sum(1 for s in p.get("steps", []) if s["state"] in TERMINAL)


def step_line(s: dict[str, Any]) -> str:
    err = f": {error_text(s['error'])}" if s.get("error") and s["state"] != "succeeded" else ""
    return f"  {s['step_id']:<16} {s['state']:<14} attempts={s['attempts']}{err}"


def _poll_pipeline(ctx: click.Context, pid: str) -> dict[str, Any]:
    try:
        return client(ctx).call("pipeline_result", id=pid, wait=True, timeout_s=0.25)
    except AgoraError as e:
        if isinstance(e, DeadlineExceeded):
            return call(ctx, "pipeline_result", id=pid)
        raise CliError(e) from e


def wait_pipeline(ctx: click.Context, pid: str, quiet: bool = False,
                  timeout_s: float = 600.0) -> dict[str, Any]:
    """Wait (bounded) for a pipeline, saying on stderr each step as it ends (n/total) and,
    on a terminal, a live line; past ``timeout_s`` print where it is and exit 75."""
    t0, seen = time.monotonic(), set()
    while True:
        p = _poll_pipeline(ctx, pid)
        total = len(p.get("steps", []))
        for s in p.get("steps", []):
            if s["state"] in TERMINAL and s["step_id"] not in seen and not quiet:
                seen.add(s["step_id"])
                click.echo(f"[{len(seen)}/{total}]{step_line(s)}", err=True)
        if p["state"] != "running":
            return p
        if time.monotonic() - t0 >= timeout_s:
            _timed_out(pid, p["state"], timeout_s, f" ({_steps_done(p)}/{total} steps done)")
        if not quiet and sys.stderr.isatty():
            click.echo(f"\r{pid} running: {_steps_done(p)}/{total} steps done "
                       f"{time.monotonic() - t0:5.1f}s", nl=False, err=True)


def _show_pipeline(p: dict[str, Any], as_json: bool) -> None:
    """The pipeline and its steps (a failed step with its error); exit 1 unless it succeeded."""
    def human(d: dict[str, Any]) -> None:
        steps = d.get("steps") if isinstance(d.get("steps"), list) else []
        click.echo(f"{d['id']} {d.get('state', 'submitted')} ({_steps_done(d)}/{len(steps)} steps done)")
        for s in steps:
            click.echo(step_line(s))
        if d.get("state") == "succeeded" and steps:
            click.echo(orjson.dumps(steps[-1].get("result"), option=orjson.OPT_INDENT_2).decode())
    out(p, as_json, human)
    if p.get("state") not in (None, "running", "succeeded"):
        raise click.exceptions.Exit(EX_FAILED)


@cli.command()
@click.argument("pipeline_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--wait", is_flag=True, help="Wait until every step has ended, showing progress.")
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True,
              help="With --wait: give up waiting after this many seconds (exit 75).")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@click.pass_context
def pipeline(ctx: click.Context, pipeline_file: str, wait: bool, timeout_s: float, as_json: bool) -> None:
    """Submit a pipeline (a DAG of steps in a JSON file); validated at submit.

    Without --wait prints its id and step task ids; with --wait the outcome (exit 1 if a
    step failed, each failed step with its error).
    """
    p = call(ctx, "pipeline", spec=read_json_arg("@" + pipeline_file))
    if not wait:
        out(p, as_json, lambda d: click.echo(f"{d['id']} submitted ({len(d['steps'])} steps)"))
        return
    _show_pipeline(wait_pipeline(ctx, p["id"], quiet=as_json, timeout_s=timeout_s), as_json)


@cli.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Wait until the task (pipeline) has ended.")
@click.option("--timeout", "timeout_s", type=float, default=WAIT_TIMEOUT_S, show_default=True,
              help="With --wait: give up waiting after this many seconds (exit 75).")
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
@click.pass_context
def result(ctx: click.Context, task_id: str, wait: bool, timeout_s: float, as_json: bool) -> None:
    """A task's (or a p-... pipeline's) state and result; exit 1 if it failed."""
    if task_id.startswith("p-"):
        p = (wait_pipeline(ctx, task_id, as_json, timeout_s) if wait
             else call(ctx, "pipeline_result", id=task_id))
        _show_pipeline(p, as_json)
        return
    rec = (wait_with_progress(ctx, task_id, as_json, timeout_s) if wait
           else call(ctx, "result", id=task_id))
    out(rec, as_json, lambda r: click.echo(
        f"{r['id']} {r['state']} attempts={r.get('attempts')}\n"
        + (orjson.dumps(r.get("result"), option=orjson.OPT_INDENT_2).decode()
           if r["state"] == "succeeded" else f"error: {error_text(r.get('error'))}"
           if r.get("error") else "")))
    if rec["state"] in TERMINAL and rec["state"] != "succeeded":
        raise click.exceptions.Exit(EX_FAILED)


@cli.command()
@click.option("--state", default=None, help="One state (dead = dead_lettered).")
@click.option("--limit", default=100, show_default=True, help="At most this many tasks (newest first).")
@json_option
@click.pass_context
def tasks(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """Recent tasks, optionally of one state."""
    state = STATE_ALIASES.get(state, state) if state else None
    def human(rows: list[dict[str, Any]]) -> None:
        click.echo(f"{'ID':<20} {'CAPABILITY':<16} {'STATE':<16} ATTEMPTS")
        for r in rows:
            why = f"  (waiting: {r['waiting_for']})" if r.get("waiting_for") else ""
            click.echo(f"{r['id']:<20} {r['capability']:<16} {r['state']:<16} {r.get('attempts')}{why}")
    out(call(ctx, "tasks", state=state, limit=limit), as_json, human)


@cli.command()
@click.argument("task_id")
@json_option
@click.pass_context
def cancel(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Cancel a task or a whole pipeline (p-... id) that has not finished."""
    r = call(ctx, "cancel", id=task_id)

    def human(r: dict[str, Any]) -> None:
        said = {"cancelled": "cancelled", "stopping": "cancelled; its running attempt was asked to stop",
                "already_ended": "had already ended: nothing to cancel"}[r["outcome"]]
        steps = f" ({len(r['steps'])} step(s))" if r.get("kind") == "pipeline" and r.get("steps") else ""
        click.echo(f"{r['id']} {r['state']}: {said}{steps}")
    out(r, as_json, human)
    if r["outcome"] == "already_ended":
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("task_ids", nargs=-1, required=True)
@json_option
@click.pass_context
def retry(ctx: click.Context, task_ids: tuple[str, ...], as_json: bool) -> None:
    """Re-drive dead-lettered or failed tasks (fresh attempts; the history stays)."""
    rows = call(ctx, "retry", ids=list(task_ids))
    out(rows, as_json, lambda rs: [click.echo(f"{r['id']} {r['state']} (attempts so far {r['attempts']}, "
                                              f"up to {r['max_attempts']})") for r in rs])


