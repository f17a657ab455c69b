"""The Python API against real daemons: futures, map, pipelines, failures and cancels over
``agora.connect``; ``agora.start`` with agents from the user's own ``__main__`` script,
stopping on an exception, and a bad agent path reported at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

import agora
from runtime.errors import DaemonNotRunning, NotFound, Unavailable
from tests.support.daemons import REPO, config, running_daemon
from tests.support.helpers import eventually

pytestmark = pytest.mark.timeout(180)


def test_futures_map_pipeline_failures_and_cancel_over_connect(agora_env):
    with running_daemon(agora_env, config(size=2)) as _, agora.connect(agora_env) as s:
        f = s.submit("echo", {"x": 1})
        assert f.result(timeout=30)["echo"] == {"x": 1}
        assert f.task_id.startswith("t-") and s.result(f.task_id, timeout=10)["echo"] == {"x": 1}

        inputs = [{"a": i, "b": 1} for i in range(600)]  # > one chunk of submit_many
        assert list(s.map("add", inputs, timeout=120)) == [i + 1 for i in range(600)]

        fs = [s.submit("add", {"a": i, "b": 0}) for i in range(20)]
        assert sorted(x.result() for x in agora.as_completed(fs, timeout=60)) == list(range(20))
        assert not agora.wait(fs, timeout=60).not_done

        async def gather():
            one = await s.submit("add", {"a": 2, "b": 3})
            return one, await agora.aio.gather(*(s.submit("add", {"a": i, "b": i}) for i in range(5)))
        assert asyncio.run(gather()) == (5, [0, 2, 4, 6, 8])

        p = s.pipeline({"steps": [{"id": "a", "capability": "add", "input": {"a": 1, "b": 2}},
                                  {"id": "b", "capability": "echo", "input": {"got": {"$ref": "a"}}}]})
        out = p.result(timeout=60)
        assert out["a"] == 3 and out["b"]["echo"] == {"got": 3} and set(p.steps) == {"a", "b"}

        bad = s.submit("flaky", {"succeed_on": 99}, max_attempts=2)
        err = bad.exception(timeout=60)
        assert isinstance(err, agora.TaskFailed)
        assert (err.task_id, err.capability, err.attempts, err.remote_type) == (bad.task_id, "flaky", 2, "RuntimeError")
        assert err.agent.startswith("echo.") and f"on agent {err.agent} after 2 attempts" in str(err)
        assert "flaky failure on attempt 2" in err.remote_traceback
        with pytest.raises(agora.TaskFailed):
            s.result(bad.task_id, timeout=10)

        long = s.submit("sleep", {"s": 60})
        eventually(lambda: s.task(long.wait_id())["state"] == "running", "the sleep task to run")
        assert long.cancel() and long.cancelled()
        eventually(lambda: s.task(long.task_id)["state"] == "cancelled", "the task to end cancelled", 30)
        assert not f.cancel()  # (already ended)

        with pytest.raises(NotFound):
            s.result("t-0000000000000000", timeout=5)
        assert s.status()["tasks"]["succeeded"] >= 600 and s.ping()["pong"]


def test_connect_without_a_daemon_names_the_socket(agora_env):
    with pytest.raises(DaemonNotRunning, match="no agora daemon is listening"):
        agora.connect(agora_env)


SCRIPT = '''
import os, sys
import numpy as np
import agora

class Vocab(agora.Agent):
    @agora.capability("vocab")
    def vocab(self, input, task):
        return int(self.ctx.array("vocab")[: input["n"]].sum())

    @agora.capability("pid")
    def pid(self, input, task):
        return os.getpid()

print("imported as", __name__, flush=True)

if __name__ == "__main__":
    with agora.start(pools={"v": agora.Pool(Vocab, size=2)}, context={"vocab": np.arange(100)}) as rt:
        print("sum", rt.submit("vocab", {"n": 10}).result(timeout=30))
        print("map", list(rt.map("vocab", [{"n": n} for n in range(5)])))
        print("agents", len(set(rt.map("pid", [{}] * 20))) >= 1)
        print("home", rt.home, "root", rt._proc.pid, flush=True)
'''


def test_agents_from_the_users_main_script_and_nothing_left_behind(agora_env, tmp_path):
    script = tmp_path / "myscript.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "sum 45" in lines and "map [0, 0, 1, 3, 6]" in lines and "agents True" in lines
    assert lines.count("imported as __main__") == 1  # agents import it as __mp_main__ ...
    home, root = [ln.split() for ln in lines if ln.startswith("home")][0][1::2]
    assert not os.path.exists(home)  # ... and the run's home is gone with its daemon
    assert not psutil.pid_exists(int(root)) or psutil.Process(int(root)).status() == psutil.STATUS_ZOMBIE


def test_an_exception_in_the_block_still_stops_everything(agora_env):
    pools = {"echo": agora.Pool("tests.support.agents:Echo", size=1),
             "guessers": agora.Pool("tests.support.agents_consensus:Guesser", size=2)}
    with pytest.raises(KeyError, match="from the block"):
        with agora.start(pools=pools) as rt:
            home, proc = rt.home, rt._proc
            assert rt.submit("echo", {}).result(timeout=30)["echo"] == {}
            got = rt.vote("how many?", ["3", "8", "14"], pool="guessers", deadline_s=10)
            assert len(got["ballots"]) == 2 and got["outcome"]["winner"] in ("3", "8", "14")
            assert rt.votes(got["id"])["id"] == got["id"]
            raise KeyError("from the block")
    assert proc.poll() is not None and not home.exists()
    with pytest.raises(agora.ClosedError):
        rt.submit("echo", {})


def test_a_bad_agent_path_is_reported_with_its_cause_and_leaves_nothing(agora_env, monkeypatch):
    import runtime.api.embedded as embedded
    made = []

    def mkdtemp(**kw):  # the home start() makes (other programs share /tmp: look at ours only)
        made.append(real(**kw))
        return made[-1]
    real = embedded.tempfile.mkdtemp
    monkeypatch.setattr(embedded.tempfile, "mkdtemp", mkdtemp)
    with pytest.raises(Unavailable, match="no module named 'no_such_pkg'"):
        agora.start(pools={"x": agora.Pool("no_such_pkg.agents:A")}, start_timeout=60)
    assert len(made) == 1 and not os.path.exists(made[0])
