"""``agora trace ID``, ``agora metrics``, ``agora top``: the observability commands.

* ``agora trace ID [--json] [--brief]`` draws a task's or pipeline's trace as a tree with
  offsets and durations (runtime.observability.tracing).  When no daemon runs it reads the event log
  in the home directory itself: a post-mortem works on a stopped system.
* ``agora metrics [--json | --prometheus | --serve PORT]``: a table, the Prometheus text
  format, or an HTTP endpoint ``/metrics`` on 127.0.0.1 only (one http.server thread in
  this CLI process; each scrape asks the daemon anew, so a scrape is never stale by more
  than the telemetry snapshot age).
* ``agora top [--once] [--interval S]``: a live view redrawn in place (ANSI home + clear)
  until q, Ctrl-C or the daemon stops (it says which); ``--once`` prints one frame
  without escapes.
* ``agora events [--follow] [--since T] [--json]``: readable lines (JSON lines with
  ``--json``); ``--follow`` starts at the end unless ``--since``.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import click
import orjson

from runtime.cli.group import CliError, call, cli, client, json_option, out
from runtime.errors import AgoraError, DaemonNotRunning, NotFound, Unavailable
from runtime.observability.metrics import quantile, to_prometheus

__all__ = ["trace_cmd", "metrics_cmd", "top_cmd", "local_trace", "render_metrics", "render_top",
           "start_metrics_server", "events", "event_line", "top_loop", "Keys"]

CLEAR = "\x1b[H\x1b[2J"


# -- trace ---------------------------------------------------------------------------------

@cli.command("trace")
@click.argument("ident")
@click.option("--json", "as_json", is_flag=True, help="The span tree as JSON.")
@click.option("--brief", is_flag=True, help="Spans only, without their events.")
@click.pass_context
def trace_cmd(ctx: click.Context, ident: str, as_json: bool, brief: bool) -> None:
    """Draw the trace of a task, pipeline or trace ID."""
    from runtime.observability.tracing import render
    try:
        data = client(ctx).call("trace", id=ident)
    except AgoraError as e:
        if not isinstance(e, DaemonNotRunning):
            raise CliError(e) from e
        data = _guarded(local_trace, ctx.obj["home"], ident)
    out(data, as_json, lambda d: click.echo("\n".join(render(d["trace"], details=not brief))))


def local_trace(home: str, ident: str) -> dict[str, Any]:
    """The same answer as the daemon's ``trace`` command, from the log files alone."""
    from runtime.observability.eventlog import find_trace_id, read_events
    from runtime.observability.tracing import build_trace
    trace_id = find_trace_id(home, ident)
    if trace_id is None:
        raise NotFound(f"no event in the log of {home} names {ident!r}",
                       hint="the daemon is not running, so only the event log was searched")
    events = read_events(home, trace_id=trace_id, limit=None)
    return {"id": ident, "trace_id": trace_id, "trace": build_trace(events)}


def _guarded(fn: Callable[..., Any], *a: Any) -> Any:
    try:
        return fn(*a)
    except AgoraError as e:
        raise CliError(e) from e


# -- metrics -------------------------------------------------------------------------------

@cli.command("metrics")
@click.option("--prometheus", is_flag=True, help="Prometheus text exposition format.")
@click.option("--serve", "port", type=click.IntRange(0, 65535), default=None,
              help="Serve /metrics on 127.0.0.1:PORT until Ctrl-C.")
@json_option
@click.pass_context
def metrics_cmd(ctx: click.Context, prometheus: bool, port: int | None, as_json: bool) -> None:
    """Counters, gauges and histograms of the whole daemon."""
    if port is not None:
        _serve(ctx, port)
        return
    data = call(ctx, "metrics")
    if prometheus:
        click.echo(to_prometheus(data["metrics"]), nl=False)
        return
    out(data, as_json, lambda d: click.echo("\n".join(render_metrics(d))))


def render_metrics(data: dict[str, Any]) -> list[str]:
    tel = data.get("telemetry") or {}
    lines = [f"telemetry snapshot age {tel.get('snapshot_age_s')} s, "
             f"{tel.get('received', 0)} events received"]
    for name, metric in sorted(data["metrics"].items()):
        for s in metric["series"]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items()))
            key = f"{name}{{{labels}}}" if labels else name
            lines.append(f"{key:<64} {_value_text(metric['type'], s['value'])}")
    return lines


def _value_text(kind: str, v: Any) -> str:
    if kind != "histogram":
        return str(int(v)) if float(v).is_integer() else f"{v:.6g}"
    p50, p99 = quantile(v, 0.5), quantile(v, 0.99)
    return (f"count={v['count']} mean={v['sum'] / v['count']:.4f}s p50<={p50:g}s p99<={p99:g}s"
            if v["count"] else "count=0")


