"""Stable hashing of registry keys: which partition owns a key, and where in a shared
table the key's probe sequence starts.  Pure: no I/O, no state.

Decisions:

* The hash is CRC-32 of the key's UTF-8 bytes (``zlib.crc32``): stable across processes
  and Python versions, and ~0.1 us for a short key.  The builtin ``hash()`` is salted per
  process (PYTHONHASHSEED), so two processes would disagree about a key's owner.
* ``partition = crc % n``.  Every key of one partition therefore shares ``crc % n``; the
  table slot must not reuse those low bits, or a partition's keys would crowd into 1/n of
  its table.  The slot comes from Fibonacci hashing (multiply by 2^32/phi, keep the high
  bits), which mixes every bit of the CRC into the result.
"""

from __future__ import annotations

import zlib

__all__ = ["key_hash", "partition_of", "partition_of_hash", "slot_of_hash"]

_FIB32 = 0x9E3779B1  # 2**32 / golden ratio, odd


def key_hash(key: str) -> int:
    """The stable 32-bit hash of ``key`` (same value in every process, every run)."""
    return zlib.crc32(key.encode())


def partition_of_hash(h: int, n: int) -> int:
    """The partition (0..n-1) that owns a key whose :func:`key_hash` is ``h``."""
    return h % n


def partition_of(key: str, n: int) -> int:
    """The partition (0..n-1) that owns ``key`` among ``n`` partitions."""
    if n < 1:
        raise ValueError(f"expected the number of partitions to be a positive integer, got: {n}")
    return zlib.crc32(key.encode()) % n


def slot_of_hash(h: int, bits: int) -> int:
    """The first slot (0 .. 2**bits - 1) of the probe sequence of hash ``h``."""
    return ((h * _FIB32) & 0xFFFFFFFF) >> (32 - bits) if bits else 0
