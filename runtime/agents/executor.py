"""The task path of an agent that runs several attempts at once, and cancellation.

::

    reading thread --tasks--> Executor.submit --(a slot is free)--> async def: the agent's event loop
                   --cancel--> Executor.cancel                       def:       a bounded thread pool
                                                                    |
                             results frame <-- deliver(out) <-------+  (finished back-to-back: one frame)

A pool's ``concurrency = N`` (``[pools.NAME]``, default 1) is how many attempts one agent runs
at once.  ``async def`` handlers run as asyncio tasks on one event loop (a thread of the agent
process, started on first use); plain handlers run on a thread pool of at most N threads; both
kinds share the same N slots.  An attempt that arrives while every slot is busy waits in
arrival order.  The agent's hello states N and the scheduler gives an agent at most
``N + agent_inflight - 1`` attempts (``agent_inflight - 1`` is the prefetch, as before).

With N = 1 and only plain handlers the agent keeps the original two-thread runner
(runtime.agents.process.AgentRunner: a task starts with no thread hand-off on its path);
:class:`InlineRunner` only adds cancellation to it.  Anything else gets
:class:`ConcurrentRunner`.

Cancellation (the contract with the coordinator's side): the coordinator sends
``{"t": "cancel", "tasks": [{"id": ID, "attempt": N}], "reason"?: str}``.  The attempt's
handle is marked (``task.cancelled`` is True, ``task.check()`` and ``task.emit()`` raise
``agora.Cancelled``); an async handler's asyncio task is cancelled as well.  The attempt then
reports a normal result frame whose error is ``{"type": "Cancelled", "code": "CANCELLED",
"message": ...}``, or its real result if it finished first.  An attempt still waiting for a
slot ends at once with that error, without running.  A cancel that names an attempt this
agent does not know yet (it crossed the tasks frame on the way) is remembered, boundedly, and
applied when the attempt starts.

Decisions:
- One event loop per agent, not one per attempt: asyncio's own scheduling is the cheap
  concurrency (64 attempts in flight cost a few MiB of USS: tests/runtime/agents/test_executor.py).
- Plain handlers on threads, bounded by N: a sync handler that calls a slow API then holds a
  thread, not the process; N bounds the threads (and their stacks).
- ``task.emit`` is thread-safe (the Emitter locks) and works from the loop and from threads.
- The current attempt is a context variable (``agora.current_task()``), set in the thread or
  the asyncio task that runs it, so guards called by a handler trace into its task.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from runtime.agents.agent import _CURRENT, Agent, Cancelled, TaskHandle
from runtime.observability.trace_context import TraceContext
from runtime.observability.vclock import LiveClock
from runtime.tasks.payloads import Payloads

__all__ = ["Executor", "ConcurrentMixin", "InlineMixin", "run_attempt", "needs_executor", "CANCELLED_CODE"]

CANCELLED_CODE = "CANCELLED"
_EARLY_CANCELS = 1024  # cancels remembered for attempts not seen yet (bounded: RELIABILITY 4)

Key = tuple[str, int]


def needs_executor(agent: Agent, concurrency: int) -> bool:
    """True when the agent needs the concurrent runner (N > 1 or any ``async def`` handler)."""
    return concurrency > 1 or any(inspect.iscoroutinefunction(agent.handler(c)) for c in agent.handlers)


def _cancelled_error(handle: TaskHandle) -> dict[str, Any]:
    reason = f" ({handle.cancel_reason})" if handle.cancel_reason else ""
    return {"type": "Cancelled", "code": CANCELLED_CODE,
            "message": f"task {handle.id} attempt {handle.attempt} was cancelled{reason}"}


def _failure(e: BaseException, handle: TaskHandle) -> dict[str, Any]:
    if isinstance(e, (Cancelled, asyncio.CancelledError)):
        return _cancelled_error(handle)
    return {"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc(limit=20)}


def make_handle(t: dict[str, Any], emit: Callable[..., None],
                call: Callable[..., Any] | None = None, clock: LiveClock | None = None) -> TaskHandle:
    return TaskHandle(t["id"], t["attempt"], t["cap"], TraceContext.from_wire(t.get("trace")), emit, call,
                      clock)


def run_attempt(agent: Agent, t: dict[str, Any], handle: TaskHandle, payloads: Payloads) -> dict[str, Any]:
    """Run a plain handler here (this thread); the result frame entry of the attempt."""
    out: dict[str, Any] = {"id": t["id"], "attempt": t["attempt"]}
    token = _CURRENT.set(handle)
    clock = handle._clock
    t0 = time.perf_counter()
    try:
        if clock is not None:  # the task start: the receipt of the coordinator's frame
            clock.receive(t.get("vc"))
        handle.check()
        value = agent.handler(t["cap"])(payloads.unpack(t, "input"), handle)
        payloads.pack(value, "ok", out)
    except Exception as e:  # the attempt failed; the retry policy decides what follows
        out["error"] = _failure(e, handle)
    finally:
        _CURRENT.reset(token)
    if clock is not None:
        out["vc"] = clock.tick()  # the result: a send, its stamp travels with it
    out["run_us"] = int((time.perf_counter() - t0) * 1e6)  # the scheduler's adaptive prefetch reads it
    return out


class _Live:
    """Attempts this agent runs or waits to run, by (id, attempt), and early cancels."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handles: dict[Key, TaskHandle] = {}
        self.early: OrderedDict[Key, str] = OrderedDict()

    def add(self, handle: TaskHandle) -> None:
        key = (handle.id, handle.attempt)
        with self.lock:
            self.handles[key] = handle
            reason = self.early.pop(key, None)
        if reason is not None:
            handle.cancel(reason)

    def remove(self, handle: TaskHandle) -> None:
        with self.lock:
            self.handles.pop((handle.id, handle.attempt), None)

    def cancel(self, refs: list[dict[str, Any]], reason: str) -> list[TaskHandle]:
        """Mark the named attempts; returns the handles found (the others are remembered)."""
        found = []
        for ref in refs:
            key = (str(ref.get("id")), int(ref.get("attempt", 0)))
            with self.lock:
                handle = self.handles.get(key)
                if handle is None:
                    self.early[key] = reason
                    while len(self.early) > _EARLY_CANCELS:
                        self.early.popitem(last=False)
            if handle is not None:
                handle.cancel(reason)
                found.append(handle)
        return found


