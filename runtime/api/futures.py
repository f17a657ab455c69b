"""Futures of tasks and pipelines, completed by a connection's reader thread.

A :class:`TaskFuture` is a :class:`concurrent.futures.Future`: ``result(timeout)``,
``exception()``, ``done()``, ``add_done_callback``, and ``concurrent.futures.wait`` /
``as_completed`` (re-exported as ``agora.wait`` / ``agora.as_completed``) work as with a
``ProcessPoolExecutor``.  What differs:

* ``task_id`` is the journal's id.  The daemon sends it ahead of the result only when the
  task is still running 5 ms after it became durable (a trivial task's round trip stays
  one frame each way); until then it is ``None`` and :meth:`TaskFuture.wait_id` waits for
  it, bounded (``cancel`` does).
* ``cancel()`` cancels the *task* on the daemon (queued: it never runs; running: its
  agent is asked to stop) and returns True unless it had already ended.
* A task that did not succeed raises :class:`TaskFailed` from ``result()``: the message
  names the task, its capability, the agent of its last attempt and the attempts used;
  the remote exception's type and traceback text are attributes, and the traceback is
  chained as ``__cause__`` so that an uncaught one prints readably.
* ``await future`` works in asyncio (``asyncio.wrap_future``: the reader thread hands the
  outcome to the loop with ``call_soon_threadsafe``; no thread per future).

Nothing here blocks the reader thread: a failure's agent is fetched with one more
request whose reply completes the future.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import Any

from runtime.api.connection import Connection, Pending
from runtime.errors import AgoraError, DeadlineExceeded, from_wire

__all__ = ["TaskFuture", "PipelineFuture", "TaskFailed", "RemoteTraceback", "wait", "as_completed",
           "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED", "WATCH_S"]

FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED = cf.FIRST_COMPLETED, cf.FIRST_EXCEPTION, cf.ALL_COMPLETED
#: One server-side wait (the daemon bounds each); a task still running after it is asked
#: again, so a future may wait as long as its task runs.
WATCH_S = 3600.0


class RemoteTraceback(Exception):
    """The traceback text of the exception raised in the agent (``__cause__`` of a
    :class:`TaskFailed`, as ``concurrent.futures`` chains a worker's)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


class TaskFailed(AgoraError):
    """A task (or a pipeline's step) ended without a result.

    Attributes: ``task_id``, ``capability``, ``agent`` (of the last attempt, or None),
    ``attempts``, ``state`` (failed, dead_lettered, deadline_exceeded, cancelled),
    ``remote_type`` and ``remote_message`` (the exception raised in the agent),
    ``remote_traceback`` (its text, or None), ``error`` (the journal's record of it),
    ``pipeline_id`` (when the task was a pipeline step).
    """

    code = "TASK_FAILED"
    exit_code = 1
    default_hint = "`agora trace TASK_ID` shows every attempt; `agora retry TASK_ID` runs it again"

    def __init__(self, record: dict[str, Any], agent: str | None = None) -> None:
        err = record.get("error") or {}
        self.task_id = record.get("id")
        self.capability = record.get("capability")
        self.state = record.get("state")
        self.attempts = record.get("attempts")
        self.pipeline_id = record.get("pipeline_id")
        self.agent = agent
        self.error = err
        self.remote_type = err.get("type") or err.get("code") or "Error"
        self.remote_message = err.get("message", "")
        self.remote_traceback = err.get("traceback")
        super().__init__(self._describe())
        if self.remote_traceback:
            self.__cause__ = RemoteTraceback(self.remote_traceback)

    def _describe(self) -> str:
        on = f" on agent {self.agent}" if self.agent else ""
        n = self.attempts
        tries = f" after {n} attempt{'s' if n != 1 else ''}" if n is not None else ""
        step = f" (pipeline {self.pipeline_id})" if self.pipeline_id else ""
        return (f"task {self.task_id} ({self.capability!r}){step} {self.state}{on}{tries}: "
                f"{self.remote_type}: {self.remote_message}")


class _AgoraFuture(cf.Future):  # type: ignore[type-arg]
    """What task and pipeline futures share: the connection and ``await``."""

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self).__await__()

    def result(self, timeout: float | None = None) -> Any:
        """The outcome, waiting at most ``timeout`` seconds (this thread reads the
        connection meanwhile: ``runtime.api.connection``)."""
        self._await(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._await(timeout)
        return super().exception(0)

    def add_done_callback(self, fn: Any) -> None:
        """As ``concurrent.futures``; the connection's background reader reads for it."""
        super().add_done_callback(fn)
        if not self.done():
            self._conn.want_reader()

    def _await(self, timeout: float | None) -> None:
        if not self.done():
            self._conn.wait_until(self.done, self._sleep, timeout)

    def _sleep(self, seconds: float) -> None:
        with self._condition:
            if not self.done():
                self._condition.wait(seconds)

    def _settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """Complete once (a cancel may have come first: the later outcome is dropped)."""
        try:
            if error is not None:
                self.set_exception(error)
            else:
                self.set_result(value)
        except cf.InvalidStateError:
            pass  # cancelled (or settled) first

    def _cancel_locally(self) -> bool:
        return super().cancel()

    def _on_reader_thread(self) -> bool:
        return self._conn.on_reading_thread()


class TaskFuture(_AgoraFuture):
    """The outcome of one task (see the module docstring)."""

    def __init__(self, conn: Connection, capability: str, task_id: str | None = None) -> None:
        super().__init__(conn)
        self.capability = capability
        self.task_id: str | None = task_id
        self._has_id = threading.Event()
        if task_id is not None:
            self._has_id.set()

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id or '(submitting)'} {self.capability!r} {self._state.lower()}>"

    def wait_id(self, timeout: float = 30.0) -> str:
        """The task's id, once the daemon has it durably (bounded by ``timeout``)."""
        if not self._has_id.wait(timeout):
            raise DeadlineExceeded(f"the submission of a {self.capability!r} task was not "
                                   f"acknowledged within {timeout:g} s")
        if self.task_id is None:  # the submission itself failed
            raise self.exception(0)  # type: ignore[misc]
        return self.task_id

    def cancel(self) -> bool:
        """Cancel the task on the daemon; False if it had already ended."""
        if self.done():
            return self.cancelled()
        tid = self.wait_id()
        if self._on_reader_thread():  # inside a done callback: never wait for our own reader
            self._conn.send("cancel", {"id": tid}, callback=lambda p: None)
            return self._cancel_locally()
        outcome = self._conn.request("cancel", {"id": tid})
        if outcome.get("outcome") == "already_ended":
            return False
        return self._cancel_locally()

    # --- completion (reader thread) -----------------------------------------------------

    def _learn_id(self, tid: str) -> None:
        self.task_id = tid
        self._has_id.set()

    def on_submit_reply(self, p: Pending) -> None:
        """``submit`` with ``result`` and ``ack``: the id first, then the record."""
        if p.error is not None:
            self._fail(p.error)
        elif p.reply is not None and p.reply.kind == "more":
            self._learn_id(p.reply.value["id"])
        elif p.reply is not None and p.reply.kind == "error":
            self._fail(from_wire(p.reply.value))
        else:
            self.on_record(p.reply.value if p.reply is not None else {})

    def watch(self) -> None:
        """Ask the daemon for the result, however long the task takes (``WATCH_S`` a time)."""
        assert self.task_id is not None
        self._conn.send("result", {"id": self.task_id, "wait": True, "timeout_s": WATCH_S},
                        callback=self.on_watch_reply)

    def on_watch_reply(self, p: Pending) -> None:
        if p.error is not None:
            self._fail(p.error)
        elif p.reply is not None and p.reply.kind == "error":
            err = from_wire(p.reply.value)
            self.watch() if isinstance(err, DeadlineExceeded) else self._fail(err)
        elif p.reply is not None:
            self.on_record(p.reply.value)

    def on_record(self, rec: dict[str, Any]) -> None:
        self._learn_id(rec.get("id", self.task_id))
        if rec.get("state") == "succeeded":
            self._settle(rec.get("result"))
        elif rec.get("state") == "cancelled":
            self._cancel_locally()
        else:
            self._conn.send("attempts", {"id": rec["id"]},
                            callback=lambda p: self._settle(error=TaskFailed(rec, _last_agent(p))))

    def _fail(self, err: BaseException) -> None:
        self._has_id.set()  # (no id will come: wait_id reports the error)
        self._settle(error=err)


