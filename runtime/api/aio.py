"""The asyncio flavour: agora's futures awaited on an event loop, no thread per future.

::

    async def main(rt):
        one = await rt.submit("echo", {"x": 1})                 # a TaskFuture is awaitable
        many = await agora.aio.gather(*(rt.submit("echo", {"x": i}) for i in range(10)))
        async for f in agora.aio.as_completed(futures):
            print(f.result())

Each future is wrapped with ``asyncio.wrap_future``: when the connection's reader thread
completes it, the outcome reaches the loop by ``call_soon_threadsafe``.  Session calls
that are not futures (``status``, ``cancel``) block for one round trip; run them with
``asyncio.to_thread`` when that matters.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections.abc import AsyncIterator, Iterable
from typing import Any

__all__ = ["wrap", "gather", "wait", "as_completed"]


def wrap(future: cf.Future) -> asyncio.Future:  # type: ignore[type-arg]
    """An asyncio future of the running loop that follows ``future``."""
    return asyncio.wrap_future(future)


async def gather(*futures: cf.Future, return_exceptions: bool = False) -> list[Any]:  # type: ignore[type-arg]
    """The results in the given order (``asyncio.gather`` over the wrapped futures)."""
    return list(await asyncio.gather(*(wrap(f) for f in futures), return_exceptions=return_exceptions))


async def wait(futures: Iterable[cf.Future], timeout: float | None = None,  # type: ignore[type-arg]
               return_when: str = asyncio.ALL_COMPLETED) -> tuple[set[cf.Future], set[cf.Future]]:  # type: ignore[type-arg]
    """``(done, pending)`` of the original futures, as ``asyncio.wait`` decides."""
    by_wrapper = {wrap(f): f for f in futures}
    if not by_wrapper:
        return set(), set()
    done, pending = await asyncio.wait(by_wrapper, timeout=timeout, return_when=return_when)
    return {by_wrapper[w] for w in done}, {by_wrapper[w] for w in pending}


async def as_completed(futures: Iterable[cf.Future], timeout: float | None = None) -> AsyncIterator[cf.Future]:  # type: ignore[type-arg]
    """The original futures as they finish; ``TimeoutError`` after ``timeout`` seconds."""
    pending = {wrap(f): f for f in futures}
    loop = asyncio.get_running_loop()
    until = None if timeout is None else loop.time() + timeout
    while pending:
        left = None if until is None else until - loop.time()
        if left is not None and left <= 0:
            raise TimeoutError(f"{len(pending)} futures still pending after {timeout} s")
        done, _ = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        for w in done:
            yield pending.pop(w)
