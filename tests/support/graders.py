"""Grader functions the grading tests name in their configs (``function = "tests.support.graders:..."``)."""

from __future__ import annotations

import threading
from typing import Any

#: ``hangs`` waits on this (bounded): the test sets it to let the abandoned thread end.
RELEASE = threading.Event()


def by_score_field(input: Any, output: Any) -> float:
    """The result's own ``score`` field, as a grader that checks the output would compute it."""
    return float(output["score"])


def raises(input: Any, output: Any) -> float:
    raise ValueError("this grader is broken")


def not_a_score(input: Any, output: Any) -> Any:
    return "excellent"


def hangs(input: Any, output: Any) -> float:
    RELEASE.wait(30.0)
    return 1.0


def by_text(input: Any, output: Any) -> float:
    """The level a ``tests.support.agents_grading`` writer put at the head of its text."""
    head = str(output["text"]).split(" ", 1)[0]
    return float(head.partition(":")[2]) if head.startswith("quality:") else 0.0
