"""The coordinator's loop never blocks (issue 15, item 4), against a real daemon.

While a client that does not read has large replies pending, `trace` and `events` scan a
big event log and `status` is asked during a fork storm (a pool scaled up by 16 agents at
once), another client's `ping` stays fast.  Bounds are generous for 2 busy cores (p50 <
50 ms, max < 500 ms; before this issue one slow reader alone held the loop 5 s per reply,
a `status` during a storm until the root answered); the figures are printed.  A client
that never reads is dropped once 8 MiB wait for it, and the event says so.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time

import orjson

from runtime.config import RunPaths
from runtime.observability.telemetry import LOG_NAME
from runtime.wire.protocol import encode_frame, make_request
from runtime.wire.server import MAX_PENDING_OUT
from tests.support.daemons import running_daemon

TRACE = "7a" * 16  # the trace id the filler's trace events carry
FILLER_MIB = 48
EVERY = 100  # one filler line in EVERY belongs to TRACE

CONFIG = """
[daemon]
drain_s = 2.0
[pools.echo]
agent = "tests.support.agents:Echo"
size = 2
max = 24
[pools.echo.scaling]
autoscale = false
[pools.echo.capabilities.echo]
cost = 1.0
"""


def write_filler(home) -> int:
    """FILLER_MIB of old events, before the daemon starts (it appends after them); the
    number of TRACE's events among them."""
    lines, in_trace, size, i = [], 0, 0, 0
    while size < FILLER_MIB << 20:
        traced = i % EVERY == 0
        ev = {"ts": 1_000_000.0 + i * 1e-3, "type": "filler.tick", "source": "agent:old.1",
              "trace_id": TRACE if traced else f"{i:032x}", "span_id": f"{i % 7:016x}",
              "n": i, "pad": "x" * 96}
        line = orjson.dumps(ev) + b"\n"
        lines.append(line)
        size, i, in_trace = size + len(line), i + 1, in_trace + traced
    (home / LOG_NAME).write_bytes(b"".join(lines))
    return in_trace


def non_reader(home, requests: int) -> socket.socket:
    """A client that sends `requests` large-reply requests and reads nothing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(RunPaths.for_home(home).control)
    for rid in range(1, requests + 1):
        s.sendall(encode_frame(make_request(rid, "events", {"limit": 10_000})))
    return s


def pings(c, n: int, deadline: float) -> list[float]:
    out = []
    while len(out) < n and time.monotonic() < deadline:
        t0 = time.perf_counter()
        assert c.call("ping")["pong"] is True
        out.append((time.perf_counter() - t0) * 1000)
    return out


def figures(ms: list[float]) -> str:
    xs = sorted(ms)
    return (f"n={len(xs)} p50={statistics.median(xs):.2f}ms p99={xs[int(0.99 * (len(xs) - 1))]:.2f}ms "
            f"max={xs[-1]:.2f}ms")


class Load:
    """Background clients: trace and unfiltered events scans, and a fork storm with
    `status` asked throughout it.  Errors are kept for the test to raise."""

    def __init__(self, home) -> None:
        from runtime.wire.client import Client
        self.home, self.Client = home, Client
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.traces: list[int] = []
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._guard, args=(f,), daemon=True)
                        for f in (self.scans, self.storm)]

    def _guard(self, fn) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 -- raised in the test's thread
            self.errors.append(e)

    def scans(self) -> None:
        with self.Client(str(self.home), timeout=60.0) as c:
            for _ in range(2):
                self.traces.append(c.call("trace", id=TRACE)["trace"]["events"])
                c.call("events", limit=10_000)  # every line parsed: the longest scan

    def storm(self) -> None:
        with self.Client(str(self.home), timeout=60.0) as c:
            c.call("scale", pool="echo", size=18)
            while not self.stop.is_set():
                st = c.call("status")
                self.statuses.append(st["agents"])
                if st["agents"] >= 18:
                    return

    def running(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60.0)
            assert not t.is_alive(), "a load thread did not end"
        if self.errors:
            raise self.errors[0]


def test_ping_stays_fast_under_a_slow_reader_scans_and_a_fork_storm(agora_env):
    in_trace = write_filler(agora_env)
    with running_daemon(agora_env, CONFIG) as (c, _):
        quiet = pings(c, 100, time.monotonic() + 10)
        slow = non_reader(agora_env, 3)  # ~2 MB each: 6 MB wait, under the 8 MiB bound
        try:
            with Load(agora_env) as load:
                loaded, until = [], time.monotonic() + 60
                while load.running() and time.monotonic() < until:  # all along the load
                    loaded += pings(c, 50, until)
            loop = c.call("metrics")["loop"]
        finally:
            slow.close()
    print(f"\nquiet : {figures(quiet)}\nloaded: {figures(loaded)}\n"
          f"traces read {len(load.traces)} (events {load.traces[:1]}), statuses {load.statuses}\n"
          f"coordinator loop: {loop}")
    assert load.traces and load.traces[0] == min(in_trace, 10_000)
    assert load.statuses and load.statuses[-1] >= 18, "the storm's status answers"
    assert statistics.median(loaded) < 50.0, figures(loaded)
    assert max(loaded) < 500.0, figures(loaded)
    assert loop["turns"] > 0 and loop["turn_p50_ms"] is not None


def test_a_client_that_does_not_read_is_dropped_when_its_buffer_is_full(agora_env):
    write_filler(agora_env)
    with running_daemon(agora_env, CONFIG) as (c, _):
        # each reply ~2 MB: enough requests that more than MAX_PENDING_OUT waits unread
        slow = non_reader(agora_env, 2 + 2 * MAX_PENDING_OUT // (2 << 20))
        try:
            deadline, found = time.monotonic() + 30, []
            while not found and time.monotonic() < deadline:
                assert c.call("ping")["pong"] is True  # served all along
                found = c.call("events", type="control.slow_client_dropped")
                time.sleep(0.05)
            assert found, "no control.slow_client_dropped event"
            assert found[0]["limit_bytes"] == MAX_PENDING_OUT and found[0]["pending_bytes"] >= MAX_PENDING_OUT
            slow.settimeout(10.0)
            while slow.recv(1 << 20):  # what the kernel held, then the daemon's close
                pass
        finally:
            slow.close()
        assert c.call("ping")["pong"] is True
