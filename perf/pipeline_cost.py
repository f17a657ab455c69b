"""CPU that agora's own processes spend per pipeline of perf/pipelines.py's workload.

    python perf/pipeline_cost.py [--quick] [--seed N] [--json] [--n N] [--config naive|agora]
                                 [--window W] [--spy DIR [--top N]] [--journal]

One daemon with perf/pipelines.py's configuration (``agora`` by default) and fake API;
after a warm-up, ``n`` pipelines (default 120, 40 with ``--quick``) run with at most
``window`` (default 12) in flight: the submitter keeps the window full, as an open loop
at a load the agents absorb.  The CPU time (user + system, psutil) of each non-agent
process (root, coordinator, the registry partitions, telemetry) is read before and after:
the table gives milliseconds per pipeline and per step (6 steps, the check step counting
once) for each role, and for the agents as a whole.  CPU time, unlike wall-clock time,
does not count waits for a core, so the figures hold on a loaded machine.

``--journal``: no daemon; the journal calls the coordinator makes for ``n`` pipelines (submit,
the dispatch reads, start, finish with the documents perf/_agents_pipeline.py returns, the
check step's result holding its winner and 3 candidates, pipeline_progress' reads), in this
process: journal CPU (process_time) per pipeline, WAL bytes written per pipeline (automatic
checkpoints off) and the time per statement kind.  Deterministic enough to compare one
journal change with another on a loaded machine.

``--spy DIR``: py-spy records the coordinator at 200 Hz without stopping it
(``--nonblocking``) during the measured pipelines (``DIR/coordinator.txt``, raw folded
stacks; needs py-spy on PATH) and the script prints the hottest lines (self time) and
functions (callees included), waits left out (``--top N`` of each).  py-spy's samples are
not CPU time: a thread that is runnable but preempted counts too.

Keys of the JSON line: ``ms_per_pipeline`` (role -> ms), ``ms_per_step`` (role -> ms),
``pipelines``, ``succeeded``, ``config``, ``seed``; with ``--journal``: ``journal_ms_per_pipeline``,
``wal_kib_per_pipeline``, ``pipelines``, ``seed``.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "perf"))

import psutil  # noqa: E402
from _common import emit_json, parse_args  # noqa: E402
from pipelines import API, STEPS, Run, corpus_file  # noqa: E402

from runtime.demo.fake_api import FakeAPI  # noqa: E402


def role(p: psutil.Process) -> str:
    """``coordinator``, ``registry``, ``telemetry``, ``root`` or ``agents``, from its name."""
    try:
        name = p.name()
    except psutil.Error:
        return "gone"
    for r in ("coordin", "registry", "telemetry"):
        if name.startswith("agora:" + r):
            return "coordinator" if r == "coordin" else r
    return "agents" if name.startswith("agora:") and "agent" in " ".join(p.cmdline()) else "other"


def cpu_by_role(run: Run) -> dict[str, float]:
    """CPU seconds so far per role of the daemon's processes (agents as one role)."""
    agents = {a["pid"] for a in run.c.call("agents")}
    root = psutil.Process(run.daemon.proc.pid)
    out: dict[str, float] = collections.defaultdict(float)
    for i, p in enumerate([root, *root.children(recursive=True)]):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        r = "root" if i == 0 else "agents" if p.pid in agents else role(p)
        out[r] += t.user + t.system
    return dict(out)


def coordinator(run: Run) -> int:
    root = psutil.Process(run.daemon.proc.pid)
    return next(p.pid for p in root.children() if p.name().startswith("agora:coordin"))


def windowed(run: Run, n: int, window: int) -> list[dict[str, Any]]:
    """``n`` pipelines, at most ``window`` unfinished at once."""
    out: list[dict[str, Any]] = []
    inflight = run.submit(min(window, n))
    sent = len(inflight)
    while inflight:
        out += run.results([inflight.pop(0)])
        if sent < n:
            inflight += run.submit()
            sent += 1
    return out


IDLE = ("EpollSelector.select", "Condition.wait", "_watch_lifeline", "Event.wait", "PollSelector.select")


