"""shm.segment and shm._sweeper: names, create/attach/close/unlink, space checks, manifests,
no resource tracker in attaching processes, and sweeping dead runs (kill -9) but never live ones.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import time

import multiprocess
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shm._sweeper import run_is_dead, sweep
from shm.errors import InvalidArgument, ReadOnlyView, ResourceExhausted, SegmentBusy, SegmentNotFound
from shm.segment import SHM_DIR, Manifest, RunId, Segment, parse_segment_name, segment_name
from tests.support.helpers import fork_running, reap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAIT = 10.0  # bound on every wait; only reached on a deadlock


# -- helpers: forked children with bounded waits ----------------------------------------
def read_line(fd: int) -> str:
    data = b""
    deadline = time.monotonic() + WAIT
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"child sent no line within {WAIT}s (got {data!r})"
        chunk = os.read(fd, 4096)
        assert chunk, f"child closed the pipe early (got {data!r})"
        data += chunk
    return data.decode().strip()


def block_forever(_w: int) -> None:
    r, _ = os.pipe()
    os.read(r, 1)  # nobody writes: wait until killed


@pytest.fixture
def state_dir(tmp_path):
    """A fresh state directory (tmp_path itself also holds the suite's AGORA_HOME)."""
    path = tmp_path / "state"
    path.mkdir()
    return path


def shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


# -- names --------------------------------------------------------------------------------
def test_run_id_round_trips_and_rejects_garbage():
    run = RunId.new()
    assert run.pid == os.getpid() and RunId.parse(str(run)) == run
    for bad in ["", "12", "x-12345678", "12-XYZ", "12-1234567", "12-123456789"]:
        with pytest.raises(InvalidArgument) as e:
            RunId.parse(bad)
        assert e.value.code == "INVALID_INPUT" and e.value.hint


@settings(max_examples=50, deadline=None)
@given(pid=st.integers(1, 2**22), token=st.text("0123456789abcdef", min_size=8, max_size=8),
       purpose=st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True), n=st.integers(0, 10**9))
def test_segment_names_parse_back(pid, token, purpose, n):
    run = RunId(pid, token)
    name = segment_name(run, purpose, n)
    assert name.startswith("agora.") and "/" not in name
    assert parse_segment_name(name) == (run, purpose, n)
    assert parse_segment_name("/" + name) == (run, purpose, n)


def test_foreign_names_do_not_parse_and_bad_purposes_are_refused():
    for foreign in ["agora", "agora-registry.0", "agora.1-abcdefgh.ctx.0", "psm_1234", "agora.1-0123abcd.ctx"]:
        assert parse_segment_name(foreign) is None
    for bad in ["", "Ctx", "a.b", "a/b", "x" * 33]:
        with pytest.raises(InvalidArgument):
            segment_name(RunId.new(), bad, 0)


# -- create / attach / close / unlink -----------------------------------------------------
def test_create_attach_write_read_close_unlink():
    seg = Segment.create(RunId.new(), "test", 10_000)
    try:
        assert shm_exists(seg.name) and seg.size == 10_000 and seg.owner
        seg.write(100, b"hello")
        with Segment.attach(seg.name) as ro:
            assert bytes(ro.buf[100:105]) == b"hello" and ro.readonly and not ro.owner
            assert ro.buf.readonly
            with pytest.raises(ReadOnlyView):
                ro.write(0, b"x")
            with pytest.raises(TypeError):
                ro.buf[0] = 1
            with pytest.raises(ReadOnlyView):
                ro.unlink()
        with Segment.attach("/" + seg.name, readonly=False) as rw:
            rw.write(0, b"Z")
        assert bytes(seg.buf[0:1]) == b"Z"
    finally:
        seg.close()
        seg.unlink()
    assert not shm_exists(seg.name)
    seg.close()  # idempotent
    seg.unlink()  # already gone: still fine


def test_attach_missing_segment_is_not_found():
    with pytest.raises(SegmentNotFound) as e:
        Segment.attach(segment_name(RunId.new(), "nothing", 0))
    assert e.value.code == "NOT_FOUND"
    with pytest.raises(InvalidArgument):
        Segment.attach("a/b")


def test_attach_while_the_owner_is_still_creating_is_not_found():
    import _posixshmem
    name = segment_name(RunId.new(), "test", 0)
    fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
    try:
        with pytest.raises(SegmentNotFound, match="still being created"):
            Segment.attach(name)
    finally:
        os.close(fd)
        _posixshmem.shm_unlink("/" + name)


