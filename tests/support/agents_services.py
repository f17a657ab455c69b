"""Agents that call the fake API through ``ctx.service("api")`` (system tests of the guards
across real agent processes)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from agora import Agent, capability


class Caller(Agent):
    """``call``: one guarded request (sync httpx over the service's transport); ``calls``: n in a
    row; ``acall``: the async client; each answers the outcome and what the breaker says."""

    def setup(self, ctx: Any) -> None:
        self.svc = ctx.service("api")
        self.http = httpx.Client(transport=self.svc.transport(cache_methods=("GET", "POST")), timeout=10)
        self.ahttp: httpx.AsyncClient | None = None

    def _one(self, input: Any) -> dict[str, Any]:
        try:
            r = self.http.post(input["url"] + "/v1/complete", json=input.get("body", {"q": "x"}))
            outcome: Any = r.status_code
        except Exception as e:  # CircuitOpen, Throttled: the guard's own refusal, typed
            outcome = type(e).__name__
        return {"outcome": outcome, "agent": self.ctx.agent_id, "breaker": self.svc.breaker.state()}

    @capability("call")
    def call(self, input: Any, task: Any) -> Any:
        time.sleep(float(input.get("hold", 0)))
        return self._one(input)

    @capability("calls")
    def calls(self, input: Any, task: Any) -> Any:
        return [self._one(input) for _ in range(int(input["n"]))]

    @capability("counts")
    def counts(self, input: Any, task: Any) -> Any:
        """The guard decisions this agent's service made so far (``Service.counts``)."""
        return dict(self.svc.counts, pid=os.getpid())

    @capability("acall")
    async def acall(self, input: Any, task: Any) -> Any:
        if self.ahttp is None:
            self.ahttp = httpx.AsyncClient(transport=self.svc.async_transport(cache_methods=("GET", "POST")),
                                           timeout=10)
        r = await self.ahttp.post(input["url"] + "/v1/complete", json=input.get("body", {"q": "x"}))
        await asyncio.sleep(0)
        return {"outcome": r.status_code, "agent": self.ctx.agent_id, "body": r.json()}
