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