class PipelineFuture(_AgoraFuture):
    """A pipeline: ``result()`` maps each step id to its output; a failed step raises its
    :class:`TaskFailed`.  ``pipeline_id`` and ``steps`` (step id -> task id) are known at once."""

    def __init__(self, conn: Connection, pipeline_id: str, steps: dict[str, str]) -> None:
        super().__init__(conn)
        self.pipeline_id = pipeline_id
        self.task_id = pipeline_id  # (what `cancel` and `agora result` take)
        self.steps = steps

    def __repr__(self) -> str:
        return f"<PipelineFuture {self.pipeline_id} {len(self.steps)} steps {self._state.lower()}>"

    def cancel(self) -> bool:
        """Cancel every step still to run; False if the pipeline had already ended."""
        if self.done():
            return self.cancelled()
        outcome = self._conn.request("cancel", {"id": self.pipeline_id})
        return outcome.get("outcome") != "already_ended" and self._cancel_locally()

    def watch(self) -> None:
        self._conn.send("pipeline_result", {"id": self.pipeline_id, "wait": True, "timeout_s": WATCH_S},
                        callback=self.on_reply)

    def on_reply(self, p: Pending) -> None:
        if p.error is not None:
            return self._settle(error=p.error)
        assert p.reply is not None
        if p.reply.kind == "error":
            err = from_wire(p.reply.value)
            return self.watch() if isinstance(err, DeadlineExceeded) else self._settle(error=err)
        self.on_pipeline(p.reply.value)

    def on_pipeline(self, rec: dict[str, Any]) -> None:
        bad = [s for s in rec["steps"] if s["state"] not in ("succeeded", "cancelled", "blocked", "queued")]
        if rec["state"] == "succeeded":
            self._settle({s["step_id"]: s["result"] for s in rec["steps"]})
        elif rec["state"] == "cancelled" and not bad:
            self._cancel_locally()
        else:
            step = bad[0] if bad else rec["steps"][-1]
            self._conn.send("attempts", {"id": step["id"]},
                            callback=lambda p: self._settle(error=TaskFailed(step, _last_agent(p))))


