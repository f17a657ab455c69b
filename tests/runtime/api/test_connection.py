"""The multiplexed connection against a scripted server on the real control-socket path:
replies matched by id in any order, interim frames, bounded waits, the daemon going away."""

from __future__ import annotations

import socket
import threading

import pytest

from runtime.api.connection import Connection
from runtime.errors import ClosedError, DaemonNotRunning, DeadlineExceeded, NotFound, Unavailable
from runtime.wire import paths
from runtime.wire.protocol import FrameReader, encode_frame, ok_reply


class Server:
    """Accepts one connection; ``script(requests) -> frames`` decides what is sent back
    once ``wanted`` requests have arrived (so the order of replies is the test's)."""

    def __init__(self, home, wanted, script):
        path = paths.control_socket(home)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.path, self.wanted, self.script = path, wanted, script
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.sock.accept()
        reader, got = FrameReader(), []
        with conn:
            conn.settimeout(10)
            while len(got) < self.wanted:
                data = conn.recv(65536)
                if not data:
                    return
                got += reader.feed(data)
            for frame in self.script(got):
                conn.sendall(frame if isinstance(frame, bytes) else encode_frame(frame))

    def close(self):
        self.thread.join(10)
        self.sock.close()
        self.path.unlink(missing_ok=True)


def test_replies_in_reverse_order_reach_their_own_requests(agora_env):
    srv = Server(agora_env, 3, lambda reqs: [ok_reply(r["id"], r["args"]["n"]) for r in reversed(reqs)])
    with Connection(agora_env, timeout=10) as c:
        ps = [c.send("echo", {"n": i}) for i in range(3)]
        assert [p.wait(10) for p in ps] == [0, 1, 2]
        assert c.in_flight == 0
    srv.close()


def test_callbacks_get_interim_frames_then_the_final_reply(agora_env):
    def script(reqs):
        rid = reqs[0]["id"]
        return [{"v": 1, "id": rid, "more": {"id": "t-1"}}, ok_reply(rid, {"done": True})]
    srv = Server(agora_env, 1, script)
    seen, done = [], threading.Event()

    def cb(p):
        seen.append((p.reply.kind, p.reply.value))
        if p.reply.kind == "ok":
            done.set()
    with Connection(agora_env, timeout=10) as c:
        c.send("submit", {}, callback=cb)
        assert done.wait(10)
    assert seen == [("more", {"id": "t-1"}), ("ok", {"done": True})]
    srv.close()


def test_a_typed_error_reply_is_raised_by_the_waiter(agora_env):
    srv = Server(agora_env, 1, lambda reqs: [{"v": 1, "id": reqs[0]["id"], "error": {
        "code": "NOT_FOUND", "message": "no task t-9", "hint": ""}}])
    with Connection(agora_env, timeout=10) as c, pytest.raises(NotFound, match="no task t-9"):
        c.request("result", {"id": "t-9"})
    srv.close()


def test_a_wait_is_bounded_and_a_late_reply_is_dropped(agora_env):
    release = threading.Event()

    def script(reqs):
        release.wait(10)
        return [ok_reply(reqs[0]["id"], "late"), ok_reply(reqs[1]["id"], "second")]
    srv = Server(agora_env, 2, script)
    with Connection(agora_env, timeout=10) as c:
        first = c.send("slow")
        with pytest.raises(DeadlineExceeded, match="`other`"):
            c.request("other", timeout=0.05)  # (the server answers only after both came)
        release.set()
        assert first.wait(10) == "late"
        srv.close()  # (the server has sent both replies: the second went nowhere)
        assert c.in_flight == 0


def test_the_daemon_going_away_fails_every_pending_request(agora_env):
    srv = Server(agora_env, 2, lambda reqs: [b"\x00\x00"])
    with Connection(agora_env, timeout=10) as c:
        a, b = c.send("a"), c.send("b")
        for p in (a, b):
            with pytest.raises(Unavailable, match="closed the connection"):
                p.wait(10)
        srv.close()
        with pytest.raises(DaemonNotRunning):  # the next request reconnects: nobody there
            c.request("ping")


def test_a_closed_connection_refuses_requests(agora_env):
    srv = Server(agora_env, 2, lambda reqs: [])  # (never answers: it waits for a second request)
    c = Connection(agora_env, timeout=10)
    pending = c.send("x")
    c.close()
    with pytest.raises(ClosedError):
        pending.wait(10)
    with pytest.raises(ClosedError):
        c.send("y")
    srv.close()


def test_no_daemon_is_daemon_not_running(agora_env):
    with pytest.raises(DaemonNotRunning, match="no agora daemon"):
        Connection(agora_env)


def test_the_background_reader_completes_callbacks_nobody_waits_for(agora_env):
    srv = Server(agora_env, 1, lambda reqs: [ok_reply(reqs[0]["id"], "for a callback")])
    got, done = [], threading.Event()
    with Connection(agora_env, timeout=10) as c:
        c.send("x", callback=lambda p: (got.append(p.value()), done.set()))
        c.want_reader()
        assert done.wait(10) and got == ["for a callback"]
    srv.close()


def test_threads_waiting_at_once_each_get_their_own_reply(agora_env):
    n = 6
    srv = Server(agora_env, n, lambda reqs: [ok_reply(r["id"], r["args"]["n"]) for r in reversed(reqs)])
    results = {}
    with Connection(agora_env, timeout=10) as c:
        pendings = [c.send("echo", {"n": i}) for i in range(n)]

        def wait(i):
            results[i] = pendings[i].wait(10)
        threads = [threading.Thread(target=wait, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert results == {i: i for i in range(n)}
    srv.close()
