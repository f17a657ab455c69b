"""Agents for the consensus and primitives daemon tests (and perf/consensus.py).

Each one does real work through the real hooks: ``Guesser`` produces estimates and
ranks options and candidates by how close they are to its own estimate; ``Locker``
takes a lock through ``ctx.call`` and writes a fenced section to a file.
The ranking functions are plain functions so tests compute the expected tally with them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from agora import Agent, capability

OFFSETS = (0, 5, -2, 9, 3, -6, 1, 7)


def estimate(index: int, base: float = 10.0) -> float:
    """What agent ``index`` believes: base plus its own bias."""
    return base + OFFSETS[index % len(OFFSETS)]


def number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def rank_options(options: list[str], mine: float) -> list[str]:
    """Numeric options closest to ``mine`` first (ties: smaller value); others last, by name."""
    nums = [o for o in options if number(o) is not None]
    rest = sorted(o for o in options if number(o) is None)
    return sorted(nums, key=lambda o: (abs(number(o) - mine), number(o))) + rest


def rank_candidates(candidates: dict[str, Any], mine: float) -> list[str]:
    """Candidate labels whose ``value`` is closest to ``mine`` first (ties: label)."""
    return sorted(candidates, key=lambda c: (abs(float(candidates[c]["value"]) - mine), c))


def ballot_for(request: dict[str, Any], ranking: list[str]) -> Any:
    """A ranking shaped for the method: single -> best, approval -> the best half, ranked -> all."""
    if request.get("shape") == "single":
        return ranking[0]
    if request.get("shape") == "approval":
        return ranking[: max(1, len(ranking) // 2)]
    return ranking


class Guesser(Agent):
    """Guesses a number; votes for what is closest to its own guess."""

    @capability("guess")
    def guess(self, input: Any, task: Any) -> Any:
        if input.get("die_index") == self.ctx.index:
            os._exit(3)  # dies mid-candidate (the consensus step goes on without it)
        base = float(input.get("base", 10.0))
        return {"value": estimate(self.ctx.index, base), "pid": os.getpid()}

    def vote(self, request: dict[str, Any]) -> Any:
        if "candidates" in request:
            base = float((request.get("input") or {}).get("base", 10.0))
            mine = estimate(self.ctx.index, base)
            return ballot_for(request, rank_candidates(request["candidates"], mine))
        return ballot_for(request, rank_options(request["options"], estimate(self.ctx.index)))

    def propose(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Propose the midpoint of the two leading numeric options as a compromise."""
        nums = [o for o in request["options"] if number(o) is not None]
        if len(nums) < 2:
            return []
        a, b = rank_options(nums, estimate(self.ctx.index))[:2]
        mid = (number(a) + number(b)) / 2
        name = f"{mid:g}"
        if name in request["options"]:
            return []
        return [{"name": name, "combines": sorted([a, b]), "note": "midpoint"}]

    def bid(self, cfp: dict[str, Any]) -> Any:
        """A seller that concedes linearly from 2x its cost down to its cost."""
        if "bargain" not in cfp:
            return super().bid(cfp)
        cost = self.cost(cfp["capability"])
        offers = cfp["bargain"]["offers"]
        asking = cost * (2 - cfp["t"])
        if offers and offers[-1]["role"] == "buyer" and offers[-1]["price"] >= asking:
            return {"accept": True}
        return {"price": asking}


class Abstainer(Agent):
    """Has no opinion (the default vote())."""

    @capability("opine")
    def opine(self, input: Any, task: Any) -> Any:
        return {"value": float(self.ctx.index)}


class Locker(Agent):
    """Takes lock ``name``, writes "token pid start", holds it, writes "token pid end"."""

    @capability("locked_append")
    def locked_append(self, input: Any, task: Any) -> Any:
        name, path = input.get("name", "L"), input["file"]
        lease = self.ctx.call("lock.acquire", {"name": name, "ttl": 30, "timeout": 40,
                                               "trace": task.trace.to_wire()}, timeout=45)
        token = lease["token"]
        _append(path, f"{token} {os.getpid()} start {time.monotonic():.6f}\n")
        time.sleep(float(input.get("hold_s", 0.05)))
        if not self.ctx.call("lock.check", {"name": name, "token": token}):
            raise RuntimeError(f"lock {name!r} token {token} is no longer current")
        _append(path, f"{token} {os.getpid()} end {time.monotonic():.6f}\n")
        self.ctx.call("lock.release", {"name": name, "token": token})
        return {"token": token, "pid": os.getpid()}

    @capability("barrier")
    def barrier(self, input: Any, task: Any) -> Any:
        if input.get("die_before"):
            os._exit(3)
        return self.ctx.call("barrier.wait", {"name": input["name"], "parties": input["parties"],
                                              "timeout": input.get("timeout", 20)}, timeout=30)

    @capability("elect")
    def elect(self, input: Any, task: Any) -> Any:
        got = self.ctx.call("election.join", {"group": input["group"]})
        return {**got, "agent": self.ctx.agent_id, "pid": os.getpid()}

    @capability("count")
    def count(self, input: Any, task: Any) -> Any:
        clock = self.ctx.call("vclock.tick", {"group": "g", "clock": input.get("clock", {})})
        return {"value": self.ctx.call("counter.add", {"name": input["name"], "delta": 1}),
                "clock": clock, "agent": self.ctx.agent_id}


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
