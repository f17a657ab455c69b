"""Micro-batching: calls arriving within ``window_s`` (or until ``max_size`` of them) go to the
service as one batch; each caller gets its own answer back.

No background thread or task: the first caller of a batch is its *leader*. It waits up to
``window_s`` for others to join (woken early when the batch fills up) and then sends the
batch in its own thread or task; a caller that fills the batch sends it at once instead.
Followers wait on their item's future, bounded by ``result_wait_s``.

The batch function takes the list of items and returns a list of the same length; an item
of that list that is an exception instance is raised to that item's caller only (errors are
fanned back per item). A batch function that raises, or returns a list of the wrong length,
fails every item of the batch.

Decisions: a leader that is cancelled while it waits (async) still sends the batch, from a
task of its own, so the followers are not stranded. Events: ``batch_join`` for each call
(``size`` = its place in the batch), ``batch_flush`` for each batch (``size``, ``reason``
"full" or "window").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from runtime.errors import BrokenError, DeadlineExceeded, InvalidInput

__all__ = ["MicroBatcher", "AsyncMicroBatcher"]

OnEvent = Callable[..., None]


def _check(window_s: float, max_size: int) -> None:
    if not (isinstance(window_s, (int, float)) and window_s >= 0):
        raise InvalidInput(f"batch_window_ms must be a number >= 0, got {window_s * 1000!r}")
    if not (isinstance(max_size, int) and max_size >= 1):
        raise InvalidInput(f"batch_max must be an int >= 1, got {max_size!r}")


def _fan_out(name: str, items: list, results: Any, settle: Callable[[int, bool, Any], None]) -> None:
    """Give item ``i`` its result or its exception; a malformed answer fails them all."""
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)) or len(results) != len(items):
        got = len(results) if isinstance(results, Sequence) else type(results).__name__
        err = BrokenError(f"batch function of service {name!r} returned {got} results for {len(items)} items",
                          hint="return a list with one result (or exception) per item, in order")
        for i in range(len(items)):
            settle(i, False, err)
        return
    for i, value in enumerate(results):
        settle(i, not isinstance(value, BaseException), value)


class _Batch:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.futures: list[Any] = []
        self.taken = False


class MicroBatcher:
    """Sync callers (threads); ``run(items) -> results`` is called in the sending caller's thread."""

    def __init__(self, name: str, run: Callable[[list], Sequence], *, window_s: float, max_size: int,
                 on_event: OnEvent, result_wait_s: float = 600.0,
                 wait: Callable[[threading.Event, float], bool] = threading.Event.wait) -> None:
        _check(window_s, max_size)
        self.name, self.run, self.window_s, self.max_size = name, run, window_s, max_size
        self.on_event, self.result_wait_s, self._wait = on_event, result_wait_s, wait
        self._lock = threading.Lock()
        self._open: _Batch | None = None

    def submit(self, item: Any) -> Any:
        fut, batch, leader, full, filled = self._join(item)
        if full:
            filled.set()
            self._send(batch, "full")
        elif leader:
            self._wait(filled, self.window_s)
            if self._take(batch):
                self._send(batch, "window")
        try:
            return fut.result(timeout=self.result_wait_s)
        except FutureTimeout as e:
            raise DeadlineExceeded(f"batched call to service {self.name!r} got no answer in {self.result_wait_s:g} s",
                                   hint="the batch call hangs: set [services.<name>].timeout_s") from e

    def _join(self, item: Any) -> tuple[Future, _Batch, bool, bool, threading.Event]:
        with self._lock:
            leader = self._open is None
            if leader:
                self._open = _Batch()
                self._open.filled = threading.Event()  # type: ignore[attr-defined]
            batch = self._open
            fut: Future = Future()
            batch.items.append(item)
            batch.futures.append(fut)
            full = len(batch.items) >= self.max_size
            if full:
                batch.taken, self._open = True, None
        self.on_event("batch_join", service=self.name, size=len(batch.items), leader=leader)
        return fut, batch, leader, full, batch.filled  # type: ignore[attr-defined]

    def _take(self, batch: _Batch) -> bool:
        with self._lock:
            if batch.taken:
                return False
            batch.taken = True
            if self._open is batch:
                self._open = None
            return True

    def _send(self, batch: _Batch, reason: str) -> None:
        self.on_event("batch_flush", service=self.name, size=len(batch.items), reason=reason)
        try:
            results = self.run(list(batch.items))
        except BaseException as e:  # every item gets the batch's error; re-raised to each caller
            for fut in batch.futures:
                fut.set_exception(e)
            return

        def settle(i: int, ok: bool, value: Any) -> None:
            (batch.futures[i].set_result if ok else batch.futures[i].set_exception)(value)
        _fan_out(self.name, batch.items, results, settle)


