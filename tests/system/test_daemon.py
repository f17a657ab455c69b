"""The daemon as a user meets it: up, status, down, bad input, other users, kills.

Each test starts a real daemon (a child process in its own session); the autouse leak
fixture checks that no process, socket file or /dev/shm segment outlives the test.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import orjson
import psutil
import pytest
from click.testing import CliRunner

from runtime.cli.main import cli
from runtime.errors import DaemonNotRunning, InvalidInput, UnknownCommand
from runtime.wire import paths
from runtime.wire.client import Client
from tests.support.daemons import config, kill_tree, running_daemon, spawn, stop, wait_up


def raw_exchange(home, payload: bytes, expect_reply: bool = True) -> dict | None:
    """Send raw bytes on a fresh connection; return the first reply frame (or None on EOF)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(paths.control_socket(home)))
    try:
        s.sendall(payload)
        if not expect_reply:
            s.shutdown(socket.SHUT_WR)
        head = b""
        while len(head) < 4:
            chunk = s.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (n,) = struct.unpack(">I", head)
        body = b""
        while len(body) < n:
            body += s.recv(n - len(body))
        return orjson.loads(body)
    finally:
        s.close()


def frame(obj_bytes: bytes) -> bytes:
    return struct.pack(">I", len(obj_bytes)) + obj_bytes


