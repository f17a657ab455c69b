"""The shared-memory registry table: one per partition, written only by that partition,
read by every process of the tree without a round trip.

Layout of one table (an anonymous MAP_SHARED mmap made by the root before it forks, so
every child inherits it and a restarted partition finds its predecessor's table)::

    0        table header: magic, layout, nslots, capacity, capability count, writer pid
    64       capability directory: 63 entries x 64 bytes (u8 length + UTF-8 name)
    8192     slot headers: nslots x 32 bytes  (seq u64, capmask u64, khash u32,
                                               length u16, state u16, pad)
    P        slot payloads: nslots x 1024 bytes (the entry as compact JSON)

Decisions and their costs:

* **Seqlock per slot.**  The single writer makes ``seq`` odd, writes the payload, then
  the rest of the header, then makes ``seq`` even.  A reader reads ``seq``, copies the
  header and payload, re-reads ``seq`` and retries if it was odd or changed: it never
  returns a torn entry and never one older than the last write committed before the read
  began.  Retries are bounded (64 spins, then yields, ~2000 attempts in all); past that
  :class:`TornRead` is raised and the client falls back to a round trip.  Memory order:
  this relies on x86-64 TSO (stores become visible in program order, loads are not
  reordered with other loads) and on CPython doing each ``pack_into``/slice copy as a
  separate opaque C call; on a weakly ordered CPU (ARM) fences would be needed.
* **Open addressing with linear probing** in the slot array itself: a lookup hashes the
  key (CRC-32, see ``_partitioning``) and reads O(1) slots; the 32-bit hash in the slot
  header filters candidates before any JSON is decoded.  ``nslots`` is the power of two
  >= 2 x capacity (load <= 0.5).  Deletes leave tombstones (moving entries would let a
  concurrent reader miss one); a tombstone followed by an empty slot is turned back into
  an empty slot, walking backwards, which changes no lookup's result.  Inserts reuse
  tombstones.  Beyond ``capacity`` live entries a register gets ``ResourceExhausted``.
* **Select from shared memory** scans the slot *headers* (32 bytes each, contiguous, as a
  numpy structured view: ~20 us for 32 K slots) for live slots whose capability bitmask
  has the capability's bit, then seqlock-reads and decodes only those candidates.  Each
  table interns up to 63 capability names in its directory (append-only, so a reader's
  cached name -> bit stays valid); later names share overflow bit 63, whose candidates
  are decoded and checked.  Cost: O(nslots) vectorised + O(matches) decode.
* **Slot size** 1024 bytes = ``registry.MAX_ENTRY_BYTES``; larger entries are refused
  before they reach a table.  Headers and payloads are separate arrays so a header scan
  touches nslots x 32 bytes, not the payload pages.
* **Crash of the writer mid-write** leaves one slot with an odd seq.  ``recover`` (run by
  the restarted partition) keeps that slot if its payload still decodes to an entry whose
  hash matches, else drops it (the write was never acknowledged; the previous value of
  that one key is lost: a window of a few microseconds per write, documented residual).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any

import numpy as np

from runtime.errors import InvalidInput, ResourceExhausted, Unavailable
from runtime.registry.model import MAX_ENTRY_BYTES, Entry, decode_entry
from runtime.registry.partitioning import _FIB32, key_hash, slot_of_hash

__all__ = ["make_table", "make_tables", "table_bytes", "TableWriter", "TableReader", "TornRead",
           "SLOT_BYTES"]

MAGIC = 0x3147524152_4F4741  # b"AGORARG1" little-endian
LAYOUT = 1
SLOT_BYTES = MAX_ENTRY_BYTES
HDR_BYTES = 32
DIR_OFF, DIR_ENTRY, DIR_MAX = 64, 64, 63
OVERFLOW_BIT = 63
HEADERS_OFF = 8192
EMPTY, LIVE, TOMBSTONE = 0, 1, 2
_SPINS, _ATTEMPTS = 64, 2000

_TABLE = struct.Struct("<QIIIIQ")  # magic, layout, nslots, capacity, ncaps, writer pid
_SLOT = struct.Struct("<QQIHH")    # seq, capmask, khash, length, state
_SEQ = struct.Struct("<Q")
_REST = struct.Struct("<QIHH")      # capmask, khash, length, state (after seq)
_NCAPS = struct.Struct("<I")
_NCAPS_OFF = 20
_HDR_DTYPE = np.dtype([("seq", "<u8"), ("capmask", "<u8"), ("khash", "<u4"),
                       ("length", "<u2"), ("state", "<u2"), ("pad", "<u8")])


class TornRead(Unavailable):
    """A slot stayed mid-write through every retry (its writer is slow or died mid-write)."""

    default_hint = "retryable; the client falls back to asking the partition"


def _geometry(capacity: int) -> tuple[int, int]:
    """(nslots, payload offset) for a table holding ``capacity`` live entries."""
    nslots = 64
    while nslots < 2 * capacity:
        nslots *= 2
    return nslots, HEADERS_OFF + -(-nslots * HDR_BYTES // 4096) * 4096


def table_bytes(capacity: int) -> int:
    nslots, pay = _geometry(capacity)
    return pay + nslots * SLOT_BYTES


def make_table(capacity: int) -> mmap.mmap:
    """An anonymous shared table for up to ``capacity`` live entries (call before fork)."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise InvalidInput(f"expected capacity to be a positive integer, got: {capacity!r}")
    nslots, _ = _geometry(capacity)
    mm = mmap.mmap(-1, table_bytes(capacity))  # MAP_SHARED | MAP_ANONYMOUS: zero-filled
    _TABLE.pack_into(mm, 0, MAGIC, LAYOUT, nslots, capacity, 0, 0)
    return mm


