"""Pure pieces of the CLI: uptime text, the start-up log's tail, event lines, and
``agora top``'s loop (quits on q, says why it ended)."""

from __future__ import annotations

import os

import pytest

from runtime.cli.group import CliError
from runtime.cli.daemon import duration, log_tail
from runtime.cli.observe import Keys, event_line, top_loop
from runtime.errors import DaemonNotRunning

FRAME = {"ts": 0.0, "tasks": {}, "throughput": 0.0, "restarts_total": 0,
         "tree": {"kind": "worker", "id": "coordinator", "pid": 1, "state": "running",
                  "restarts": 0, "uptime_s": 3.0},
         "pools": [], "restarts": [], "coordination": []}


def test_duration():
    assert [duration(s) for s in (None, 3.25, 65, 3 * 3600 + 120, 2 * 86400 + 5 * 3600)] == [
        "-", "3.2s", "1m05s", "3h02m", "2d05h"]


def test_log_tail_reads_only_this_start_up(tmp_path):
    log = tmp_path / "agora.log"
    log.write_text("old run\n" * 5)
    offset = log.stat().st_size
    with open(log, "a") as f:
        f.write("".join(f"line {i}\n" for i in range(40)) + "\n\n")
    tail = log_tail(log, offset, lines=3)
    assert tail == ["line 37", "line 38", "line 39"]
    assert log_tail(tmp_path / "missing.log") == []


def test_event_line_is_readable():
    line = event_line({"ts": 0, "type": "task.succeeded", "source": "coordinator", "pid": 7,
                       "task_id": "t-1", "attempts": 1})
    assert line.endswith("task.succeeded [coordinator] task_id=t-1 attempts=1")
    assert "pid" not in line


class _Stream:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def test_top_quits_on_q_and_says_so(capsys):
    r, w = os.pipe()
    frames = []
    try:
        def fetch():
            frames.append(1)
            os.write(w, b"x" if len(frames) == 1 else b"q")  # another key does not quit
            return FRAME
        with Keys(_Stream(r)) as keys:
            assert top_loop(fetch, keys, interval=0.2) == "quit (q pressed)"
    finally:
        os.close(r)
        os.close(w)
    assert len(frames) == 2 and "q quits" in capsys.readouterr().out


def test_top_ends_when_the_daemon_stops_and_fails_when_it_never_ran():
    frames = []

    def fetch():
        frames.append(1)
        if len(frames) > 1:
            raise DaemonNotRunning("gone")
        return FRAME
    with Keys(object()) as keys:  # no fd: Ctrl-C only
        assert not keys.live
        assert top_loop(fetch, keys, interval=0.1) == "the daemon stopped"
        with pytest.raises(CliError) as e:
            top_loop(fetch, keys, interval=0.1)  # no frame drawn: an error, not an ending
    assert e.value.exit_code == 69