def _last_agent(p: Pending) -> str | None:
    try:
        rows = p.value()
    except AgoraError:
        return None
    return rows[-1].get("agent") if rows else None


def wait(fs: Iterable[cf.Future], timeout: float | None = None,  # type: ignore[type-arg]
         return_when: str = ALL_COMPLETED) -> cf._base.DoneAndNotDoneFutures:  # type: ignore[type-arg]
    """``concurrent.futures.wait`` over task and pipeline futures (and any others):
    ``(done, not_done)`` once ``return_when`` holds or ``timeout`` seconds passed."""
    fs = _wanted(fs)
    return cf.wait(fs, timeout=timeout, return_when=return_when)


def as_completed(fs: Iterable[cf.Future], timeout: float | None = None) -> Iterator[cf.Future]:  # type: ignore[type-arg]
    """The futures in the order they finish (``concurrent.futures.as_completed``);
    ``TimeoutError`` if ``timeout`` seconds pass first."""
    return cf.as_completed(_wanted(fs), timeout=timeout)


def _wanted(fs: Iterable[cf.Future]) -> list[cf.Future]:  # type: ignore[type-arg]
    """The futures, their connections told that replies must be read for them."""
    fs = list(fs)
    for conn in {id(f._conn): f._conn for f in fs if isinstance(f, _AgoraFuture) and not f.done()}.values():
        conn.want_reader()
    return fs