def make_tables(n_partitions: int, capacity: int) -> list[mmap.mmap]:
    """One table per partition, each for ``capacity`` live entries.  The root calls this
    BEFORE forking anything: children inherit the mappings, and a restarted partition
    rebuilds from its predecessor's table."""
    if isinstance(n_partitions, bool) or not isinstance(n_partitions, int) or n_partitions < 1:
        raise InvalidInput(f"expected n_partitions to be a positive integer, got: {n_partitions!r}")
    return [make_table(capacity) for _ in range(n_partitions)]


class _Table:
    """What readers and the writer share: geometry and the header view."""

    def __init__(self, mm: Any) -> None:
        magic, layout, nslots, capacity, _, _ = _TABLE.unpack_from(mm, 0)
        if magic != MAGIC or layout != LAYOUT:
            raise InvalidInput(f"not a registry table (magic {magic:#x}, layout {layout})",
                               hint="pass a table made by make_tables()")
        self._mm = mm
        self.nslots, self.capacity = nslots, capacity
        self._bits = nslots.bit_length() - 1
        self._shift = 32 - self._bits
        self._pay = _geometry(capacity)[1]
        self._headers: Any = np.ndarray((nslots,), _HDR_DTYPE, buffer=mm, offset=HEADERS_OFF)

    def close(self) -> None:
        """Drop the numpy view (an exported buffer keeps ``mmap.close()`` from working)."""
        self._headers = None

    def _directory(self) -> list[str]:
        n = _NCAPS.unpack_from(self._mm, _NCAPS_OFF)[0]
        out = []
        for i in range(n):
            off = DIR_OFF + i * DIR_ENTRY
            out.append(bytes(self._mm[off + 1: off + 1 + self._mm[off]]).decode())
        return out

    def _read_slot(self, i: int) -> tuple[int, int, int, bytes]:
        """A consistent (state, capmask, khash, payload) of slot ``i`` (seqlock read)."""
        mm, ho = self._mm, HEADERS_OFF + (i << 5)
        for attempt in range(_ATTEMPTS):
            seq, cm, kh, ln, st = _SLOT.unpack_from(mm, ho)
            if not seq & 1:
                data = mm[self._pay + i * SLOT_BYTES: self._pay + i * SLOT_BYTES + ln] \
                    if st == LIVE else b""
                if _SEQ.unpack_from(mm, ho)[0] == seq:
                    return st, cm, kh, data
            if attempt >= _SPINS:
                os.sched_yield()
        raise TornRead(f"registry table slot {i} stayed mid-write through {_ATTEMPTS} reads")


class TableReader(_Table):
    """Lock-free reads of one partition's table from any process."""

    def __init__(self, mm: Any) -> None:
        super().__init__(mm)
        self._bit_of: dict[str, int] = {}

    def lookup(self, key: str, h: int | None = None) -> Entry | None:
        """The committed entry of ``key``, or None.  Raises TornRead (retryable)."""
        if h is None:
            h = key_hash(key)
        mm, pay, mask = self._mm, self._pay, self.nslots - 1
        i = ((h * _FIB32) & 0xFFFFFFFF) >> self._shift  # slot_of_hash, inlined: hot path
        for _ in range(self.nslots):
            ho = HEADERS_OFF + (i << 5)
            seq, _cm, kh, ln, st = _SLOT.unpack_from(mm, ho)
            data = mm[pay + i * SLOT_BYTES: pay + i * SLOT_BYTES + ln] if kh == h else None
            if seq & 1 or _SEQ.unpack_from(mm, ho)[0] != seq:
                st, _cm, kh, data = self._read_slot(i)  # contended: the careful path
            if st == EMPTY:
                return None
            if st == LIVE and kh == h and data:
                e = decode_entry(data)
                if e.key == key:
                    return e
            i = (i + 1) & mask
        return None

    def scan(self, capability: str | None = None) -> list[Entry]:
        """Every live entry (offering ``capability`` when given), each read consistently."""
        hdr = self._headers
        candidates = hdr["state"] == LIVE
        if capability is not None:
            bit = np.uint64(1 << self._bit(capability))
            candidates &= (hdr["capmask"] & bit) != 0
        out = []
        for i in np.flatnonzero(candidates).tolist():
            st, _cm, _kh, data = self._read_slot(i)
            if st == LIVE and data:
                e = decode_entry(data)
                if capability is None or capability in e.capabilities:
                    out.append(e)
        return out

    def _bit(self, capability: str) -> int:
        bit = self._bit_of.get(capability)
        if bit is None:  # the directory is append-only: refresh and look again
            self._bit_of = {name: b for b, name in enumerate(self._directory())}
            bit = self._bit_of.get(capability, OVERFLOW_BIT)
        return bit


