"""The control channel's wire protocol: length-prefixed orjson frames, and their shapes.

Frames
------
A frame is a 4-byte big-endian unsigned length followed by that many bytes of JSON
(encoded and decoded by orjson).  The body of every frame is a JSON object::

    request  {"v": 1, "id": <int>, "cmd": <str>, "args": <object>,
              "trace": {"trace_id", "span_id", "parent_span_id"}}   # "trace" optional
    reply    {"v": 1, "id": <same id>, "ok": <any JSON>}
             {"v": 1, "id": <same id>, "error": {"code", "message", "hint"[, "details"]}}
    stream   {"v": 1, "id": <same id>, "more": <any JSON>}  (zero or more, then a final
             "ok" or "error" reply with the same id; e.g. following events)

Nothing a client sends is ever unpickled (RELIABILITY 19): bytes become JSON or a
``ProtocolError``.  A pickle (``b'\\x80\\x04...'``) or a multiprocessing authentication
challenge (``b'#CHALLENGE#...'``) written straight to the socket reads as a huge length
header and is refused as ``FrameTooLarge``; wrapped in a valid header it is "not JSON".

Limits (module constants; pass a ``Limits`` to override per reader/call)
-----------------------------------------------------------------------
``MAX_FRAME``       16 MiB body.  Refused from the 4-byte header, before any body byte
                    is read or buffered (``FrameTooLarge``, code ``FRAME_TOO_LARGE``).
``MAX_DEPTH``       64 levels of nested arrays/objects, checked by an iterative walk.
                    (orjson itself stops at 1024; CPython's json would raise
                    RecursionError: every parser failure becomes ``ProtocolError``.)
``MAX_INT``         integers must satisfy ``|n| < 2**63``.  orjson 3.10+ silently turns
                    an integer literal beyond 64 bits into a float, so when the raw body
                    holds 19+ digits in a row and the parsed value an int out of range or
                    a float of magnitude >= 2**63 (or the body does not parse), the
                    integer literals of 19+ digits are found in the raw body (skipping
                    strings) and checked exactly.  Digits inside strings (hex, ids, text)
                    thus cost one byte scan, not a tokenizing pass.  Must not exceed 2**64.
``MAX_STRING``      8 Mi characters per string or key.
``MAX_CONTAINERS``  1 Mi arrays/objects per frame, counted as ``{``/``[`` bytes of the raw
                    body before parsing (brackets inside strings count too: the bound is
                    generous).  Without it 16 MiB of ``[{},{},...]`` parses into ~400 MB.
``int literals``    an integer literal is judged by its digit count first: one longer than
                    ``max_int`` has digits is refused without ever being converted (CPython
                    refuses ``int()`` of more than 4,300 digits with ``ValueError``; a
                    5,000-digit literal must be a protocol error, not a crash).
``NaN/Infinity``    refused (orjson rejects the literals and any float that overflows to
                    infinity, e.g. ``1e400``): ``ProtocolError``.
``duplicate keys``  refused at any depth (``{"cmd":"status","cmd":"down"}`` is never
                    obeyed): the keys of the parsed value are counted and compared with the
                    keys of the raw body (``:`` bytes outside strings: all ``:`` bytes less
                    the ``:`` in the parsed strings, when no ``\\u`` escape could hide
                    one, else the body with its strings removed); on a mismatch the
                    body is re-read without converting numbers to name the key and path.
``invalid UTF-8``   and lone surrogates: refused by orjson -> ``ProtocolError``.
``depth >= 1024``   a ``Limits`` whose ``max_depth`` is at least ``PARSER_DEPTH`` leaves the
                    depth to orjson (which refuses 1025 levels), so no walk is needed.

Internal sockets use the same decoder with their own ``Limits`` (``INTERNAL_LIMITS`` in
``runtime.wire.server``, the registry's and telemetry's in their modules): no socket of
the tree parses bytes without these checks.
Request fields: ``id`` is an int in ``[0, 2**63)``; ``cmd`` matches ``[a-z][a-z0-9_.:-]*``
and is at most 64 characters; ``args`` is an object (a missing ``args`` means ``{}``);
trace ids are 1-32 lowercase hex digits.  Unknown top-level fields are refused: a peer
that adds fields must bump ``v``.  The version is checked first, so a newer peer gets
"version mismatch", not "unknown field".

Errors and stream state
-----------------------
``FrameReader.feed`` is for non-blocking servers.  Any ``ProtocolError`` it raises is
final for that connection (like a bad TLS record): the reader refuses further input;
answer with an error reply (``"id": null`` when the id is unknown) and close.  The frames
decoded before the bad one in the same ``feed`` call are on the exception as ``.frames``
so a server may still answer them.  A request that decodes but has the wrong shape
(``parse_request``) is *not* final: the framing is intact, reply with the error and go on.
EOF with a partial frame buffered is the caller's error to raise: ``feed_eof()`` raises
``TruncatedFrame`` (a ``ProtocolError``; a client reads it as "the daemon died").

``send_frame``/``recv_frame`` are the blocking helpers a client uses; every wait is bounded
by an absolute ``time.monotonic()`` deadline and ends in ``DeadlineExceeded``.  After a
deadline or an error mid-frame the stream is out of step: close the socket.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from runtime.errors import DeadlineExceeded, ProtocolError, to_wire
from runtime.observability.trace_context import TraceContext

__all__ = [
    "PROTOCOL_VERSION", "MAX_FRAME", "MAX_DEPTH", "MAX_INT", "MAX_STRING", "MAX_CONTAINERS",
    "MAX_CMD", "HEADER", "PARSER_DEPTH", "Limits", "default_limits", "FrameTooLarge",
    "TruncatedFrame", "Request", "Reply",
    "encode_frame", "decode_body", "decode_value", "check_value", "FrameReader", "make_request", "ok_reply",
    "error_reply", "more_reply", "parse_request", "parse_reply", "send_frame",
    "recv_frame", "peer_cred", "peer_uid",
]

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_INT = 2**63
MAX_STRING = 8 * 1024 * 1024
MAX_CONTAINERS = 1 << 20
MAX_CMD = 64
PARSER_DEPTH = 1024  # orjson refuses deeper nesting itself
HEADER = struct.Struct(">I")

_REQUEST_FIELDS = frozenset({"v", "id", "cmd", "args", "trace"})
_REPLY_KINDS = ("ok", "error", "more")
_CMD_RE = re.compile(r"[a-z][a-z0-9_.:-]*\Z")
_HEX_ID_RE = re.compile(r"[0-9a-f]{1,32}\Z")
# A JSON string (skipped whole, so digits inside strings never match) or an integer
# literal of 19+ digits that is not part of a fraction or exponent.
_STRING_OR_LONG_INT = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"|(?<![\d.eE+-])-?\d{19,}(?![\d.eE])', re.S)


class FrameTooLarge(ProtocolError):
    code = "FRAME_TOO_LARGE"
    default_hint = ("send a smaller request (large data belongs in shared memory, "
                    "not on the control channel), or raise the peer's frame limit")


class TruncatedFrame(ProtocolError):
    """EOF in the middle of a frame: the peer died (or wrote half a frame) mid-message."""

    code = "TRUNCATED_FRAME"
    default_hint = "the peer died or wrote a truncated frame; reconnect and retry"


@dataclass(frozen=True, slots=True)
class Limits:
    max_frame: int = MAX_FRAME
    max_depth: int = MAX_DEPTH
    max_int: int = MAX_INT
    max_string: int = MAX_STRING
    max_containers: int = MAX_CONTAINERS


def default_limits() -> Limits:
    """The module constants as they are now (tests and embedders may rebind them)."""
    return Limits(MAX_FRAME, MAX_DEPTH, MAX_INT, MAX_STRING, MAX_CONTAINERS)


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    cmd: str
    args: dict[str, Any] = field(default_factory=dict)
    trace: TraceContext | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply: ``kind`` is "ok", "error" (``value`` is the wire error) or "more"."""

    id: int | None
    kind: str
    value: Any


