"""The protocol's limits on every socket's decoder (issue 15, item 2): integers beyond the
limit (judged without converting a huge literal), NaN/Infinity, duplicate keys, invalid
UTF-8 and lone surrogates are ProtocolErrors; a valid frame glued before a bad one is
handed over on the exception (``.frames``), never dropped; and no byte string makes a
decoder raise anything but ProtocolError.  Checked for each socket's own ``Limits``:
control (defaults), root, agents (internal), registry partitions, telemetry.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.daemon.root import ROOT_LIMITS
from runtime.errors import ProtocolError
from runtime.observability.telemetry import LIMITS as TELEMETRY_LIMITS
from runtime.registry._partition import LIMITS as REGISTRY_LIMITS
from runtime.wire.protocol import HEADER, FrameReader, decode_value, default_limits
from runtime.wire.server import INTERNAL_LIMITS, InternalReader

SOCKETS = {"control": default_limits(), "root": ROOT_LIMITS, "agents": INTERNAL_LIMITS,
           "registry": REGISTRY_LIMITS, "telemetry": TELEMETRY_LIMITS}

BAD = {
    "5000-digit int": b'{"a":' + b"9" * 5000 + b"}",
    "negative 5000-digit int": b'[-' + b"1" * 5000 + b"]",
    "int beyond 64 bits": b'{"a":18446744073709551616}',
    "NaN": b'{"a":NaN}',
    "Infinity": b'{"a":-Infinity}',
    "overflowing float": b'{"a":1e400}',
    "duplicate key": b'{"cmd":"status","cmd":"down"}',
    "nested duplicate key": b'{"args":{"x":1,"x":2}}',
    "invalid UTF-8": b'{"a":"\xff\xfe"}',
    "lone surrogate": b'{"a":"\\ud800"}',
    "truncated JSON": b'{"a":',
    "deep nesting": b"[" * 2000 + b"]" * 2000,
    # digits and colons inside strings take the fast paths; these must still be refused
    "int beyond 64 bits beside long digits in a string": b'{"s":"12345678901234567890123","a":18446744073709551616}',
    "negative int beyond 64 bits in a list of digit strings": b'["0000000000000000000",[-18446744073709551617]]',
    "duplicate key beside colons in strings": b'{"a":"x:y:z","b":[":"],"a":"w"}',
    "duplicate key whose colons are escaped": b'{"a":"\\u003a","a":"\\u003a"}',
}


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


@pytest.mark.parametrize("sock", SOCKETS)
@pytest.mark.parametrize("case", BAD)
def test_bad_bodies_are_protocol_errors_on_every_socket(sock, case):
    with pytest.raises(ProtocolError):
        decode_value(BAD[case], SOCKETS[sock])


def test_the_huge_literal_is_judged_by_its_length_never_converted():
    """int() of a 5,000-digit string raises ValueError (CPython's limit), which would
    escape as a crash: a ProtocolError proves the length decided first."""
    for lim in SOCKETS.values():
        with pytest.raises(ProtocolError, match="out of range|not JSON"):
            decode_value(b'{"a":' + b"7" * 50_000 + b"}", lim)


def test_integers_at_the_control_limit():
    lim = default_limits()
    assert decode_value(b'{"a":9223372036854775807}', lim) == {"a": 2**63 - 1}
    with pytest.raises(ProtocolError, match="out of range"):
        decode_value(b'{"a":9223372036854775808}', lim)
    assert decode_value(b'{"s":"99999999999999999999999999"}', lim) == {"s": "9" * 26}  # in a string


def test_duplicate_keys_name_the_key():
    with pytest.raises(ProtocolError, match="duplicate key 'cmd'"):
        decode_value(b'{"cmd":"status","cmd":"down"}')


def test_keys_and_colons_inside_strings_are_not_duplicates():
    assert decode_value(b'{"a":"x:y","b":{"c":":"}}') == {"a": "x:y", "b": {"c": ":"}}
    assert decode_value(b'{"a:b":["::",{"c":"\\u003a:"}]}') == {"a:b": ["::", {"c": "::"}]}


@pytest.mark.parametrize("sock", SOCKETS)
def test_long_digits_in_strings_and_large_floats_are_accepted(sock):
    """The 19-digit scan finds runs inside strings and large float literals: neither is an
    integer literal out of range, so the frame is accepted (the exact pass decides)."""
    body = (b'{"hex":"ab0000513660002070537cd","f":1e19,"g":-2.5e30,"n":9223372036854775807,'
            b'"t":1.2345678901234567e-05,"w":["1234567890123456789012345"]}')
    assert decode_value(body, SOCKETS[sock]) == {
        "hex": "ab0000513660002070537cd", "f": 1e19, "g": -2.5e30, "n": 2**63 - 1,
        "t": 1.2345678901234567e-05, "w": ["1234567890123456789012345"]}


@pytest.mark.parametrize("reader", [FrameReader, InternalReader])
def test_a_valid_frame_glued_before_a_bad_one_is_handed_over(reader):
    r = reader()
    with pytest.raises(ProtocolError) as got:
        r.feed(_frame(b'{"v":1,"id":1,"cmd":"ping"}') + _frame(b'{"a":NaN}'))
    assert got.value.frames == [{"v": 1, "id": 1, "cmd": "ping"}]
    with pytest.raises(ProtocolError, match="already sent a bad frame"):
        r.feed(_frame(b"{}"))  # final for the connection


@pytest.mark.parametrize("reader", [FrameReader, InternalReader])
def test_an_oversized_header_after_a_valid_frame(reader):
    r = reader()
    with pytest.raises(ProtocolError) as got:
        r.feed(_frame(b'{"a":1}') + b"\xff\xff\xff\xff")
    assert got.value.frames == [{"a": 1}]


def test_each_socket_refuses_a_frame_over_its_own_size():
    for name, lim in SOCKETS.items():
        reader = FrameReader(lim)
        with pytest.raises(ProtocolError, match="limit"):
            reader.feed(HEADER.pack(lim.max_frame + 1))
        assert lim.max_frame <= 1 << 30, name


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=300), sock=st.sampled_from(sorted(SOCKETS)))
def test_no_bytes_make_a_decoder_raise_anything_but_protocol_error(data, sock):
    try:
        decode_value(data, SOCKETS[sock])
    except ProtocolError:
        pass


_JSONISH = st.lists(st.sampled_from([b"{", b"}", b"[", b"]", b'"k"', b":", b",", b"1", b"-", b"9" * 25,
                                     b"NaN", b"1e999", b'"\\ud800"', b"\xff", b"null", b'"a\\"b"']), max_size=40)


@settings(max_examples=300, deadline=None, database=None)
@given(parts=_JSONISH, sock=st.sampled_from(sorted(SOCKETS)))
def test_no_json_like_bytes_make_a_reader_raise_anything_but_protocol_error(parts, sock):
    body = b"".join(parts)
    for reader in (FrameReader(SOCKETS[sock]), InternalReader(SOCKETS[sock])):
        try:
            reader.feed(_frame(body))
        except ProtocolError:
            pass
