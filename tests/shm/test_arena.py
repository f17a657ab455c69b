"""shm.arena: the pure allocator, round trips across fork, block reuse after release, stale
handles after release or a slot reset, a full arena, bad handles.
"""

from __future__ import annotations

import json
import os
import signal

import multiprocess
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm.arena import DEFAULT_THRESHOLD, Arena, BlockAllocator, Handle, use_arena
from shm.errors import InvalidArgument, ResourceExhausted, SegmentBusy, StaleHandle

WAIT = 10.0
MiB = 1 << 20


@pytest.fixture
def arena():
    a = Arena.create(16 * MiB, 4)
    yield a
    a.close()


# -- the pure allocator --------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(1, 5000)), max_size=60))
def test_allocator_never_overlaps_and_accounts_exactly(ops):
    alloc, live = BlockAllocator(64 * 1024), []
    for is_alloc, size in ops:
        if is_alloc or not live:
            off = alloc.alloc(size)
            if off is None:
                assert alloc.free_bytes() < -(-size // 64) * 64 or len(live) > 0
                continue
            assert off % 64 == 0 and off + size <= alloc.capacity
            live.append(off)
        else:
            alloc.free(live.pop(size % len(live)))
        spans = sorted(alloc.used().items())
        assert all(a + s <= b for (a, s), (b, _) in zip(spans, spans[1:]))
        assert alloc.free_bytes() == alloc.capacity - sum(s for _, s in spans)


def test_allocator_first_fit_reuses_the_freed_hole():
    alloc = BlockAllocator(1024)
    a, b, c = alloc.alloc(100), alloc.alloc(100), alloc.alloc(100)
    assert (a, b, c) == (0, 128, 256)
    alloc.free(b)
    assert alloc.alloc(64) == 128 and alloc.alloc(64) == 192
    assert alloc.alloc(1024) is None


def test_threshold():
    assert DEFAULT_THRESHOLD == 64 * 1024
    assert not use_arena(64 * 1024) and use_arena(64 * 1024 + 1) and use_arena(10, threshold=5)


# -- in one process ------------------------------------------------------------------------------
def test_bytes_and_array_round_trip_read_only(arena):
    w = arena.slot(0)
    hb = w.put(b"payload" * 1000)
    ha = w.put(np.arange(12, dtype=np.int16).reshape(3, 4))
    view = arena.get(hb)
    assert view.readonly and bytes(view) == b"payload" * 1000
    got = arena.get_array(ha)
    np.testing.assert_array_equal(got, np.arange(12, dtype=np.int16).reshape(3, 4))
    assert not got.flags.writeable
    with pytest.raises(InvalidArgument):
        arena.get_array(hb)
    with pytest.raises(SegmentBusy):
        arena.close()  # views are still alive: refusing beats a use-after-unmap crash
    del view, got
    arena.release(hb)
    arena.release(ha)


def test_handle_json_round_trip_and_garbage(arena):
    h = arena.slot(1).put(np.zeros((2, 2)))
    wire = json.loads(json.dumps(h.to_json()))
    assert Handle.from_json(wire) == h
    for bad in [{}, {"slot": "x"}, {**wire, "shape": None}]:
        with pytest.raises(InvalidArgument):
            Handle.from_json(bad)
    for out_of_range in [Handle(9, 0, 1, 0, 1), Handle(1, arena.slot_size, 1, 0, 1), Handle(1, 0, -1, 0, 1)]:
        with pytest.raises(InvalidArgument):
            arena.get(out_of_range)
    arena.release(h)


def test_block_is_reused_after_release_and_the_old_handle_is_stale(arena):
    w = arena.slot(2)
    first = w.put(b"a" * 100_000)
    arena.release(first)
    second = w.put(b"b" * 100_000)
    assert second.offset == first.offset and second.serial != first.serial
    with pytest.raises(StaleHandle) as e:
        arena.get(first)
    assert e.value.code == "NOT_FOUND" and "lost" in e.value.hint
    with pytest.raises(StaleHandle):
        arena.release(first)  # a double release is caught, not silently applied to `second`
    assert bytes(arena.get(second)[:1]) == b"b"
    arena.release(second)



def test_shared_reads_leave_the_block_to_its_writer_and_fail_once_it_is_gone(arena):
    """``read``: several readers copy one block (a consensus vote's voters); the writer
    releases it; a read after that, or after the block was reused, is StaleHandle."""
    w = arena.slot(3)
    h = w.put(b"c" * 70_000)
    assert arena.read(h) == arena.read(h) == b"c" * 70_000  # readers do not consume it
    arena.release(h)
    with pytest.raises(StaleHandle):
        arena.read(h)
    again = w.put(b"d" * 70_000)  # the same offset, a new serial: the old handle stays stale
    with pytest.raises(StaleHandle):
        arena.read(h)
    arena.release(again)

def test_full_slot_is_resource_exhausted_with_numbers_until_released(arena):
    w = arena.slot(3)
    held = []
    with pytest.raises(ResourceExhausted) as e:
        for _ in range(100):
            held.append(w.put(b"x" * (512 * 1024)))
    err = e.value
    assert err.code == "RESOURCE_EXHAUSTED" and f"{len(held)} blocks not yet released" in err.message
    assert "MiB free of" in err.message and "Arena.release" in err.hint
    assert err.details["blocks"] == len(held)
    arena.release(held.pop())
    held.append(w.put(b"y" * (512 * 1024)))  # the released block's space is taken again
    for h in held:
        arena.release(h)


def test_arena_larger_than_memory_and_bad_geometry_are_refused():
    with pytest.raises(ResourceExhausted) as e:
        Arena.create(64 * MiB, 2, available=lambda: 16 * MiB)
    assert "16.0 MiB of memory is available" in e.value.message
    for total, slots in [(MiB, 0), (0, 1), (16 * 1024, 4)]:
        with pytest.raises(InvalidArgument):
            Arena.create(total, slots)


# -- across processes ----------------------------------------------------------------------------
def _produce(arena: Arena, slot: int, conn) -> None:
    w = arena.slot(slot)
    rng = np.random.default_rng(slot)
    payload = rng.integers(0, 255, 1 * MiB, dtype=np.uint8)
    conn.send_bytes(json.dumps({"bytes": w.put(payload.tobytes()).to_json(),
                                "array": w.put(payload.reshape(1024, 1024)).to_json(),
                                "sum": int(payload.sum(dtype=np.int64))}).encode())
    conn.close()


def _consume(arena: Arena, wire: dict, conn) -> None:
    h = Handle.from_json(wire)
    conn.send_bytes(json.dumps(int(arena.get_array(h).sum(dtype=np.int64))).encode())
    arena.release(h)
    conn.close()


def _start(target, *args):
    ctx = multiprocess.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    p = ctx.Process(target=target, args=(*args, child_end))
    p.start()
    child_end.close()
    assert parent_end.poll(WAIT), "child sent nothing within the bound"
    msg = json.loads(parent_end.recv_bytes())
    parent_end.close()
    p.join(WAIT)
    assert p.exitcode == 0
    return msg


def test_child_puts_parent_gets_across_fork(arena):
    msg = _start(_produce, arena, 1)
    hb, ha = Handle.from_json(msg["bytes"]), Handle.from_json(msg["array"])
    assert hb.length == MiB and ha.shape == (1024, 1024)
    assert int(np.frombuffer(arena.get(hb), np.uint8).sum(dtype=np.int64)) == msg["sum"]
    assert int(arena.get_array(ha).sum(dtype=np.int64)) == msg["sum"]
    arena.release(hb)
    arena.release(ha)


def test_parent_puts_child_consumes_and_releases_then_parent_reuses(arena):
    w = arena.slot(0)
    h = w.put(np.arange(100_000, dtype=np.int64))
    assert _start(_consume, arena, h.to_json()) == 4999950000
    assert w.reclaim() == 1  # the child's single-byte "done" store is visible here
    assert w.put(np.zeros(100_000, dtype=np.int64)).offset == h.offset


def _produce_then_hang(arena: Arena, slot: int, conn) -> None:
    conn.send_bytes(json.dumps(arena.slot(slot).put(b"z" * 200_000).to_json()).encode())
    conn.close()
    signal.pause()  # until the test kills it


def test_dead_producer_slot_reset_makes_its_handles_stale_and_a_successor_works(arena):
    ctx = multiprocess.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_produce_then_hang, args=(arena, 2, child_end))
    p.start()
    child_end.close()
    assert parent_end.poll(WAIT)
    h = Handle.from_json(json.loads(parent_end.recv_bytes()))
    parent_end.close()
    assert bytes(arena.get(h)[:1]) == b"z"
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    assert p.exitcode == -signal.SIGKILL
    assert arena.reset_slot(2) == h.gen + 1
    with pytest.raises(StaleHandle, match="slot generation 1"):
        arena.get(h)
    msg = _start(_produce, arena, 2)  # the successor gets slot 2 in the new generation
    hb = Handle.from_json(msg["bytes"])
    assert hb.gen == 1 and hb.offset == 0
    with pytest.raises(StaleHandle):
        arena.get(h)
    arena.release(hb)
    arena.release(Handle.from_json(msg["array"]))
