#!/usr/bin/env python3
"""What one trivial task costs, in figures that hold on a loaded machine: CPU time and
context switches per task of every process involved, agora against
``concurrent.futures.ProcessPoolExecutor(2)`` in the same run.

    python perf/cost_per_task.py [--quick] [--seed N] [--json] [--journal]

Two workloads, each with a pool of 2 workers (``perf._agents:Echo``, capability ``add``):

* ``sequential``: one task at a time, submit to result (``submit`` with ``result=True``;
  the pool's ``submit(...).result()``);
* ``in_flight``: batches of 1,000 submitted and waited for (``submit_many`` +
  ``wait_all``; the pool's ``submit`` of every task, then ``wait``).

Per task: user+system CPU (us) of the client (this process), the coordinator, the agents
(summed) and the rest of the daemon's tree; voluntary+involuntary context switches (a
proxy for wake-ups) of the same, every thread counted (/proc/PID/task/*/status).
``--journal`` adds the journal's statements and COMMITs
per task (read from the coordinator's profile: ``AGORA_PROFILE_COORDINATOR``, so the
daemon runs under cProfile and its CPU figures are then not comparable).
Wall-clock figures are printed too, but on a shared machine trust the CPU columns.
"""

from __future__ import annotations

import os
import pstats
import random
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, wait

import psutil
from _common import Daemon, emit_json, parse_args

ECHO_POOL = """
[daemon]
agent_inflight = {inflight}
[pools.w]
agent = "perf._agents:Echo"
size = {agents}
max = {agents}
mailbox_messages = 100000
"""


def add(a: int, b: int) -> int:
    return a + b


