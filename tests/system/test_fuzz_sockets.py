"""Raw bytes on every socket of a live daemon (issue 15, item 8): the control socket, the
root's internal socket, the agents' socket, each registry partition's socket and the
telemetry (events) datagram socket (names in runtime.wire.paths / RunPaths).

Each socket gets a fixed corpus (garbage, invalid UTF-8, a JSON array, a 5,000-digit
integer, NaN, duplicate keys, a header announcing 4 GiB, a valid frame glued before a bad
one, half a frame then close, deep nesting, an empty frame, a pickle) and hypothesis
messages of its own protocol with hostile values.  After every message the daemon must
answer ``ping`` on the control socket and no process of the tree may have restarted.
Where the glued valid frame has a reply (control, root, registry), it must be answered
before the bad frame is refused: never dropped silently.

Left out or pinned, because they legitimately stop or restart processes: the root's
``shutdown`` is never sent, ``start_agent`` never names a configured pool and
``terminate_child`` never a live agent; the registry's ``clear`` and ``remove_owner`` are
not sent (they drop the live agents' registrations).

Seeded (the seed is printed; ``AGORA_FUZZ_SEED`` replays it); ``AGORA_FUZZ_EXAMPLES``
sets the hypothesis messages per socket (default 40).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import orjson
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.config import RunPaths
from runtime.wire.client import Client
from tests.support.daemons import config, running_daemon
from tests.support.fuzz import (
    HUGE_INT,
    NASTY,
    SEED,
    RawConn,
    Tree,
    frame,
    fuzzed,
    raw_json,
    restarts,
    typed_error,
    values,
)

# an oversized frame is a fuzz case; hypothesis warns when it prints one (and warnings are errors)
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

EXAMPLES = int(os.environ.get("AGORA_FUZZ_EXAMPLES", "40"))
PARTITIONS = 4
DRAIN_S = 0.05

BAD_BODIES = [b"\x00\x01garbage\xff", b'{"v":1,"id":1,"cmd":"ping","args":{"s":"\xff\xfe"}}', b"[1,2,3]",
              b'{"v":1,"id":' + HUGE_INT.text + b',"cmd":"ping"}', b'{"v":1,"id":1,"cmd":"ping","args":{"x":NaN}}',
              b'{"v":1,"id":1,"cmd":"ping","cmd":"down"}', b'{"t":"hello","t":"results"}', b"[" * 100_000,
              b"", b"null", b'"just a string"', b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
              b'{"v":1,"id":1,"cmd":"ping","args":{"x":1e400}}', b'{"a":"\\ud800"}', b"{" * 2000 + b"}" * 2000]
RAW_STREAMS = [b"\xff\xff\xff\xff" + b"x" * 100, b"\x7f\xff\xff\xff", b"\x00\x00", b"\x00\x00\x00\x64" + b"{" * 10,
               b"#CHALLENGE#abc", b"GET / HTTP/1.1\r\n\r\n"]


def _corpus(valid: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of the fixed corpus; ``valid`` is one good frame body of the socket."""
    out = [(f"bad body {b[:24]!r}", frame(b)) for b in BAD_BODIES]
    out += [(f"raw {b[:16]!r}", b) for b in RAW_STREAMS]
    out += [("valid glued before bad", frame(valid) + frame(b"\xffnot json")),
            ("valid glued before oversized", frame(valid) + b"\xff\xff\xff\xff"),
            ("half a frame", frame(valid)[: len(valid) // 2 + 4])]
    return out


class Daemon:
    """The checks made after every message: ping on the control socket, same processes."""

    def __init__(self, home, proc) -> None:
        self.home, self.run = home, RunPaths.for_home(home)
        self.client = Client(str(home), timeout=10.0)
        self.coord = self.client.call("ping")["pid"]
        self.tree = Tree(proc.pid)
        self.restarts = restarts(self.client.call("status")["tree"])
        self.first: str | None = None
        self.sent = 0

    def check(self, what: str) -> None:
        try:
            assert self.client.call("ping")["pid"] == self.coord, f"{what}: the coordinator restarted"
            gone = self.tree.gone()
            assert not gone, f"{what}: processes gone or restarted: {gone}"
        except Exception as e:  # keep the first: later ones only echo it
            self.first = self.first or f"{what}: {e}"
            raise AssertionError(self.first) from e

    def final(self) -> None:
        assert restarts(self.client.call("status")["tree"]) == self.restarts
        self.client.close()


def _stream(path: str, data: bytes, greeting: bool = False) -> bytes:
    """Send ``data`` on a fresh connection, read what comes back (bounded), close."""
    conn = RawConn(path)
    try:
        if greeting:
            conn.frame(5.0)  # the agents' socket speaks first (the kinship challenge)
        conn.send(data)
        return conn.drain(DRAIN_S)
    finally:
        conn.close()


def _frames(data: bytes) -> list[Any]:
    out, pos = [], 0
    while len(data) - pos >= 4:
        size = int.from_bytes(data[pos:pos + 4], "big")
        if len(data) - pos - 4 < size:
            break
        out.append(orjson.loads(data[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return out


def _glued_answered(kind: str, path: str, valid: bytes) -> None:
    """A valid frame glued before a bad one is answered, then the bad one refused."""
    conn = RawConn(path)
    try:
        conn.send(frame(valid) + frame(b"\xffnot json"))
        got = _frames(conn.drain(2.0) if kind != "registry" else _drain_until(conn, 2))
    finally:
        conn.close()
    assert got, f"{kind}: nothing came back for a valid frame glued before a bad one"
    if kind == "registry":
        assert got[0][:2] == [1, 0] and got[1][1] == 1, got
        return
    assert got[0].get("ok") is not None and got[0]["id"] == 1, got
    assert got[-1]["id"] is None and typed_error(got[-1]["error"]), got


def _drain_until(conn: RawConn, n: int) -> bytes:
    data = b""
    for _ in range(20):
        data += conn.drain(0.2)
        if len(_frames(data)) >= n:
            break
    return data


# --- each socket's own messages ----------------------------------------------------------

def _request(cmd: Any, args: Any) -> bytes:
    return b'{"v":1,"id":7,"cmd":' + raw_json(cmd) + b',"args":' + raw_json(args) + b"}"


def _root_message() -> st.SearchStrategy:
    cmd = st.sampled_from(["tree", "start_agent", "terminate_child", "pools_state", "restart_pool", "nope",
                           ""]) | st.text(max_size=10)
    return st.tuples(cmd, values()).map(lambda ca: _request(*_pin_root(*ca)))


def _pin_root(cmd: Any, args: Any) -> tuple[Any, Any]:
    if cmd == "shutdown":
        return "tree", args
    if cmd == "start_agent" and isinstance(args, dict) and args.get("pool") == "echo":
        return cmd, {**args, "pool": "not_a_pool"}
    if cmd == "terminate_child" and isinstance(args, dict):
        return cmd, {**args, "child": "agent:not_a_pool.0"}
    return cmd, args


def _control_message() -> st.SearchStrategy:
    cmd = st.sampled_from(["ping", "status", "nope", "PING", "a" * 65]) | st.text(max_size=10) | values()
    return st.tuples(cmd, values()).map(lambda ca: _request(*ca)) | values().map(
        lambda v: b'{"v":1,"id":' + raw_json(v) + b',"cmd":"ping"}')


def _agent_message() -> st.SearchStrategy:
    t = st.sampled_from(["hello", "results", "answer", "call", "nope"]) | values()
    fields = st.dictionaries(st.sampled_from(["agent", "pool", "pid", "caps", "results", "rid", "proof",
                                              "op", "args", "index"]), values(), max_size=5)
    return st.tuples(t, fields).map(lambda tf: raw_json({**tf[1], "t": tf[0]}))


def _registry_message() -> st.SearchStrategy:
    op = st.sampled_from(["register", "register_many", "unregister", "lookup", "update", "select",
                          "ping", "nope"]) | values()
    return st.tuples(values(), op, st.lists(values(), max_size=4)).map(
        lambda r: raw_json([r[0], r[1], *r[2]]))


def _event_line() -> st.SearchStrategy:
    types = st.sampled_from(["task.submitted", "task.attempt", "task.finished", "task.requeued", "task.rerouted",
                             "agent.died", "market.award", "market.transfer", "vote.outcome", "scaling.decision",
                             "supervisor.restart", "events.dropped", "service.call", "breaker.open", "ledger.x",
                             "zz"]) | values()
    fields = st.dictionaries(st.sampled_from(["task_id", "agent", "capability", "duration_s", "attempt", "state",
                                              "pool", "price", "outcome", "n", "from", "to", "amount"]),
                             values(), max_size=6)
    ts = st.sampled_from([1.0, 1e9, 0, -1.0]) | values()
    return st.tuples(types, fields, ts).map(lambda x: raw_json({**x[1], "type": x[0], "ts": x[2]}))


SOCKETS = {
    "control": (lambda run: run.control, b'{"v":1,"id":1,"cmd":"ping"}', _control_message, False),
    "root": (lambda run: run.root_sock, b'{"v":1,"id":1,"cmd":"tree","args":{}}', _root_message, False),
    "agents": (lambda run: run.agents_sock, b'{"t":"answer","rid":1}', _agent_message, True),
    **{f"registry.{i}": ((lambda run, i=i: run.registry(i)), b'[1,"ping"]', _registry_message, False)
       for i in range(PARTITIONS)},
}


def _fuzz_stream(d: Daemon, kind: str) -> None:
    if kind == "registry":
        for i in range(PARTITIONS):
            _fuzz_stream(d, f"registry.{i}")
        return
    where, valid, messages, greeting = SOCKETS[kind]
    path = where(d.run)
    assert os.path.exists(path), f"no {kind} socket at {path}"
    for name, data in _corpus(valid):
        _stream(path, data, greeting)
        d.sent += 1
        d.check(f"{kind} socket, {name}")
    if kind != "agents":
        _glued_answered(kind.split(".")[0], path, valid)

    @fuzzed(EXAMPLES)
    @given(body=messages(), glue=st.sampled_from([b"", b"\x00\x00\x00\x02[]", b"\xff"]))
    def run(body: bytes, glue: bytes) -> None:
        _stream(path, frame(body) + glue, greeting)
        d.sent += 1
        d.check(f"{kind} socket, frame {body[:200]!r} + {glue!r}")
    run()


def _datagram(path: str, data: bytes) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.sendto(data, path)
    except OSError:
        pass  # too large for a datagram: refused by the kernel, not the daemon's business
    finally:
        s.close()


def _fuzz_events(d: Daemon, telemetry_pid: int) -> None:
    path = d.run.events
    corpus = [*BAD_BODIES, b"\n".join(BAD_BODIES), b'{"type":"task.submitted","ts":1.0}\n\xff\xfe',
              b'{"type":"x","ts":NaN}', b"x" * (1 << 20), b"\n" * 1000]
    for data in corpus:
        _datagram(path, data)
    d.sent += len(corpus)

    @fuzzed(EXAMPLES)
    @given(lines=st.lists(_event_line() | st.sampled_from([n.text for n in NASTY]), min_size=1, max_size=5))
    def run(lines: list[bytes]) -> None:
        _datagram(path, b"\n".join(lines))
        d.sent += 1
        assert psutil.pid_exists(telemetry_pid), f"telemetry died on {lines!r}"
    run()
    # the telemetry process is alive and still serving: metrics come from its snapshot
    d.client.call("metrics")
    d.check("events socket")


def _telemetry_pid(tree: Tree) -> int:
    pids = [pid for pid, name in tree.pids.items() if "telemetry" in name]
    assert len(pids) == 1, tree.pids
    return pids[0]


@pytest.mark.parametrize("kind", ["control", "root", "agents", "registry", "events"])
def test_raw_frames_on_every_socket(agora_env, kind):
    print(f"fuzz seed {SEED} (AGORA_FUZZ_SEED={SEED} replays it), socket {kind}, {EXAMPLES} examples")
    with running_daemon(agora_env, config(size=2)) as (c, proc):
        c.call("result", id=c.call("submit", task={"capability": "echo", "input": 1}), wait=True, timeout_s=10)
        d = Daemon(agora_env, proc)
        try:
            if kind == "events":
                _fuzz_events(d, _telemetry_pid(d.tree))
            else:
                _fuzz_stream(d, kind)
            d.final()
        except AssertionError as e:
            raise AssertionError(f"first failure: {d.first or e}") from e
        finally:
            d.client.close()
        print(f"{d.sent} messages on the {kind} socket; the daemon served on, nothing restarted")
        tid = c.call("submit", task={"capability": "echo", "input": 2})
        assert c.call("result", id=tid, wait=True, timeout_s=10)["result"]["echo"] == 2