# --- what the bytes look like, for messages --------------------------------------------

def _sniff(data: bytes) -> str:
    if data[:1] == b"\x80":
        return "; it looks like a pickle, and agora never unpickles what a peer sends"
    if data[:1] == b"#":
        return ("; it looks like a multiprocessing.connection handshake "
                "(the control channel is not a multiprocessing Listener)")
    return ""


def _too_large(size: int, header: bytes, lim: Limits) -> FrameTooLarge:
    return FrameTooLarge(
        f"frame header announces {size} bytes, over the {lim.max_frame}-byte limit "
        f"(header {header!r}{_sniff(header)})", size=size, limit=lim.max_frame)


def _check_length(size: int, header: bytes, lim: Limits) -> None:
    if size > lim.max_frame:
        raise _too_large(size, header, lim)


# --- value checks (shared by encode and decode) -------------------------------------------

def _check_scalar(value: Any, lim: Limits, where: str) -> None:
    if isinstance(value, int) and not -lim.max_int < value < lim.max_int:
        raise ProtocolError(f"{where}: integer {str(value)[:40]} is out of range "
                            f"(|n| must be < {lim.max_int})", hint="send it as a string")
    if isinstance(value, str) and len(value) > lim.max_string:
        raise ProtocolError(f"{where}: a string of {len(value)} characters exceeds "
                            f"the limit of {lim.max_string}")


