"""Agents for the consensus-step tests (tests/system/test_consensus_steps.py): real work
through the real hooks.

``Drafter`` ("draft"): returns ``{"value": its index, "blob": "x" * (input["big_kib"] KiB)}``
(64 KiB and more travels by arena handle); the agents whose index is in ``input["hang"]``
hang until their attempt is cancelled (then raise), with ``input["ignore_cancel"]`` for
up to 120 s regardless.  Its ``vote`` ranks the candidates by label and says, through the
ranking's order only, nothing else: the tests compute the expected winner (``c1``); with
``input["vote_on_content"]`` it ranks by the candidates' own ``value`` (large candidates
reach it by arena handle, so this shows the voters read them).
"""

from __future__ import annotations

import time
from typing import Any

from agora import Agent, capability


class Drafter(Agent):
    @capability("draft")
    def draft(self, input: Any, task: Any) -> Any:
        if self.ctx.index in input.get("hang", ()):
            deadline = time.monotonic() + 120  # bounded even if nobody cancels
            while time.monotonic() < deadline and (input.get("ignore_cancel") or not task.cancelled):
                time.sleep(0.02)
            raise RuntimeError("cancelled while hanging")
        return {"value": self.ctx.index, "blob": "x" * (int(input.get("big_kib", 0)) * 1024)}

    def vote(self, request: dict[str, Any]) -> Any:
        cands = request["candidates"]
        if (request.get("input") or {}).get("vote_on_content"):
            # the candidates themselves: the highest "value" first (a reference, which
            # has none, would rank last: the test sees whether voters read the content)
            return sorted(cands, key=lambda lbl: (-cands[lbl].get("value", -1), lbl))
        ranking = sorted(cands)
        return ranking[0] if request.get("shape") == "single" else ranking
