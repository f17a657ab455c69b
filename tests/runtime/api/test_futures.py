"""Task futures completed from reply records, without a daemon: a fake connection answers
``attempts`` (the agent of a failure) at once, as the reader thread would."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import traceback

import pytest

from runtime.api.connection import Pending
from runtime.api.futures import PipelineFuture, RemoteTraceback, TaskFailed, TaskFuture, as_completed, wait
from runtime.errors import AgoraError, Unavailable
from runtime.wire.protocol import Reply

TB = 'Traceback (most recent call last):\n  File "agents.py", line 3, in boom\nValueError: boom\n'
FAILED = {"id": "t-1", "capability": "boom", "state": "failed", "attempts": 3, "pipeline_id": None,
          "result": None, "error": {"type": "ValueError", "message": "boom", "traceback": TB}}


class FakeConn:
    """``send`` records the request and answers ``attempts`` and ``cancel`` at once."""

    def __init__(self):
        self.sent = []
        self._reader = None

    def send(self, cmd, args=None, *, callback=None, trace=None):
        self.sent.append((cmd, args))
        p = Pending(len(self.sent), cmd, callback)
        if cmd == "attempts":
            p.finish(Reply(p.rid, "ok", [{"agent": "boom.0"}, {"agent": "boom.1"}]))
        return p

    def on_reading_thread(self):
        return False

    def want_reader(self):
        pass

    def wait_until(self, done, sleep, timeout):
        return done()

    def request(self, cmd, args=None, **kw):
        self.sent.append((cmd, args))
        return {"outcome": "stopping"} if cmd == "cancel" else None


def finished(rec):
    f = TaskFuture(FakeConn(), rec["capability"], rec["id"])
    f.on_record(rec)
    return f


def test_a_success_is_the_result_and_the_id_is_known():
    f = finished({**FAILED, "state": "succeeded", "result": {"y": 2}, "error": None})
    assert f.result(0) == {"y": 2} and f.task_id == "t-1" and f.done()


def test_a_failure_names_task_capability_agent_attempts_and_keeps_the_traceback():
    f = finished(FAILED)
    err = f.exception(0)
    assert isinstance(err, TaskFailed) and isinstance(err, AgoraError)
    assert "task t-1 ('boom') failed on agent boom.1 after 3 attempts: ValueError: boom" in str(err)
    assert (err.remote_type, err.remote_message, err.agent, err.attempts) == ("ValueError", "boom", "boom.1", 3)
    assert isinstance(err.__cause__, RemoteTraceback) and err.remote_traceback == TB
    printed = "".join(traceback.format_exception(err))
    assert 'line 3, in boom' in printed and "TaskFailed" in printed  # the remote text, then ours


def test_the_first_attempt_is_singular_and_a_missing_agent_is_left_out():
    err = TaskFailed({**FAILED, "attempts": 1, "state": "dead_lettered"})
    assert "dead_lettered after 1 attempt:" in str(err) and "on agent" not in str(err)


def test_a_cancelled_record_cancels_the_future():
    f = finished({**FAILED, "state": "cancelled"})
    assert f.cancelled()
    with pytest.raises(cf.CancelledError):
        f.result(0)


def test_cancel_asks_the_daemon_and_a_later_outcome_is_dropped():
    conn = FakeConn()
    f = TaskFuture(conn, "boom", "t-1")
    assert f.cancel() and f.cancelled()
    assert conn.sent == [("cancel", {"id": "t-1"})]
    f.on_record({**FAILED, "state": "succeeded", "result": 1})  # the reply that was in flight
    assert f.cancelled()


def test_the_submit_ack_gives_the_id_before_the_record():
    f = TaskFuture(FakeConn(), "echo")
    f.on_submit_reply(_pending(Reply(1, "more", {"id": "t-7"})))
    assert f.wait_id(0) == "t-7" and not f.done()
    f.on_submit_reply(_pending(Reply(1, "ok", {**FAILED, "id": "t-7", "state": "succeeded", "result": 5})))
    assert f.result(0) == 5


def test_a_refused_submission_fails_the_future_and_wait_id_says_why():
    f = TaskFuture(FakeConn(), "echo")
    f.on_submit_reply(_pending(Reply(1, "error", {"code": "MAILBOX_FULL", "message": "full", "hint": ""})))
    with pytest.raises(AgoraError, match="full"):
        f.wait_id(0)


def test_a_watch_that_timed_out_on_the_daemon_asks_again():
    conn = FakeConn()
    f = TaskFuture(conn, "echo", "t-1")
    f.on_watch_reply(_pending(Reply(1, "error", {"code": "DEADLINE_EXCEEDED", "message": "t", "hint": ""})))
    assert conn.sent[-1][0] == "result" and not f.done()
    f2 = TaskFuture(conn, "echo", "t-2")
    p = Pending(3, "result", lambda p: None)
    p.error = Unavailable("gone")
    f2.on_watch_reply(p)
    assert isinstance(f2.exception(0), Unavailable)


def test_wait_and_as_completed_and_await():
    done = finished({**FAILED, "state": "succeeded", "result": 1, "error": None})
    pending = TaskFuture(FakeConn(), "echo", "t-2")
    got = wait([done, pending], timeout=0.01)
    assert got.done == {done} and got.not_done == {pending}
    assert list(as_completed([done])) == [done]
    with pytest.raises(cf.TimeoutError):
        list(as_completed([pending], timeout=0.01))

    async def main():
        return await done
    assert asyncio.run(main()) == 1


def test_a_pipeline_maps_steps_to_outputs_or_raises_its_failed_step():
    ok = {"state": "succeeded", "steps": [{"step_id": "a", "result": 1, "state": "succeeded"},
                                           {"step_id": "b", "result": 2, "state": "succeeded"}]}
    pf = PipelineFuture(FakeConn(), "p-1", {"a": "t-1", "b": "t-2"})
    pf.on_pipeline(ok)
    assert pf.result(0) == {"a": 1, "b": 2}
    bad = {"state": "failed", "steps": [{**FAILED, "step_id": "a", "pipeline_id": "p-2"},
                                        {**FAILED, "id": "t-2", "step_id": "b", "state": "cancelled"}]}
    pf = PipelineFuture(FakeConn(), "p-2", {"a": "t-1", "b": "t-2"})
    pf.on_pipeline(bad)
    err = pf.exception(0)
    assert isinstance(err, TaskFailed) and err.task_id == "t-1" and "(pipeline p-2)" in str(err)


def _pending(reply):
    p = Pending(reply.id or 1, "submit", lambda p: None)
    p.reply = reply
    return p


def test_the_asyncio_flavour_waits_gathers_and_yields_as_completed():
    import agora
    a = finished({**FAILED, "state": "succeeded", "result": 1, "error": None})
    b = finished({**FAILED, "id": "t-2", "state": "succeeded", "result": 2, "error": None})
    slow = TaskFuture(FakeConn(), "echo", "t-3")

    async def main():
        got = [f.result() async for f in agora.aio.as_completed([a, b])]
        done, pending = await agora.aio.wait([a, slow], timeout=0.01)
        with pytest.raises(TimeoutError):
            [f async for f in agora.aio.as_completed([slow], timeout=0.01)]
        return sorted(got), done, pending, await agora.aio.gather(a, b)
    got, done, pending, gathered = asyncio.run(main())
    assert got == [1, 2] and done == {a} and pending == {slow} and gathered == [1, 2]