def check_value(obj: Any, lim: Limits, where: str = "frame") -> None:
    """Walk ``obj`` iteratively (no recursion) and enforce depth, integer and string limits."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            for key in value:
                _check_scalar(key, lim, where)
            children: Any = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            _check_scalar(value, lim, where)
            continue
        if depth > lim.max_depth:
            raise ProtocolError(f"{where}: nested deeper than {lim.max_depth} levels",
                                hint="flatten the data")
        stack.extend((child, depth + 1) for child in children)


def _body_bounds(body: bytes, containers: int, lim: Limits) -> bool:
    """True when the encoded body alone proves the depth and string limits: no more
    '{'/'[' bytes than ``max_depth`` bounds the depth, a body no longer than ``max_string``
    bounds every string.  (Integers: only literals of 19+ digits can reach ``max_int``
    when it is at least 10**18; callers scan for those.)"""
    depth_ok = containers <= lim.max_depth or lim.max_depth >= PARSER_DEPTH
    return depth_ok and len(body) <= lim.max_string and lim.max_int >= 10**18


def _precheck(body: bytes, lim: Limits) -> tuple[bool, bool]:
    """Refuse what orjson would accept but the protocol must not (before parsing).
    (``walk``, ``long``): ``walk`` when the parsed value still needs ``check_value``'s walk
    (see ``_body_bounds``), ``long`` when the body holds a run of 19+ digits, in a string or
    not (then ``_check_long_ints`` decides after parsing, see ``decode_value``)."""
    containers = body.count(b"{") + body.count(b"[")
    if containers > lim.max_containers:
        raise ProtocolError(f"frame holds {containers} '{{'/'[' bytes, over the "
                            f"limit of {lim.max_containers} arrays and objects")
    return not _body_bounds(body, containers, lim), _has_long_digits(body)


# ``\d{19}`` through ``re`` cost 300 us on a 35 KB body of text and hex (it retries at
# every digit); mapping digits to "0" and looking for 19 of them is the same test in
# 40 us (perf/pipeline_cost.py, docs/DECISIONS.md "pipeline coordination cost").
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS = b"0" * 19
_FLOAT_SUSPECT = float(2**63)  # no float below this came from an out-of-range int literal


def _has_long_digits(body: bytes) -> bool:
    """True when ``body`` holds 19 consecutive ASCII digits (what ``\\d{19}`` finds)."""
    return _NINETEEN_DIGITS in body.translate(_DIGITS_TO_ZERO)


def _big_number_in(obj: Any, lim: Limits) -> bool:
    """True when the parsed ``obj`` holds an int out of range, or a float of magnitude
    2**63 or more: the only values an integer literal of 19+ digits beyond the limit can
    have become (orjson keeps 64-bit integers exact and turns larger ones into floats).
    Without one, no literal is out of range, whatever digits the strings hold."""
    stack = [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, float):
            if not -_FLOAT_SUSPECT < value < _FLOAT_SUSPECT:
                return True
        elif isinstance(value, int) and not -lim.max_int < value < lim.max_int:
            return True
    return False


def _check_long_ints(body: bytes, lim: Limits) -> None:
    """The exact test: every integer literal of 19+ digits outside strings is in range
    (a tokenizing pass over the whole body: only run when ``_big_number_in`` found a
    suspect, or the body did not parse)."""
    for m in _STRING_OR_LONG_INT.finditer(body):
        token = m.group()
        if token[:1] != b'"' and not _int_literal_ok(token, lim):
            shown = token[:40].decode() + ("..." if len(token) > 40 else "")
            raise ProtocolError(f"frame: integer literal {shown} ({len(token.lstrip(b'-'))} "
                                f"digits) is out of range (|n| must be < {lim.max_int})",
                                hint="send it as a string")


def _int_literal_ok(token: bytes, lim: Limits) -> bool:
    """``|int(token)| < max_int`` without converting a literal that cannot fit: its digit
    count decides first (CPython's int-string limit would raise ValueError at 4,301)."""
    digits = token.lstrip(b"-")
    if len(digits) > len(str(lim.max_int)):
        return False
    return -lim.max_int < int(token) < lim.max_int


# --- frames ------------------------------------------------------------------------------

def encode_frame(obj: dict[str, Any], limits: Limits | None = None) -> bytes:
    """Header + orjson body.  Refuses (ProtocolError) what the peer would refuse."""
    lim = limits or default_limits()
    if not isinstance(obj, dict):
        raise ProtocolError(f"a frame must be a JSON object, not {type(obj).__name__}")
    try:
        body = orjson.dumps(obj)
    except (TypeError, ValueError) as e:
        check_value(obj, lim, "outgoing frame")  # names the limit the value breaks, if one
        raise ProtocolError(f"cannot encode frame as JSON: {e}",
                            hint="send only dicts, lists, str, int, float, bool and None") from e
    containers = body.count(b"{") + body.count(b"[")
    if not _body_bounds(body, containers, lim) or _has_long_digits(body):
        check_value(obj, lim, "outgoing frame")  # the walk the small frames are spared
    if len(body) > lim.max_frame:
        raise FrameTooLarge(f"outgoing frame is {len(body)} bytes, over the "
                            f"{lim.max_frame}-byte limit", size=len(body), limit=lim.max_frame)
    return HEADER.pack(len(body)) + body


def decode_value(body: bytes, limits: Limits | None = None) -> Any:
    """One frame body -> any JSON value, under every limit of the module docstring, or
    ProtocolError (whatever the parser raised)."""
    lim = limits or default_limits()
    body = bytes(body)
    walk, long = _precheck(body, lim)
    try:
        obj = orjson.loads(body)
    except (ValueError, RecursionError, TypeError, OverflowError) as e:
        if long:
            _check_long_ints(body, lim)  # a literal out of range says so, not "not JSON"
        raise ProtocolError(f"frame body ({len(body)} bytes) is not JSON: {e}"
                            f"{_sniff(body[:1])}") from e
    if long and _big_number_in(obj, lim):
        _check_long_ints(body, lim)
    if walk:
        check_value(obj, lim)
    _refuse_duplicate_keys(body, obj)
    return obj


def decode_body(body: bytes, limits: Limits | None = None) -> dict[str, Any]:
    """One frame body -> a JSON object, or ProtocolError (whatever the parser raised)."""
    obj = decode_value(body, limits)
    if not isinstance(obj, dict):
        raise ProtocolError(f"a frame must be a JSON object, got {type(obj).__name__}")
    return obj


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


def _count_keys(obj: Any) -> int:
    """Keys of every object in ``obj`` (iterative: depth is already bounded)."""
    n, stack = 0, [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            n += len(value)
            stack.extend(v for v in value.values() if isinstance(v, (dict, list)))
        else:
            stack.extend(v for v in value if isinstance(v, (dict, list)))
    return n


def _string_colons(obj: Any) -> int:
    """``:`` characters in every key and string of ``obj``.  With no ``\\u`` escape in the
    body each is exactly one ``:`` byte inside a string of the body, so ``colons ==
    keys + _string_colons`` holds if and only if no key was dropped (a repeated key adds a
    ``:`` outside strings, and its dropped key and value only add more).  Cheaper than
    stripping the body's strings: 20 us against 190 us on a 35 KB body of prose."""
    n, stack = 0, [obj]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                n += key.count(":")
                if isinstance(child, str):
                    n += child.count(":")
                elif isinstance(child, (dict, list)):
                    stack.append(child)
        else:
            for child in value:
                if isinstance(child, str):
                    n += child.count(":")
                elif isinstance(child, (dict, list)):
                    stack.append(child)
    return n


def _refuse_duplicate_keys(body: bytes, obj: Any) -> None:
    """orjson keeps the last of duplicate keys; the protocol refuses them (module
    docstring).  ``body`` parsed, so ``:`` bytes outside strings are exactly its keys."""
    colons = body.count(b":")
    if colons <= 1 or not isinstance(obj, (dict, list)):
        return
    parsed = _count_keys(obj)
    if colons == parsed or (b"\\u" not in body and colons == parsed + _string_colons(obj)):
        return
    if _JSON_STRING.sub(b"", body).count(b":") == parsed:
        return
    raise ProtocolError(f"frame: {_which_duplicate(body)}",
                        hint="send each key once (JSON objects with repeated keys are ambiguous)")


def _which_duplicate(body: bytes) -> str:
    """Name the first repeated key and where it is (slow path: only for refused frames;
    numbers are never converted)."""
    import json

    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return {}

    try:
        json.loads(body, object_pairs_hook=pairs, parse_int=lambda s: 0,
                   parse_float=lambda s: 0.0, parse_constant=lambda s: 0.0)
    except (ValueError, RecursionError):
        pass
    if found:
        return f"duplicate key {found[0][:64]!r} in an object"
    return "an object repeats a key"


class FrameReader:
    """Incremental frame decoder for non-blocking sockets (see the module docstring)."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or default_limits()
        self._buf = bytearray()
        self._failed: ProtocolError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held in the buffer."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return every frame now complete (possibly none)."""
        if self._failed is not None:
            raise ProtocolError(f"this connection already sent a bad frame ({self._failed.message})",
                                hint="close the connection")
        self._buf += data
        frames: list[dict[str, Any]] = []
        try:
            self._drain(frames)
        except ProtocolError as e:
            self._failed = e
            e.frames = frames  # type: ignore[attr-defined]
            raise
        return frames

    def _drain(self, frames: list[dict[str, Any]]) -> None:
        buf, start = self._buf, 0
        while len(buf) - start >= HEADER.size:
            header = bytes(buf[start:start + HEADER.size])
            (size,) = HEADER.unpack(header)
            _check_length(size, header, self.limits)
            end = start + HEADER.size + size
            if len(buf) < end:
                break
            frames.append(decode_body(bytes(buf[start + HEADER.size:end]), self.limits))
            start = end
        del buf[:start]

    def feed_eof(self) -> None:
        """The peer closed: raise ProtocolError if it left a partial frame behind."""
        if self._buf:
            raise TruncatedFrame(f"connection closed in the middle of a frame "
                                 f"({len(self._buf)} bytes of it received)")


# --- message shapes ----------------------------------------------------------------------

def make_request(rid: int, cmd: str, args: dict[str, Any] | None = None,
                 trace: TraceContext | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": rid, "cmd": cmd, "args": args or {}}
    if trace is not None:
        msg["trace"] = trace.to_wire()
    return msg


def ok_reply(rid: int | None, value: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "ok": value}


def more_reply(rid: int | None, item: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "more": item}


def error_reply(rid: int | None, exc: BaseException) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": rid, "error": to_wire(exc)}


def _type_error(name: str, expected: str, got: Any) -> ProtocolError:
    return ProtocolError(f"field {name!r} must be {expected}, got {type(got).__name__} "
                         f"{str(got)[:40]!r}")


def _check_version(obj: dict[str, Any]) -> None:
    v = obj.get("v")
    if v == PROTOCOL_VERSION and type(v) is int:
        return
    if "v" not in obj:
        raise ProtocolError("field 'v' (protocol version) is missing",
                            hint=f"send \"v\": {PROTOCOL_VERSION}")
    raise ProtocolError(f"protocol version {v!r} is not supported; this side speaks "
                        f"version {PROTOCOL_VERSION}",
                        hint="use a client and a daemon from the same agora release "
                             "(restart the daemon after upgrading: `agora down && agora up`)")


def _check_fields(obj: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ProtocolError(f"unknown field(s) {unknown} in {what}; "
                            f"allowed: {sorted(allowed)}")


def _parse_id(obj: dict[str, Any], allow_null: bool) -> int | None:
    rid = obj.get("id")
    if rid is None and allow_null and "id" in obj:
        return None
    if type(rid) is not int or not 0 <= rid < 2**63:
        raise _type_error("id", "an integer in [0, 2**63)", rid)
    return rid


def _parse_cmd(cmd: Any) -> str:
    if not isinstance(cmd, str) or not (0 < len(cmd) <= MAX_CMD) or not _CMD_RE.match(cmd):
        raise _type_error("cmd", f"a command name like 'submit' (lowercase, <= {MAX_CMD} "
                                 "characters)", cmd)
    return cmd


def _parse_trace(trace: Any) -> TraceContext | None:
    if trace is None:
        return None
    if not isinstance(trace, dict):
        raise _type_error("trace", "an object {trace_id, span_id, parent_span_id}", trace)
    _check_fields(trace, frozenset({"trace_id", "span_id", "parent_span_id"}), "'trace'")
    for name in ("trace_id", "span_id", "parent_span_id"):
        value = trace.get(name)
        if value is None and name == "parent_span_id":
            continue
        if not isinstance(value, str) or not _HEX_ID_RE.match(value):
            raise _type_error(f"trace.{name}", "1-32 lowercase hex digits", value)
    return TraceContext(trace["trace_id"], trace["span_id"], trace.get("parent_span_id"))


def parse_request(obj: Any) -> Request:
    """Validate a decoded frame as a request; ProtocolError names the offending field."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a request must be a JSON object, got {type(obj).__name__}")
    _check_version(obj)
    _check_fields(obj, _REQUEST_FIELDS, "request")
    rid = _parse_id(obj, allow_null=False)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise _type_error("args", "an object", args)
    return Request(rid, _parse_cmd(obj.get("cmd")), args, _parse_trace(obj.get("trace")))  # type: ignore[arg-type]


def _parse_error(err: Any) -> dict[str, Any]:
    if not isinstance(err, dict):
        raise _type_error("error", "an object {code, message, hint}", err)
    _check_fields(err, frozenset({"code", "message", "hint", "details"}), "'error'")
    for name in ("code", "message"):
        if not isinstance(err.get(name), str):
            raise _type_error(f"error.{name}", "a string", err.get(name))
    if not isinstance(err.get("hint", ""), str) or not isinstance(err.get("details", {}), dict):
        raise _type_error("error.hint/details", "a string / an object", err)
    return err


def parse_reply(obj: Any) -> Reply:
    """Validate a decoded frame as a reply: exactly one of "ok", "error", "more"."""
    if not isinstance(obj, dict):
        raise ProtocolError(f"a reply must be a JSON object, got {type(obj).__name__}")
    _check_version(obj)
    _check_fields(obj, frozenset({"v", "id", *_REPLY_KINDS}), "reply")
    kinds = [k for k in _REPLY_KINDS if k in obj]
    if len(kinds) != 1:
        raise ProtocolError(f"a reply needs exactly one of {list(_REPLY_KINDS)}, got {kinds}")
    kind = kinds[0]
    value = _parse_error(obj[kind]) if kind == "error" else obj[kind]
    return Reply(_parse_id(obj, allow_null=True), kind, value)


# --- blocking helpers --------------------------------------------------------------------

def _set_deadline(sock: socket.socket, deadline: float, doing: str) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineExceeded(f"deadline passed while {doing}",
                               hint="raise the timeout, or check that the daemon is responsive")
    sock.settimeout(remaining)


def send_frame(sock: socket.socket, obj: dict[str, Any], deadline: float | None = None,
               limits: Limits | None = None) -> None:
    """Encode and send one frame; with ``deadline`` the send is bounded."""
    data = encode_frame(obj, limits)
    if deadline is not None:
        _set_deadline(sock, deadline, "sending a frame")
    try:
        sock.sendall(data)
    except TimeoutError as e:
        raise DeadlineExceeded("deadline passed while sending a frame (the peer is not "
                               "reading)", hint="close the connection and retry") from e


def _recv_exact(sock: socket.socket, n: int, deadline: float, doing: str) -> bytes | None:
    """Exactly ``n`` bytes; None on EOF before the first byte; ProtocolError on EOF later."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        _set_deadline(sock, deadline, doing)
        try:
            k = sock.recv_into(view[got:])
        except TimeoutError as e:
            raise DeadlineExceeded(f"deadline passed while {doing} ({got} of {n} bytes)",
                                   hint="raise the timeout, or check the daemon") from e
        if k == 0:
            if got == 0:
                return None
            raise TruncatedFrame(f"connection closed while {doing}: got {got} of {n} bytes")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, deadline: float,
               limits: Limits | None = None) -> dict[str, Any] | None:
    """Read one frame, waiting at most until ``deadline`` (time.monotonic()).

    Returns None on a clean EOF between frames; raises ProtocolError for a truncated or
    bad frame (FrameTooLarge before reading the body), DeadlineExceeded when time is up.
    """
    lim = limits or default_limits()
    header = _recv_exact(sock, HEADER.size, deadline, "reading a frame header")
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    _check_length(size, header, lim)
    body = _recv_exact(sock, size, deadline, "reading a frame body")
    if body is None:
        raise TruncatedFrame(f"connection closed after a frame header announcing {size} bytes")
    return decode_body(body, lim)


_UCRED = struct.Struct("3i")


def peer_cred(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def peer_uid(sock: socket.socket) -> int:
    return peer_cred(sock)[1]

