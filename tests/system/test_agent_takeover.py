"""The agents' socket is not a way in (issue 15, item 3): a same-uid process that says
``hello`` there without the run's proof of kinship, or claims a live agent's id, is
refused and logged, and the live agent keeps its id and its work."""

from __future__ import annotations

import os
import socket

from runtime.config import RunPaths
from runtime.supervision.kinship import proof
from runtime.wire.client import Client
from runtime.wire.server import InternalReader, encode_internal
from tests.support.daemons import config, running_daemon


def _try_hello(home, hello: dict) -> bytes:
    """Connect to the agents' socket as an outsider; return what is read after the hello
    (b"" means the coordinator hung up)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect(RunPaths.for_home(home).agents_sock)
        reader, frames = InternalReader(), []
        while not frames:
            frames = reader.feed(s.recv(65536))
        nonce = frames[0]["nonce"]
        msg = {**hello}
        if msg.pop("sign_with", None) is not None:
            msg["proof"] = proof(b"x" * 32, nonce, msg["agent"], msg["pid"])
        s.sendall(encode_internal(msg))
        return s.recv(65536)
    finally:
        s.close()


def test_a_hello_without_proof_cannot_take_over_a_live_agent(agora_env):
    with running_daemon(agora_env, config(size=1)) as (c, _):
        tid = c.call("submit", task={"capability": "echo", "input": 1})
        before = c.call("result", id=tid, wait=True, timeout_s=10)["result"]["pid"]
        base = {"t": "hello", "agent": "echo.0", "pool": "echo", "index": 0, "pid": os.getpid(),
                "caps": {"echo": {}}}
        assert _try_hello(agora_env, base) == b""                                  # no proof
        assert _try_hello(agora_env, {**base, "proof": "00" * 32}) == b""          # a made-up one
        assert _try_hello(agora_env, {**base, "sign_with": "another secret"}) == b""
        assert _try_hello(agora_env, {"t": "results", "results": [{"id": tid, "attempt": 1, "ok": 2}]}) == b""
        with Client(str(agora_env)) as c2:
            tid2 = c2.call("submit", task={"capability": "echo", "input": 2})
            rec = c2.call("result", id=tid2, wait=True, timeout_s=10)
            assert rec["state"] == "succeeded" and rec["result"]["pid"] == before
            assert c2.call("result", id=tid)["result"]["echo"] == 1  # untouched by the forgery
            agents = c2.call("agents")
            assert [a["pid"] for a in agents] == [before]
        c.call("ping")
    log = (agora_env / "events.jsonl").read_text()  # the daemon stopped: every event is flushed
    # a results frame before any hello is refused by the frame check (agent.bad_frame),
    # the three forged hellos by the kinship check (agent.refused)
    assert log.count('"agent.refused"') + log.count('"agent.bad_frame"') == 4, log[-3000:]
    assert log.count('"agent.refused"') >= 3, log[-3000:]
