"""Payload arena: large task inputs/results travel as a small handle, not through a pipe.

A payload above ``DEFAULT_THRESHOLD`` (64 KiB) is copied once into a shared block; the
pipe carries only ``Handle.to_json()`` (~100 bytes); the consumer reads the block in place
and releases it.  Layout of the one region the root maps before it forks anything::

    arena header  64 B    magic, slots, slot_size
    slot 0        slot_size bytes: [slot header 64 B: generation, owner pid][blocks ...]
    slot 1        ...
    block         [header 64 B: serial u64, generation u64, length u64, state u8][data]

Decisions (the brief suggested this design; recorded here):

- **Anonymous MAP_SHARED memory**, mapped by the root before forking: every child inherits
  it, and it has no /dev/shm name, so nothing can leak after any crash (the kernel frees it
  with the last process that maps it).  The flip side: only processes forked after
  ``Arena.create`` can use it, and its size is fixed at start.  ``create`` refuses a size
  above the memory available (psutil), since touching more would summon the OOM killer.
- **Single writer per slot, no locks.**  The root assigns slot i to one process; only that
  process allocates in it, with a process-local first-fit allocator (``BlockAllocator``,
  pure).  The consumer frees a block with one single-byte store (state LIVE -> DONE); the
  producer notices DONE blocks at its next ``put`` and reuses their space.  Handing a handle
  over is a pipe write/read (a system call), which orders the producer's stores before the
  consumer's loads; the DONE byte needs no ordering beyond its own atomicity.
- **Stale handles are detected**: a handle names (slot, offset, length, generation, serial).
  When a slot's process dies the root calls ``reset_slot(i)`` (generation + 1) before giving
  the slot to a successor; a handle from the old generation, or a block already released
  (its state is DONE, or its space now holds a block with another serial), raises
  ``StaleHandle``.  A consumer that reads *while* a reset happens can see torn data; it
  confirms with ``release()`` (which raises ``StaleHandle`` then), as with a seqlock.
- **Reclaim when a holder dies**: a producer's death -> the root resets its slot.  A
  consumer's death with unreleased handles -> whoever tracked the task (the root/coordinator
  knows which handles it passed that agent) calls ``arena.release(handle)`` for it; any
  process may release.
"""

from __future__ import annotations

import ast
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from .errors import InvalidArgument, ResourceExhausted, SegmentBusy, StaleHandle

__all__ = ["Arena", "SlotWriter", "Handle", "BlockAllocator", "DEFAULT_THRESHOLD", "use_arena"]

DEFAULT_THRESHOLD = 64 * 1024
_MAGIC = 0x41474152454E4131  # "AGARENA1"
_ARENA_HDR = struct.Struct("<QQQ")          # magic, slots, slot_size
_SLOT_HDR = struct.Struct("<QQ")            # generation, owner pid
_BLOCK_HDR = struct.Struct("<QQQ")          # serial, generation, length; state byte at +24
_HDR = 64                                   # every header is padded to one cache line
_STATE = 24
_FREE, _LIVE, _DONE = 0, 1, 2
_PAGE = mmap.PAGESIZE
_MIB = 1 << 20


