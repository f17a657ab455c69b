"""Tools of the fuzz tests (issue 15, item 8): values no well-behaved client would send,
written to the wire byte for byte, and the checks that the daemon survived them.

* ``SEED``: one seed per test session (``AGORA_FUZZ_SEED`` to replay one), printed by
  ``fuzz_settings`` users; ``fuzzed`` applies it and bounded, database-less settings.
* ``raw_json(value)``: JSON text of a Python value that may hold what encoders refuse:
  ``Raw`` literals (``NaN``, ``Infinity``, a 5,000-digit integer, a lone surrogate).
* ``values()``: hypothesis strategy of hostile argument values (huge and negative ints,
  NaN, empty/long/unicode strings, lists, dicts, null).
* ``RawConn``: a socket that sends raw bytes and reads frames with a deadline.
* ``Tree``: the daemon's processes (pid by name) and restart counters, to prove that
  nothing restarted.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from typing import Any

import orjson
import psutil
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st

from runtime.wire.protocol import HEADER, parse_reply, recv_frame

__all__ = ["SEED", "fuzzed", "Raw", "raw_json", "values", "frame", "RawConn", "Tree", "typed_error", "restarts"]

SEED = int(os.environ.get("AGORA_FUZZ_SEED") or random.SystemRandom().randrange(2**32))

def typed_error(err: Any) -> bool:
    """A reply's error object is typed: a code other than INTERNAL (an INTERNAL reply means
    an untyped exception reached a boundary, i.e. a bug the fuzzer found)."""
    return isinstance(err, dict) and isinstance(err.get("code"), str) and \
        err["code"] not in ("", "INTERNAL") and isinstance(err.get("message"), str)


def fuzzed(max_examples: int):
    """Bounded, seeded, no example database (a run replays from its printed seed)."""
    def wrap(fn):
        return seed(SEED)(settings(max_examples=max_examples, deadline=None, database=None,
                                   phases=[Phase.explicit, Phase.generate],
                                   suppress_health_check=list(HealthCheck))(fn))
    return wrap


class Raw:
    """JSON text written as is (a literal the encoders refuse to produce)."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:60]!r}{'...' if len(self.text) > 60 else ''})"


HUGE_INT = Raw(b"9" * 5000)          # CPython's int() refuses > 4,300 digits
NASTY = [Raw(b"NaN"), Raw(b"-Infinity"), Raw(b"Infinity"), Raw(b"1e400"), HUGE_INT,
         Raw(b"-" + b"1" * 30), Raw(b'"\\ud800"'), Raw(b"18446744073709551616")]


def raw_json(v: Any) -> bytes:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, dict):
        return b"{" + b",".join(_key(k) + b":" + raw_json(x) for k, x in v.items()) + b"}"
    if isinstance(v, (list, tuple)):
        return b"[" + b",".join(raw_json(x) for x in v) + b"]"
    if isinstance(v, float) and v != v:
        return b"NaN"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return b"Infinity" if v > 0 else b"-Infinity"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v).encode()  # strategies keep ints far below the 4,300-digit limit
    try:
        return orjson.dumps(v)
    except TypeError:
        return json.dumps(v).encode()  # lone surrogates: escaped, for the peer to refuse


def _key(k: Any) -> bytes:
    return k.text if isinstance(k, Raw) else raw_json(str(k))


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


_EDGE_INTS = [0, -1, 1, 2**31, 2**31 + 1, 2**53 + 1, 2**63 - 1, 2**63, -2**63, 2**64, -2**64 - 1]
_EDGE_STRS = ["", " ", "echo", "echo.0", "x" * 257, "x" * 5000, "y" * 70_000, "\x00", "a\x00b",
              "../../../etc/passwd", "/dev/zero", "/", "ℵ" * 300, "😀", "\u202e", "NaN", "-1",
              "w.0", "*", "%s%n", "\n\t"]


_I63 = 2**63 - 1


def scalars() -> st.SearchStrategy:
    """Values the protocol accepts (the commands must judge them)."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=-_I63, max_value=_I63),
        st.sampled_from([n for n in _EDGE_INTS if abs(n) <= _I63]),
        st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1e308, -1e-308, 0.5]),
        st.text(max_size=40), st.sampled_from(_EDGE_STRS)).filter(
            lambda v: not isinstance(v, int) or abs(v) <= _I63)


def nasty_scalars() -> st.SearchStrategy:
    """Values the protocol must refuse (or judge at its edges)."""
    return st.one_of(st.sampled_from(NASTY), st.sampled_from(_EDGE_INTS),
                     st.integers(min_value=-2**80, max_value=2**80),
                     st.floats(allow_nan=True, allow_infinity=True))


def values(nasty: bool = True) -> st.SearchStrategy:
    """JSON values; with ``nasty``, about one in sixteen holds a literal the protocol must
    refuse (most values stay well formed, to reach the commands' own checks: a request
    carries several values, and one nasty value is enough to refuse the whole frame)."""
    plain = _tree(scalars())
    if not nasty:
        return plain
    return st.one_of(*[plain] * 15, _tree(st.one_of(scalars(), nasty_scalars())))


def _tree(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(leaves, lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=12), kids, max_size=4)),
        max_leaves=12)


class RawConn:
    """One connection to a stream socket of the daemon, bytes in, frames out, bounded."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)

    def send(self, data: bytes) -> bool:
        """False if the peer already hung up (it may refuse a frame before reading it all)."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def frame(self, seconds: float) -> Any:
        """The next frame's value, None on EOF; raises DeadlineExceeded past ``seconds``."""
        return recv_frame(self.sock, time.monotonic() + seconds)

    def reply(self, seconds: float) -> Any:
        """The next frame as a Reply, None on EOF; raises DeadlineExceeded past ``seconds``."""
        obj = self.frame(seconds)
        return None if obj is None else parse_reply(obj)

    def drain(self, seconds: float) -> bytes:
        """Whatever comes until EOF or ``seconds`` (a peer that keeps the line is fine)."""
        out, deadline = bytearray(), time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                break
            except (ConnectionResetError, BrokenPipeError):
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def close(self) -> None:
        self.sock.close()


class Tree:
    """The processes of a daemon (the root and its descendants) at one moment."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.pids = self._pids()

    def _pids(self) -> dict[int, str]:
        root = psutil.Process(self.root_pid)
        out = {root.pid: root.name()}
        for p in root.children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    out[p.pid] = p.name()
            except psutil.Error:
                pass
        return out

    def gone(self) -> dict[int, str]:
        """Processes of the snapshot that are no longer alive under the same name (a restart
        replaces the pid; new agents a scaler starts are not counted)."""
        now = Tree(self.root_pid).pids
        return {pid: name for pid, name in self.pids.items() if now.get(pid) != name}


def restarts(status_tree: dict[str, Any]) -> int:
    """Sum of the ``restarts`` counters of a ``status`` tree."""
    total, stack = 0, [status_tree]
    while stack:
        node = stack.pop()
        total += int(node.get("restarts") or 0)
        stack.extend(node.get("children") or [])
    return total