def _ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid`` (psutil's
    ``num_ctx_switches`` reads the main thread's only)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches:" in line)
        except OSError:
            continue
    return total


def _snapshot(procs: dict[str, list[psutil.Process]]) -> dict[str, tuple[float, int]]:
    """role -> (cpu seconds, context switches) summed over the role's processes."""
    out = {}
    for role, ps in procs.items():
        cpu = ctx = 0.0
        for p in ps:
            try:
                t = p.cpu_times()
                ctx += _ctx_switches(p.pid)
            except (psutil.Error, OSError):
                continue
            cpu += t.user + t.system
        out[role] = (cpu, int(ctx))
    return out


def _per_task(before: dict, after: dict, n: int) -> dict[str, dict[str, float]]:
    return {role: {"cpu_us": round((after[role][0] - before[role][0]) / n * 1e6, 1),
                   "ctx_switches": round((after[role][1] - before[role][1]) / n, 2)}
            for role in before}


def _agora_roles(root_pid: int) -> dict[str, list[psutil.Process]]:
    me = psutil.Process()
    root = psutil.Process(root_pid)
    roles: dict[str, list[psutil.Process]] = {"client": [me], "coordinator": [], "agents": [], "other": [root]}
    for p in root.children(recursive=True):
        name = p.name()
        role = ("coordinator" if "coord" in name else "agents" if name.startswith("agora:w.") else
                "telemetry" if "telemetry" in name else "other")
        roles.setdefault(role, [])
        roles[role].append(p)
    return roles


def _measure(roles: dict[str, list[psutil.Process]], run: callable, n: int) -> dict:
    before = _snapshot(roles)
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    out = _per_task(before, _snapshot(roles), n)
    out["wall_us"] = round(wall / n * 1e6, 1)
    out["total_cpu_us"] = round(sum(v["cpu_us"] for k, v in out.items() if isinstance(v, dict)), 1)
    return out


def agora_costs(n_seq: int, n_flight: int, rng: random.Random, profile: str | None,
                inflight: int = 1, agents: int = 2) -> dict:
    if profile:
        os.environ["AGORA_PROFILE_COORDINATOR"] = profile
    try:
        with Daemon(ECHO_POOL.format(inflight=inflight, agents=agents)) as d:
            deadline = time.monotonic() + 120
            while d.client.call("status")["agents"] < agents and time.monotonic() < deadline:
                time.sleep(0.05)
            roles = _agora_roles(d.proc.pid)
            names = {k: [p.name() for p in v] for k, v in roles.items()}
            assert roles["coordinator"] and len(roles["agents"]) == agents, names
            for i in range(50):  # warm up
                d.client.call("submit", task={"capability": "add", "input": {"a": 1, "b": i}}, result=True)

            def seq() -> None:
                for i in range(n_seq):
                    task = {"capability": "add", "input": {"a": rng.randrange(1000), "b": i}}
                    assert d.client.call("submit", task=task, result=True)["state"] == "succeeded"

            def flight() -> None:
                tasks = [{"capability": "add", "input": {"a": rng.randrange(1000), "b": i}} for i in range(n_flight)]
                ids: list[str] = []
                for i in range(0, n_flight, 1000):
                    ids += d.client.call("submit_many", tasks=tasks[i:i + 1000], wait_s=60)
                assert d.client.call("wait_all", ids=ids, timeout_s=300) == {"succeeded": n_flight}

            return {"sequential": _measure(roles, seq, n_seq), "in_flight": _measure(roles, flight, n_flight)}
    finally:
        os.environ.pop("AGORA_PROFILE_COORDINATOR", None)


def ppe_costs(n_seq: int, n_flight: int, rng: random.Random) -> dict:
    with ProcessPoolExecutor(2) as ex:
        for f in [ex.submit(add, 0, i) for i in range(50)]:
            f.result()
        roles = {"client": [psutil.Process()], "agents": psutil.Process().children()}

        def seq() -> None:
            for i in range(n_seq):
                ex.submit(add, rng.randrange(1000), i).result()

        def flight() -> None:
            wait([ex.submit(add, rng.randrange(1000), i) for i in range(n_flight)])

        return {"sequential": _measure(roles, seq, n_seq), "in_flight": _measure(roles, flight, n_flight)}


def journal_counts(profile: str, tasks: int) -> dict[str, float]:
    """sqlite3 execute/executemany calls and COMMITs per task, from the cProfile dump."""
    st = pstats.Stats(profile)
    calls = {"execute": 0, "executemany": 0}
    for (_file, _line, name), (cc, _nc, _tt, _ct, _callers) in st.stats.items():
        for k in calls:
            if name == f"<method '{k}' of 'sqlite3.Connection' objects>":
                calls[k] += cc
    commits = sum(v[0] for (f, _l, n), v in st.stats.items() if n == "_commit" and f.endswith("journal.py"))
    return {"statements_per_task": round((calls["execute"] + calls["executemany"]) / tasks, 2),
            "commits_per_task": round(commits / tasks, 3)}


def main() -> None:
    a = parse_args(__doc__, **{"--journal": {"action": "store_true",
                                             "help": "count SQLite statements and COMMITs (runs under cProfile)"},
                          "--inflight": {"type": int, "default": 1,
                                         "help": "[daemon] agent_inflight (default 1, the daemon's)"},
                          "--agents": {"type": int, "default": 2, "help": "agora's pool size (the pool's stays 2)"}})
    rng = random.Random(a.seed)
    n_seq, n_flight = (300, 3000) if a.quick else (2000, 20000)
    res: dict = {"seed": a.seed, "settings": f"agora pool of {a.agents}, ProcessPoolExecutor(2); "
                               f"agent_inflight {a.inflight}; {n_seq} sequential, "
                               f"{n_flight} in flight"}
    with tempfile.TemporaryDirectory(prefix="agora-cost-") as tmp:
        prof = os.path.join(tmp, "coord.prof") if a.journal else None
        res["agora"] = agora_costs(n_seq, n_flight, rng, prof, a.inflight, a.agents)
        if prof:
            res["journal"] = journal_counts(prof, n_seq + n_flight + 50)
    res["ppe"] = ppe_costs(n_seq, n_flight, rng)
    _print(res)
    emit_json(a, res)


def _print(res: dict) -> None:
    for load in ("sequential", "in_flight"):
        print(f"{load}: per task        cpu_us  ctx_switches")
        for who in ("agora", "ppe"):
            for role, v in res[who][load].items():
                if isinstance(v, dict):
                    print(f"  {who:5} {role:12} {v['cpu_us']:8.1f} {v['ctx_switches']:10.2f}")
            r = res[who][load]
            print(f"  {who:5} {'total':12} {r['total_cpu_us']:8.1f}   wall {r['wall_us']:.1f} us")
    if "journal" in res:
        print(f"journal: {res['journal']}")


if __name__ == "__main__":
    threading.current_thread().name = "cost"
    main()
