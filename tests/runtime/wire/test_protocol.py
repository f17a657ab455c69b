"""The control channel's codec: round trips and every bad input of RELIABILITY 16-19."""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import socket
import struct
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import DeadlineExceeded, ProtocolError, UnknownCapability, from_wire
from runtime.observability.trace_context import TraceContext
from runtime.wire import protocol as proto
from runtime.wire.protocol import (
    FrameReader,
    FrameTooLarge,
    Limits,
    Request,
    TruncatedFrame,
    decode_body,
    encode_frame,
    make_request,
    parse_reply,
    parse_request,
    recv_frame,
    send_frame,
)


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def nested(depth: int) -> bytes:
    """``{"a": [[...]]}`` with ``depth`` containers in all."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


# --- round trips -------------------------------------------------------------------------

def test_request_round_trip_with_trace():
    trace = TraceContext.new_trace().child()
    frame = encode_frame(make_request(7, "submit", {"capability": "summarize", "n": -3}, trace))
    (obj,) = FrameReader().feed(frame)
    assert parse_request(obj) == Request(7, "submit", {"capability": "summarize", "n": -3}, trace)


def test_request_without_args_means_empty_args():
    assert parse_request({"v": 1, "id": 0, "cmd": "ping"}).args == {}


@pytest.mark.parametrize("reply, kind, value", [
    (proto.ok_reply(3, {"tasks": [1, 2]}), "ok", {"tasks": [1, 2]}),
    (proto.more_reply(3, "event"), "more", "event"),
    (proto.ok_reply(3, None), "ok", None),
])
def test_reply_round_trip(reply, kind, value):
    (obj,) = FrameReader().feed(encode_frame(reply))
    assert parse_reply(obj) == proto.Reply(3, kind, value)


def test_error_reply_round_trips_to_the_typed_error():
    wire = encode_frame(proto.error_reply(None, UnknownCapability("no pool offers 'fly'")))
    reply = parse_reply(FrameReader().feed(wire)[0])
    assert reply.kind == "error" and reply.id is None
    exc = from_wire(reply.value)
    assert type(exc) is UnknownCapability and exc.message == "no pool offers 'fly'"
    assert "agora agents" in exc.hint


def test_frame_too_large_has_its_own_wire_code():
    exc = from_wire(proto.error_reply(1, FrameTooLarge("big"))["error"])
    assert type(exc) is FrameTooLarge and exc.code == "FRAME_TOO_LARGE"


def test_limits_at_the_edge_pass():
    obj = {"max": 2**63 - 1, "min": -(2**63 - 1), "deep": orjson.loads(nested(63))["a"],
           "digits": "9" * 40, "float": 1.12345678901234567890123}
    assert FrameReader().feed(encode_frame(obj)) == [obj]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63) + 1, 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=60, deadline=None)
@given(frames=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=4),
                       min_size=1, max_size=6),
       cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_frames(frames, cuts):
    data = b"".join(encode_frame(f) for f in frames)
    points = sorted({c % (len(data) + 1) for c in cuts})
    reader, out, start = FrameReader(), [], 0
    for end in [*points, len(data)]:
        out.extend(reader.feed(data[start:end]))
        start = end
    assert out == frames and reader.pending == 0
    reader.feed_eof()


# --- bad input: framing ------------------------------------------------------------------

def test_garbage_body_is_a_protocol_error_and_ends_the_reader():
    reader = FrameReader()
    good = encode_frame({"v": 1})
    with pytest.raises(ProtocolError, match="not JSON") as info:
        reader.feed(good + frame_of(b"hello, daemon"))
    assert info.value.frames == [{"v": 1}]  # what came before the bad frame is kept
    with pytest.raises(ProtocolError, match="already sent a bad frame"):
        reader.feed(good)


@pytest.mark.parametrize("body", [b"", b"\xff\xfe", b'{"a": 1', b"[1, 2]", b"42", b"NaN",
                                  b'{"a": 1e400}', b'"\xed\xa0\x80"'])
def test_bodies_that_are_not_json_objects(body):
    with pytest.raises(ProtocolError):
        FrameReader().feed(frame_of(body))


def test_truncated_frame_waits_then_eof_is_an_error():
    frame = encode_frame({"v": 1, "id": 1, "cmd": "ping"})
    reader = FrameReader()
    assert reader.feed(frame[:2]) == [] and reader.feed(frame[2:-1]) == []
    assert reader.pending == len(frame) - 1
    with pytest.raises(TruncatedFrame, match="middle of a frame"):
        reader.feed_eof()


def test_oversized_header_is_refused_before_the_body():
    reader = FrameReader()
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(struct.pack(">I", proto.MAX_FRAME + 1))  # header only, no body sent
    assert info.value.code == "FRAME_TOO_LARGE" and info.value.details["size"] == proto.MAX_FRAME + 1
    assert isinstance(info.value, ProtocolError)


def test_module_constants_and_limits_override(monkeypatch):
    monkeypatch.setattr(proto, "MAX_FRAME", 10)
    with pytest.raises(FrameTooLarge):
        FrameReader().feed(frame_of(b'{"a": "0123456789"}'))
    assert FrameReader(Limits(max_frame=100)).feed(frame_of(b'{"a": "0123456789"}'))
    with pytest.raises(FrameTooLarge, match="outgoing"):
        encode_frame({"a": "0123456789"})


def test_recv_frame_refuses_a_large_header_without_reading_the_body(pair):
    a, b = pair
    b.sendall(struct.pack(">I", 2**31) + b"rest")
    with pytest.raises(FrameTooLarge):
        recv_frame(a, time.monotonic() + 30)  # would block until the deadline if it read on
    a.setblocking(False)
    assert a.recv(100) == b"rest"


def test_blocking_helpers_round_trip_and_eof(pair):
    a, b = pair
    send_frame(b, {"v": 1, "id": 1, "ok": [1, 2]}, time.monotonic() + 10)
    send_frame(b, {"v": 1, "id": 2, "ok": None})
    assert recv_frame(a, time.monotonic() + 10) == {"v": 1, "id": 1, "ok": [1, 2]}
    assert recv_frame(a, time.monotonic() + 10)["id"] == 2
    b.close()
    assert recv_frame(a, time.monotonic() + 10) is None  # clean EOF between frames


@pytest.mark.parametrize("partial", [b"\x00\x00", frame_of(b'{"v": 1}')[:-2], b"\x00\x00\x00\x05"])
def test_recv_frame_eof_mid_frame_is_truncated(pair, partial):
    a, b = pair
    b.sendall(partial)
    b.close()
    with pytest.raises(TruncatedFrame):
        recv_frame(a, time.monotonic() + 10)


def test_recv_frame_deadline(pair):
    a, _ = pair
    with pytest.raises(DeadlineExceeded):
        recv_frame(a, time.monotonic() + 0.05)
    with pytest.raises(DeadlineExceeded):
        recv_frame(a, time.monotonic() - 1)


# --- bad input: values -------------------------------------------------------------------

@pytest.mark.parametrize("depth", [proto.MAX_DEPTH + 1, 1025, 5000])
def test_deep_nesting_is_a_protocol_error(depth):
    with pytest.raises(ProtocolError, match="nested deeper|not JSON"):
        FrameReader().feed(frame_of(nested(depth)))


def test_deep_nesting_is_refused_when_encoding_without_recursion():
    value: list = []
    for _ in range(100_000):  # far beyond the interpreter's recursion limit
        value = [value]
    with pytest.raises(ProtocolError, match="nested deeper"):
        encode_frame({"a": value})


@pytest.mark.parametrize("literal", [
    b"9223372036854775808",                 # 2**63: orjson would return an int
    b"18446744073709551616",                # 2**64: orjson would return a float
    b"-9223372036854775808",                # -(2**63)
    b"1" * 400,
    b"-" + b"7" * 30,
])
@pytest.mark.parametrize("template", [b'{"a": %s}', b'{"a": [1, {"b": %s}], "c": "x"}'])
def test_huge_integer_text_is_a_protocol_error(literal, template):
    with pytest.raises(ProtocolError, match="out of range"):
        FrameReader().feed(frame_of(template % literal))


def test_long_digit_runs_that_are_not_integers_pass():
    body = (b'{"s": "123456789012345678901234567890", "f": 0.12345678901234567890123, '
            b'"e": 1.5e-12345678901234567890, "q": "\\"12345678901234567890", '
            b'"g": 12345678901234567890123.5}')
    obj = decode_body(body)
    assert obj["s"] == "123456789012345678901234567890"
    assert obj["q"] == '"12345678901234567890'
    assert isinstance(obj["g"], float)


def test_huge_integers_are_refused_when_encoding():
    for value in (2**63, -(2**63), 2**70):
        with pytest.raises(ProtocolError, match="out of range"):
            encode_frame({"a": [value]})


def test_string_and_container_limits():
    with pytest.raises(ProtocolError, match="characters"):
        decode_body(b'{"abcdef": 1}', Limits(max_string=5))
    with pytest.raises(ProtocolError, match="arrays and objects"):
        decode_body(b'{"a": [[], [], []]}', Limits(max_containers=3))


@pytest.mark.parametrize("body, limits, match", [
    (b'{"a": [[1]]}', Limits(max_depth=2), "nested deeper"),
    (b'{"a": 5000}', Limits(max_int=1000), "out of range"),
    (b'{"a": "abcdef"}', Limits(max_string=5), "characters"),
])
def test_small_frames_still_meet_tight_limits(body, limits, match):
    """Small frames skip the walk only when the body alone proves every limit, both ways."""
    with pytest.raises(ProtocolError, match=match):
        decode_body(body, limits)
    with pytest.raises(ProtocolError, match=match):
        encode_frame(orjson.loads(body), limits)
    assert decode_body(body) is not None and encode_frame(orjson.loads(body))  # default limits


def test_encode_refuses_what_json_cannot_carry():
    with pytest.raises(ProtocolError, match="cannot encode"):
        encode_frame({"a": object()})
    with pytest.raises(ProtocolError, match="JSON object"):
        encode_frame([1, 2])  # type: ignore[arg-type]


# --- bad input: pickle and multiprocessing -------------------------------------------------

UNPICKLED: list[str] = []


def _mark_unpickled() -> str:
    UNPICKLED.append("unpickled")
    return "boom"


class Booby:
    def __reduce__(self):
        return (_mark_unpickled, ())


@pytest.mark.parametrize("wrap", [False, True])
def test_pickle_bytes_never_reach_pickle(wrap):
    data = pickle.dumps({"cmd": Booby()}, protocol=4)
    assert data[:2] == b"\x80\x04"
    expected = ProtocolError if wrap else FrameTooLarge
    with pytest.raises(expected, match="pickle"):
        FrameReader().feed(frame_of(data) if wrap else data)
    assert UNPICKLED == []


def test_multiprocessing_connection_frames_are_refused(pair):
    a, b = pair
    conn = multiprocessing.connection.Connection(os.dup(b.fileno()))
    challenge = b"#CHALLENGE#" + os.urandom(20)  # what deliver_challenge sends
    try:
        conn.send_bytes(challenge)
        conn.send({"cmd": Booby()})  # a pickled message
    finally:
        conn.close()
    data = a.recv(1 << 16)
    with pytest.raises(ProtocolError, match="multiprocessing") as info:
        FrameReader().feed(data)
    assert info.value.frames == []
    pickled = data[4 + len(challenge):]  # the second frame (the random bytes may hold 0x80)
    assert pickled[4:6] == b"\x80\x04"
    with pytest.raises(ProtocolError, match="pickle"):
        FrameReader().feed(pickled)
    assert UNPICKLED == []


def test_raw_challenge_without_a_header_reads_as_a_huge_frame():
    with pytest.raises(FrameTooLarge, match="multiprocessing"):
        FrameReader().feed(b"#CHALLENGE#" + os.urandom(20))


# --- request and reply shapes ------------------------------------------------------------

GOOD = {"v": 1, "id": 1, "cmd": "ping", "args": {}}


@pytest.mark.parametrize("change, field", [
    ({"extra": 1}, "extra"),
    ({"id": "1"}, "'id'"),
    ({"id": True}, "'id'"),
    ({"id": -1}, "'id'"),
    ({"id": 1.0}, "'id'"),
    ({"cmd": 5}, "'cmd'"),
    ({"cmd": "Not A Command"}, "'cmd'"),
    ({"cmd": "x" * 65}, "'cmd'"),
    ({"args": [1]}, "'args'"),
    ({"trace": "abc"}, "'trace'"),
    ({"trace": {"trace_id": "ab", "span_id": "XYZ"}}, "trace.span_id"),
    ({"trace": {"trace_id": "ab", "span_id": "cd", "who": 1}}, "who"),
    ({"trace": {"trace_id": 1, "span_id": "cd"}}, "trace.trace_id"),
])
def test_bad_requests_name_the_field(change, field):
    with pytest.raises(ProtocolError) as info:
        parse_request({**GOOD, **change})
    assert field in info.value.message


def test_missing_fields_are_named():
    for name in ("id", "cmd"):
        obj = dict(GOOD)
        del obj[name]
        with pytest.raises(ProtocolError, match=repr(name)):
            parse_request(obj)


@pytest.mark.parametrize("v", [2, 0, "1", None, True])
def test_version_mismatch_says_what_to_do(v):
    with pytest.raises(ProtocolError, match="version") as info:
        parse_request({**GOOD, "v": v, "future_field": 1})  # version is checked first
    assert "agora" in info.value.hint


def test_missing_version():
    with pytest.raises(ProtocolError, match="'v'"):
        parse_request({"id": 1, "cmd": "ping"})


@pytest.mark.parametrize("reply", [
    {"v": 1, "id": 1},
    {"v": 1, "id": 1, "ok": 1, "more": 2},
    {"v": 1, "id": 1, "ok": 1, "extra": 0},
    {"v": 1, "id": 1, "error": "bad"},
    {"v": 1, "id": 1, "error": {"code": 3, "message": "m"}},
    {"v": 1, "id": 1, "error": {"code": "X", "message": "m", "hint": 4}},
    {"v": 2, "id": 1, "ok": 1},
    {"v": 1, "id": "1", "ok": 1},
    [1],
])
def test_bad_replies(reply):
    with pytest.raises(ProtocolError):
        parse_reply(reply)


def test_peer_credentials(pair):
    a, _ = pair
    assert proto.peer_cred(a) == (os.getpid(), os.getuid(), os.getgid())
    assert proto.peer_uid(a) == os.getuid()
