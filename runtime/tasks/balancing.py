"""Load balancing: which of the capable agents gets the next task.

Pure selection functions over *candidate entries*, the registry's answer to "who offers
capability X": mappings with a ``key`` (the agent's registry key) and metadata, of which
these read ``load`` (tasks running or queued at the agent; lower is better) and
``reputation`` (0..1; higher is better).  None of them does I/O; randomness comes from
an injected ``random.Random`` so every choice can be replayed from its seed.

Selectors (``SELECTORS`` maps a name to the function; these choose among *registry
entries*, for a caller that allocates from the registry rather than inside the
coordinator; the coordinator's allocation policies, the names agora.toml's
``allocation`` takes, are ``runtime.config.ALLOCATIONS``, and only ``p2c`` is built from
here):

``static``         the first candidate in registry order: the baseline the Elixir
                   reference used, kept only so perf scripts can measure against it.
``random``         uniform choice: the second baseline.
``least_loaded``   the minimum by the ranking below (scans every candidate).
``power_of_two``   two distinct candidates drawn at random, the better by the ranking
                   below wins (Mitzenmacher's "power of two choices": the maximum load
                   drops from ~log n / log log n to ~log log n over random, while reading
                   only two entries, which matters when load metadata is stale).

Ranking, deterministic: lower ``load``, then higher ``reputation``, then the smaller
``key`` (string order).  A missing ``load`` counts as 0 (an agent that registered and has
not reported load yet is idle); a missing ``reputation`` counts as 0.5 (neutral).

:class:`PowerOfTwoPolicy` puts ``power_of_two`` behind the dispatcher's policy interface
(``choose(task, candidates) -> AgentLink | None``; ``allocation = "p2c"`` in agora.toml).
The coordinator knows every agent's in-flight count exactly, so the policy reads that
(it is the same figure the scaler publishes as the registry's ``load`` metadata for other
readers, without the staleness); its random source is seeded once per coordinator from
``os.urandom`` unless one is injected (tests inject a seeded ``random.Random``).

An empty candidate list raises ``NotFound`` (the caller turns it into
``UnknownCapability`` or waits for the pool to grow; it knows which).  A malformed entry
raises ``InvalidInput`` naming it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtime.errors import InvalidInput, NotFound

__all__ = [
    "Entry",
    "rank",
    "static",
    "random_choice",
    "least_loaded",
    "power_of_two",
    "SELECTORS",
    "choose",
    "PowerOfTwoPolicy",
]

Entry = Mapping[str, Any]
NEUTRAL_REPUTATION = 0.5


def rank(entry: Entry) -> tuple[float, float, str]:
    """Sort key: smaller is better (lower load, higher reputation, smaller key)."""
    try:
        key = entry["key"]
        load = float(entry.get("load", 0.0))
        reputation = float(entry.get("reputation", NEUTRAL_REPUTATION))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(
            "expected a candidate entry with 'key' and numeric 'load'/'reputation', "
            f"got: {entry!r}",
            hint="this is a bug in the registry query that built the candidates",
        ) from exc
    return load, -reputation, str(key)


def _non_empty(candidates: Sequence[Entry]) -> Sequence[Entry]:
    if not candidates:
        raise NotFound(
            "no candidate agents to choose from",
            hint="no live agent offers this capability right now; check `agora agents`",
        )
    return candidates


def static(candidates: Sequence[Entry], rng: random.Random | None = None) -> Entry:
    """The first candidate in registry order (baseline)."""
    return _non_empty(candidates)[0]


def random_choice(candidates: Sequence[Entry], rng: random.Random) -> Entry:
    """A uniformly random candidate (baseline)."""
    return rng.choice(_non_empty(candidates))


def least_loaded(candidates: Sequence[Entry], rng: random.Random | None = None) -> Entry:
    """The best candidate by :func:`rank`."""
    return min(_non_empty(candidates), key=rank)


def power_of_two(candidates: Sequence[Entry], rng: random.Random) -> Entry:
    """The better by :func:`rank` of two distinct candidates drawn with ``rng``."""
    candidates = _non_empty(candidates)
    if len(candidates) == 1:
        return candidates[0]
    a, b = rng.sample(range(len(candidates)), 2)
    return min(candidates[a], candidates[b], key=rank)


SELECTORS: dict[str, Callable[..., Entry]] = {
    "static": static,
    "random": random_choice,
    "least_loaded": least_loaded,
    "power_of_two": power_of_two,
}


def choose(selector: str, candidates: Sequence[Entry], rng: random.Random) -> Entry:
    """Dispatch by selector name (``SELECTORS``)."""
    try:
        select = SELECTORS[selector]
    except KeyError:
        raise InvalidInput(
            f"expected a selector in {sorted(SELECTORS)}, got: {selector!r}",
            hint="balancing.choose(name, entries, rng) takes one of SELECTORS' names",
        ) from None
    return select(candidates, rng)


class PowerOfTwoPolicy:
    """Dispatch policy ``p2c``: the less loaded of two agents drawn at random."""

    name = "p2c"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()

    def choose(self, task: Any, candidates: Sequence[Any]) -> Any:
        """``candidates`` are scheduler AgentLinks (``id``, ``inflight``); None if empty."""
        if not candidates:
            return None
        by_key = {link.id: link for link in candidates}
        entries = [{"key": link.id, "load": len(link.inflight)} for link in candidates]
        return by_key[power_of_two(entries, self.rng)["key"]]
