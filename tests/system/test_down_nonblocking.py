"""``down`` does not hold the coordinator's loop on the root (issue 15, item 4): with the
root stopped (SIGSTOP: it cannot answer, as when it forks a storm of agents), a ``down``
waits for it while ``ping`` on another connection is answered; once the root runs again
``down`` is answered and the daemon stops cleanly."""

from __future__ import annotations

import os
import signal

from runtime.config import RunPaths
from runtime.wire.client import Client
from tests.support.daemons import config, spawn, stop, wait_up
from tests.support.fuzz import RawConn, frame


def test_ping_is_served_while_down_waits_for_a_stopped_root(agora_env):
    proc = spawn(agora_env, config(size=1))
    try:
        wait_up(agora_env, proc)
        down = RawConn(RunPaths.for_home(agora_env).control, timeout=30)
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            down.send(frame(b'{"v":1,"id":1,"cmd":"down"}'))
            with Client(str(agora_env), timeout=5) as c:  # the old blocking call held it 30 s
                assert c.call("ping")["pong"] is True
                assert c.call("ping")["pong"] is True
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        reply = down.reply(30)
        down.close()
        assert reply.kind == "ok" and reply.value == {"stopping": True}, reply
        assert proc.wait(60) == 0
    finally:
        stop(agora_env, proc)
