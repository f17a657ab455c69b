"""shm.context: publish/read round trips, read-only zero-copy views, versions that do not
disturb old readers, races between catalog and attach, crash mid-publish, full /dev/shm.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time

import multiprocess
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import shm.context as context_mod
from shm._sweeper import sweep
from shm.context import ContextReader, ContextStore
from shm.errors import ContextNotFound, InvalidArgument, ResourceExhausted
from shm.segment import SHM_DIR, Manifest, RunId
from tests.support.helpers import fork_running, reap

WAIT = 10.0


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def store(state_dir):
    s = ContextStore(RunId.new(), state_dir)
    yield s
    s.close()


def shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


def fake_statvfs(free_bytes: int):
    def statvfs(_path):
        return os.statvfs_result((4096, 4096, 1 << 20, free_bytes // 4096, free_bytes // 4096,
                                  1000, 1000, 1000, 0, 255))
    return statvfs


# -- round trips and views ------------------------------------------------------------------
def test_array_round_trip_is_a_read_only_view_without_copy(store, state_dir):
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    info = store.put_array("emb", arr)
    assert (info.version, info.kind, info.shape, info.nbytes) == (1, "array", (2, 3, 4), arr.nbytes)
    reader = ContextReader(state_dir)
    view = reader.array("emb")
    np.testing.assert_array_equal(view, arr)
    assert view.dtype == np.float32 and not view.flags.writeable and not view.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0, 0] = 1
    with pytest.raises(ValueError):
        view.flags.writeable = True
    assert reader.array("emb") is view  # same version: the same mapping, no new copy
    reader.close()


def test_bytes_round_trip_is_a_read_only_memoryview(store, state_dir):
    store.put_bytes("vocab", b"\x00abc" * 1000)
    reader = ContextReader(state_dir)
    view = reader.bytes("vocab")
    assert isinstance(view, memoryview) and view.readonly and bytes(view) == b"\x00abc" * 1000
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(InvalidArgument):
        reader.array("vocab")
    assert reader.names() == ["vocab"] and reader.version("vocab") == 1


@settings(max_examples=25, deadline=None)
@given(arr=hnp.arrays(dtype=st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.complex_number_dtypes(),
                                      st.just(np.dtype([("id", "<i4"), ("score", "<f8")]))),
                      shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_any_plain_array_round_trips(arr, tmp_path_factory):
    state = tmp_path_factory.mktemp("ctx")
    with ContextStore(RunId.new(), state) as s:
        s.put_array("a", arr)
        got = ContextReader(state).array("a")
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == np.ascontiguousarray(arr).tobytes()


def test_non_contiguous_input_is_stored_c_contiguous(store, state_dir):
    arr = np.asfortranarray(np.arange(12).reshape(3, 4))[:, ::2]
    store.put_array("f", arr)
    got = ContextReader(state_dir).array("f")
    np.testing.assert_array_equal(got, arr)
    assert got.flags.c_contiguous


def test_object_arrays_and_bad_names_are_refused(store):
    with pytest.raises(InvalidArgument, match="Python objects"):
        store.put_array("o", np.array([object()]))
    for bad in ["", "x" * 201, "a\nb", 3]:
        with pytest.raises(InvalidArgument):
            store.put_bytes(bad, b"x")
    with pytest.raises(InvalidArgument):
        store.put_array("l", [1, 2])
    assert store.list() == []


def test_put_file_npy_and_raw(store, state_dir, tmp_path):
    arr = np.random.default_rng(7).standard_normal((50, 8))
    np.save(tmp_path / "emb.npy", arr)
    (tmp_path / "vocab.txt").write_bytes(b"alpha\nbeta\n" * 5000)
    store.put_file("emb", tmp_path / "emb.npy")
    store.put_file("vocab", tmp_path / "vocab.txt")
    reader = ContextReader(state_dir)
    np.testing.assert_array_equal(reader.array("emb"), arr)
    assert bytes(reader.bytes("vocab")) == b"alpha\nbeta\n" * 5000
    assert [i.name for i in store.list()] == ["emb", "vocab"]


def test_missing_context_is_not_found(store, state_dir):
    reader = ContextReader(state_dir)
    with pytest.raises(ContextNotFound) as e:
        reader.array("nope")
    assert e.value.code == "NOT_FOUND" and "ContextReader.names()" in e.value.hint
    with pytest.raises(ContextNotFound):
        store.remove("nope")
    assert ContextReader(state_dir / "elsewhere").names() == []


# -- versions ------------------------------------------------------------------------------
def test_new_version_does_not_disturb_a_reader_holding_the_old_view(store, state_dir):
    store.put_array("w", np.full(100_000, 1.0))
    reader = ContextReader(state_dir)
    old = reader.array("w")
    old_segment = reader.info("w").segment
    store.put_array("w", np.full(100_000, 2.0))
    assert not shm_exists(old_segment)          # unlinked: no new reader can reach v1 ...
    assert old.sum() == 100_000.0               # ... but the holder still reads v1 intact
    new = reader.array("w")
    assert new.sum() == 200_000.0 and reader.version("w") == 2
    assert old.sum() == 100_000.0
    del old, new
    reader.close()


def test_remove_unpublishes_and_unlinks(store, state_dir):
    info = store.put_bytes("b", b"x" * 10)
    reader = ContextReader(state_dir)
    held = reader.bytes("b")
    store.remove("b")
    assert not shm_exists(info.segment) and store.list() == []
    with pytest.raises(ContextNotFound):
        reader.bytes("b")
    assert bytes(held) == b"x" * 10


def test_close_removes_every_segment_catalog_and_manifest(state_dir):
    store = ContextStore(RunId.new(), state_dir)
    names = [store.put_bytes(f"b{i}", b"x").segment for i in range(3)]
    store.close()
    assert not any(shm_exists(n) for n in names) and os.listdir(state_dir) == []


# -- races between the catalog read and the attach --------------------------------------------
def test_replaced_between_catalog_read_and_attach_retries_once(store, state_dir, monkeypatch):
    store.put_array("r", np.zeros(10))
    real_attach = context_mod.Segment.attach
    calls = []

    def attach_after_a_republish(name, readonly=True):
        calls.append(name)
        if len(calls) == 1:
            store.put_array("r", np.ones(10))   # the owner wins the race: v1 is unlinked now
        return real_attach(name, readonly=readonly)
    monkeypatch.setattr(context_mod.Segment, "attach", attach_after_a_republish)
    reader = ContextReader(state_dir)
    assert reader.array("r").sum() == 10.0 and reader.version("r") == 2 and len(calls) == 2


def test_removed_between_catalog_read_and_attach_is_not_found(store, state_dir, monkeypatch):
    store.put_bytes("gone", b"x")
    real_attach = context_mod.Segment.attach

    def attach_after_removal(name, readonly=True):
        if store.list():
            store.remove("gone")
        return real_attach(name, readonly=readonly)
    monkeypatch.setattr(context_mod.Segment, "attach", attach_after_removal)
    with pytest.raises(ContextNotFound, match="replaced or removed"):
        ContextReader(state_dir).bytes("gone")


# -- other processes ---------------------------------------------------------------------------
def _read_in_child(state_dir: str, q) -> None:
    reader = ContextReader(state_dir)
    q.put((float(reader.array("emb").sum()), reader.version("emb")))
    reader.close()


def test_forked_readers_map_it_and_leave_it_in_place(store, state_dir):
    info = store.put_array("emb", np.arange(1000, dtype=np.float64))
    ctx = multiprocess.get_context("fork")
    q = ctx.SimpleQueue()
    procs = [ctx.Process(target=_read_in_child, args=(str(state_dir), q)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    assert [q.get() for _ in procs] == [(499500.0, 1)] * 2
    q.close()
    assert shm_exists(info.segment)


def _read_all(fd: int) -> bytes:
    data, deadline = b"", time.monotonic() + WAIT
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"child silent for {WAIT}s (got {data!r})"
        chunk = os.read(fd, 4096)
        if not chunk:
            os.close(fd)
            return data
        data += chunk


def _publish_then_die_before_the_catalog(state_dir: str):
    def body(w: int) -> None:
        run = RunId.new()
        store = ContextStore(run, state_dir)
        store.put_array("ctx", np.full(1000, 1.0))
        os.write(w, (json.dumps({"run": str(run)}) + "\n").encode())

        def die() -> None:  # the crash lands after the segment is written, before the commit
            os.kill(os.getpid(), signal.SIGKILL)
        store._save_catalog = die
        store.put_array("ctx", np.full(1000, 2.0))
    return body


def _crashed_publisher(state_dir):
    pid, r = fork_running(_publish_then_die_before_the_catalog(str(state_dir)))
    run = RunId.parse(json.loads(_read_all(r))["run"])
    status = reap(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    listed = Manifest.read(os.path.join(state_dir, f"shm.{run}.ctx.json"))["segments"]
    return run, listed


def test_crash_mid_publish_leaves_no_half_visible_context_and_sweep_removes_the_orphan(state_dir):
    run, listed = _crashed_publisher(state_dir)
    reader = ContextReader(state_dir)
    assert reader.version("ctx") == 1 and reader.array("ctx").sum() == 1000.0
    current = reader.info("ctx").segment
    orphans = [n for n in listed if n != current]
    assert len(orphans) == 1 and shm_exists(orphans[0])  # written, but no catalog names it
    reader.close()
    assert sweep(state_dir) == sorted(listed)
    assert not any(shm_exists(n) for n in listed)
    with ContextStore(RunId.new(), state_dir) as next_owner:  # the next daemon run takes over
        assert next_owner.list() == [] and ContextReader(state_dir).names() == []


def test_crash_mid_publish_successor_store_adopts_the_catalog_and_drops_the_orphan(state_dir):
    run, listed = _crashed_publisher(state_dir)
    successor = ContextStore(run, state_dir)  # the owner restarted within the same run
    try:
        (info,) = successor.list()
        assert info.version == 1 and not any(shm_exists(n) for n in listed if n != info.segment)
        assert ContextReader(state_dir).array("ctx").sum() == 1000.0
        assert successor.put_array("ctx", np.full(1000, 3.0)).version == 2
        assert not shm_exists(info.segment)
    finally:
        successor.close()


# -- space ----------------------------------------------------------------------------------
def test_context_larger_than_free_space_is_resource_exhausted(state_dir):
    store = ContextStore(RunId.new(), state_dir, statvfs=fake_statvfs(1 << 20))
    try:
        store.put_bytes("small", b"x" * 1000)
        with pytest.raises(ResourceExhausted) as e:
            store.put_array("big", np.zeros(1 << 18))   # 2 MiB
        assert e.value.code == "RESOURCE_EXHAUSTED" and "MiB free" in e.value.message
        assert [i.name for i in store.list()] == ["small"]
        assert ContextReader(state_dir).names() == ["small"]
    finally:
        store.close()


def test_file_larger_than_real_free_space_fails_cleanly(store, state_dir, tmp_path):
    st_ = os.statvfs(SHM_DIR)
    size = st_.f_bavail * st_.f_frsize + (1 << 30)
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as f:
        f.truncate(size)  # sparse: costs no disk, and is refused before a byte is read
    with pytest.raises(ResourceExhausted) as e:
        store.put_file("huge", sparse)
    assert e.value.details["requested"] > size - 1
    assert store.list() == [] and ContextReader(state_dir).names() == []