def use_arena(nbytes: int, threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Should a payload of ``nbytes`` go through the arena rather than the pipe?"""
    return nbytes > threshold


def _align(n: int, to: int = _HDR) -> int:
    return (n + to - 1) // to * to


class BlockAllocator:
    """Pure first-fit allocator over [0, capacity): one writer, no I/O, 64-byte aligned."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used: dict[int, int] = {}   # offset -> size

    def alloc(self, size: int) -> int | None:
        """Offset of a free run of ``size`` bytes (rounded up to 64), None if none fits."""
        size, start = _align(size), 0
        for off in sorted(self._used):
            if off - start >= size:
                break
            start = off + self._used[off]
        if start + size > self.capacity:
            return None
        self._used[start] = size
        return start

    def free(self, offset: int) -> None:
        del self._used[offset]

    def used(self) -> dict[int, int]:
        return dict(self._used)

    def free_bytes(self) -> int:
        return self.capacity - sum(self._used.values())


@dataclass(frozen=True)
class Handle:
    """Where a payload lives; JSON-able with ``to_json``/``from_json``."""

    slot: int
    offset: int      # of the block header, from the start of the slot's block area
    length: int
    gen: int
    serial: int
    descr: str | None = None             # for arrays: repr of numpy's dtype descr
    shape: tuple[int, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"slot": self.slot, "offset": self.offset, "length": self.length,
                               "gen": self.gen, "serial": self.serial}
        if self.descr is not None:
            out["descr"], out["shape"] = self.descr, list(self.shape or ())
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Handle:
        try:
            ints = [int(d[k]) for k in ("slot", "offset", "length", "gen", "serial")]
            shape = tuple(int(x) for x in d["shape"]) if d.get("descr") is not None else None
            return cls(*ints, d.get("descr"), shape)
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgument(f"not an arena handle: {d!r}",
                                  hint="pass the dict Handle.to_json() produced, unchanged") from e


class Arena:
    """The shared region: created by the root before forking; ``slot(i)`` in the slot's process."""

    def __init__(self, mm: mmap.mmap, slots: int, slot_size: int) -> None:
        self._mm = mm
        self.slots = slots
        self.slot_size = slot_size

    @classmethod
    def create(cls, total_bytes: int, slots: int, *,
               available: Callable[[], int] = lambda: psutil.virtual_memory().available) -> Arena:
        slot_size = _check_geometry(total_bytes, slots)
        size = _HDR + slots * slot_size
        free = available()
        if size > free:
            raise ResourceExhausted(
                f"cannot map a payload arena of {size / _MIB:.1f} MiB: "
                f"only {free / _MIB:.1f} MiB of memory is available",
                hint="configure a smaller arena (fewer slots or less per slot)", requested=size, available=free)
        mm = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        _ARENA_HDR.pack_into(mm, 0, _MAGIC, slots, slot_size)
        return cls(mm, slots, slot_size)

    # -- producer / owner ----------------------------------------------------------------
    def slot(self, i: int) -> SlotWriter:
        """The writer of slot i; call it in the one process the root gave slot i to."""
        self._check_slot(i)
        _SLOT_HDR.pack_into(self._mm, self._slot_base(i), self.generation(i), os.getpid())
        return SlotWriter(self, i)

    def reset_slot(self, i: int) -> int:
        """Root only, after slot i's process died: invalidate its handles; the new generation."""
        self._check_slot(i)
        gen = self.generation(i) + 1
        _SLOT_HDR.pack_into(self._mm, self._slot_base(i), gen, 0)
        return gen

    def generation(self, i: int) -> int:
        return int(_SLOT_HDR.unpack_from(self._mm, self._slot_base(i))[0])

    # -- consumer ------------------------------------------------------------------------
    def get(self, handle: Handle) -> memoryview:
        """A read-only view of the payload, in place (valid until you release the handle)."""
        start = self._validate(handle)
        return memoryview(self._mm)[start:start + handle.length].toreadonly()

    def get_array(self, handle: Handle) -> np.ndarray:
        if handle.descr is None:
            raise InvalidArgument("this handle holds bytes, not an array", hint="use Arena.get(handle)")
        dtype = np.lib.format.descr_to_dtype(ast.literal_eval(handle.descr))
        return np.frombuffer(self.get(handle), dtype).reshape(handle.shape or ())

    def read(self, handle: Handle) -> bytes:
        """A copy of the payload for a reader that does not own the block (several may read
        one block; its writer releases it): validated before and after the copy, as a
        seqlock reader confirms, so a block released or reset meanwhile raises StaleHandle
        instead of returning torn or recycled bytes."""
        start = self._validate(handle)
        data = bytes(memoryview(self._mm)[start:start + handle.length])
        self._validate(handle)
        return data

    def release(self, handle: Handle) -> None:
        """Mark the block done (one byte store).  StaleHandle: it was reset or already released."""
        start = self._validate(handle)
        self._mm[start - _HDR + _STATE] = _DONE

    def close(self) -> None:
        """Unmap in this process.  Views from ``get`` must be gone first."""
        try:
            self._mm.close()
        except BufferError as e:
            raise SegmentBusy(f"the payload arena still has live views in pid {os.getpid()}") from e

    # -- steps ---------------------------------------------------------------------------
    def _slot_base(self, i: int) -> int:
        return _HDR + i * self.slot_size

    def _block_base(self, i: int) -> int:
        return self._slot_base(i) + _HDR

    def _check_slot(self, i: int) -> None:
        if not (isinstance(i, int) and 0 <= i < self.slots):
            raise InvalidArgument(f"arena slot {i!r} does not exist", hint=f"slots are 0..{self.slots - 1}")

    def _validate(self, h: Handle) -> int:
        """Offset of the payload's first byte if the handle is current, else StaleHandle."""
        self._check_slot(h.slot)
        if h.offset < 0 or h.length < 0 or h.offset + _HDR + h.length > self.slot_size - _HDR:
            raise InvalidArgument(f"arena handle out of range: {h}", hint="pass handles unchanged")
        base = self._block_base(h.slot) + h.offset
        serial, gen, length = _BLOCK_HDR.unpack_from(self._mm, base)
        current = self.generation(h.slot)
        if h.gen != current or (serial, gen, length) != (h.serial, h.gen, h.length) \
                or self._mm[base + _STATE] != _LIVE:
            raise StaleHandle(f"arena block slot={h.slot} offset={h.offset} serial={h.serial} gen={h.gen} "
                              f"is no longer valid (slot generation {current})")
        return base + _HDR


def _check_geometry(total_bytes: int, slots: int) -> int:
    if not (isinstance(slots, int) and slots > 0):
        raise InvalidArgument(f"expected slots to be a positive integer, got: {slots!r}")
    if not isinstance(total_bytes, int) or total_bytes <= 0:
        raise InvalidArgument(f"expected total_bytes to be a positive integer, got: {total_bytes!r}")
    slot_size = (total_bytes - _HDR) // slots // _PAGE * _PAGE
    if slot_size < 2 * _PAGE:
        raise InvalidArgument(f"an arena of {total_bytes} bytes split in {slots} slots leaves {slot_size} per slot",
                              hint=f"give at least {2 * _PAGE} bytes per slot")
    return slot_size


class SlotWriter:
    """The producer side of one slot: ``put`` copies a payload in once and returns its handle."""

    def __init__(self, arena: Arena, slot: int) -> None:
        self._arena = arena
        self._mm = arena._mm
        self.slot = slot
        self._base = arena._block_base(slot)
        self._alloc = BlockAllocator(arena.slot_size - _HDR)
        self._serial = 0

    def put(self, payload: bytes | bytearray | memoryview | np.ndarray) -> Handle:
        if isinstance(payload, np.ndarray):
            return self._put_array(payload)
        view = memoryview(payload).cast("B")
        off = self._allocate(view.nbytes)
        self._mm[self._base + off + _HDR:self._base + off + _HDR + view.nbytes] = view
        return self._seal(off, view.nbytes)

    def _put_array(self, arr: np.ndarray) -> Handle:
        if arr.dtype.hasobject:
            raise InvalidArgument(f"dtype {arr.dtype} holds Python objects", hint="send plain data only")
        off = self._allocate(arr.nbytes)
        dst = np.frombuffer(self._mm, arr.dtype, arr.size, self._base + off + _HDR).reshape(arr.shape)
        np.copyto(dst, arr)
        del dst
        descr = repr(np.lib.format.dtype_to_descr(arr.dtype))
        return self._seal(off, arr.nbytes, descr, tuple(arr.shape))

    def _allocate(self, nbytes: int) -> int:
        self.reclaim()
        off = self._alloc.alloc(_HDR + nbytes)
        if off is None:
            raise self._full(nbytes)
        return off

    def _seal(self, off: int, nbytes: int, descr: str | None = None,
              shape: tuple[int, ...] | None = None) -> Handle:
        """Header after data, state byte last: a handle is only made for a complete block."""
        self._serial += 1
        gen = self._arena.generation(self.slot)
        _BLOCK_HDR.pack_into(self._mm, self._base + off, self._serial, gen, nbytes)
        self._mm[self._base + off + _STATE] = _LIVE
        return Handle(self.slot, off, nbytes, gen, self._serial, descr, shape)

    def reclaim(self) -> int:
        """Free the space of blocks their consumers marked done; how many were freed."""
        done = [off for off in self._alloc.used() if self._mm[self._base + off + _STATE] == _DONE]
        for off in done:
            self._mm[self._base + off + _STATE] = _FREE
            self._alloc.free(off)
        return len(done)

    def _full(self, nbytes: int) -> ResourceExhausted:
        used = self._alloc.used()
        return ResourceExhausted(
            f"arena slot {self.slot} has no free block for {(nbytes + _HDR) / _MIB:.2f} MiB: "
            f"{self._alloc.free_bytes() / _MIB:.2f} MiB free of {self._alloc.capacity / _MIB:.2f} MiB, "
            f"{len(used)} blocks not yet released by their consumers",
            hint="consumers must release handles (Arena.release); or make the arena larger, "
                 "use fewer slots, or send this payload through the pipe",
            requested=nbytes + _HDR, free=self._alloc.free_bytes(), blocks=len(used))
