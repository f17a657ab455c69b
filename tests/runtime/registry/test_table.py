"""The shared-memory registry table: probing, tombstones, the capability directory,
recovery after a writer crash, and a one-writer / many-readers stress run that checks no
torn or stale read is ever returned.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
import time

import multiprocess
import numpy as np
import orjson
import pytest

from runtime.errors import InvalidInput, ResourceExhausted, Unavailable
from runtime.registry.model import Entry, encode_entry
from runtime.registry.partitioning import key_hash, slot_of_hash
from runtime.registry.table import (
    HEADERS_OFF,
    TableReader,
    TableWriter,
    TornRead,
    make_table,
    make_tables,
)

FORK = multiprocess.get_context("fork")
BOUND = 20.0


def put(w: TableWriter, key: str, caps=("x",), version=1, **meta) -> Entry:
    e = Entry(key, list(caps), meta, version, 1)
    w.put(e, encode_entry(e))
    return e


def states(mm) -> np.ndarray:
    return TableReader(mm)._headers["state"].copy()


def colliding_keys(n: int, bits: int) -> list[str]:
    """``n`` keys whose probe sequences start at the same slot."""
    by_slot: dict[int, list[str]] = {}
    i = 0
    while True:
        k = f"c{i}"
        group = by_slot.setdefault(slot_of_hash(key_hash(k), bits), [])
        group.append(k)
        if len(group) == n:
            return group
        i += 1


def test_put_lookup_update_delete():
    mm = make_table(100)
    w, r = TableWriter(mm), TableReader(mm)
    e = put(w, "a", load=0.5)
    assert r.lookup("a") == e and r.lookup("b") is None
    e2 = put(w, "a", caps=("y",), version=2, load=0.7)
    assert r.lookup("a") == e2 and len(w) == 1
    assert w.delete("a") and not w.delete("a")
    assert r.lookup("a") is None


def test_colliding_keys_probe_past_tombstones_and_tombstones_are_reclaimed():
    mm = make_table(16)  # 64 slots
    w, r = TableWriter(mm), TableReader(mm)
    a, b, c, d = colliding_keys(4, 6)
    for k in (a, b, c):
        put(w, k)
    w.delete(a)  # a tombstone in front of b and c
    assert r.lookup(b).key == b and r.lookup(c).key == c and r.lookup(d) is None
    put(w, d)  # reuses the tombstone
    assert r.lookup(d).key == d
    for k in (b, c, d):
        w.delete(k)
    assert (states(mm) == 0).all()  # every tombstone became an empty slot again


def test_capacity_is_enforced_and_freed_slots_are_reused():
    mm = make_table(10)
    w = TableWriter(mm)
    for i in range(10):
        put(w, f"k{i}")
    with pytest.raises(ResourceExhausted, match="full \\(10 live entries\\)"):
        put(w, "one-too-many")
    put(w, "k3", version=2)  # replacing an existing key needs no new slot
    w.delete("k0")
    put(w, "one-too-many")


def test_scan_by_capability_including_directory_overflow():
    mm = make_table(200)
    w, r = TableWriter(mm), TableReader(mm)
    for i in range(70):  # 63 names get their own bit; the rest share the overflow bit
        put(w, f"solo{i}", caps=(f"cap{i}",))
    for i in range(10):
        put(w, f"both{i}", caps=("cap5", "cap66"))
    both = [f"both{i}" for i in range(10)]
    assert sorted(e.key for e in r.scan("cap5")) == sorted(["solo5", *both])
    assert sorted(e.key for e in r.scan("cap66")) == sorted(["solo66", *both])
    assert [e.key for e in r.scan("cap69")] == ["solo69"]
    assert r.scan("nobody") == []
    assert len(r.scan()) == 80
    put(w, "late", caps=("cap1",))  # a reader's cached directory stays valid
    assert sorted(e.key for e in r.scan("cap1")) == ["late", "solo1"]


def test_recover_keeps_committed_entries_and_drops_torn_slots():
    mm = make_table(50)
    w = TableWriter(mm)
    kept = [put(w, f"k{i}", version=i + 1, i=i) for i in range(20)]
    torn_slot, intact_slot = w._slot_of["k3"], w._slot_of["k4"]
    _mark_mid_write(mm, torn_slot)
    _mark_mid_write(mm, intact_slot)
    off = w._pay + torn_slot * 1024
    mm[off: off + 4] = b"\x00\x01{["  # the crash tore this payload
    found, dropped = TableWriter(mm).recover()
    assert dropped == 1
    assert sorted(found, key=lambda e: e.key) == sorted(
        [e for e in kept if e.key != "k3"], key=lambda e: e.key)
    r = TableReader(mm)
    assert r.lookup("k3") is None and r.lookup("k4") == kept[4]  # seqs are even again


def _mark_mid_write(mm, slot: int) -> None:
    off = HEADERS_OFF + slot * 32
    seq = struct.unpack_from("<Q", mm, off)[0]
    struct.pack_into("<Q", mm, off, seq | 1)


def test_a_slot_stuck_mid_write_gives_a_retryable_torn_read():
    mm = make_table(10)
    w, r = TableWriter(mm), TableReader(mm)
    put(w, "k")
    _mark_mid_write(mm, w._slot_of["k"])
    with pytest.raises(TornRead, match="mid-write") as info:
        r.lookup("k")
    assert isinstance(info.value, Unavailable)


def test_bad_arguments():
    with pytest.raises(InvalidInput, match="n_partitions to be a positive integer, got: 0"):
        make_tables(0, 10)
    with pytest.raises(InvalidInput, match="capacity to be a positive integer"):
        make_table(0)
    with pytest.raises(InvalidInput, match="not a registry table"):
        TableReader(mmap.mmap(-1, 1 << 16))


# ---------------------------------------------------------------------------- stress

KEYS = [f"key.{i}" for i in range(40)]


def payload(key: str, version: int) -> tuple[list[str], dict]:
    """Content derived from (key, version) so any mix of two writes is detectable."""
    n = (key_hash(key) + version * 7) % 500
    return [f"c{version % 3}"], {"v": version, "k": key, "pad": f"{key}:{version}:" + "z" * n}


def consistent(e: Entry) -> bool:
    caps, meta = payload(e.key, e.version)
    return e.capabilities == caps and e.metadata == meta and e.owner == 1


def writer(mm, committed, seed: int, steps: int, seconds: float = 4.0) -> None:
    """``steps`` writes, or fewer if ``seconds`` run out first (a loaded machine must
    not push the readers past the test's bound: they read until the writer is done)."""
    rng = random.Random(seed)
    w = TableWriter(mm)
    version = 0
    stop_at = time.monotonic() + seconds
    for _ in range(steps):
        if time.monotonic() > stop_at:
            break
        i = rng.randrange(len(KEYS))
        version += 1
        committed[-3] = i  # in flight: the table may show this write before committed[i]
        if rng.random() < 0.15:
            w.delete(KEYS[i])
            committed[i] = -version  # deleted as of this version
        else:
            caps, meta = payload(KEYS[i], version)
            e = Entry(KEYS[i], caps, meta, version, 1)
            w.put(e, encode_entry(e))
            committed[i] = version
        committed[-2] = version  # the last version committed, any key
        committed[-3] = -1
    committed[-1] = 1  # done


def reader(mm, committed, seed: int, out_fd: int) -> None:
    rng = random.Random(seed)
    r = TableReader(mm)
    reads, errors, contended = 0, [], 0
    while committed[-1] == 0 or reads < 1000:
        i = rng.randrange(len(KEYS))
        c0 = int(committed[i])
        try:
            e = r.lookup(KEYS[i])
        except TornRead:  # the writer was preempted mid-write for longer than the reader
            contended += 1  # spins: retryable (the client then asks the partition)
            continue
        in_flight = int(committed[-3]) == i  # read before c1: see check_read
        c1, last = int(committed[i]), int(committed[-2])
        reads += 1
        errors += check_read(KEYS[i], e, c0, c1, last, in_flight)
        if reads % 97 == 0:
            try:
                scanned = r.scan(f"c{rng.randrange(3)}")
            except TornRead:  # as for lookups: retryable
                contended += 1
                continue
            errors += [f"torn scan {x}" for x in scanned if not consistent(x)]
    os.write(out_fd, orjson.dumps({"reads": reads, "errors": errors[:5], "contended": contended}))
    os._exit(0)


def check_read(key: str, e: Entry | None, c0: int, c1: int, last: int, in_flight: bool
               ) -> list[str]:
    """c0/c1: the key's committed version before/after the read (negative: deleted then);
    last: the last version committed, any key, after the read; in_flight: a write of this
    key was published to the table but not yet to ``committed`` (read before c1, so a
    write it missed has already updated c1)."""
    if e is None:
        ok = c0 <= 0 or c1 != c0 or in_flight
        return [] if ok else [f"{key} missing though live at v{c0}"]
    if not consistent(e):
        return [f"torn read of {key}: {e}"]
    if e.version < abs(c0):
        return [f"stale read of {key}: v{e.version}, v{abs(c0)} was committed before the read"]
    if e.version > last + 1:  # at most the one write in flight
        return [f"read of {key} from the future: v{e.version} > v{last} + 1"]
    return []


def test_one_writer_many_readers_never_see_torn_or_stale_entries():
    seed = int(os.environ.get("AGORA_TEST_SEED", random.randrange(1 << 30)))
    mm = make_table(len(KEYS))  # 128 slots: long probe chains, tombstone churn
    shared = mmap.mmap(-1, 8 * (len(KEYS) + 3))  # per-key versions, in flight, last, done
    committed = np.frombuffer(shared, dtype=np.int64)
    pipes = [os.pipe() for _ in range(3)]
    readers = [FORK.Process(target=reader, args=(mm, committed, seed + 1 + n, w), daemon=True)
               for n, (_, w) in enumerate(pipes)]
    for p in readers:
        p.start()
    wproc = FORK.Process(target=writer, args=(mm, committed, seed, 40_000), daemon=True)
    wproc.start()
    reports = []
    try:
        for (r, w), p in zip(pipes, readers):
            os.close(w)
            p.join(BOUND)
            reports.append(orjson.loads(os.read(r, 65536) or b"{}"))
        wproc.join(BOUND)
    finally:
        for p in [wproc, *readers]:
            if p.exitcode is None:
                p.kill()
                p.join(BOUND)
        for r, _ in pipes:
            os.close(r)
        del committed
    assert wproc.exitcode == 0 and all(p.exitcode == 0 for p in readers), \
        f"seed={seed} writer={wproc.exitcode} readers={[p.exitcode for p in readers]} {reports}"
    assert all(rep.get("reads", 0) >= 1000 for rep in reports), f"seed={seed} {reports}"
    assert [rep["errors"] for rep in reports] == [[], [], []], f"seed={seed}"