def test_close_with_live_views_is_busy_then_succeeds():
    seg = Segment.create(RunId.new(), "test", 4096)
    try:
        view = seg.buf[0:10]
        with pytest.raises(SegmentBusy) as e:
            seg.close()
        assert e.value.code == "CONFLICT"
        view.release()
        seg.close()
        with pytest.raises(SegmentNotFound):
            _ = seg.buf
    finally:
        seg.unlink()


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_bad_sizes_are_invalid(size):
    with pytest.raises(InvalidArgument):
        Segment.create(RunId.new(), "test", size)


# -- space checks: RESOURCE_EXHAUSTED before any write, never SIGBUS ----------------------
def fake_statvfs(free_bytes: int):
    real = os.statvfs(SHM_DIR)

    def statvfs(_path):
        return os.statvfs_result((real.f_bsize, 4096, 1 << 20, free_bytes // 4096, free_bytes // 4096,
                                  real.f_files, real.f_ffree, real.f_favail, real.f_flag, real.f_namemax))
    return statvfs


def agora_entries() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith("agora")}


def test_injected_full_dev_shm_is_resource_exhausted(state_dir):
    manifest = Manifest(state_dir, RunId.new())
    before = agora_entries()
    with pytest.raises(ResourceExhausted) as e:
        Segment.create(manifest.run, "ctx", 3 << 20, manifest=manifest, statvfs=fake_statvfs(1 << 20))
    assert e.value.code == "RESOURCE_EXHAUSTED"
    assert "3.0 MiB" in e.value.message and "1.0 MiB free" in e.value.message and "df -h" in e.value.hint
    assert agora_entries() - before == set() and manifest.names() == []


def test_larger_than_real_free_space_fails_cleanly(state_dir):
    st_ = os.statvfs(SHM_DIR)
    too_big = st_.f_bavail * st_.f_frsize + (1 << 30)
    before = agora_entries()
    with pytest.raises(ResourceExhausted) as e:
        Segment.create(RunId.new(), "ctx", too_big)
    assert e.value.details["requested"] == too_big
    assert agora_entries() - before == set()


