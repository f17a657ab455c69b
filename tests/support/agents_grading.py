"""Agents of the measured-quality system test (tests/system/test_grading_daemon.py).

``Honest`` and ``Sloppy`` both serve ``write``: honest work has quality 0.9, sloppy work
0.1, and each text says so (``"quality:0.9 essay on ..."``); ``Sloppy`` claims 0.99 in its
bids whatever it delivers.  Both take ``input["ms"]`` (default 30 ms) per task, so that
their measured service times are alike and the market's load criterion does not decide.
``Judge`` serves ``grade``: it reads the graded output and scores it, a real (if simple)
grading of the text it is given, as a model scorer would.
"""

from __future__ import annotations

import time
from typing import Any

from agora import Agent, capability


class Honest(Agent):
    level = 0.9

    @capability("write")
    def write(self, input: Any, task: Any) -> dict[str, Any]:
        time.sleep(float(input.get("ms", 30)) / 1000)
        return {"text": f"quality:{self.level} essay on {input.get('topic')}", "by": type(self).__name__}


class Sloppy(Honest):
    level = 0.1

    def bid(self, cfp: dict[str, Any]) -> dict[str, Any] | None:
        answer = super().bid(cfp)
        return None if answer is None else {**answer, "quality": 0.99}  # an inflated claim


class Judge(Agent):
    @capability("grade")
    def grade(self, input: Any, task: Any) -> dict[str, Any]:
        text = str((input.get("output") or {}).get("text", ""))
        head = text.split(" ", 1)[0]
        if not head.startswith("quality:"):
            return {"score": 0.0, "graded": input.get("task_id")}
        return {"score": min(1.0, max(0.0, float(head.partition(":")[2]))), "graded": input.get("task_id")}
