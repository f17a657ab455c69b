"""Faults of the partitioned registry: owners and partitions killed, restarts, stale and
hung partitions, the wire protocol.  Every wait is bounded; eventual conditions poll with
backoff; nothing asserts on timing.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct

import orjson
import pytest

from runtime.errors import InvalidInput, Unavailable
from runtime.registry._partition import encode_frame
from runtime.registry.backends import make_backend
from runtime.registry.model import Entry
from runtime.registry.partitioning import partition_of
from tests.support.helpers import eventually
from tests.support.registry import BOUND, FORK, ME, Owner, Partitions, spec


@pytest.fixture
def parts():
    p = Partitions(4)
    yield p
    p.stop()


@pytest.fixture
def owner():
    o = Owner()
    yield o
    o.stop()


def keys_of(p: int, n: int, how_many: int, prefix: str = "k") -> list[str]:
    out, i = [], 0
    while len(out) < how_many:
        if partition_of(f"{prefix}{i}", n) == p:
            out.append(f"{prefix}{i}")
        i += 1
    return out


def read_events(fd: int) -> list[dict]:
    out = b""
    while select.select([fd], [], [], 0)[0]:
        out += os.read(fd, 65536)
    return [orjson.loads(line) for line in out.splitlines()]


# ---------------------------------------------------------------------------- owners

def test_sigkilled_owner_loses_its_entries_everywhere():
    r, w = os.pipe()
    parts = Partitions(4, emit_fd=w)
    owner = Owner()
    try:
        b = parts.backend()
        mine = [f"agent.{i}" for i in range(40)]
        assert all(isinstance(x, Entry) for x in b.register_many([(k, spec("x"), owner.pid)
                                                                  for k in mine]))
        b.register("survivor", spec("x"), ME)
        owner.kill()
        eventually(lambda: b.count("x") == 1, "entries of the killed owner still listed")
        assert b.list() == ["survivor"] and all(b.lookup(k) is None for k in mine)
        rpc = parts.backend(fast_reads=False)
        assert rpc.select() == [b.lookup("survivor")]  # the partitions' truth agrees
        downs = eventually(lambda: [e for e in read_events(r) if e["type"] == "registry.owner_down"],
                           "no owner_down event")
        assert {e["pid"] for e in downs} == {owner.pid} and sum(e["removed"] for e in downs) == 40
        rpc.close()
        b.close()
    finally:
        owner.stop()
        parts.stop()
        os.close(r)
        os.close(w)


def test_supervisor_told_remove_owner_and_reregistration_after_it(parts, owner):
    b = parts.backend()
    b.register("a", spec("x"), owner.pid)
    assert b.remove_owner(owner.pid) == 1
    assert b.register("a", spec("x"), ME).version == 1  # the key is free again
    b.close()


# ---------------------------------------------------------------------------- partitions

def test_killed_partition_others_answer_its_callers_get_unavailable(parts, owner):
    b = parts.backend()
    rpc = parts.backend(fast_reads=False)
    victim = 1
    lost_keys = keys_of(victim, 4, 20)
    other_keys = keys_of(2, 4, 20)
    b.register_many([(k, spec("x", load=0.5), ME) for k in lost_keys + other_keys])
    b.register(keys_of(victim, 4, 1, prefix="o")[0], spec("x"), owner.pid)
    parts.kill(victim)

    with pytest.raises(Unavailable, match=f"partition {victim}"):
        b.register(lost_keys[0], spec("x"), ME)
    with pytest.raises(Unavailable):
        b.update(lost_keys[1], {"load": 1})
    with pytest.raises(Unavailable):
        rpc.lookup(lost_keys[2])
    with pytest.raises(Unavailable):
        b.remove_owner(owner.pid)  # it must reach every partition
    assert b.update(other_keys[0], {"load": 0.1}).version == 2  # the others keep answering
    assert rpc.lookup(other_keys[1]).key == other_keys[1]
    assert b.lookup(lost_keys[3]).key == lost_keys[3]  # the table still answers reads
    mixed = b.register_many([(lost_keys[4], spec("y"), ME), (other_keys[2], spec("y"), ME)])
    assert isinstance(mixed[0], Unavailable) and isinstance(mixed[1], Entry)

    owner.kill()  # dies while its partition is down: the restart must notice
    parts.start(victim)
    for backend in (b, rpc):  # the same clients: their stale connections are replaced
        assert all(backend.lookup(k) is not None for k in lost_keys + other_keys)
        assert backend.lookup(keys_of(victim, 4, 1, prefix="o")[0]) is None
    assert b.register(lost_keys[0], spec("z"), ME).version == 2
    assert rpc.lookup(lost_keys[0]).capabilities == ["z"]
    b.close()
    rpc.close()


def test_hung_partition_gives_unavailable_not_a_hang(parts):
    b = parts.backend(timeout=0.2)
    k = keys_of(0, 4, 1)[0]
    b.register(k, spec("x"), ME)
    os.kill(parts.procs[0].pid, signal.SIGSTOP)
    try:
        with pytest.raises(Unavailable, match="no reply before the deadline"):
            b.update(k, {"load": 1})
    finally:
        os.kill(parts.procs[0].pid, signal.SIGCONT)
    assert b.update(k, {"load": 2}).metadata == {"load": 2}  # the late reply was not mistaken
    b.close()


def test_restart_keeps_every_acknowledged_registration_under_churn(parts):
    b = parts.backend()
    items = [(f"svc.{i}", spec("x", i=i), ME) for i in range(400)]
    b.register_many(items)
    for i in range(0, 400, 3):
        b.unregister(f"svc.{i}")
    for i in range(1, 400, 3):
        b.update(f"svc.{i}", {"i": -i})
    want = {e.key: e for e in b.select()}
    for p in range(4):
        parts.kill(p)
        parts.start(p)
    rpc = parts.backend(fast_reads=False)
    assert {e.key: e for e in rpc.select()} == want
    assert {e.key: e for e in b.select()} == want
    b.close()
    rpc.close()


def test_client_in_a_forked_child_opens_its_own_connections(parts):
    b = parts.backend()
    b.register("parent", spec("x"), ME)

    def child():
        ok = b.register("child", spec("x"), os.getpid()).owner == os.getpid()
        os._exit(0 if ok and b.lookup("parent") is not None else 1)

    proc = FORK.Process(target=child)
    proc.start()
    proc.join(BOUND)
    assert proc.exitcode == 0
    eventually(lambda: b.lookup("child") is None, "the exited child's entry is still there")
    assert b.register("parent", spec("y"), ME).version == 2  # the parent's link still works
    b.close()


# ---------------------------------------------------------------------------- socket and wire

def test_stale_socket_file_is_replaced_and_removed_on_sigterm():
    run_dir = os.environ["AGORA_RUNTIME_DIR"]
    os.makedirs(run_dir, exist_ok=True)
    stale = os.path.join(run_dir, "registry.0.sock")
    with open(stale, "w") as f:
        f.write("left by a killed predecessor")
    parts = Partitions(1)
    try:
        b = parts.backend()
        assert b.register("a", spec("x"), ME).version == 1
        b.close()
    finally:
        parts.stop()
    assert parts.procs[0].exitcode == 0 and not os.path.exists(stale)


def raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(BOUND)
    s.connect(path)
    return s


def recv_replies(s: socket.socket, n: int) -> list:
    buf, out = b"", []
    while len(out) < n:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack(">I", buf[:4])[0]:
            chunk = s.recv(65536)
            assert chunk, "partition closed the connection"
            buf += chunk
        size = struct.unpack(">I", buf[:4])[0]
        out.append(orjson.loads(buf[4:4 + size]))
        buf = buf[4 + size:]
    return out


def test_pipelined_frames_in_one_write_get_replies_in_order(parts):
    k = keys_of(0, 4, 3)
    s = raw(parts.paths[0])
    s.sendall(b"".join(encode_frame([i, "register", key, ["x"], {}, ME]) for i, key in enumerate(k))
              + encode_frame([9, "lookup", k[1]]))
    replies = recv_replies(s, 4)
    assert [r[0] for r in replies] == [0, 1, 2, 9] and all(r[1] == 0 for r in replies)
    assert replies[3][2][0] == k[1]
    s.close()


@pytest.mark.parametrize("body, code", [
    (b"not json", "PROTOCOL_ERROR"),
    (b'{"a": 1}', "PROTOCOL_ERROR"),
    (b'[1, "drop_tables"]', "PROTOCOL_ERROR"),
    (b'[1, "register", "k"]', "PROTOCOL_ERROR"),
    (b'[1, "lookup", 5]', "INVALID_INPUT"),
])
def test_bad_frames_get_typed_errors_and_the_partition_keeps_serving(parts, body, code):
    s = raw(parts.paths[0])
    s.sendall(struct.pack(">I", len(body)) + body + encode_frame([2, "ping"]))
    bad, good = recv_replies(s, 2)
    assert bad[1] == 1 and bad[2]["code"] == code
    assert good == [2, 0, [0, 0]]
    s.close()


def test_oversized_frame_drops_only_that_connection(parts):
    s = raw(parts.paths[0])
    s.sendall(encode_frame([7, "ping"]) + struct.pack(">I", 1 << 30))
    ping, refusal = recv_replies(s, 2)  # the frame before it answered, then the refusal
    assert ping[:2] == [7, 0]
    assert refusal[0] is None and refusal[1] == 1 and "1073741824 bytes" in refusal[2]["message"]
    assert s.recv(1) == b""  # then closed, before any body is read
    s.close()
    with parts.backend() as b:
        assert b.ping(0) == [0, 0]


def test_misrouted_key_is_refused(parts):
    k = keys_of(3, 4, 1)[0]
    s = raw(parts.paths[0])
    s.sendall(encode_frame([1, "register", k, ["x"], {}, ME]))
    (reply,) = recv_replies(s, 1)
    assert reply[1] == 1 and "belongs to partition 3, not 0" in reply[2]["message"]
    s.close()


def test_round_trip_lookups_are_sampled_as_events():
    r, w = os.pipe()
    parts = Partitions(1, emit_fd=w)
    try:
        b = parts.backend(fast_reads=False)
        b.register("a", spec("x"), ME)
        b.lookup("a")
        events = eventually(lambda: read_events(r), "no lookup event")
        assert {"type": "registry.lookup", "partition": 0, "key": "a"} in events
        b.close()
    finally:
        parts.stop()
        os.close(r)
        os.close(w)


def test_client_argument_errors():
    with pytest.raises(InvalidInput, match="at least one"):
        make_backend("partitioned", sock_paths=[])
    with pytest.raises(InvalidInput, match="got 1 tables for 2 partitions"):
        make_backend("partitioned", sock_paths=["a", "b"], tables=[object()])
    with pytest.raises(InvalidInput, match="unknown registry backend 'etcd'"):
        make_backend("etcd")


def test_a_slot_stuck_mid_write_falls_back_to_a_round_trip(parts):
    b = parts.backend()
    k = keys_of(2, 4, 1)[0]
    e = b.register(k, spec("x"), ME)
    reader = b._readers[2]
    slot = next(i for i in range(reader.nslots)
                if reader._read_slot(i)[3].startswith(orjson.dumps([k])[:-1] + b","))
    off = 8192 + slot * 32
    seq = struct.unpack_from("<Q", parts.tables[2], off)[0]
    struct.pack_into("<Q", parts.tables[2], off, seq | 1)  # as if its writer froze mid-write
    try:
        assert b.lookup(k) == e  # answered by the partition after the bounded retries
    finally:
        struct.pack_into("<Q", parts.tables[2], off, seq)
    b.close()


@pytest.mark.parametrize("spin_us", [0, 100])
def test_batch_larger_than_the_socket_buffer_goes_through_whole(parts, spin_us):
    """About 1.2 MiB in one frame each way (the socket buffer holds ~200 KiB): the
    client's non-blocking send waits for room, the partition's reply arrives in many
    reads, with and without spinning."""
    b = parts.backend(spin_us=spin_us)
    pad = "x" * 800
    items = [(f"big.{i}", spec("x", pad=pad, i=i), ME) for i in range(1500)]
    got = b.register_many(items)
    assert [e.metadata["i"] for e in got] == list(range(1500))
    assert b.count("x") == 1500
    b.close()
