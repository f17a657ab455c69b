"""Fuzzing every control command's arguments on a live daemon (issue 15, item 8).

The command list comes from the daemon's own table (the ``commands`` of an
UNKNOWN_COMMAND error), each command's argument names from its own refusal of an unknown
argument (``allowed: [...]``), so a command added later is fuzzed without editing this
file.  Arguments are hypothesis values written byte for byte (``tests.support.fuzz``):
ints huge and negative (a 5,000-digit literal too), floats with NaN/Infinity/1e400,
strings empty, very long, unicode, with NUL or a lone surrogate, lists, dicts, null,
``args`` missing or not an object.

Every reply must be a success or a typed error (INTERNAL counts as a crash found), the
daemon must answer ``ping`` afterwards, and no process of the tree may have restarted
(the pids of before are alive under the same names, the restart counters unchanged).

Left out or pinned, because they legitimately stop or restart processes:
* ``down`` is not fuzzed (it stops the daemon);
* ``scale`` never gets a configured pool's name as ``pool`` (scaling ``echo`` to 0 stops
  its agents: not a restart, but the pid check could not tell);
* a request that validly waits (``wait`` true, or a timeout-like argument above 1 s) may
  go unanswered within the read bound: the connection is dropped and the daemon must
  carry on (a client that leaves mid-wait).

Seeded: the seed is printed (``AGORA_FUZZ_SEED=<n>`` replays it);
``AGORA_FUZZ_EXAMPLES`` sets the examples per command (default 30).
"""

from __future__ import annotations

import ast
import os
import time
from typing import Any

import numpy as np
import orjson
import psutil
from hypothesis import given
from hypothesis import strategies as st

from runtime.config import RunPaths
from runtime.errors import UnknownCommand
from runtime.wire.protocol import DeadlineExceeded
from tests.support.daemons import config, running_daemon
from tests.support.fuzz import SEED, RawConn, Tree, frame, fuzzed, raw_json, restarts, typed_error, values

EXAMPLES = int(os.environ.get("AGORA_FUZZ_EXAMPLES", "30"))
EXCLUDED = {"down": "stops the daemon"}
POOLS = {"echo"}
WAIT_KEYS = {"wait", "timeout_s", "timeout", "wait_s", "deadline_s", "move_s", "round_s", "ttl"}
READ_S = 3.0
MISSING = object()


def _commands(c) -> list[str]:
    try:
        c.call("no_such_command_zz")
    except UnknownCommand as e:
        return sorted(e.details["commands"])
    raise AssertionError("an unknown command was accepted")


def _allowed(c, cmd: str) -> list[str]:
    """The argument names ``cmd`` accepts, from its refusal of an unknown one."""
    try:
        c.request(cmd, {"zz_not_an_argument": 1}, timeout=10)
    except Exception as e:  # noqa: BLE001 - only its hint matters here
        hint = getattr(e, "hint", "") or ""
        if "allowed: [" in hint:
            return ast.literal_eval(hint[hint.index("allowed: [") + 9:].split("]")[0] + "]")
    return []


def _pin(cmd: str, args: Any) -> Any:
    if cmd == "scale" and isinstance(args, dict) and isinstance(args.get("pool"), str) and args["pool"] in POOLS:
        return {**args, "pool": "not_a_pool"}
    return args


def _may_wait(args: Any) -> bool:
    if not isinstance(args, dict):
        return False
    return any(k in WAIT_KEYS and (v is True or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                 and v == v and v > 1)) for k, v in args.items())


class Session:
    """Raw requests on one control connection (reopened after the daemon drops it)."""

    def __init__(self, path: str) -> None:
        self.path, self.conn, self.rid, self.calls = path, None, 0, 0
        self.outcomes: dict[str, int] = {}
        self.first: str | None = None

    def call(self, cmd: str, args: Any) -> str:
        """One request; the outcome ("ok", an error code, "waiting", "refused") or an
        AssertionError naming what went wrong."""
        self.calls += 1
        self.rid += 1
        self.conn = self.conn or RawConn(self.path)
        body = b'{"v":1,"id":%d,"cmd":%s' % (self.rid, orjson.dumps(cmd))
        body += (b"}" if args is MISSING else b',"args":' + raw_json(args) + b"}")
        if not self.conn.send(frame(body)):
            return self._drop("refused")
        return self._outcome(cmd, args)

    def _outcome(self, cmd: str, args: Any) -> str:
        while True:
            try:
                rep = self.conn.reply(READ_S)
            except DeadlineExceeded:
                assert _may_wait(args), f"`{cmd}` {args!r}: no reply within {READ_S} s"
                return self._drop("waiting")
            assert rep is not None, f"`{cmd}` {args!r}: the daemon closed the line without a reply"
            assert rep.id in (self.rid, None), f"`{cmd}`: reply to {rep.id}, expected {self.rid}"
            if rep.kind == "more":
                continue
            if rep.kind == "ok":
                return self._count("ok")
            assert typed_error(rep.value), f"`{cmd}` {args!r}: untyped error {rep.value!r}"
            if rep.id is None:  # a frame-level refusal: the daemon closes this connection
                self._drop(None)
            return self._count(rep.value["code"])

    def _count(self, outcome: str) -> str:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return outcome

    def _drop(self, outcome: str | None) -> str:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        return self._count(outcome) if outcome else ""


_OPTION_KEYS = ["deadline", "max_attempts", "priority", "idempotency_key", "budget", "timeout_s",
                "retryable", "fatal", "zz"]


