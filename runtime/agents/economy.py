"""The economy as an agent's code sees it: its balance, units of resources it buys in sale
auctions, and subcontracts it pays for (coordination.services.sales / economy serve them).

::

    @capability("render")
    def render(self, input, task):
        print(task.balance())                                  # credits it owns
        with task.acquire("gpu", limit=5) as gpu:             # bid up to 5 credits
            frames = draw(input, device=gpu.unit, fence=gpu.token)
        caption = task.subcontract("caption", {"frames": len(frames)}, budget=2)
        return {"frames": frames, "caption": caption}

``task.acquire`` (alias ``task.bid_for``) holds the unit for this attempt (released when
the ``with`` block ends and, by the coordinator, when the attempt ends however it ends);
``ctx.acquire`` holds it for the agent (released when it dies).  The limit is committed
(escrowed) while the bid waits: a limit beyond the balance raises InsufficientCredits at
once.  In English and Dutch sales the coordinator asks the agent's ``sale_bid(offer)`` hook
each round (default: yes while the price is within the limit).

``task.subcontract`` (``await task.asubcontract(...)`` in an ``async def`` handler)
returns the child task's result, or raises
:class:`SubcontractFailed` (its state and error attached) when it did not succeed.  It
re-asks, with the same key, while the coordinator restarts (UNAVAILABLE), so a restart
neither loses the child nor pays for it twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from runtime.errors import AgoraError, Unavailable

__all__ = ["HeldUnit", "acquire_unit", "subcontract", "balance", "SubcontractFailed", "default_sale_bid"]

CALL_MARGIN_S = 5.0    # the coordinator's own timeout always answers first
RETRY_PAUSE_S = 0.1
RELEASE_RETRY_S = 10.0  # a release asked again while the coordinator restarts


class SubcontractFailed(AgoraError):
    """The subcontracted task ended without a result (``state``, ``error`` in details)."""

    code = "SUBCONTRACT_FAILED"


class HeldUnit:
    """A won unit: ``resource``, ``unit``, ``token`` (fencing), ``price`` paid; ``release()``."""

    def __init__(self, call: Callable[..., Any], owner: dict[str, Any], won: dict[str, Any]) -> None:
        self._call, self._owner = call, owner
        self.resource: str = won["resource"]
        self.unit: int = won["unit"]
        self.token: int = won["token"]
        self.price: float = won["price"]
        self.auction_id: str = won["auction_id"]
        self.released = False

    def release(self) -> None:
        """Give the unit back (idempotent).  While the coordinator restarts (UNAVAILABLE) the
        release is asked again for up to ``RELEASE_RETRY_S``; a task-held unit that still
        could not be released is released by the coordinator when its attempt ends."""
        if self.released:
            return
        self.released = True
        args = {"resource": self.resource, "unit": self.unit, "token": self.token, **self._owner}
        deadline = time.monotonic() + RELEASE_RETRY_S
        while True:
            try:
                self._call("sale.release", args)
                return
            except Unavailable:
                if time.monotonic() + RETRY_PAUSE_S >= deadline:
                    if "task" in self._owner:
                        return  # the attempt's end releases it
                    raise
                time.sleep(RETRY_PAUSE_S)

    def __enter__(self) -> HeldUnit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"HeldUnit({self.resource!r}, unit={self.unit}, token={self.token}, price={self.price})"


def acquire_unit(call: Callable[..., Any], resource: str, *, limit: float, price: float | None = None,
                 timeout: float = 10.0, task: dict[str, Any] | None = None) -> HeldUnit:
    """Bid for one unit of ``resource``: at most ``limit`` credits (``price``: the sealed
    bid, default the limit); waits up to ``timeout`` s for an auction to be won."""
    owner = {} if task is None else {"task": task}
    args = {"resource": resource, "limit": limit, "timeout": timeout, **owner}
    if price is not None:
        args["price"] = price
    won = call("sale.bid", args, timeout=timeout + CALL_MARGIN_S)
    return HeldUnit(call, owner, won)


def subcontract(call: Callable[..., Any], task: dict[str, Any], key: int, capability: str, input: Any, *,
                budget: float, timeout: float = 60.0, options: dict[str, Any] | None = None) -> Any:
    """Submit ``capability(input)`` paid from this agent's balance (at most ``budget``
    credits) and wait for its result."""
    args = {"capability": capability, "input": input, "budget": budget, "task": task, "key": key,
            "timeout": timeout, **({"options": options} if options else {})}
    deadline = time.monotonic() + timeout + CALL_MARGIN_S
    while True:
        left = deadline - time.monotonic()
        try:
            out = call("economy.subcontract", {**args, "timeout": max(0.1, min(timeout, left))},
                       timeout=max(0.1, left))
            break
        except Unavailable:
            if time.monotonic() + RETRY_PAUSE_S >= deadline:
                raise
            time.sleep(RETRY_PAUSE_S)
    if out.get("state") != "succeeded":
        error = out.get("error") or {}
        raise SubcontractFailed(f"subcontracted task {out.get('task_id')} ({capability}) ended {out.get('state')}: "
                                f"{(error.get('message') if isinstance(error, dict) else error) or 'no result'}",
                                hint="the unspent budget is back in the balance", **out)
    return out.get("result")


def balance(call: Callable[..., Any]) -> float:
    """The agent's balance in credits."""
    return float(call("economy.balance", {})["balance"])


def default_sale_bid(offer: dict[str, Any]) -> bool:
    """Stay (English) / take (Dutch) while the offered price is within the bid's limit."""
    return float(offer["price"]) <= float(offer["limit"])