class AsyncMicroBatcher:
    """Async callers on one event loop; ``run(items)`` runs in a task of its own (``_dispatch``)."""

    def __init__(self, name: str, run: Callable[[list], Awaitable[Sequence]], *, window_s: float, max_size: int,
                 on_event: OnEvent, result_wait_s: float = 600.0) -> None:
        _check(window_s, max_size)
        self.name, self.run, self.window_s, self.max_size = name, run, window_s, max_size
        self.on_event, self.result_wait_s = on_event, result_wait_s
        self._open: _Batch | None = None
        self._sending: set[asyncio.Task] = set()  # batch calls under way (see _dispatch)

    async def submit(self, item: Any) -> Any:
        fut, batch, leader = self._join(item)
        if batch.taken and leader is None:
            self._dispatch(batch, "full")
        elif leader:
            await self._lead(batch)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.result_wait_s)
        except TimeoutError as e:
            raise DeadlineExceeded(f"batched call to service {self.name!r} got no answer in {self.result_wait_s:g} s",
                                   hint="the batch call hangs: set [services.<name>].timeout_s") from e

    def _join(self, item: Any) -> tuple[asyncio.Future, _Batch, bool | None]:
        opened = self._open is None
        if opened:
            self._open = _Batch()
            self._open.filled = asyncio.Event()  # type: ignore[attr-defined]
        batch = self._open
        fut = asyncio.get_running_loop().create_future()
        batch.items.append(item)
        batch.futures.append(fut)
        self.on_event("batch_join", service=self.name, size=len(batch.items), leader=opened)
        if len(batch.items) >= self.max_size:
            batch.taken, self._open = True, None
            batch.filled.set()  # type: ignore[attr-defined]
            return fut, batch, None  # None: this caller fills the batch and sends it
        return fut, batch, opened

    async def _lead(self, batch: _Batch) -> None:
        try:
            await asyncio.wait_for(batch.filled.wait(), self.window_s)  # type: ignore[attr-defined]
        except TimeoutError:
            pass  # the window closed: send what joined
        except asyncio.CancelledError:
            if self._take(batch):
                self._dispatch(batch, "window")  # the others still get their answers
            raise
        if self._take(batch):
            self._dispatch(batch, "window")

    def _dispatch(self, batch: _Batch, reason: str) -> None:
        """The batch call runs in a task of its own, never in a caller's: cancelling the
        caller that happened to send it cancels that caller only (each awaits its own
        shielded future)."""
        task = asyncio.ensure_future(self._send(batch, reason))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _take(self, batch: _Batch) -> bool:
        if batch.taken:
            return False
        batch.taken = True
        if self._open is batch:
            self._open = None
        return True

    async def _send(self, batch: _Batch, reason: str) -> None:
        self.on_event("batch_flush", service=self.name, size=len(batch.items), reason=reason)
        try:
            results = await self.run(list(batch.items))
        except BaseException as e:  # fanned back to every item; a CancelledError too (the loop is closing)
            cancelled = isinstance(e, asyncio.CancelledError)
            for fut in batch.futures:
                if not fut.done():
                    fut.cancel() if cancelled else fut.set_exception(e)
            if cancelled:
                raise
            return

        def settle(i: int, ok: bool, value: Any) -> None:
            fut = batch.futures[i]
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)
        _fan_out(self.name, batch.items, results, settle)