def test_reservation_failure_is_resource_exhausted_and_leaves_nothing(state_dir):
    manifest = Manifest(state_dir, RunId.new())

    def enospc(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    before = agora_entries()
    with pytest.raises(ResourceExhausted) as e:
        Segment.create(manifest.run, "ctx", 1 << 20, manifest=manifest, reserve=enospc)
    assert "is full" in e.value.message and isinstance(e.value.__cause__, OSError)
    assert agora_entries() - before == set() and manifest.names() == []


def test_pages_are_reserved_at_create():
    seg = Segment.create(RunId.new(), "test", 8 << 20)
    try:
        blocks = os.stat(os.path.join(SHM_DIR, seg.name)).st_blocks * 512
        assert blocks >= 8 << 20  # posix_fallocate reserved every page: no sparse hole to SIGBUS on
    finally:
        seg.close()
        seg.unlink()


# -- manifests ----------------------------------------------------------------------------
def test_manifest_lists_live_segments_and_is_replaced_atomically(state_dir):
    manifest = Manifest(state_dir, RunId.new())
    a = Segment.create(manifest.run, "ctx", 4096, manifest=manifest)
    b = Segment.create(manifest.run, "ctx", 4096, manifest=manifest)
    data = Manifest.read(manifest.path)
    assert data["segments"] == [a.name, b.name] and data["pid"] == os.getpid() and data["state"] == "live"
    for seg in (a, b):
        seg.close()
        seg.unlink()
    assert Manifest.read(manifest.path)["segments"] == []
    assert sorted(os.listdir(state_dir)) == [os.path.basename(manifest.path)]  # no tmp file left
    again = Manifest(state_dir, manifest.run)
    assert again.next_name("ctx").endswith(".2")  # a successor continues the numbering


def test_successor_manifest_adopts_what_a_crashed_owner_listed(state_dir):
    run = RunId.new()
    first = Manifest(state_dir, run)
    seg = Segment.create(run, "ctx", 4096, manifest=first)
    try:
        assert Manifest(state_dir, run).names() == [seg.name]
        assert Manifest(state_dir, RunId.new()).names() == []
    finally:
        seg.close()
        seg.unlink()


# -- attaching processes never unlink, never warn ------------------------------------------
def _attach_and_read(name: str, q) -> None:
    with Segment.attach(name) as seg:
        q.put(bytes(seg.buf[0:5]))


def test_forked_attacher_exiting_normally_leaves_the_segment(capfd):
    seg = Segment.create(RunId.new(), "test", 4096)
    try:
        seg.write(0, b"agora")
        ctx = multiprocess.get_context("fork")
        q = ctx.SimpleQueue()
        procs = [ctx.Process(target=_attach_and_read, args=(seg.name, q)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(WAIT)
            assert p.exitcode == 0
        assert [q.get() for _ in procs] == [b"agora"] * 3
        q.close()
        assert shm_exists(seg.name)
        out, err = capfd.readouterr()
        assert "resource_tracker" not in err and "leaked" not in err
    finally:
        seg.close()
        seg.unlink()


CHILD = """
import sys
sys.path.insert(0, {repo!r})
from multiprocessing import resource_tracker
from shm.segment import Segment
with Segment.attach({name!r}) as seg:
    assert bytes(seg.buf[0:5]) == b"agora"
assert resource_tracker._resource_tracker._fd is None, "a resource tracker was started"
print("ok")
"""


def test_separate_interpreter_attaching_starts_no_tracker_and_warns_nothing():
    seg = Segment.create(RunId.new(), "test", 4096)
    try:
        seg.write(0, b"agora")
        proc = subprocess.run([sys.executable, "-W", "always", "-c", CHILD.format(repo=REPO, name=seg.name)],
                              capture_output=True, text=True, timeout=WAIT * 3)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "ok" and proc.stderr == ""
        assert shm_exists(seg.name)
    finally:
        seg.close()
        seg.unlink()


# -- sweeping -----------------------------------------------------------------------------
def _own_run_with_segments(state_dir: str, count: int):
    def body(w: int) -> None:
        run = RunId.new()
        manifest = Manifest(state_dir, run)
        names = [Segment.create(run, "ctx", 4096, manifest=manifest).name for _ in range(count)]
        os.write(w, (json.dumps(names) + "\n").encode())
        block_forever(w)
    return body


def test_kill_9_owner_then_sweep_removes_its_segments(state_dir):
    pid, r = fork_running(_own_run_with_segments(str(state_dir), 3))
    names = json.loads(read_line(r))
    os.close(r)
    assert all(shm_exists(n) for n in names)
    assert sweep(state_dir) == [], "sweep removed segments of a live run"
    assert all(shm_exists(n) for n in names)
    os.kill(pid, signal.SIGKILL)
    reap(pid)
    assert sweep(state_dir) == sorted(names)
    assert not any(shm_exists(n) for n in names)
    assert os.listdir(state_dir) == []  # the dead run's manifest went too


def test_sweep_without_state_dir_uses_pids_only(state_dir):
    pid, r = fork_running(_own_run_with_segments(str(state_dir), 1))
    names = json.loads(read_line(r))
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    reap(pid)
    assert sweep() == names and not shm_exists(names[0])


def test_sweep_never_touches_a_live_run_or_foreign_names(state_dir):
    manifest = Manifest(state_dir, RunId.new())
    mine = Segment.create(manifest.run, "ctx", 4096, manifest=manifest)
    foreign = f"agora_foreign_{os.getpid()}"
    with open(os.path.join(SHM_DIR, foreign), "wb"):
        pass
    try:
        removed = sweep(state_dir)
        assert mine.name not in removed and foreign not in removed
        assert shm_exists(mine.name) and shm_exists(foreign)
        assert os.path.exists(manifest.path)
    finally:
        os.unlink(os.path.join(SHM_DIR, foreign))
        mine.close()
        mine.unlink()


def test_sweep_removes_a_closed_run_and_a_recycled_pid(state_dir):
    closed = Manifest(state_dir, RunId.new())
    a = Segment.create(closed.run, "ctx", 4096, manifest=closed)
    closed.mark_closed()
    recycled_run = RunId(os.getpid(), "0badc0de")  # our pid, but "started" long ago
    b = Segment.create(recycled_run, "ctx", 4096)
    with open(os.path.join(state_dir, f"shm.{recycled_run}.json"), "w") as f:
        json.dump({"run": str(recycled_run), "pid": os.getpid(), "started": 1.0, "state": "live",
                   "segments": [b.name]}, f)
    try:
        assert sweep(state_dir) == sorted([a.name, b.name])
        assert os.listdir(state_dir) == []
    finally:
        for seg in (a, b):
            seg.close()
            seg.unlink()


@pytest.mark.parametrize("manifests, started, dead", [
    ([], None, True),                                             # pid gone
    ([], 100.0, False),                                           # pid alive, no manifest: live
    ([{"state": "live", "started": 100.0}], 100.3, False),        # same process
    ([{"state": "live", "started": 50.0}], 100.0, True),          # pid recycled
    ([{"state": "closed", "started": 100.0}], 100.0, True),       # ended on purpose
    ([{"state": "closed"}, {"state": "live"}], 100.0, False),     # one owner still live
    ([{"state": "live", "started": None}], 100.0, False),         # start time unknown: trust pid
])
def test_run_is_dead_table(manifests, started, dead):
    assert run_is_dead(manifests, started) is dead
