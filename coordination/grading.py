"""Measured quality (issue 18 item 6): a pool's grader, what a grade is, and the cap a
measured record puts on the quality an agent claims.  Pure: no I/O, no clock; the driver
that runs graders inside the coordinator is ``coordination.services.grading``.

A pool declares its grader in agora.toml (every key is checked at load time)::

    [pools.writer.grader]
    capability = "grade"      # a capability of ANOTHER pool, called as a task through agora
    # function = "mypkg.grading:score"   # or: an importable function (input, output) -> [0, 1]
    min_quality = 0.5         # the contracted quality: a graded delivery below it is a breach
    timeout_s = 10.0          # a grade not in by then stays unknown (the contract pays)

Exactly one of ``capability`` and ``function``.  A grader capability gets the task
``{"input": <graded task's input>, "output": <its result>, "capability": ..., "task_id": ...}``
and answers a score: a number in [0, 1], or ``{"score": <number>, ...}``.  A function is
called ``func(input, output)`` and returns the same.  Anything else (a failed grading task,
an exception, a value out of range, a timeout) leaves the delivered quality *unknown*
(None), never a made-up number: the grader's failure is not the graded agent's.

Decisions where the spec is silent
    * The contracted quality is the graded pool's ``min_quality`` (default 0.5, the same
      neutral value as the declared-quality default and the reputation prior): what its
      buyers are promised.  A bid's claimed quality is what the agent says it will
      deliver *on average*; it ranks offers, and a record below it caps it (next point),
      but one delivery a little under the claim is noise, not a breach.
    * The cap: once an agent has at least ``MIN_MEASURED`` (5) graded deliveries for a
      capability, the quality its bids are evaluated with is min(claim, measured mean),
      the mean of its graded qualities kept by reputation (the last ``window``, 50).  Why
      5: with fewer, one unlucky grade moves a mean by more than 0.2 (a truthful agent
      would be capped by noise); from 5, a single grade moves it by at most 0.2 and the
      mean of scores in [0, 1] has a standard error of at most 0.5/sqrt(5) = 0.22, while an
      inflated claim buys its agent at most 5 contracts on the claim alone (each graded,
      and breached if poor) before its record caps it.  A claim
      below the record stands (an agent may undersell itself).
    * Without a grader the delivered quality is None, reported as unknown in events,
      ``agora market`` and the API, and reputation's quality signal ignores it (it stays
      at the prior), where it used to be a hard-coded 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from runtime.errors import InvalidInput

__all__ = ["GraderSpec", "parse_grader", "graders", "parse_score", "capped", "grading_input",
           "MIN_MEASURED", "GRADER_KEYS"]

#: Graded deliveries before a measured mean caps a claim (see the module docstring).
MIN_MEASURED = 5
#: The keys of ``[pools.NAME.grader]``.
GRADER_KEYS = ("capability", "function", "min_quality", "timeout_s")


@dataclass(frozen=True)
class GraderSpec:
    """The grader of one pool: a capability or a ``module:func`` path, the contracted
    quality, and how long a grade may take."""

    pool: str
    capability: str | None = None
    function: str | None = None
    min_quality: float = 0.5
    timeout_s: float = 10.0

    @property
    def name(self) -> str:
        return f"capability:{self.capability}" if self.capability else f"function:{self.function}"

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "capability": self.capability, "function": self.function,
                "min_quality": self.min_quality, "timeout_s": self.timeout_s}


def parse_grader(pool: str, table: Any, own_capabilities: Iterable[str] = ()) -> GraderSpec:
    """``[pools.<pool>.grader]`` -> a GraderSpec, or InvalidInput naming the key."""
    where = f"pools.{pool}.grader"
    if not isinstance(table, dict):
        raise InvalidInput(f"{where} must be a table, got {type(table).__name__}",
                           hint="[pools.NAME.grader] with capability = '...' or function = 'module:func'")
    unknown = sorted(set(table) - set(GRADER_KEYS))
    if unknown:
        raise InvalidInput(f"unknown key {where}.{unknown[0]} in the config", hint=f"known keys: {list(GRADER_KEYS)}")
    cap, fn = table.get("capability"), table.get("function")
    if (cap is None) == (fn is None):
        raise InvalidInput(f"{where}: expected exactly one of 'capability' and 'function', got "
                           f"{'both' if cap is not None else 'neither'}",
                           hint="capability = 'grade' (another pool's) or function = 'mypkg.grading:score'")
    if cap is not None and (not isinstance(cap, str) or not cap):
        raise InvalidInput(f"{where}.capability: expected a capability name, got {cap!r}")
    if cap is not None and cap in set(own_capabilities):
        raise InvalidInput(f"{where}.capability: {cap!r} is served by pool {pool!r} itself",
                           hint="a pool cannot grade its own work: name a capability of another pool")
    if fn is not None:
        _check_function_path(where, fn)
    return GraderSpec(pool, cap, fn, _unit(where, "min_quality", table.get("min_quality", 0.5)),
                      _timeout(where, table.get("timeout_s", 10.0)))


def _check_function_path(where: str, fn: Any) -> None:
    mod, _, name = fn.rpartition(":") if isinstance(fn, str) else ("", "", "")
    if not mod or not name.isidentifier() or not all(p.isidentifier() for p in mod.split(".")):
        raise InvalidInput(f"{where}.function: expected an import path 'module:func', got {fn!r}",
                           hint="e.g. function = 'mypkg.grading:score' (a module on the path or "
                                "next to agora.toml)")


def _unit(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInput(f"{where}.{key}: expected a number in [0, 1], got {value!r}")
    return float(value)


def _timeout(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
        raise InvalidInput(f"{where}.timeout_s: expected seconds in (0, 3600], got {value!r}")
    return float(value)


def graders(pools: Iterable[Any]) -> dict[str, GraderSpec]:
    """Pool name -> its grader, for the pools of a config that declare one."""
    return {p.name: parse_grader(p.name, p.grader, p.capabilities)
            for p in pools if getattr(p, "grader", None)}


def parse_score(answer: Any) -> float:
    """A grader's answer -> its score in [0, 1]: a number, or a dict with ``"score"``."""
    score = answer.get("score") if isinstance(answer, dict) else answer
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
            or not 0.0 <= score <= 1.0:
        raise InvalidInput(f"a grader must answer a score in [0, 1] (a number or {{\"score\": x}}), "
                           f"got {answer!r}"[:300])
    return float(score)


def capped(claimed: float, record: tuple[int, float | None]) -> float:
    """The quality an offer is evaluated with: the claim, capped by the measured mean once
    there are MIN_MEASURED graded deliveries (``record`` = (count, mean))."""
    n, mean = record
    return claimed if n < MIN_MEASURED or mean is None else min(claimed, mean)


def grading_input(capability: str, task_id: str, task_input: Any, output: Any) -> dict[str, Any]:
    """What a grader capability's task gets."""
    return {"input": task_input, "output": output, "capability": capability, "task_id": task_id}