def _near(choices: list[Any]) -> st.SearchStrategy:
    """A plausible value (so the command gets past its first checks) or a hostile one."""
    return st.sampled_from(choices) | values()


def _task() -> st.SearchStrategy:
    """Task objects close to valid ones: real capabilities, hostile inputs and options."""
    options = st.dictionaries(st.sampled_from(_OPTION_KEYS), values(nasty=False), max_size=3)
    return st.fixed_dictionaries({"capability": _near(["echo", "add", "nope", ""])},
                                 optional={"input": values(), "options": options | values(),
                                           "id": _near(["t1", "x" * 300]), "zz": values()})


def _steps() -> st.SearchStrategy:
    ref = st.fixed_dictionaries({"$ref": _near(["a", "b", "a.echo", "b.0.x", "zz", "a."])})
    step = st.fixed_dictionaries({"id": _near(["a", "b", "c", "a.b", ""]),
                                  "capability": _near(["echo", "add", "nope"])},
                                 optional={"input": values(nasty=False) | ref | st.dictionaries(st.text(max_size=3), ref),
                                           "options": st.dictionaries(st.sampled_from(_OPTION_KEYS), values()),
                                           "consensus": st.dictionaries(st.sampled_from(["k", "method", "zz"]),
                                                                        _near([2, 3, 17, "borda", "majority"]))})
    return st.fixed_dictionaries({"steps": st.lists(step, max_size=4)},
                                 optional={"name": _near(["p", ""])})


def _shapes(extra: list[str]) -> dict[str, st.SearchStrategy]:
    """Per argument name, values shaped like the real thing (a task, ids that exist)."""
    ids = _near(extra)
    return {"task": _task(), "tasks": st.lists(_task(), max_size=4), "spec": _steps(),
            "id": ids, "ids": st.lists(ids, max_size=4), "pool": _near(["echo", "nope"]),
            "capability": _near(["echo", "add"]), "agent": _near(["echo.0", "echo.1", "nope.0"]),
            "name": _near(["lock1", "ctx1", "", "x" * 201]), "path": _near(extra),
            "size": _near([0, 1, 2, 3, 4, 5, 99]), "options": _near(["a", "b"]) | st.lists(values(), max_size=3)}


def _args_strategy(keys: list[str], extra: list[str]) -> st.SearchStrategy:
    vals = st.one_of(values(), st.sampled_from(extra))
    shapes = _shapes(extra)
    named = st.fixed_dictionaries({}, optional={k: shapes[k] | vals if k in shapes else vals
                                               for k in keys}) if keys else st.just({})
    others = [st.dictionaries(st.sampled_from([*keys, "zz", ""]) | st.text(max_size=8), vals, max_size=3),
              values(), st.just(MISSING)]
    # weighted by hand (one_of does not weigh repeated branches): 7 in 10 named arguments
    return st.integers(0, 9).flatmap(lambda k: named if k < 7 else others[k - 7])


def _fuzz_one(session: Session, cmd: str, keys: list[str], extra: list[str], coord: int) -> None:
    @fuzzed(EXAMPLES)
    @given(args=_args_strategy(keys, extra))
    def run(args: Any) -> None:
        args = _pin(cmd, args)
        try:
            session.call(cmd, args)
            assert psutil.pid_exists(coord), f"`{cmd}` {args!r}: the coordinator died"
        except AssertionError as e:  # shrinking on a dead daemon says nothing: keep the first
            session.first = session.first or f"{e}"
            raise
    try:
        run()
    except AssertionError as e:
        raise AssertionError(f"first failure: {session.first}") from e


def _files(tmp_path) -> list[str]:
    bad = tmp_path / "corrupt.npy"
    bad.write_bytes(b"\x93NUMPY\x01\x00garbage")
    good = tmp_path / "ok.npy"
    np.save(good, np.arange(4), allow_pickle=False)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    return [str(bad), str(good), str(empty), str(tmp_path)]


def test_every_command_survives_fuzzed_arguments(agora_env, tmp_path):
    print(f"fuzz seed {SEED} (AGORA_FUZZ_SEED={SEED} replays it), {EXAMPLES} examples per command")
    with running_daemon(agora_env, config(size=2)) as (c, proc):
        tid = c.call("submit", task={"capability": "echo", "input": 1})
        c.call("result", id=tid, wait=True, timeout_s=10)
        commands = [cmd for cmd in _commands(c) if cmd not in EXCLUDED]
        assert len(commands) >= 20, commands
        coord = c.call("ping")["pid"]
        before, restarts_before = Tree(proc.pid), restarts(c.call("status")["tree"])
        extra = [tid, *_files(tmp_path)]
        session = Session(RunPaths.for_home(agora_env).control)
        took = {}
        for cmd in commands:
            t0 = time.monotonic()
            _fuzz_one(session, cmd, _allowed(c, cmd), extra, coord)
            took[cmd] = round(time.monotonic() - t0, 1)
            assert c.call("ping", timeout=5)["pid"] == coord, f"after `{cmd}`: the coordinator restarted"
        if session.conn is not None:
            session.conn.close()
        print(f"{session.calls} calls over {len(commands)} commands (excluded: {sorted(EXCLUDED)}); "
              f"outcomes {dict(sorted(session.outcomes.items()))}; slowest (s) "
              f"{sorted(took.items(), key=lambda kv: -kv[1])[:5]}")
        assert before.gone() == {}, f"processes restarted: {before.gone()}"
        assert restarts(c.call("status")["tree"]) == restarts_before
