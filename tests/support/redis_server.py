"""A real redis-server for one test: on a unix socket in a private directory, no TCP port,
no persistence; stopped (and reaped) at teardown, so the suite's leak check finds nothing.

Without the ``redis-server`` binary or the ``redis`` module the Redis tests are skipped
with the reason, unless ``AGORA_REQUIRE_REDIS=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

__all__ = ["RedisServer", "require_redis", "redis_server"]

BOUND = 10.0  # seconds; reached only when the server cannot start or stop


def require_redis(server: bool = True) -> None:
    """Skip (or, with AGORA_REQUIRE_REDIS=1, fail) when Redis cannot be tested here:
    the redis module is missing, or (``server``) the redis-server binary is."""
    missing = []
    if server and shutil.which("redis-server") is None:
        missing.append("the redis-server binary (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("the redis module (pip install 'agora[redis]')")
    if not missing:
        return
    reason = "the Redis registry tests need " + " and ".join(missing)
    if os.environ.get("AGORA_REQUIRE_REDIS") == "1":
        pytest.fail(reason + "; AGORA_REQUIRE_REDIS=1 makes that a failure", pytrace=False)
    pytest.skip(reason)


class RedisServer:
    """One redis-server process listening only on ``self.path`` (a unix socket)."""

    def __init__(self) -> None:
        # a short private directory: a unix socket path must fit in 108 bytes
        self.dir = tempfile.mkdtemp(prefix="agr-", dir="/tmp")
        self.path = os.path.join(self.dir, "redis.sock")
        self.url = f"unix://{self.path}"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--bind", "127.0.0.1", "--unixsocket", self.path,
             "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log"), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.client = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self):
        """Poll with backoff until PING answers (bounded)."""
        import redis
        deadline, delay = time.monotonic() + BOUND, 0.002
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if os.path.exists(self.path):
                client = redis.Redis(unix_socket_path=self.path, socket_timeout=BOUND)
                try:
                    client.ping()
                    return client
                except redis.exceptions.ConnectionError:
                    client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {BOUND} s: {self.log()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "redis.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return "(no log)"

    def command_calls(self) -> dict[str, int]:
        """Calls per command since the last ``reset_stats()`` (INFO commandstats; a
        script's own calls are counted too)."""
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}

    def reset_stats(self) -> None:
        self.client.config_resetstat()

    def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(BOUND)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server():
    require_redis()
    server = RedisServer()
    yield server
    server.stop()
