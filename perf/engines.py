"""Engines side by side: a trivial task on a local pool, on a Ray pool of the same size,
and on Ray alone; registry operations on the local partitions and on Redis.  One run.

    python perf/engines.py [--quick] [--seed N] [--json]

Ray sends traffic beyond loopback even with its dashboard and usage stats off, so when
Ray is importable this script re-runs itself inside a loopback-only network namespace
(``unshare --net``, then ``ip link set lo up``) and refuses to measure Ray anywhere else;
the local figures are taken in the same namespace, so all columns share the conditions.
Redis: a private redis-server on a unix socket (skipped without the binary).

Keys: ``rtt_p50_us`` and ``tasks_per_s`` as ``{"local", "ray_pool", "ray_bare"}``
(``ray_actor`` too: a bare actor call, what a Ray pool's task is underneath), and
``registry_ops_per_s`` as ``{"partitioned": {"register", "lookup"}, "redis": {...}}``.
Target: a Ray pool's round trip <= 1.2x bare Ray's (``ray.get(f.remote())``).
Settings: daemon defaults, pools of 2 agents, ``[ray] num_cpus = 2``.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import REPO, emit_json, parse_args, private_runtime_dir
from _ray import in_netns_or_reexec, ray_bare

POOL = """
[daemon]
drain_s = 3.0
[ray]
num_cpus = 2
[pools.p]
agent = "perf._agents:Echo"
size = 2
max = 2
"""


# ---------------------------------------------------------------- daemons

class _Daemon:
    def __init__(self, engine: str) -> None:
        from runtime.daemon.launch import spawn, wait_up
        from runtime.wire.client import Client
        private_runtime_dir()
        self.home = Path(tempfile.mkdtemp(prefix="agora-perf-"))
        text = POOL.replace('size = 2', f'engine = "{engine}"\nsize = 2')
        self.proc = spawn(self.home, text, path=[str(REPO)])
        wait_up(self.home, self.proc, timeout=180.0)
        self.client = Client(str(self.home), timeout=120.0)

    def close(self) -> None:
        import shutil

        from runtime.daemon.launch import stop
        self.client.close()
        stop(self.home, self.proc, timeout=60.0)
        shutil.rmtree(self.home, ignore_errors=True)


def daemon_figures(engine: str, n: int, total: int, rng: random.Random) -> tuple[float, float]:
    d = _Daemon(engine)
    try:
        c = d.client
        deadline = time.monotonic() + 180  # a Ray agent joins once its actor is placed
        while len(c.call("agents")) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {engine} pool's agents did not join within 180 s")
            time.sleep(0.2)
        for i in range(10):  # warm: actors made, connections open
            c.call("submit", task={"capability": "add", "input": {"a": i, "b": 1}}, result=True)
        rtts = []
        for i in range(n):
            t0 = time.perf_counter()
            rec = c.call("submit", task={"capability": "add", "input": {"a": rng.randrange(99), "b": i}},
                         result=True)
            rtts.append((time.perf_counter() - t0) * 1e6)
            assert rec["state"] == "succeeded", rec
        tasks = [{"capability": "add", "input": {"a": i, "b": 1}} for i in range(total)]
        t0 = time.perf_counter()
        ids: list[str] = []
        for i in range(0, total, 1000):
            ids += c.call("submit_many", tasks=tasks[i:i + 1000], wait_s=120)
        counts = c.call("wait_all", ids=ids, timeout_s=600)
        assert counts == {"succeeded": total}, counts
        return statistics.median(rtts), total / (time.perf_counter() - t0)
    finally:
        d.close()


# ---------------------------------------------------------------- registry

def registry_figures(count: int) -> dict[str, dict[str, float]]:
    out = {"partitioned": _partitioned_ops(count)}
    try:
        out["redis"] = _redis_ops(count)
    except (ImportError, FileNotFoundError, RuntimeError) as e:
        out["redis"] = {"skipped": str(e)}
    return out


def _ops(backend, count: int) -> dict[str, float]:
    entry = {"capabilities": ["summarize"], "metadata": {"pool": "p", "load": 0.1, "health": "ok"}}
    t0 = time.perf_counter()
    for i in range(count):
        backend.register(f"a.{i}", entry, os.getpid())
    reg = count / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(count):
        backend.lookup(f"a.{i % count}")
    look = count / (time.perf_counter() - t0)
    backend.clear()
    return {"register": round(reg), "lookup": round(look)}


def _partitioned_ops(count: int) -> dict[str, float]:
    from registry import Partitions  # perf/registry.py's partition processes

    from runtime.registry.backends import make_backend
    run_dir = tempfile.mkdtemp(prefix="agora-perf-reg-")
    parts = Partitions(4, run_dir)
    try:
        backend = make_backend("partitioned", sock_paths=parts.paths, tables=parts.tables)
        try:
            return _ops(backend, count)
        finally:
            backend.close()
    finally:
        parts.stop()


def _redis_ops(count: int) -> dict[str, float]:
    import shutil

    from runtime.registry.backends import make_backend
    if shutil.which("redis-server") is None:
        raise FileNotFoundError("no redis-server binary")
    d = tempfile.mkdtemp(prefix="agr-", dir="/tmp")
    sock = os.path.join(d, "redis.sock")
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                             "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start within 10 s")
            time.sleep(0.01)
        backend = make_backend("redis", redis_url=f"unix://{sock}", lease_keeper=False)
        try:
            return _ops(backend, count)
        finally:
            backend.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    a = parse_args(__doc__)
    skip = in_netns_or_reexec()
    rng = random.Random(a.seed)
    n, total = (200, 2000) if a.quick else (1000, 10_000)
    rows = {"local": daemon_figures("local", n, total, rng)}
    if skip is None:
        rows["ray_pool"] = daemon_figures("ray", n, total, rng)
        rows.update(ray_bare(n, total))
    res = {"seed": a.seed, "settings": "daemon defaults; pools of 2; [ray] num_cpus = 2",
           "ray": {"skipped": skip} if skip else {"namespace": "loopback only"},
           "rtt_p50_us": {k: round(v[0], 1) for k, v in rows.items()},
           "tasks_per_s": {k: round(v[1]) for k, v in rows.items()},
           "registry_ops_per_s": registry_figures(2000 if a.quick else 20_000)}
    _print(res)
    emit_json(a, res)


def _print(res: dict) -> None:
    print(f"{'engine':12} {'rtt p50 (us)':>14} {'tasks/s':>10}")
    for k, v in res["rtt_p50_us"].items():
        print(f"{k:12} {v:>14,.1f} {res['tasks_per_s'][k]:>10,}")
    r = res["rtt_p50_us"]
    if "ray_pool" in r:
        print(f"ray pool / bare ray round trip: {r['ray_pool'] / r['ray_bare']:.2f}x (target <= 1.2x)")
    else:
        print(f"ray: skipped ({res['ray']['skipped']})")
    for k, v in res["registry_ops_per_s"].items():
        print(f"registry {k:12} {v}")


if __name__ == "__main__":
    main()
