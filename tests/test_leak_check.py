"""The suite's /dev/shm leak check blames a test only for segments it left (issue 15, the
leak flake after test_two_ups_racing_leave_exactly_one_daemon).

Several test sessions share /dev/shm.  A daemon of another session (the demo's config
publishes ``ctx.0``..``ctx.2`` at start) that is SIGKILLed during this test leaves
``agora.<its pid>-<token>.ctx.0`` behind with a dead pid: it used to count as this test's
leak.  Now a segment of a dead run is this test's only if the test's directory holds a
manifest of that run or a pid file naming its root.
"""

from __future__ import annotations

import os

from tests.conftest import _left_by_this_test
from tests.support.helpers import fork_running, reap


def _dead_pid() -> int:
    pid, r = fork_running(lambda w: None)
    os.close(r)
    reap(pid)
    return pid


def test_a_dead_strangers_segment_is_not_this_tests_leak(tmp_path):
    name = f"agora.{_dead_pid()}-0a1b2c3d.ctx.0"
    assert not _left_by_this_test(name, tmp_path)


def test_a_dead_run_with_a_manifest_here_is_this_tests_leak(tmp_path):
    run = f"{_dead_pid()}-0a1b2c3d"
    (tmp_path / "home" / f"shm.{run}.ctx.json").write_text("{}")
    assert _left_by_this_test(f"agora.{run}.ctx.0", tmp_path)


def test_a_sigkilled_roots_segment_is_this_tests_leak(tmp_path):
    pid = _dead_pid()
    (tmp_path / "home" / "agora.pid").write_text(f"{pid}\n(defaults)\n")
    assert _left_by_this_test(f"agora.{pid}-0a1b2c3d.guards.0", tmp_path)


def test_our_own_and_live_runs_stay_counted(tmp_path):
    assert _left_by_this_test(f"agora.{os.getpid()}-0a1b2c3d.ctx.0", tmp_path)
    assert _left_by_this_test("agora.notarun.ctx.0", tmp_path)
