"""The demo's agents.  Real work on shared arrays: hashing words into a shared
vocabulary matrix, cosine similarity against shared document vectors."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from agora import Agent, capability

WORDS = ("agent market auction vote memory shared process registry partition supervisor "
         "restart journal ledger credit reputation contract lease lock barrier clock trace "
         "event scale pool latency throughput python erlang elixir numpy vector embedding "
         "retrieve summarize consensus negotiation bid price quality load failure recovery").split()
DIM = 64
VOCAB = 4096


def word_row(word: str) -> int:
    return zlib.crc32(word.lower().encode()) % VOCAB


def make_corpus(home: Path, n_docs: int = 2000, seed: int = 7) -> dict[str, str]:
    """Write vocab.npy, docs.npy and titles.txt; return the context table for the config."""
    rng = np.random.default_rng(seed)
    vocab = rng.standard_normal((VOCAB, DIM)).astype(np.float32)
    titles, docs = [], np.zeros((n_docs, DIM), dtype=np.float32)
    for i in range(n_docs):
        words = list(rng.choice(WORDS, size=4, replace=False))
        titles.append(" ".join(words))
        docs[i] = vocab[[word_row(w) for w in words]].mean(axis=0)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    np.save(home / "vocab.npy", vocab)
    np.save(home / "docs.npy", docs)
    (home / "titles.txt").write_text("\n".join(titles))
    return {"vocab": str(home / "vocab.npy"), "docs": str(home / "docs.npy"),
            "titles": str(home / "titles.txt")}


class Embedder(Agent):
    def setup(self, ctx: Any) -> None:
        self.vocab = ctx.array("vocab")

    @capability("embed")
    def embed(self, input: Any, task: Any) -> list[float]:
        rows = [word_row(w) for w in str(input["text"]).split()]
        vec = self.vocab[rows].mean(axis=0)
        task.emit("embed.words", n=len(rows))
        return (vec / (np.linalg.norm(vec) or 1.0)).round(6).tolist()


class Retriever(Agent):
    def setup(self, ctx: Any) -> None:
        self.docs = ctx.array("docs")
        self.titles = bytes(ctx.bytes("titles")).decode().split("\n")

    @capability("retrieve")
    def retrieve(self, input: Any, task: Any) -> list[dict[str, Any]]:
        scores = self.docs @ np.asarray(input["vector"], dtype=np.float32)
        top = np.argsort(-scores)[: int(input.get("k", 3))]
        return [{"doc": int(i), "title": self.titles[i], "score": round(float(scores[i]), 4)}
                for i in top]


class Summarizer(Agent):
    @capability("summarize")
    def summarize(self, input: Any, task: Any) -> dict[str, Any]:
        hits = input["hits"]
        words: dict[str, int] = {}
        for h in hits:
            for w in h["title"].split():
                words[w] = words.get(w, 0) + 1
        common = sorted(words, key=lambda w: (-words[w], w))[:5]
        return {"question": input["question"], "answer": " / ".join(h["title"] for h in hits),
                "themes": common, "best_score": max(h["score"] for h in hits)}


class Consultant(Agent):
    """Asks an external service about the summary's themes, through ``ctx.service("oracle")``.

    The service is a ``runtime.demo.fake_api.FakeAPI`` this agent runs on 127.0.0.1 (nothing
    leaves the machine), and the handler walks it through what the guards are for, so that the
    task's trace shows each decision (``agora trace``):

    1. the themes at once to a batchable endpoint: one batch request (``service.batch_join``,
       ``service.batch_flush``);
    2. the question twice: the second answer comes from the cache (``service.cache_hit``);
    3. the service goes down for a moment (the fake API's ``outage``): failing calls open the
       breaker (``breaker.transition`` closed -> open), calls are refused without a request
       (``service.breaker_reject``) until ``open_s`` has passed, then a probe finds the service
       back and closes it again (open -> half_open -> closed).
    """

    def setup(self, ctx: Any) -> None:
        from runtime.demo.fake_api import FakeAPI
        self.api = FakeAPI(seed=11, median_s=0.02, sigma=0.3)  # a quick service: a demo, not a benchmark
        self.svc = ctx.service("oracle")
        self.http: Any = None

    def _client(self) -> Any:
        import httpx

        from runtime.guards.http import BatchRoute
        if self.http is None:  # made on the agent's event loop, where it is used
            transport = self.svc.async_transport(cache_methods=("POST",),
                                                 batch=[BatchRoute("/v1/embed", "/v1/batch")])
            self.http = httpx.AsyncClient(transport=transport, timeout=10)
        return self.http

    @capability("consult")
    async def consult(self, input: Any, task: Any) -> dict[str, Any]:
        import asyncio
        http, url = self._client(), self.api.url
        themes = list(input["themes"])[:4]
        batch = await asyncio.gather(*(http.post(url + "/v1/embed", json={"embed": t}) for t in themes))
        asked = [await http.post(url + "/v1/complete", json={"complete": input["question"]}) for _ in range(2)]
        states = await self._ride_out_an_outage(http, url)
        return {"themes": {t: r.json()["answer"] for t, r in zip(themes, batch)},
                "answer": asked[0].json()["answer"], "cached": self.svc.counts["cache_hit"] > 0,
                "breaker": states, "requests": self.api.requests}

    async def _ride_out_an_outage(self, http: Any, url: str) -> list[str]:
        """Calls during an outage open the breaker; after ``open_s`` a probe closes it."""
        import asyncio

        from agora import CircuitOpen
        breaker = self.svc.breaker
        states = [breaker.state()]
        self.api.outage(0.5)
        for i in range(40):  # bounded: open_s is 0.5 s, the outage as long
            try:
                r = await http.post(url + "/v1/echo?q=ping", json={"probe": i})
                if r.status_code == 200 and breaker.state() == "closed" and "open" in states:
                    break
            except CircuitOpen as e:
                await asyncio.sleep(max(0.05, float(e.retry_after or 0.1)))
            if breaker.state() != states[-1]:
                states.append(breaker.state())
        if breaker.state() != states[-1]:
            states.append(breaker.state())
        return states
