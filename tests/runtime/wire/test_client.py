"""The Client against a tiny test server (a thread serving one connection), and runtime.wire.paths."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.errors import (
    AgoraError,
    ClosedError,
    DaemonNotRunning,
    DeadlineExceeded,
    InvalidInput,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    Unavailable,
    UnknownCapability,
)
from runtime.observability.trace_context import TraceContext
from runtime.wire import client as client_mod
from runtime.wire import paths
from runtime.wire.client import Client
from runtime.wire.protocol import (
    FrameTooLarge,
    encode_frame,
    error_reply,
    more_reply,
    ok_reply,
    parse_request,
    recv_frame,
    send_frame,
)

WAIT = 10.0  # bound on every wait in the test server; only reached on a bug


def read_request(conn: socket.socket):
    obj = recv_frame(conn, time.monotonic() + WAIT)
    assert obj is not None, "client closed before sending a request"
    return parse_request(obj)


@contextlib.contextmanager
def serve(handler: Callable[[socket.socket], None]) -> Iterator[list]:
    """Listen on the control socket of this test's home; run ``handler`` on one connection."""
    paths.ensure_socket_dir()
    path = os.fspath(paths.control_socket())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen: list = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            listener.settimeout(WAIT)
            conn, _ = listener.accept()
        except OSError:  # shut down by the teardown: the client never connected
            return
        try:
            with conn:
                conn.settimeout(WAIT)
                handler(conn)
        except BaseException as e:  # reported in the main thread below
            failures.append(e)

    thread = threading.Thread(target=run, name="test-control-server")
    thread.start()
    try:
        yield seen
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        thread.join(WAIT + 5)
        listener.close()
        os.unlink(path)
        assert not thread.is_alive(), "test server thread did not finish"
    if failures:
        raise failures[0]


# --- calls ---------------------------------------------------------------------------------

def test_call_returns_the_ok_value_and_sends_the_trace():
    trace = TraceContext.new_trace()

    def handler(conn):
        for _ in range(2):
            req = read_request(conn)
            seen.append(req)
            send_frame(conn, ok_reply(req.id, {"echo": req.args}))

    with serve(handler) as seen, Client(timeout=WAIT) as c:
        assert c.call("echo", x=1, names=["a"], trace=trace) == {"echo": {"x": 1, "names": ["a"]}}
        assert c.request("echo", {"timeout": 3}) == {"echo": {"timeout": 3}}
    assert seen[0].cmd == "echo" and seen[0].trace == trace
    assert seen[1].trace is None and seen[1].id > seen[0].id


def test_typed_errors_come_back_as_their_class():
    def handler(conn):
        req = read_request(conn)
        send_frame(conn, error_reply(req.id, UnknownCapability("no pool offers 'fly'")))
        req = read_request(conn)
        send_frame(conn, {"v": 1, "id": req.id,
                          "error": {"code": "SOMETHING_NEW", "message": "m", "hint": "h"}})
        req = read_request(conn)
        send_frame(conn, error_reply(req.id, FrameTooLarge("too big")))

    with serve(handler), Client(timeout=WAIT) as c:
        with pytest.raises(UnknownCapability, match="fly") as info:
            c.call("submit", capability="fly")
        assert "agora agents" in info.value.hint
        with pytest.raises(RemoteError) as info:
            c.call("x")
        assert info.value.code == "SOMETHING_NEW" and info.value.hint == "h"
        with pytest.raises(FrameTooLarge):  # the connection is still usable after errors
            c.call("x")


def test_error_reply_without_an_id_is_raised():
    def handler(conn):
        read_request(conn)
        send_frame(conn, error_reply(None, ProtocolError("bad frame")))

    with serve(handler), Client(timeout=WAIT) as c, pytest.raises(ProtocolError, match="bad frame"):
        c.call("ping")


def test_daemon_not_running_names_the_socket():
    with pytest.raises(DaemonNotRunning) as info:
        Client()
    assert str(paths.control_socket()) in info.value.message
    assert "agora up" in info.value.hint
    assert isinstance(info.value, Unavailable)


def test_stale_socket_file_is_daemon_not_running():
    paths.ensure_socket_dir()
    path = os.fspath(paths.control_socket())
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: ECONNREFUSED
    try:
        with pytest.raises(DaemonNotRunning, match="not running|listening"):
            Client()
    finally:
        os.unlink(path)


def _close_after_reading(conn):
    read_request(conn)


