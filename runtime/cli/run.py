"""``agora run FILE`` and ``agora demo``: an embedded runtime for one job.

An embedded runtime is a private daemon in a temporary home: started, given the job,
waited for, stopped, and its home removed — nothing is left running and nothing is left
in /dev/shm or the runtime directory.  (The same code path as ``agora up``: what is tested
for the daemon holds for ``run``.)

A job file is one of::

    {"capability": "...", "input": ..., "options": {...}}      one task
    {"tasks": [{...}, {...}]}                                    several tasks
    {"name": "...", "steps": [...]}                             a pipeline (runtime.tasks.pipeline)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import orjson

from runtime.cli.daemon import start_detached
from runtime.cli.group import CliError, EX_FAILED, cli, guard, json_option
from runtime.errors import AgoraError, InvalidInput
from runtime.tasks.task import TERMINAL

__all__ = ["embedded", "run_job", "Failed", "demo_story"]

FINAL = TERMINAL


@contextmanager
def embedded(config_text: str | None, config_file: str | None = None, wait_s: float = 60.0,
             keep: bool = False):
    """A private daemon for the duration of the block; yields (connected Client, home).

    The home is removed afterwards unless ``keep`` or the block failed (a start-up that
    failed, an exception, or ``Failed`` raised by the caller): then it stays, for
    `agora --home HOME trace ID` and its agora.log, and its path is printed."""
    from runtime.wire.client import Client
    home = Path(tempfile.mkdtemp(prefix="agora-run-"))
    failed = True
    try:
        if config_text is not None:
            (home / "agora.toml").write_text(config_text)
        proc = start_detached(str(home), config_file, None, None, wait_s)
        try:
            with Client(str(home), timeout=60.0) as c:
                yield c, home
            failed = False
        finally:
            _stop(home, proc)
    finally:
        if keep or failed:
            click.echo(f"home kept for inspection: {home} (agora --home {home} trace ID; "
                       f"its log: {home / 'agora.log'})", err=True)
        else:
            shutil.rmtree(home, ignore_errors=True)


class Failed(Exception):
    """Raised inside ``embedded`` by a caller whose job failed: the home is kept."""


def _stop(home: Path, proc: Any) -> None:
    """Graceful down; SIGKILL (the tree follows its root) if it overstays; always reaped."""
    from runtime.wire.client import Client
    try:
        with Client(str(home), timeout=10.0) as c:
            c.call("down")
        proc.wait(60)
    except (AgoraError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait(10)


def run_job(c: Any, job: Any, timeout_s: float = 300.0) -> dict[str, Any]:
    """Submit a job object and wait for every result."""
    if not isinstance(job, dict):
        raise InvalidInput("a job file must hold a JSON object (a task, {'tasks': [...]}, or a pipeline)")
    t0 = time.monotonic()
    if "steps" in job:
        p = c.call("pipeline", spec=job)
        done = c.call("pipeline_result", timeout=timeout_s + 10, id=p["id"], wait=True,
                      timeout_s=timeout_s)
        return {"kind": "pipeline", "elapsed_s": round(time.monotonic() - t0, 3), **done}
    tasks = job["tasks"] if "tasks" in job else [job]
    ids = c.call("submit_many", tasks=tasks)
    results = [c.call("result", timeout=timeout_s + 10, id=i, wait=True, timeout_s=timeout_s)
               for i in ids]
    return {"kind": "tasks", "elapsed_s": round(time.monotonic() - t0, 3), "tasks": results}


def _print_run(res: dict[str, Any]) -> None:
    from runtime.cli.tasks import error_text, step_line
    if res["kind"] == "pipeline":
        click.echo(f"pipeline {res['id']} {res['state']} in {res['elapsed_s']}s")
        for step in res["steps"]:
            click.echo(step_line(step))
        if res["state"] == "succeeded" and res["steps"]:
            click.echo(orjson.dumps(res["steps"][-1].get("result"), option=orjson.OPT_INDENT_2).decode())
        return
    for r in res["tasks"]:
        body = orjson.dumps(r["result"]).decode()[:300] if r["state"] == "succeeded" else error_text(r["error"])
        click.echo(f"{r['id']} {r['state']} attempts={r['attempts']}: {body}")
    click.echo(f"{len(res['tasks'])} task(s) in {res['elapsed_s']}s")


def _failed(res: dict[str, Any]) -> bool:
    if res["kind"] == "pipeline":
        return res["state"] != "succeeded"
    return any(r["state"] != "succeeded" for r in res["tasks"])


@cli.command("run")
@click.argument("job_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="agora.toml with the pools (default: ./agora.toml).")
@click.option("--keep", is_flag=True, help="Keep the embedded runtime's home afterwards "
              "(it is always kept when the run fails) and print its path.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds to wait for the job's results (exit 75 past it).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def run_cmd(job_file: str, config_file: str | None, keep: bool, timeout_s: float, as_json: bool) -> None:
    """Run a task or pipeline file on an embedded runtime, print the results, stop.

    Exit 0 if everything succeeded, 1 if a task failed, 2 for an invalid config or job
    file; a failed run keeps its home (path printed) for `agora --home HOME trace ID`.
    """
    cfg = config_file or ("agora.toml" if Path("agora.toml").exists() else None)
    if cfg is None:
        raise CliError(InvalidInput("no pools configured: no --config and no ./agora.toml",
                                    hint="pass --config agora.toml"))
    job = _read_job(job_file)
    _check_config(cfg)
    try:
        with embedded(None, str(Path(cfg).resolve()), keep=keep) as (c, _home):
            res = guard(run_job, c, job, timeout_s)
            if _failed(res):
                raise Failed()
    except Failed:
        pass
    except AgoraError as e:
        raise CliError(e) from e
    (click.echo(orjson.dumps(res).decode()) if as_json else _print_run(res))
    if _failed(res):
        raise click.exceptions.Exit(EX_FAILED)


def _read_job(job_file: str) -> Any:
    try:
        job = json.loads(Path(job_file).read_text())
    except (OSError, ValueError) as e:
        raise CliError(InvalidInput(f"{job_file} is not a JSON job file: {e}")) from e
    if not isinstance(job, dict):
        raise CliError(InvalidInput(f"{job_file} must hold a JSON object",
                                    hint="a task, {\"tasks\": [...]}, or a pipeline {\"name\", \"steps\"}"))
    return job


def _check_config(cfg: str) -> None:
    """An invalid config is refused here, at once and with exit 2, before a daemon starts."""
    from runtime.config import load_config
    from runtime.daemon.composition import check_config
    try:
        check_config(load_config(None, cfg))  # reads only: nothing is created in the home
    except AgoraError as e:
        raise CliError(e) from e


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Keep the demo's home afterwards (its event log, "
              "journal and agora.log), for `agora --home HOME trace ID`.")
@json_option
def demo_cmd(keep: bool, as_json: bool) -> None:
    """Run the built-in demo: shared-memory context, three pools, one pipeline; then say
    what happened and what to try next."""
    from runtime.demo.agents import make_corpus
    demo = Path(__file__).parent.parent / "demo"
    corpus_dir = Path(tempfile.mkdtemp(prefix="agora-demo-"))
    try:
        ctx = make_corpus(corpus_dir)
        text = (demo / "agora.toml").read_text() + "\n[context]\n" + "".join(
            f'{k} = "{v}"\n' for k, v in ctx.items())
        job = json.loads((demo / "pipeline.json").read_text())
        with guard(embedded, text, keep=keep) as (c, home):
            status = guard(c.call, "status")
            res = guard(run_job, c, job)
            agents = guard(c.call, "agents")
    except AgoraError as e:
        raise CliError(e) from e
    finally:
        shutil.rmtree(corpus_dir, ignore_errors=True)
    if as_json:
        click.echo(orjson.dumps({"result": res, "agents": agents,
                                 "home": str(home) if keep else None}).decode())
    else:
        _print_run(res)
        click.echo("")
        click.echo("\n".join(demo_story(res, agents, status, sorted(ctx), home if keep else None)))
    if _failed(res):
        raise click.exceptions.Exit(EX_FAILED)


def demo_story(res: dict[str, Any], agents: list[dict[str, Any]], status: dict[str, Any],
               contexts: list[str], kept: Path | None) -> list[str]:
    """What the demo did, and what to try next (pure: from what the run returned)."""
    pools = sorted({a["pool"] for a in agents})
    steps = " -> ".join(s["step_id"] for s in res["steps"])
    trace = (f"agora --home {kept} trace {res['id']}" if kept
             else "agora demo --keep            (keeps the home, then prints the trace command)")
    return [
        "What happened:",
        f"  a private daemon (pid {status['root_pid']}) started {len(agents)} agent processes "
        f"in pools {', '.join(pools)}, supervised;",
        f"  the context {', '.join(contexts)} was published once in shared memory and every "
        "agent read the same copy;",
        f"  the pipeline {res['id']} ({steps}) ran {res['state']} in {res['elapsed_s']} s, "
        "each step journalled before it ran;",
        "  then everything stopped: no process, socket or shared-memory segment is left"
        + (f" (the home is kept: {kept})." if kept else "."),
        "",
        "Try next:",
        f"  {trace}",
        "  agora up --config my.toml && agora submit CAPABILITY --input '{...}' --wait",
        "  agora status / agora top / agora events --follow   (watch a running daemon)",
        "",
        "Your own agent (my_agents.py next to my.toml):",
        "  import agora",
        "  class Echo(agora.Agent):",
        "      @agora.capability(\"echo\")",
        "      def echo(self, input, task):",
        "          return input",
        "my.toml:",
        "  [pools.echo]",
        "  agent = \"my_agents:Echo\"",
        "  size = 2",
        "  [pools.echo.capabilities.echo]",
        "  cost = 1.0",
    ]
