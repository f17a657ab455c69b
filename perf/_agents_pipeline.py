"""Agents of perf/pipelines.py: the reference system's 6-step pipeline over a shared context.

    retrieve -> embed -> llm -> check (a consensus of 3 agents) -> summarize -> score

Each step takes the previous step's document (a request of ~10 KB that grows to ~35 KB by the
end), adds its part and its timings (``t``: seconds in the handler, ``x``: seconds of it in
external calls, per step), so the driver can split a pipeline's time into handlers, external
calls and coordination (everything outside handlers).  ``retrieve`` reads passages from the
shared context (``ctx.bytes("corpus")``, one copy in shared memory for every agent); ``embed``,
``llm`` and ``check`` call the fake external API; ``summarize`` and ``score`` are local work.

Two classes, the same work:

- ``NaivePipe``: what the reference did: sync handlers, one attempt per call with a plain
  ``httpx.Client`` (no timeout beyond httpx's, no retry, breaker, cache or batching);
- ``GuardedPipe``: ``async def`` handlers (the pool's ``concurrency`` runs many at once) and
  every call through ``ctx.service("api")``'s async httpx transport: timeout, retries with
  full-jitter backoff, the machine-wide breaker, the result cache with in-flight
  de-duplication (POSTs are cached: the fake model is deterministic) and micro-batching of
  ``embed`` into the batch endpoint.  While the breaker is open, a call waits out its
  ``retry_after`` and tries again, within the step's budget (an agent rides out an outage
  instead of failing the pipeline).
- ``ProcessGuardedPipe``: ``GuardedPipe`` with the same guards kept per agent process (what
  per-process libraries give a user: a retry decorator, an ``lru_cache``, a breaker and a
  limiter in each process): its own cache, breaker, limiter, budgets and batches, no
  machine-wide answers or in-flight de-duplication across agents.  perf/pipelines.py's
  ``-machine-wide`` lever.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx

from agora import Agent, CircuitOpen, capability

__all__ = ["NaivePipe", "GuardedPipe", "ProcessGuardedPipe", "PASSAGE_BYTES", "STEP_BUDGET_S"]

PASSAGE_BYTES = 8_000
STEP_BUDGET_S = 20.0  # how long a guarded step may wait out an open breaker


def _digest(text: str, n: int = 16) -> str:
    return hashlib.blake2b(text.encode(), digest_size=n).hexdigest()


def _pad(seed: str, size: int) -> str:
    """Deterministic text of ``size`` characters derived from ``seed`` (a step's "output")."""
    block = hashlib.blake2b(seed.encode(), digest_size=64).hexdigest()
    return (block * (size // len(block) + 1))[:size]


def _timed(doc: dict[str, Any], step: str, t0: float, external: float) -> dict[str, Any]:
    doc = dict(doc)
    doc["t"] = dict(doc.get("t", {}), **{step: time.perf_counter() - t0})
    doc["x"] = dict(doc.get("x", {}), **{step: external})
    return doc


class _Local:
    """The local steps, shared by both classes."""

    def setup(self, ctx: Any) -> None:
        self.corpus = bytes(ctx.bytes("corpus"))

    def _retrieve(self, doc: dict[str, Any]) -> dict[str, Any]:
        h = int(_digest(doc["prompt"], 8), 16)
        start = h % (len(self.corpus) - PASSAGE_BYTES)
        return dict(doc, passages=self.corpus[start:start + PASSAGE_BYTES].decode("ascii", "replace"))

    @staticmethod
    def _summarize(doc: dict[str, Any]) -> dict[str, Any]:
        return dict(doc, summary=_pad(doc["answer"][:64] + doc["verdict"], 4_000))

    @staticmethod
    def _score(doc: dict[str, Any]) -> dict[str, Any]:
        words = len(doc["summary"]) + len(doc["answer"])
        return dict(doc, score=round((int(_digest(doc["summary"], 4), 16) % 1000) / 1000 + words * 0, 3))

    @staticmethod
    def _vote(agent: Agent, request: dict[str, Any]) -> Any:
        """Consensus: rank candidates by their verdict, then label (every agent agrees on the
        same verdict, so the vote is quick and decided)."""
        cands = request["candidates"]
        ranking = sorted(cands, key=lambda c: (str(cands[c].get("verdict")), c))
        return ranking[0] if request.get("shape") == "single" else ranking


class NaivePipe(_Local, Agent):
    """Sync handlers, direct calls, no guards (the reference system)."""

    def setup(self, ctx: Any) -> None:
        _Local.setup(self, ctx)
        self.http = httpx.Client(timeout=30)

    def _post(self, url: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        t0 = time.perf_counter()
        r = self.http.post(url + "/v1/complete", json=body)
        r.raise_for_status()
        return r.json()["answer"], time.perf_counter() - t0

    @capability("retrieve")
    def retrieve(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        return _timed(self._retrieve(doc), "retrieve", t0, 0.0)

    @capability("embed")
    def embed(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        got, x = self._post(doc["url"], {"embed": doc["prompt"]})
        return _timed(dict(doc, vector=_pad(str(got), 3_000)), "embed", t0, x)

    @capability("llm")
    def llm(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        got, x = self._post(doc["url"], {"complete": doc["prompt"]})
        return _timed(dict(doc, answer=_pad(str(got), 6_000)), "llm", t0, x)

    @capability("check")
    def check(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        got, x = self._post(doc["url"], {"check": _digest(doc["answer"])})
        return _timed(dict(doc, verdict="ok:" + _digest(str(got), 4), check_pad=_pad(str(got), 2_000)),
                      "check", t0, x)

    @capability("summarize")
    def summarize(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        return _timed(self._summarize(doc), "summarize", t0, 0.0)

    @capability("score")
    def score(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        return _timed(self._score(doc), "score", t0, 0.0)

    def vote(self, request: dict[str, Any]) -> Any:
        return self._vote(self, request)


class GuardedPipe(_Local, Agent):
    """Async handlers, every call through the machine-wide guards of ``[services.api]``."""

    def setup(self, ctx: Any) -> None:
        from runtime.guards.http import BatchRoute
        _Local.setup(self, ctx)
        self.svc = ctx.service("api")
        self._transport = lambda: self.svc.async_transport(
            cache_methods=("POST",), batch=[BatchRoute("/v1/embed", "/v1/batch")])
        self.http: httpx.AsyncClient | None = None

    async def _post(self, url: str, path: str, body: dict[str, Any]) -> tuple[Any, float]:
        if self.http is None:  # made on the agent's event loop, where it is used
            self.http = httpx.AsyncClient(transport=self._transport(), timeout=30)
        t0 = time.perf_counter()
        deadline = time.monotonic() + STEP_BUDGET_S
        while True:
            try:
                r = await self.http.post(url + path, json=body)
                break
            except CircuitOpen as e:  # the service is down: wait it out, within the budget
                wait = max(0.05, float(e.retry_after or 0.5))
                if time.monotonic() + wait > deadline:
                    raise
                await asyncio.sleep(wait)
        r.raise_for_status()
        return r.json()["answer"], time.perf_counter() - t0

    @capability("retrieve")
    async def retrieve(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        return _timed(self._retrieve(doc), "retrieve", t0, 0.0)

    @capability("embed")
    async def embed(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        got, x = await self._post(doc["url"], "/v1/embed", {"embed": doc["prompt"]})
        return _timed(dict(doc, vector=_pad(str(got), 3_000)), "embed", t0, x)

    @capability("llm")
    async def llm(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        got, x = await self._post(doc["url"], "/v1/complete", {"complete": doc["prompt"]})
        return _timed(dict(doc, answer=_pad(str(got), 6_000)), "llm", t0, x)

    @capability("check")
    async def check(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        got, x = await self._post(doc["url"], "/v1/complete", {"check": _digest(doc["answer"])})
        return _timed(dict(doc, verdict="ok:" + _digest(str(got), 4), check_pad=_pad(str(got), 2_000)),
                      "check", t0, x)

    @capability("summarize")
    async def summarize(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        return _timed(self._summarize(doc), "summarize", t0, 0.0)

    @capability("score")
    async def score(self, doc: Any, task: Any) -> Any:
        t0 = time.perf_counter()
        return _timed(self._score(doc), "score", t0, 0.0)

    def vote(self, request: dict[str, Any]) -> Any:
        return self._vote(self, request)


class ProcessGuardedPipe(GuardedPipe):
    """``GuardedPipe`` with ``[services.api]``'s guards in this process only (no events)."""

    def setup(self, ctx: Any) -> None:
        from runtime.agents.services import MachineService
        super().setup(ctx)
        self.svc = MachineService("api", ctx.service("api").config)  # a local store, no flights