class Executor:
    """Up to ``concurrency`` attempts at once: async handlers on one loop, plain ones on threads.
    ``deliver(out)`` is called (from the thread or loop that ran it) when an attempt ends."""

    def __init__(self, agent: Agent, payloads: Payloads, emit: Callable[..., None], concurrency: int,
                 deliver: Callable[[dict[str, Any]], None]) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.agent, self.payloads, self.emit = agent, payloads, emit
        self.concurrency, self.deliver = concurrency, deliver
        self.call: Callable[..., Any] | None = None  # the runner's coordinator call (task.lock)
        self.clock: LiveClock | None = None  # the runner's vector clock (task.clock)
        self.live = _Live()
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: deque[tuple[dict[str, Any], TaskHandle]] = deque()
        self._threads: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # asyncio keeps only weak references to tasks
        self.closed = False

    # -- load ----------------------------------------------------------------------
    def waiting(self) -> int:
        return len(self._waiting)

    def running(self) -> int:
        return self._running

    def load(self) -> float:
        """Occupied share of the slots (above 1: attempts wait)."""
        return (self._running + len(self._waiting)) / self.concurrency

    # -- submit, finish, cancel ------------------------------------------------------
    def submit(self, t: dict[str, Any]) -> None:
        handle = make_handle(t, self.emit, self.call, self.clock)
        self.live.add(handle)
        with self._lock:
            if self._running >= self.concurrency:
                self._waiting.append((t, handle))
                return
            self._running += 1
        self._start(t, handle)

    def cancel(self, refs: list[dict[str, Any]], reason: str = "") -> None:
        """Cancel the named attempts; one still waiting for a slot ends now without running."""
        for handle in self.live.cancel(refs, reason):
            with self._lock:
                entry = next((w for w in self._waiting if w[1] is handle), None)
                if entry is not None:
                    self._waiting.remove(entry)
            if entry is not None:
                self.live.remove(handle)
                self.deliver({"id": handle.id, "attempt": handle.attempt, "error": _cancelled_error(handle)})

    def _finished(self, handle: TaskHandle, out: dict[str, Any]) -> None:
        self.live.remove(handle)
        with self._lock:
            nxt = self._waiting.popleft() if self._waiting else None
            if nxt is None:
                self._running -= 1
        if nxt is not None:
            self._start(*nxt)
        self.deliver(out)

    def _start(self, t: dict[str, Any], handle: TaskHandle) -> None:
        fn = self.agent.handler(t["cap"])
        if inspect.iscoroutinefunction(fn):
            # call_soon_threadsafe + create_task: one hop fewer than run_coroutine_threadsafe
            # (no concurrent Future to chain); measured p50 0.14 ms against 0.25 ms per attempt
            self._ensure_loop().call_soon_threadsafe(self._spawn, fn, t, handle)
        else:
            self._ensure_threads().submit(self._run_sync, t, handle)

    def _run_sync(self, t: dict[str, Any], handle: TaskHandle) -> None:
        self._finished(handle, run_attempt(self.agent, t, handle, self.payloads))

    def _spawn(self, fn: Callable[..., Any], t: dict[str, Any], handle: TaskHandle) -> None:
        task = asyncio.get_running_loop().create_task(self._arun(fn, t, handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _arun(self, fn: Callable[..., Any], t: dict[str, Any], handle: TaskHandle) -> None:
        out: dict[str, Any] = {"id": t["id"], "attempt": t["attempt"]}
        me = asyncio.current_task()
        loop = asyncio.get_running_loop()
        handle.on_cancel = lambda: loop.call_soon_threadsafe(me.cancel) if me is not None else None
        _CURRENT.set(handle)  # this asyncio task's own context: no reset needed
        clock = handle._clock
        t0 = time.perf_counter()
        try:
            if clock is not None:  # as run_attempt: the task start receives the coordinator's stamp
                clock.receive(t.get("vc"))
            handle.check()  # cancelled before it started
            value = await fn(self.payloads.unpack(t, "input"), handle)
            self.payloads.pack(value, "ok", out)
        except (Exception, asyncio.CancelledError) as e:  # CancelledError: ours, by a cancel frame
            out.pop("ok", None)
            out["error"] = _failure(e, handle)
        handle.on_cancel = None
        if clock is not None:
            out["vc"] = clock.tick()
        out["run_us"] = int((time.perf_counter() - t0) * 1e6)
        self._finished(handle, out)

    # -- the loop and the threads ----------------------------------------------------
    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=self._loop.run_forever, name="agora-agent-loop",
                                                     daemon=True)
                self._loop_thread.start()
            return self._loop

    def _ensure_threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="agora-agent-task")
            return self._threads

    def close(self, wait_s: float = 5.0) -> None:
        """Stop the loop and the threads (bounded: running handlers are abandoned, not joined
        past ``wait_s``; the process is ending anyway)."""
        self.closed = True
        if self._loop is not None:
            loop = self._loop
            for handle in list(self.live.handles.values()):
                handle.cancel("the agent is stopping")
            loop.call_soon_threadsafe(loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(wait_s)
            if not loop.is_running():
                loop.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


class InlineMixin:
    """Over ``AgentRunner`` (runtime.agents.process.InlineRunner): the original runner (one plain
    handler at a time, no hand-off) plus cancellation.  A mixin so that this module does not
    import the process module (which imports this one)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.live = _Live()

    def on_control(self, msg: dict[str, Any]) -> None:
        if msg.get("t") == "cancel":
            self.live.cancel(list(msg.get("tasks") or []), str(msg.get("reason") or ""))
        else:
            super().on_control(msg)

    def execute(self, t: dict[str, Any]) -> dict[str, Any]:
        handle = make_handle(t, self.emit, self.call, self.clock)
        self.live.add(handle)
        self._running.trace = handle.trace
        try:
            return run_attempt(self.agent, t, handle, self.payloads)
        finally:
            self._running.trace = None
            self.live.remove(handle)


class _CurrentTrace:
    """``AgentRunner._running`` for many attempts at once: the trace of the attempt running in
    the calling thread or asyncio task (a context variable, not a thread-local)."""

    @property
    def trace(self) -> TraceContext | None:
        handle = _CURRENT.get()
        return handle.trace if handle is not None else None


class ConcurrentMixin:
    """Over ``AgentRunner`` (runtime.agents.process.ConcurrentRunner): one thread reads (tasks,
    cancels, asks); the :class:`Executor` runs the attempts."""

    def __init__(self, agent: Agent, sock: Any, emit: Any, agent_id: str, payloads: Payloads | None = None,
                 concurrency: int = 1) -> None:
        super().__init__(agent, sock, emit, agent_id, payloads)
        self.executor = Executor(agent, self.payloads, emit, concurrency, self._deliver)
        self.executor.call = self.call
        self.executor.clock = self.clock
        self._running = _CurrentTrace()  # ctx.call from a handler: the trace of *its* attempt
        self._out: list[dict[str, Any]] = []
        self._out_lock = threading.Lock()
        self._sending = False

    def run(self) -> None:
        """Read until the coordinator goes away (no second thread takes turns here)."""
        self.reader_free = False
        try:
            self._read()
        finally:
            self.executor.close()

    def _hand_over_or_queue(self, batch: list[dict[str, Any]]) -> bool:
        for t in batch:
            self.executor.submit(t)
        self.agent.queue_len = self.executor.waiting()
        return False  # this thread keeps reading

    def on_control(self, msg: dict[str, Any]) -> None:
        if msg.get("t") == "cancel":
            self.executor.cancel(list(msg.get("tasks") or []), str(msg.get("reason") or ""))
        else:
            super().on_control(msg)

    def ask_load(self) -> dict[str, Any]:
        """Bids and votes see the executor's load: ``queue`` (attempts waiting for a slot),
        ``load`` (occupied share of the slots) and ``concurrency``."""
        ex = self.executor
        return {"queue": ex.waiting(), "load": ex.load(), "concurrency": ex.concurrency}

    def _deliver(self, out: dict[str, Any]) -> None:
        """Send a finished attempt; results finished while another thread sends go in its next frame.
        Each frame goes through ``AgentRunner._deliver``: the attempt leaves ``inflight`` and, while
        the coordinator is away, the results wait in ``pending`` for the next hello (sending and
        swallowing the error here lost every result finished during a coordinator restart)."""
        with self._out_lock:
            self._out.append(out)
            if self._sending:
                return
            self._sending = True
        while True:
            with self._out_lock:
                batch, self._out = self._out, []
                if not batch:
                    self._sending = False
                    break
            super()._deliver(batch, self.executor.waiting())  # type: ignore[misc]  # AgentRunner's
        self.agent.queue_len = self.executor.waiting()
        if self.executor.running() == 0:
            self.emit.flush()  # idle now: nothing else would flush the handlers' events soon
        else:
            self.emit.maybe_flush()