BAD_INPUTS = {
    "garbage": (frame(b"\x00\x01garbage{{{"), "PROTOCOL_ERROR"),
    "not an object": (frame(b"[1, 2, 3]"), "PROTOCOL_ERROR"),
    "oversized header": (struct.pack(">I", 1 << 30) + b"{}", "FRAME_TOO_LARGE"),
    "deep nesting": (frame(b'{"v":1,"id":1,"cmd":"ping","args":{"x":' + b"[" * 5000 + b"]" * 5000 + b"}}"),
                     "PROTOCOL_ERROR"),
    "huge integer": (frame(b'{"v":1,"id":1,"cmd":"ping","args":{"n":' + b"9" * 400 + b"}}"),
                     "PROTOCOL_ERROR"),
    "pickle bytes": (frame(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01."), "PROTOCOL_ERROR"),
    "auth challenge": (b"#CHALLENGE#" + os.urandom(20), "FRAME_TOO_LARGE"),
    "unknown command": (frame(b'{"v":1,"id":7,"cmd":"rm_rf","args":{}}'), "UNKNOWN_COMMAND"),
    "wrong argument type": (frame(b'{"v":1,"id":8,"cmd":"result","args":{"id":42}}'), "INVALID_INPUT"),
    "unknown argument": (frame(b'{"v":1,"id":9,"cmd":"ping","args":{"sudo":true}}'), "INVALID_INPUT"),
    "wrong version": (frame(b'{"v":99,"id":1,"cmd":"ping","args":{}}'), "PROTOCOL_ERROR"),
}


def test_up_status_down_and_every_bad_input_gets_a_typed_error(agora_env):
    with running_daemon(agora_env, config()) as (c, proc):
        st = c.call("status")
        assert st["root_pid"] == proc.pid
        workers = [n for n in _walk(st["tree"]) if n["kind"] == "worker"]
        assert {"telemetry", "coordinator", "agent:echo.0", "agent:echo.1"} <= {w["id"] for w in workers}
        assert all(w["state"] == "running" and w["pid"] for w in workers)
        for name, (payload, code) in BAD_INPUTS.items():
            reply = raw_exchange(agora_env, payload)
            assert reply is not None and reply["error"]["code"] == code, (name, reply)
            assert c.call("ping")["pong"], f"daemon stopped answering after {name}"
        truncated = frame(b'{"v":1,"id":1,"cmd":"ping"}')[:-5]
        assert raw_exchange(agora_env, truncated, expect_reply=False) is None
        with pytest.raises(UnknownCommand):
            c.call("no_such_command")
        with pytest.raises(InvalidInput):
            c.call("submit", task={"capability": "echo", "input": 1, "options": {"priority": "high"}})
        assert c.call("ping")["pong"]
    assert proc.returncode == 0


def _walk(node):
    yield node
    for child in node.get("children", ()):
        yield from _walk(child)


def test_cli_says_when_the_daemon_is_not_running(agora_env):
    r = CliRunner().invoke(cli, ["--home", str(agora_env), "status"], standalone_mode=False)
    assert isinstance(r.exception.err, DaemonNotRunning)
    from runtime.cli.main import main
    assert main(["--home", str(agora_env), "status"]) == DaemonNotRunning.exit_code == 69


def test_two_daemons_never_share_a_home(agora_env):
    with running_daemon(agora_env, config(size=1)):
        second = spawn(agora_env, None)
        assert second.wait(30) != 0
        assert "an agora daemon already runs on home" in (agora_env / "agora.log").read_text()


def test_another_user_is_refused(agora_env):
    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    with running_daemon(agora_env, config(size=1)) as (c, _):
        sock_path = str(paths.control_socket(agora_env))
        # the directories (0700) already stop others; open them up to test the uid check itself
        sock_dir = os.path.dirname(sock_path)
        for d in (os.path.dirname(sock_dir), sock_dir):
            os.chmod(d, 0o755)
        os.chmod(sock_path, 0o777)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(r)
            try:
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(sock_path)
                s.sendall(frame(b'{"v":1,"id":1,"cmd":"ping","args":{}}'))
                os.write(w, b"served" if s.recv(4) else b"refused")
            except OSError:
                os.write(w, b"refused")
            os._exit(0)
        os.close(w)
        verdict = os.read(r, 16)
        os.close(r)
        os.waitpid(pid, 0)
        assert verdict == b"refused"
        assert c.call("ping")["pong"]
        for d in (os.path.dirname(sock_dir), sock_dir):
            os.chmod(d, 0o700)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if c.call("events", type="control.refused"):
                break
            time.sleep(0.05)
        assert c.call("events", type="control.refused")[0]["peer_uid"] == 65534


def test_sigkill_of_the_daemon_leaves_no_process_of_the_tree(agora_env):
    proc = spawn(agora_env, config(size=3))
    try:
        wait_up(agora_env, proc)
        with Client(str(agora_env)) as c:
            pids = [n["pid"] for n in _walk(c.call("status")["tree"]) if n.get("pid")]
        procs = [psutil.Process(p) for p in pids]
        assert len(procs) >= 8  # telemetry, 4 partitions, coordinator, 3 agents
        kill_tree(proc)
        _, alive = psutil.wait_procs(procs, timeout=2.0)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"still alive 2 s after SIGKILL of the root: {alive}"
    finally:
        stop(agora_env, proc)
    _remove_stale_sockets(agora_env)


def _remove_stale_sockets(home):
    """After a kill -9 the socket files of the dead run remain until the next start; the
    next start cleans them, and so does this helper for tests that do not start again."""
    import shutil
    shutil.rmtree(paths.socket_dir(home), ignore_errors=True)


def test_sigterm_drains_and_exits_zero(agora_env):
    proc = spawn(agora_env, config(size=1))
    try:
        wait_up(agora_env, proc)
        with Client(str(agora_env)) as c:
            tid = c.call("submit", task={"capability": "sleep", "input": {"s": 0.5}})
            deadline = time.monotonic() + 10
            while c.call("result", id=tid)["state"] != "running" and time.monotonic() < deadline:
                time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        stop(agora_env, proc)
    from runtime.tasks.journal import Journal
    with Journal(agora_env) as j:
        assert j.get(tid).state == "succeeded"  # it finished inside the drain window


def test_restart_after_kill_resumes_unfinished_and_sweeps(agora_env, tmp_path):
    import numpy as np
    np.save(tmp_path / "v.npy", np.arange(1000, dtype=np.float64))
    extra = ('\n[context]\nv = "%s"\n[pools.vec]\nagent = "tests.support.agents:Vectors"\n'
             'size = 1\n[pools.vec.capabilities.colsum]\ncost = 1.0\n') % (tmp_path / "v.npy")
    proc = spawn(agora_env, config(size=2, extra=extra))
    try:
        wait_up(agora_env, proc)
        with Client(str(agora_env)) as c:
            assert c.call("submit", task={"capability": "colsum", "input": {"name": "v"}}) \
                and True
            blocker = c.call("submit", task={"capability": "sleep", "input": {"s": 30}})
            queued = c.call("submit_many", tasks=[{"capability": "add", "input": {"a": i, "b": 1}}
                                                  for i in range(20)])
            deadline = time.monotonic() + 10
            while c.call("result", id=blocker)["state"] != "running" and time.monotonic() < deadline:
                time.sleep(0.01)
        segs_before = {n for n in os.listdir("/dev/shm") if n.startswith("agora.") and
                       n.split(".")[1].startswith(f"{proc.pid}-")}
        assert segs_before, "the context was published into /dev/shm"
        kill_tree(proc)
    finally:
        stop(agora_env, proc)
    assert all(os.path.exists(f"/dev/shm/{n}") for n in segs_before)  # left by the kill
    with running_daemon(agora_env, None) as (c, _):
        assert not any(os.path.exists(f"/dev/shm/{n}") for n in segs_before), "swept at start"
        results = [c.call("result", id=t, wait=True, timeout_s=30) for t in queued]
        assert [r["result"] for r in results] == [i + 1 for i in range(20)]
        b = c.call("result", id=blocker)
        assert b["state"] in ("queued", "running") and b["attempts"] >= 1  # resumed
        first = c.call("attempts", id=blocker)[0]
        assert first["outcome"] == "crashed" and first["error"]["code"] == "LOST"
        c.call("cancel", id=blocker)
        r = c.call("submit", task={"capability": "colsum", "input": {"name": "v"}})
        out = c.call("result", id=r, wait=True, timeout_s=30)["result"]
        assert out == {"sum": float(sum(range(1000))), "writeable": False}


def test_agents_volunteer_for_the_oom_killer_before_the_supervisor(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, proc):
        agent = c.call("agents")[0]
        with open(f"/proc/{agent['pid']}/oom_score_adj") as f:
            assert int(f.read()) == 500
        with open(f"/proc/{proc.pid}/oom_score_adj") as f:
            assert int(f.read()) < 500