def _function(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: a function's samples, whatever the line."""
    return re.sub(r":\d+\)$", ")", frame)


def hottest(path: Path, top: int = 25) -> None:
    """The hottest frames of a py-spy raw (folded) file, waits left out (py-spy counts a
    thread blocked in ``select`` or ``read`` as active): self time by line, then inclusive
    time by function."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or frames[-1].startswith(IDLE):
            continue
        k = int(count)
        total += k
        own[frames[-1]] += k
        for f in {_function(f) for f in frames}:
            incl[f] += k
    print(f"py-spy: {total} busy samples of the coordinator (200 Hz)")
    for title, counter in (("self, by line", own), ("inclusive, by function", incl)):
        print(f"-- {title}")
        for frame, k in counter.most_common(top):
            print(f"{100 * k / max(1, total):6.1f}%  {frame[:150]}")


def _step_output(step: str, doc: dict[str, Any]) -> Any:
    """What the agents of perf/_agents_pipeline.py return for ``step`` (their sizes)."""
    from _agents_pipeline import _pad, _timed
    t0 = time.perf_counter()
    add = {"retrieve": {"passages": "agent market auction " * 380}, "embed": {"vector": _pad("v", 3000)},
           "llm": {"answer": _pad("a", 6000)}, "check": {"verdict": "ok:1", "check_pad": _pad("c", 2000)},
           "summarize": {"summary": _pad("s", 4000)}, "score": {"score": 0.5}}[step]
    out = _timed(dict(doc, **add), step, t0, 0.1)
    if step == "check":  # a consensus step's result: the winner and every candidate
        return {"winner": "a", "output": out, "candidates": [{"label": c, "output": out} for c in "abc"]}
    return out


def journal_cost(n: int, seed: int) -> dict[str, Any]:
    from pipelines import spec

    from runtime.tasks.journal import Journal
    from runtime.tasks.pipeline import parse_pipeline
    home = Path(tempfile.mkdtemp(prefix="agora-perf-cost-journal-"))
    j = Journal(home, durability="normal")  # the daemon's default (durability = "process")
    times: collections.Counter[str] = collections.Counter()
    real = j.conn

    class Timed:  # the connection, each statement timed by its first words
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *a: Any) -> Any:
            t = time.perf_counter()
            try:
                return real.execute(sql, *a)
            finally:
                times[" ".join(sql.split()[:4])] += time.perf_counter() - t

    def one(i: int) -> None:
        pid, steps = j.submit_pipeline(parse_pipeline(spec(i, "http://127.0.0.1:1", 3), now=time.time()))
        for step in STEPS:
            tid = steps[step]
            rec = j.get(tid)  # a queued step's record (pipeline_progress -> task_run)
            j.options(tid)  # ConsensusSteps.spec_of
            j.finish_attempt(tid, j.start_attempt(tid, "agent"), "succeeded", result=_step_output(step, rec.input))
            states = j.states(list(j.get_pipeline(pid).steps.values()))  # pipeline_progress
            for t, st in states.items():
                if st == "queued":
                    j.get(t)
    try:
        for i in range(5):
            one(seed * 100_000 + i)  # warm: pages, statements
        j.conn.execute("PRAGMA wal_autocheckpoint=0")
        j.conn = Timed()  # type: ignore[assignment]
        wal = Path(j.path + "-wal")
        w0, t0 = wal.stat().st_size, time.process_time()
        for i in range(n):
            one(seed * 100_000 + 10 + i)
        cpu, wal_bytes = time.process_time() - t0, wal.stat().st_size - w0
    finally:
        j.conn = real
        j.close()
        shutil.rmtree(home, ignore_errors=True)
    return {"journal_ms_per_pipeline": 1000 * cpu / n, "wal_kib_per_pipeline": wal_bytes / n / 1024,
            "by_statement_ms": {k: 1000 * v / n for k, v in times.most_common(8)}}


def main() -> None:
    args = parse_args(__doc__, **{
        "--n": {"type": int, "default": None, "help": "pipelines measured"},
        "--window": {"type": int, "default": 12, "help": "pipelines in flight at most"},
        "--config": {"default": "agora", "choices": ("naive", "agora")},
        "--spy": {"metavar": "DIR", "default": None, "help": "py-spy the coordinator into DIR"},
        "--top": {"type": int, "default": 25, "help": "frames listed with --spy"},
        "--journal": {"action": "store_true", "help": "the journal's part alone, no daemon"}})
    n = args.n or (40 if args.quick else 120)
    if args.journal:
        got = journal_cost(n, args.seed)
        print(f"{n} pipelines through the journal: {got['journal_ms_per_pipeline']:.2f} ms of CPU and "
              f"{got['wal_kib_per_pipeline']:.0f} KiB of WAL per pipeline")
        for k, v in got["by_statement_ms"].items():
            print(f"{v:8.3f} ms  {k}")
        emit_json(args, {**got, "pipelines": n, "seed": args.seed})
        return
    home = Path(tempfile.mkdtemp(prefix="agora-perf-cost-"))
    try:
        corpus = corpus_file(home, args.seed)
        with FakeAPI(seed=args.seed, **API) as api:
            run = Run(args.config, api, corpus, args)
            try:
                run.results(run.submit(6))  # warm-up
                spy = None
                if args.spy:
                    Path(args.spy).mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(["py-spy", "record", "--nonblocking", "-r", "200", "-f", "raw", "-p",
                                            str(coordinator(run)), "-o", str(Path(args.spy) / "coordinator.txt")],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)  # py-spy attached
                before, t0 = cpu_by_role(run), time.monotonic()
                done = windowed(run, n, args.window)
                after, wall = cpu_by_role(run), time.monotonic() - t0
                if spy is not None:
                    spy.send_signal(2)  # SIGINT: py-spy writes its file and ends
                    spy.wait(timeout=30)
            finally:
                run.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    ok = sum(p["state"] == "succeeded" for p in done)
    per_pipe = {r: 1000 * (after.get(r, 0.0) - before.get(r, 0.0)) / n for r in after}
    non_agent = sum(v for r, v in per_pipe.items() if r != "agents")
    per_pipe["non-agent"] = non_agent
    per_step = {r: v / len(STEPS) for r, v in per_pipe.items()}
    print(f"{n} pipelines ({ok} succeeded), window {args.window}, config {args.config}, "
          f"{wall:.1f} s wall, {n / wall * 60:.0f} pipelines/min")
    print(f"{'CPU ms':14}{'/pipeline':>12}{'/step':>10}")
    for r in sorted(per_pipe, key=lambda r: -per_pipe[r]):
        print(f"{r:14}{per_pipe[r]:>12.2f}{per_step[r]:>10.2f}")
    if args.spy:
        hottest(Path(args.spy) / "coordinator.txt", args.top)
    emit_json(args, {"ms_per_pipeline": per_pipe, "ms_per_step": per_step, "pipelines": n, "succeeded": ok,
                     "config": args.config, "seed": args.seed})


if __name__ == "__main__":
    main()