class TableWriter(_Table):
    """The owning partition's side: the only process that writes this table."""

    def __init__(self, mm: Any) -> None:
        super().__init__(mm)
        self._slot_of: dict[str, int] = {}
        self._bit_of = {name: b for b, name in enumerate(self._directory())}
        struct.pack_into("<Q", mm, 24, os.getpid())

    def __len__(self) -> int:
        return len(self._slot_of)

    def recover(self) -> tuple[list[Entry], int]:
        """Entries a previous writer committed, and how many torn slots were dropped."""
        hdr = self._headers
        suspects = np.flatnonzero((hdr["state"] != EMPTY) | ((hdr["seq"] & np.uint64(1)) != 0))
        found, dropped = [], 0
        for i in suspects.tolist():
            entry = self._recover_slot(i)
            if entry is not None:
                self._slot_of[entry.key] = i
                found.append(entry)
            elif self._state(i) == LIVE:  # torn beyond repair: the write was never acked
                self._write(i, TOMBSTONE, 0, 0, b"")
                dropped += 1
        return found, dropped

    def put(self, entry: Entry, data: bytes) -> None:
        """Publish a committed entry (``data`` is its encoding, <= SLOT_BYTES)."""
        slot = self._slot_of.get(entry.key)
        if slot is None:
            if len(self._slot_of) >= self.capacity:
                raise ResourceExhausted(
                    f"registry table is full ({self.capacity} live entries)",
                    hint="raise the registry capacity (make_tables) or the partition count")
            slot = self._free_slot(key_hash(entry.key))
            self._slot_of[entry.key] = slot
        mask = 0
        for c in entry.capabilities:
            mask |= 1 << self._bit(c)
        self._write(slot, LIVE, mask, key_hash(entry.key), data)

    def delete(self, key: str) -> bool:
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return False
        self._write(slot, TOMBSTONE, 0, 0, b"")
        self._reclaim(slot)
        return True

    def clear(self) -> None:
        for i in np.flatnonzero(self._headers["state"] != EMPTY).tolist():
            self._write(i, EMPTY, 0, 0, b"")
        self._slot_of.clear()

    def _write(self, i: int, state: int, mask: int, h: int, data: bytes) -> None:
        mm, ho = self._mm, HEADERS_OFF + (i << 5)
        seq = _SEQ.unpack_from(mm, ho)[0] | 1  # odd: readers keep off (also heals a torn slot)
        _SEQ.pack_into(mm, ho, seq)
        if data:
            off = self._pay + i * SLOT_BYTES
            mm[off: off + len(data)] = data
        _REST.pack_into(mm, ho + 8, mask, h, len(data), state)
        _SEQ.pack_into(mm, ho, seq + 1)

    def _state(self, i: int) -> int:
        return int(_SLOT.unpack_from(self._mm, HEADERS_OFF + (i << 5))[4])

    def _free_slot(self, h: int) -> int:
        i, mask = slot_of_hash(h, self._bits), self.nslots - 1
        while self._state(i) == LIVE:  # capacity <= nslots / 2: a free slot exists
            i = (i + 1) & mask
        return i

    def _reclaim(self, i: int) -> None:
        """Turn trailing tombstones back into empty slots (see the module docstring)."""
        mask = self.nslots - 1
        if self._state((i + 1) & mask) != EMPTY:
            return
        while self._state(i) == TOMBSTONE:
            self._write(i, EMPTY, 0, 0, b"")
            i = (i - 1) & mask

    def _recover_slot(self, i: int) -> Entry | None:
        seq, _cm, kh, ln, st = _SLOT.unpack_from(self._mm, HEADERS_OFF + (i << 5))
        if seq & 1:
            _SEQ.pack_into(self._mm, HEADERS_OFF + (i << 5), seq + 1)  # the old writer is gone
        if st != LIVE:
            return None
        off = self._pay + i * SLOT_BYTES
        try:
            e = decode_entry(self._mm[off: off + ln])
        except (ValueError, TypeError):
            return None
        ok = isinstance(e.key, str) and key_hash(e.key) == kh and e.key not in self._slot_of
        return e if ok else None

    def _bit(self, capability: str) -> int:
        bit = self._bit_of.get(capability)
        if bit is None:
            bit = len(self._bit_of) if len(self._bit_of) < DIR_MAX else OVERFLOW_BIT
            if bit != OVERFLOW_BIT:
                self._append_capability(bit, capability)
                self._bit_of[capability] = bit
        return bit

    def _append_capability(self, bit: int, name: str) -> None:
        raw = name.encode()
        off = DIR_OFF + bit * DIR_ENTRY
        self._mm[off] = len(raw)
        self._mm[off + 1: off + 1 + len(raw)] = raw
        _NCAPS.pack_into(self._mm, _NCAPS_OFF, bit + 1)  # name first, count second (TSO)
