"""A realistic stand-in for an external API (an LLM or ML service), on 127.0.0.1 only.

``FakeAPI`` runs a ``ThreadingHTTPServer`` on an ephemeral loopback port in a thread of the
calling process. What it models, each a knob:

- latency: lognormal around ``median_s`` (default 0.3 s) with shape ``sigma`` (default 0.6:
  p99 ~ 4x the median, a heavy tail), capped at ``tail_cap`` medians, drawn from a seeded
  ``random.Random``; every wait is multiplied by ``time_scale`` (0.01 runs it 100x faster);
- a concurrency cap: at most ``concurrency`` requests are served at once, the others queue
  (up to ``queue_wait_s``, then 503), as a real server's worker pool does;
- injected 5xx: each request fails with 500 with probability ``error_rate``;
- outages: ``outage(seconds)`` or ``outage_start()`` / ``outage_stop()``: every request gets
  503 at once while one lasts;
- rate limiting: above ``rate_limit`` requests per second (a sliding one-second window) the
  answer is 429 with ``Retry-After`` (integer seconds, or decimals with
  ``fractional_retry_after`` so tests need not wait whole seconds);
- endpoints: ``POST /v1/complete`` (JSON in, ``{"answer": ..., "n": ...}`` out), ``GET
  /v1/echo?q=...``, and ``POST /v1/batch`` with ``{"items": [...]}`` answered by
  ``{"results": [{"status": 200, "body": ...}, ...]}`` (one latency draw per batch, one
  error draw per item);
- ``pause()`` / ``resume()``: hold every admitted request before it is served (at most
  ``pause_max_s``), so a test can have calls in flight on purpose instead of by timing;
- ``arrivals``: the monotonic times of the last ``keep_arrivals`` requests (rate checks);
- counters: requests by path and status, the answers' ``n``, the highest concurrency seen,
  and per-body counts (``seen(body)``), so tests can assert that two identical concurrent
  calls made one request.

It lives in the product (runtime.demo) because ``agora demo`` and perf/pipelines.py call it;
tests/support/fake_api.py re-exports it.  ``python -m runtime.demo.fake_api --port 0`` is not
offered: it runs inside the process that needs it, as a thread.

Use it as a context manager; ``close()`` stops the server and joins its threads (clients
should close their connections first; idle keep-alive connections time out after 2 s).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import socket
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FakeAPI"]


class FakeAPI:
    def __init__(self, *, seed: int = 0, median_s: float = 0.3, sigma: float = 0.6, tail_cap: float = 20.0,
                 time_scale: float = 1.0, concurrency: int = 64, queue_wait_s: float = 30.0,
                 error_rate: float = 0.0, rate_limit: float | None = None,
                 fractional_retry_after: bool = False, keep_arrivals: int = 100_000) -> None:
        self.median_s, self.sigma, self.tail_cap, self.time_scale = median_s, sigma, tail_cap, time_scale
        self.error_rate, self.rate_limit, self.fractional_retry_after = error_rate, rate_limit, fractional_retry_after
        self.queue_wait_s = queue_wait_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(concurrency)
        self._recent: deque[float] = deque()
        self._outage_until: float | None = None
        self._gate = threading.Event()
        self._gate.set()
        self.pause_max_s = 30.0
        self.by_path: Counter[str] = Counter()
        self.by_status: Counter[int] = Counter()
        self.bodies: Counter[str] = Counter()
        self.arrivals: deque[float] = deque(maxlen=keep_arrivals)
        self.in_flight = 0
        self.max_in_flight = 0
        self._n = 0
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = False  # server_close() joins the request threads
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-api", daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def outage(self, seconds: float) -> None:
        """Answer 503 to everything for ``seconds`` (real seconds, not scaled), from now."""
        with self._lock:
            self._outage_until = time.monotonic() + seconds

    def outage_start(self) -> None:
        with self._lock:
            self._outage_until = math.inf

    def outage_stop(self) -> None:
        with self._lock:
            self._outage_until = None

    def pause(self) -> None:
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    def hold(self) -> None:
        """Called by a handler before it serves: wait while paused (bounded)."""
        self._gate.wait(self.pause_max_s)

    @property
    def requests(self) -> int:
        with self._lock:
            return sum(self.by_path.values())

    def seen(self, body: bytes | str) -> int:
        """How many requests carried exactly this body (or query string)."""
        with self._lock:
            return self.bodies[_digest(body)]

    def close(self) -> None:
        self.resume()  # held requests finish, so their threads can be joined
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10.0)

    def __enter__(self) -> FakeAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- behaviour (called by the handler threads) ------------------------------------
    def latency(self) -> float:
        with self._lock:
            z = self._rng.gauss(0.0, 1.0)
        return min(self.tail_cap, math.exp(self.sigma * z)) * self.median_s * self.time_scale

    def admit(self, path: str, body: bytes) -> tuple[int, dict[str, str]] | None:
        """Count the request; an early answer (503 outage, 429) or None to serve it."""
        now = time.monotonic()
        with self._lock:
            self.by_path[path] += 1
            self.bodies[_digest(body)] += 1
            self.arrivals.append(now)
            if self._outage_until is not None and now < self._outage_until:
                return 503, {}
            if self.rate_limit is not None:
                while self._recent and self._recent[0] <= now - 1.0:
                    self._recent.popleft()
                if len(self._recent) >= self.rate_limit:
                    wait = self._recent[0] + 1.0 - now
                    ra = f"{wait:.3f}" if self.fractional_retry_after else str(max(1, math.ceil(wait)))
                    return 429, {"Retry-After": ra}
                self._recent.append(now)
        return None

    def fails(self) -> bool:
        with self._lock:
            return self._rng.random() < self.error_rate

    def next_n(self) -> int:
        with self._lock:
            self._n += 1
            return self._n

    def enter(self) -> bool:
        if not self._slots.acquire(timeout=self.queue_wait_s):
            return False
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
        self._slots.release()

    def answer(self, path: str, query: str, body: bytes) -> tuple[int, Any]:
        """Status and JSON body of a served request (latency already waited)."""
        if path == "/v1/batch":
            return self._batch(body)
        if self.fails():
            return 500, {"error": "injected failure"}
        if path == "/v1/complete":
            return 200, {"answer": _parse(body), "n": self.next_n()}
        if path == "/v1/echo":
            return 200, {"q": parse_qs(query).get("q", [""])[0], "n": self.next_n()}
        return 404, {"error": f"no such endpoint {path}"}

    def _batch(self, body: bytes) -> tuple[int, Any]:
        data = _parse(body)
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            return 400, {"error": 'a batch body is {"items": [...]}'}
        results = []
        for item in data["items"]:
            if self.fails():
                results.append({"status": 500, "body": {"error": "injected failure"}})
            else:
                results.append({"status": 200, "body": {"answer": item, "n": self.next_n()}})
        return 200, {"results": results}

    def record_status(self, status: int) -> None:
        with self._lock:
            self.by_status[status] += 1


class _Server(ThreadingHTTPServer):
    """A listen backlog for many clients at once (the default of 5 drops SYNs when 64 agents'
    calls connect together; the kernel then retries them only after 1 s, 3 s, ...)."""

    request_queue_size = 256

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up before its answer (its timeout fired) is what a real server
        sees all day: not worth a traceback on stderr; anything else still gets one."""
        import sys
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _digest(body: bytes | str) -> str:
    raw = body.encode() if isinstance(body, str) else body
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body.decode("utf-8", "replace")


def _handler(api: FakeAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 2.0  # an idle keep-alive connection ends, so close() can join its thread

        def setup(self) -> None:
            super().setup()
            # headers and body go out as two writes: without this, Nagle + delayed ACK add ~40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            early = api.admit(parts.path, body if body else parts.query.encode())
            if early is not None:
                self._reply(early[0], {"error": "unavailable" if early[0] == 503 else "rate limited"}, early[1])
                return
            if not api.enter():
                self._reply(503, {"error": "server saturated"}, {})
                return
            try:
                api.hold()
                time.sleep(api.latency())
                status, payload = api.answer(parts.path, parts.query, body)
            finally:
                api.leave()
            self._reply(status, payload, {})

        def _reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            api.record_status(status)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # tests and benchmarks read the counters, not a log on stderr

    return Handler