def _close_without_reading(conn):
    pass  # unread data in our buffer: the client sees ECONNRESET


def _half_a_reply(conn):
    req = read_request(conn)
    conn.sendall(encode_frame(ok_reply(req.id, "x" * 100))[:20])


@pytest.mark.parametrize("death", [_close_after_reading, _close_without_reading, _half_a_reply])
def test_daemon_dying_mid_call_is_unavailable(death):
    with serve(death), Client(timeout=WAIT) as c:
        with pytest.raises(Unavailable, match="closed the connection") as info:
            c.call("ping", payload="y" * 1000)
        assert "retry" in info.value.hint
        assert not isinstance(info.value, DaemonNotRunning)


def test_no_reply_within_the_timeout_is_deadline_exceeded():
    released = threading.Event()

    def handler(conn):
        read_request(conn)
        released.wait(WAIT)

    with serve(handler), Client(timeout=WAIT) as c:
        try:
            with pytest.raises(DeadlineExceeded, match="no reply within"):
                c.call("slow", timeout=0.05)
        finally:
            released.set()


def test_a_listener_of_another_uid_is_refused(monkeypatch):
    monkeypatch.setattr(client_mod, "_our_uid", lambda: os.getuid() + 1)
    with serve(lambda conn: None), pytest.raises(PermissionDenied, match="runs as uid"):
        Client(timeout=WAIT)


def test_garbage_reply_is_a_protocol_error():
    def handler(conn):
        read_request(conn)
        conn.sendall(b"\x00\x00\x00\x03abc")

    with serve(handler), Client(timeout=WAIT) as c, pytest.raises(ProtocolError, match="not JSON"):
        c.call("ping")


def test_closed_client_refuses_calls():
    with serve(lambda conn: None):
        c = Client(timeout=WAIT)
        c.close()
        with pytest.raises(ClosedError):
            c.call("ping")


# --- streams -------------------------------------------------------------------------------

def test_stream_yields_items_then_returns_the_final_value():
    def handler(conn):
        req = read_request(conn)
        for i in range(3):
            send_frame(conn, more_reply(req.id, {"n": i}))
        send_frame(conn, ok_reply(req.id, "done"))
        req = read_request(conn)
        send_frame(conn, more_reply(req.id, 1))
        send_frame(conn, error_reply(req.id, UnknownCapability("gone")))

    with serve(handler), Client(timeout=WAIT) as c:
        items = []
        stream = c.stream("events", follow=True)
        with pytest.raises(StopIteration) as stop:
            while True:
                items.append(next(stream))
        assert items == [{"n": 0}, {"n": 1}, {"n": 2}] and stop.value.value == "done"
        got = []
        with pytest.raises(UnknownCapability):
            for item in c.stream("events"):
                got.append(item)
        assert got == [1]


def test_leaving_a_stream_early_closes_the_connection():
    def handler(conn):
        req = read_request(conn)
        send_frame(conn, more_reply(req.id, 1))
        try:  # the client hangs up after frame 1: the next send may already meet a closed
            send_frame(conn, more_reply(req.id, 2))  # socket, or the read an EOF or a reset
            seen.append(recv_frame(conn, time.monotonic() + WAIT))
        except (BrokenPipeError, ConnectionResetError):
            seen.append(None)

    with serve(handler) as seen, Client(timeout=WAIT) as c:
        for item in c.stream("events"):  # noqa: B007 (read after the loop)
            with pytest.raises(InvalidInput, match="stream is in progress"):
                c.call("ping")
            break
        stream = c.stream("x")
        stream.close()  # never started: nothing sent
    assert item == 1 and seen == [None]


def test_call_on_a_streaming_command_is_refused():
    def handler(conn):
        req = read_request(conn)
        send_frame(conn, more_reply(req.id, 1))

    with serve(handler), Client(timeout=WAIT) as c, pytest.raises(ProtocolError, match="stream"):
        c.call("events")


# --- paths ---------------------------------------------------------------------------------