class _MetricsHandler(BaseHTTPRequestHandler):
    fetch: Callable[[], str]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != "/metrics":
            self._reply(404, b"only /metrics is served here\n")
            return
        try:
            body = type(self).fetch().encode()
        except AgoraError as e:
            self._reply(503, f"agora daemon unavailable: {e}\n".encode())
            return
        self._reply(200, body, "text/plain; version=0.0.4; charset=utf-8")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds would flood the terminal


def start_metrics_server(fetch: Callable[[], str], port: int) -> tuple[HTTPServer, threading.Thread]:
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) serving ``fetch()`` at
    /metrics, in one thread; stop it with ``server.shutdown(); server.server_close()``."""
    handler = type("MetricsHandler", (_MetricsHandler,), {"fetch": staticmethod(fetch)})
    server = HTTPServer(("127.0.0.1", port), handler)  # loopback only, whatever the port
    thread = threading.Thread(target=server.serve_forever, name="agora-metrics-http", daemon=True)
    thread.start()
    return server, thread


def _serve(ctx: click.Context, port: int) -> None:
    from runtime.wire.client import Client
    home = ctx.obj["home"]

    def fetch() -> str:
        with Client(home, timeout=10.0) as c:
            return to_prometheus(c.call("metrics")["metrics"])

    try:
        server, thread = start_metrics_server(fetch, port)
    except OSError as e:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {e}; "
                                   "pick another --serve port") from e
    click.echo(f"serving http://127.0.0.1:{server.server_address[1]}/metrics (Ctrl-C stops)")
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


# -- top -----------------------------------------------------------------------------------

@cli.command("top")
@click.option("--once", is_flag=True, help="Print one frame (no ANSI escapes) and exit.")
@click.option("--interval", type=click.FloatRange(0.1, 60.0), default=1.0, show_default=True,
              help="Seconds between frames.")
@click.option("--json", "as_json", is_flag=True, help="With --once: the frame's data as JSON.")
@click.pass_context
def top_cmd(ctx: click.Context, once: bool, interval: float, as_json: bool) -> None:
    """A live view: supervision tree, pools, throughput, restarts, auctions and votes.

    Press q to quit (or Ctrl-C); it also ends when the daemon stops."""
    if once or as_json:
        out(call(ctx, "top"), as_json, lambda d: click.echo("\n".join(render_top(d))))
        return
    with Keys(click.get_text_stream("stdin")) as keys:
        reason = top_loop(lambda: client(ctx).call("top"), keys, interval)
    click.echo(f"\nagora top: {reason}")


def top_loop(fetch: Callable[[], dict[str, Any]], keys: Keys, interval: float) -> str:
    """Draw frames until q, Ctrl-C or the daemon stops; returns why it ended."""
    footer, drawn = ("q quits" if keys.live else "Ctrl-C quits"), False
    try:
        while True:
            try:
                data = fetch()
            except AgoraError as e:
                if drawn and isinstance(e, Unavailable):  # DaemonNotRunning is one too
                    return "the daemon stopped"
                raise CliError(e) from e  # not running at all: the usual error, exit 69
            drawn = True
            click.echo(CLEAR + "\n".join([*render_top(data), "", footer]))
            if keys.wait_for("qQ", interval):
                return "quit (q pressed)"
    except KeyboardInterrupt:
        return "quit (Ctrl-C)"


class Keys:
    """Single key presses from a terminal (cbreak mode while in use, restored after); on
    anything else (a pipe, a file) reads what comes, and on nothing at all only waits."""

    def __init__(self, stream: Any) -> None:
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # CliRunner's stdin has no fd
            self.fd = None
        self.live = self.fd is not None
        self._saved: Any = None

    def __enter__(self) -> Keys:
        if self.fd is not None and os.isatty(self.fd):
            import termios
            import tty
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def wait_for(self, keys: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True as soon as one of ``keys`` is pressed."""
        deadline = time.monotonic() + timeout
        while self.live and (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                return False
            got = os.read(self.fd, 64)
            if not got:  # end of input: nothing more will come from there
                self.live = False
            elif any(k in got.decode(errors="replace") for k in keys):
                return True
        time.sleep(max(0.0, deadline - time.monotonic()))
        return False


def render_top(d: dict[str, Any]) -> list[str]:
    """One frame of ``agora top`` (pure: from the ``top`` command's answer)."""
    clock = datetime.fromtimestamp(d["ts"]).strftime("%H:%M:%S")
    counts = " ".join(f"{k}={v}" for k, v in sorted(d["tasks"].items()) if v) or "none"
    lines = [f"agora top  {clock}  throughput {d['throughput']:.1f} tasks/s  "
             f"restarts {d['restarts_total']:g}", f"tasks {counts}", "", "TREE"]
    lines += _tree_lines(d["tree"], 1)
    lines += ["", f"{'POOL':<16} {'SIZE':>4} {'MIN':>4} {'MAX':>4} {'AGENTS':>6} {'LOAD':>5} "
                  f"{'QUEUE':>6} {'DONE':>8}"]
    for p in d["pools"]:
        lines.append(f"{p['pool']:<16} {p['size']:>4} {p['min']:>4} {p['max']:>4} {p['agents']:>6} "
                     f"{p['inflight']:>5} {p['queue']:>6} {p['done']:>8}")
    lines += ["", "RECENT RESTARTS"] + ([_event_line(e) for e in d["restarts"]] or ["  none"])
    lines += ["", "RECENT AUCTIONS AND VOTES"] + ([_event_line(e) for e in d["coordination"]] or ["  none"])
    return lines


def _tree_lines(node: dict[str, Any], depth: int) -> list[str]:
    pad = "  " * depth
    if node["kind"] == "supervisor":
        head = [f"{pad}{node['id']:<26} {node['strategy']:<13} {node['state']:<8} "
                f"restarts={node['restarts']}"]
        return head + [line for c in node["children"] for line in _tree_lines(c, depth + 1)]
    up = f"{node['uptime_s']:.0f}s" if node.get("uptime_s") is not None else "-"
    return [f"{pad}{node['id']:<26} pid={str(node['pid']):<8} {node['state']:<8} "
            f"restarts={node['restarts']:<3} up={up}"]


def _event_line(ev: dict[str, Any]) -> str:
    from runtime.observability.tracing import event_text
    clock = datetime.fromtimestamp(ev.get("ts", 0)).strftime("%H:%M:%S.%f")[:-3]
    return f"  {clock} {event_text(ev)}"


# -- events ----------------------------------------------------------------------------------

@cli.command()
@click.option("--type", "type_", default=None, help="Event type prefix, e.g. task. or supervisor.")
@click.option("--agent", default=None, help="Only events of this agent (e.g. echo.0).")
@click.option("--since", type=float, default=None,
              help="Epoch seconds; with --follow, print the events since then first.")
@click.option("--limit", default=200, show_default=True, help="At most this many past events.")
@click.option("--follow", is_flag=True, help="Print new events as they come, from now on "
              "(from --since if given), until the daemon stops or Ctrl-C.")
@click.option("--json", "as_json", is_flag=True, help="One raw JSON object per line.")
@click.pass_context
def events(ctx: click.Context, type_: str | None, agent: str | None, since: float | None,
           limit: int, follow: bool, as_json: bool) -> None:
    """The event log as readable lines (--json: JSON lines).

    --follow starts at the end of the log (as tail -f does) unless --since is given, and
    reads on by file position, losing nothing."""
    show = (lambda ev: click.echo(orjson.dumps(ev).decode())) if as_json else (
        lambda ev: click.echo(event_line(ev)))
    if not follow:
        for ev in call(ctx, "events", type=type_, agent=agent, since=since, limit=limit):
            show(ev)
        return
    filters = {"type": type_, "agent": agent}
    cursor = call(ctx, "events_after", cursor=None, **filters)["cursor"]  # the end, now
    seen: set[bytes] = set()
    if since is not None:  # the past first; what also follows the cursor is printed once
        for ev in call(ctx, "events", since=since, limit=limit, **filters):
            seen.add(orjson.dumps(ev))
            show(ev)
    try:
        _follow(ctx, cursor, filters, seen, show)
    except KeyboardInterrupt:
        pass


def _follow(ctx: click.Context, cursor: Any, filters: dict[str, Any], seen: set[bytes],
            show: Callable[[dict[str, Any]], None]) -> None:
    while True:
        try:
            page = client(ctx).call("events_after", cursor=cursor, **filters)
        except AgoraError as e:
            if isinstance(e, Unavailable):  # DaemonNotRunning is one too
                return  # the daemon stopped: a follow ends cleanly
            raise CliError(e) from e
        for ev in page["events"]:
            if not seen or orjson.dumps(ev) not in seen:
                show(ev)
        cursor = page["cursor"]
        if not page["events"]:
            seen.clear()  # the history's overlap is behind us
            time.sleep(0.25)


def event_line(ev: dict[str, Any]) -> str:
    """One event as a readable line: local time, type, source, its fields."""
    from runtime.observability.tracing import event_text
    clock = datetime.fromtimestamp(ev.get("ts", 0)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{clock} {event_text(ev)}"
