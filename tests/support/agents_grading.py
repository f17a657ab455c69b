"""Agents of the measured-quality system test (tests/system/test_grading_daemon.py).

``Honest`` and ``Sloppy`` both serve ``write``: honest work has quality 0.9, sloppy work
0.1, and each result says so in its text (``"quality:0.9 ..."``); ``Sloppy`` claims 0.99 in
its bids.  ``Judge`` serves ``grade``: it reads the graded output and answers its score, a
real (if simple) grading of the text it is given, like a model scorer would.
"""

from __future__ import annotations

from typing import Any

import agora


class Honest(agora.Agent):
    level = 0.9

    @agora.capability("write")
    def write(self, task: Any) -> dict[str, Any]:
        return {"text": f"quality:{self.level} essay on {task['topic']}", "by": self.id}


class Sloppy(Honest):
    level = 0.1

    def bid(self, cfp: dict[str, Any]) -> dict[str, Any] | None:
        answer = super().bid(cfp)
        return None if answer is None else {**answer, "quality": 0.99}  # inflated claim


class Judge(agora.Agent):
    @agora.capability("grade")
    def grade(self, task: Any) -> dict[str, Any]:
        text = task["output"]["text"]
        if not text.startswith("quality:"):
            return {"score": 0.0}
        return {"score": float(text.split()[0].partition(":")[2]), "graded": task["task_id"]}