def test_home_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("AGORA_HOME", str(tmp_path / "env"))
    assert paths.home_dir(tmp_path / "arg") == tmp_path / "arg"
    assert paths.home_dir() == tmp_path / "env"
    monkeypatch.delenv("AGORA_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert paths.home_dir() == tmp_path / "xdg" / "agora"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert paths.home_dir() == tmp_path / "me" / ".local" / "state" / "agora"


def test_runtime_dir_precedence(monkeypatch, tmp_path):
    assert paths.runtime_dir() == Path(os.environ["AGORA_RUNTIME_DIR"])
    monkeypatch.delenv("AGORA_RUNTIME_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.runtime_dir() == tmp_path / "agora"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.runtime_dir().name == f"agora-{os.getuid()}"


def test_socket_dir_per_home(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (tmp_path / "link").symlink_to(a)
    assert paths.socket_dir(a) != paths.socket_dir(b)
    assert paths.socket_dir(a) == paths.socket_dir(tmp_path / "link")  # realpath
    assert len(paths.socket_dir(a).name) == 12 and int(paths.socket_dir(a).name, 16) >= 0
    assert paths.control_socket(a) == paths.socket_dir(a) / "ctl.sock"


def test_socket_path_too_long_names_the_knob(monkeypatch):
    monkeypatch.setenv("AGORA_RUNTIME_DIR", "/tmp/" + "x" * 120)
    with pytest.raises(InvalidInput, match="bytes") as info:
        paths.control_socket()
    assert "AGORA_RUNTIME_DIR" in info.value.hint


def test_private_dir_is_created_0700_even_with_a_loose_umask(tmp_path):
    old = os.umask(0)
    try:
        made = paths.ensure_private_dir(tmp_path / "p" / "q")
    finally:
        os.umask(old)
    for d in (made, made.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert paths.ensure_private_dir(made) == made  # idempotent


def test_private_dir_we_own_with_a_loose_mode_is_fixed(tmp_path):
    d = tmp_path / "loose"
    d.mkdir()
    os.chmod(d, 0o755)
    paths.ensure_private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="only root can make a dir owned by another uid")
def test_private_dir_owned_by_another_uid_is_refused(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(PermissionDenied, match="owned by uid 65534") as info:
        paths.ensure_private_dir(d)
    assert "remove" in info.value.hint
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700  # untouched


def test_symlink_file_and_sticky_dir_are_refused(tmp_path):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    for path, why in [("link", "symlink"), ("file", "not a directory"), ("sticky", "sticky")]:
        with pytest.raises(PermissionDenied, match=why):
            paths.ensure_private_dir(tmp_path / path)
    assert stat.S_IMODE(os.stat(sticky).st_mode) == 0o1777


def _stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("mode, uid, refused", [
    (stat.S_IFDIR | 0o700, 1000, None),
    (stat.S_IFDIR | 0o777, 1000, None),  # ours: the caller fixes the mode
    (stat.S_IFDIR | 0o700, 0, "owned by uid 0"),
    (stat.S_IFLNK | 0o777, 1000, "symlink"),
    (stat.S_IFREG | 0o600, 1000, "not a directory"),
    (stat.S_IFDIR | 0o1777, 1000, "sticky"),
])
def test_refusal_is_a_pure_decision(mode, uid, refused):
    why = paths.refusal(_stat(mode, uid), 1000)
    assert (why is None) if refused is None else (refused in why)
    assert paths.needs_mode_fix(_stat(mode, uid)) == (stat.S_IMODE(mode) != 0o700)


def test_every_client_error_is_an_agora_error():
    for cls in (DaemonNotRunning, PermissionDenied, Unavailable, DeadlineExceeded, ClosedError):
        assert issubclass(cls, AgoraError)


def test_a_call_that_asks_the_daemon_to_wait_waits_for_its_reply_that_long(monkeypatch):
    """``wait_all(timeout_s=T)`` is a server-side wait of up to T: the client's own shorter
    timeout must not give up first (it did: a 120 s ``wait_all`` died at 30 s)."""
    monkeypatch.setattr(client_mod, "WAIT_MARGIN_S", 0.5)

    def handler(conn):
        req = read_request(conn)
        time.sleep(0.4)  # past the client's 0.2 s, within the asked-for wait
        send_frame(conn, ok_reply(req.id, {"waited": True}), time.monotonic() + WAIT)
        read_request(conn)
        assert conn.recv(1) == b""  # unanswered: the client gives up at its own timeout and hangs up

    with serve(handler), Client(timeout=0.2) as c:
        assert c.call("wait_all", ids=["t-1"], timeout_s=0.3) == {"waited": True}
        with pytest.raises(DeadlineExceeded, match="no reply within 0.1"):
            c.call("wait_all", ids=["t-1"], timeout_s=0.3, timeout=0.1)  # the call's own timeout wins
