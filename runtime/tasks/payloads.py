"""Large task inputs and results travel through the payload arena, not the pipe.

A value whose JSON encoding reaches ``threshold`` (64 KiB by default) is written once
into the sender's arena slot and replaced on the wire by its handle (~100 bytes); the
receiver reads the block in place, decodes it and releases the block.  Below the
threshold the value rides in the frame as usual: for small values the extra copy is
cheaper than a handle's bookkeeping.

Slots: the coordinator writes in slot 0; each agent in the slot the root gave it when it
forked it (``SlotTable``), and an agent resets its slot when it starts, so a handle left by
a dead predecessor is detected as stale instead of read.  A value larger than what the
slot can hold goes inline (the frame limit still applies) and is counted
(``inline_fallbacks``), so a too-small arena shows in ``agora status``.
"""

from __future__ import annotations

from typing import Any

import orjson

from shm.arena import DEFAULT_THRESHOLD, Arena, Handle
from shm.errors import ResourceExhausted, StaleHandle

__all__ = ["Payloads", "SlotTable"]


class Payloads:
    """One process's side of the arena: pack what it sends, unpack what it receives."""

    def __init__(self, arena: Arena | None, slot: int, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.arena = arena
        self.writer = arena.slot(slot) if arena is not None else None
        self.threshold = threshold
        self.stats = {"sent_by_handle": 0, "received_by_handle": 0, "inline_fallbacks": 0}

    def pack(self, value: Any, key: str, out: dict[str, Any], size: int = 0) -> Handle | None:
        """Put ``value`` into ``out`` as ``out[key]`` or, when large, ``out[key + "_h"]``.
        ``size``: the value's JSON length when the caller knows it (then small values are
        not encoded twice; the frame encodes them anyway)."""
        if 0 < size < self.threshold:
            out[key] = value
            return None
        data = orjson.dumps(value)  # also refuses, here and clearly, what is not JSON
        if self.writer is not None:
            if len(data) >= self.threshold:
                try:
                    handle = self.writer.put(data)
                except ResourceExhausted:
                    self.stats["inline_fallbacks"] += 1
                else:
                    self.stats["sent_by_handle"] += 1
                    out[key + "_h"] = handle.to_json()
                    return handle
        out[key] = value
        return None

    def unpack(self, msg: dict[str, Any], key: str) -> Any:
        """The value ``pack`` put under ``key``; an arena block is released once read."""
        packed = msg.get(key + "_h")
        if packed is None:
            return msg.get(key)
        handle = Handle.from_json(packed)
        value = orjson.loads(self.arena.get(handle))
        self.arena.release(handle)  # raises StaleHandle if the block was reset meanwhile
        self.stats["received_by_handle"] += 1
        return value

    def share(self, data: bytes) -> Handle | None:
        """Encoded JSON put into this process's slot for readers that do not release it
        (``peek``); the writer ``discard``s it when they are done.  None: no arena, or no
        room (the caller sends something else)."""
        if self.writer is None:
            return None
        try:
            return self.writer.put(data)
        except ResourceExhausted:
            self.stats["inline_fallbacks"] += 1
            return None

    def peek(self, handle_json: Any) -> Any:
        """The value of a block ``share``d by another process; the block stays its writer's.
        StaleHandle (an AgoraError's cousin from shm.errors) when it is gone."""
        if self.arena is None:
            raise StaleHandle("no payload arena in this process")
        return orjson.loads(self.arena.read(Handle.from_json(handle_json)))

    def discard(self, handle: Handle | None) -> None:
        """The receiver died before reading: free the block for it."""
        if handle is not None and self.arena is not None:
            try:
                self.arena.release(handle)
            except StaleHandle:
                pass  # already read and released, or the slot was reset: nothing to free


class SlotTable:
    """The root's map of arena slots: 0 is the coordinator's; each pool owns a range of
    ``2 * max`` slots (room for replacements started before their predecessors stop)."""

    def __init__(self, pools: list[tuple[str, int]]) -> None:
        self.ranges: dict[str, range] = {}
        start = 1
        for name, max_size in pools:
            self.ranges[name] = range(start, start + 2 * max_size)
            start += 2 * max_size
        self.size = start
        self.taken: dict[str, int] = {}

    def take(self, pool: str, agent_id: str) -> int:
        if agent_id in self.taken:
            return self.taken[agent_id]
        used = set(self.taken.values())
        for slot in self.ranges[pool]:
            if slot not in used:
                self.taken[agent_id] = slot
                return slot
        from runtime.errors import ResourceExhausted as Exhausted
        raise Exhausted(f"pool {pool!r} has no free arena slot ({len(self.ranges[pool])} in use)",
                        hint="stop retiring agents first, or raise the pool's max")

    def give_back(self, agent_id: str) -> None:
        self.taken.pop(agent_id, None)
