"""The psutil sampler on the test process itself and on a forked child."""

from __future__ import annotations

import os
import signal
import time
from collections import namedtuple
from contextlib import contextmanager

import psutil
import pytest

from runtime.scaling.sampler import Sampler, _busy_percent


@contextmanager
def forked_child():
    """A child that blocks until its pipe closes; always killed and reaped."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: wait for the parent to let go, then leave without cleanup
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        yield pid
    finally:
        os.close(w)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # already gone
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # the test reaped it


def wait_zombie(pid: int, timeout: float = 5.0) -> None:
    deadline, delay = time.monotonic() + timeout, 0.001
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"pid {pid} did not become a zombie within {timeout}s"
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def test_samples_this_process_twice():
    sampler = Sampler()
    me = os.getpid()
    first = sampler.sample([me])
    sum(i * i for i in range(200_000))  # some CPU between the samples
    second = sampler.sample([me])
    assert first.processes[me].cpu_percent is None  # a rate needs two readings
    assert first.machine.cpu_percent is None
    cpu = second.processes[me].cpu_percent
    assert cpu is not None and cpu >= 0.0
    assert second.machine.cpu_percent is not None and 0.0 <= second.machine.cpu_percent <= 100.0
    p = second.processes[me]
    assert p.rss > 0 and p.uss is not None and 0 < p.uss <= p.rss
    assert p.pss is not None and p.pss > 0  # Linux offers PSS
    assert p.memory == p.uss
    assert 0 < second.machine.available_memory <= second.machine.total_memory
    assert second.vanished == ()


def test_kept_process_objects_are_reused():
    sampler = Sampler()
    me = os.getpid()
    sampler.sample([me])
    kept = sampler._procs[me]
    sampler.sample([me])
    assert sampler._procs[me] is kept


def test_forked_child_is_sampled_then_vanishes():
    sampler = Sampler()
    me = os.getpid()
    with forked_child() as child:
        sampler.sample([me, child])
        s = sampler.sample([me, child])
        assert s.processes[child].cpu_percent is not None
        assert (
            s.processes[child].uss is not None and s.processes[child].uss < s.processes[child].rss
        )
        os.kill(child, signal.SIGKILL)
        wait_zombie(child)
        s = sampler.sample([me, child])
        assert s.vanished == (child,) and set(s.processes) == {me}  # a zombie counts as gone
        os.waitpid(child, 0)
        s = sampler.sample([child, me])
        assert s.vanished == (child,) and set(s.processes) == {me}
    assert sampler.tracked == {me}


def test_pid_vanishing_during_the_sample_is_skipped(monkeypatch):
    sampler = Sampler()
    me = os.getpid()
    with forked_child() as child:
        real = psutil.Process.memory_full_info

        def dies_now(self):
            if self.pid == child:
                raise psutil.NoSuchProcess(self.pid)
            return real(self)

        monkeypatch.setattr(psutil.Process, "memory_full_info", dies_now)
        s = sampler.sample([child, me])
    assert s.vanished == (child,) and set(s.processes) == {me}
    assert child not in sampler.tracked


def test_pid_that_never_existed_is_skipped():
    with open("/proc/sys/kernel/pid_max") as f:
        impossible = int(f.read()) + 1
    s = Sampler().sample([impossible])
    assert s.vanished == (impossible,) and s.processes == {}


def test_pids_no_longer_asked_for_are_forgotten():
    sampler = Sampler()
    me = os.getpid()
    with forked_child() as child:
        sampler.sample([me, child])
        assert sampler.tracked == {me, child}
        sampler.sample([me])
        assert sampler.tracked == {me}


def test_rss_only_mode():
    s = Sampler(full=False).sample([os.getpid()])
    p = s.processes[os.getpid()]
    assert p.rss > 0 and p.uss is None and p.pss is None and p.memory == p.rss


T = namedtuple("T", "user nice system idle iowait irq softirq steal guest guest_nice")


@pytest.mark.parametrize(
    "before, now, expected",
    [
        (T(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), T(50, 0, 0, 50, 0, 0, 0, 0, 0, 0), 50.0),
        (T(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), T(30, 0, 0, 60, 10, 0, 0, 0, 0, 0), 30.0),
        (
            T(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            T(50, 0, 0, 50, 0, 0, 0, 0, 20, 0),
            50.0,
        ),  # guest is inside user
        (T(1, 1, 1, 1, 1, 1, 1, 1, 1, 1), T(1, 1, 1, 1, 1, 1, 1, 1, 1, 1), 0.0),
    ],
)
def test_machine_cpu_percent_from_cpu_times(before, now, expected):
    assert _busy_percent(before, now) == pytest.approx(expected)


def test_memory_every_s_rereads_uss_only_when_due_or_when_rss_moves(monkeypatch):
    """smaps_rollup costs ~1 ms per agent: with ``memory_every_s`` a sample within the period
    carries the last USS/PSS beside a fresh RSS, unless RSS moved by ``rss_drift``."""
    now = [100.0]
    reads: list[int] = []
    real = psutil.Process.memory_full_info

    def counting(self):
        reads.append(self.pid)
        return real(self)

    monkeypatch.setattr(psutil.Process, "memory_full_info", counting)
    me = os.getpid()
    sampler = Sampler(clock=lambda: now[0], memory_every_s=5.0, rss_drift=1 << 40)
    first = sampler.sample([me]).processes[me]
    now[0] += 4.9
    second = sampler.sample([me]).processes[me]
    assert len(reads) == 1 and second.uss == first.uss and second.rss > 0
    now[0] += 0.2  # 5.1 s after the full read: due
    sampler.sample([me])
    assert len(reads) == 2
    drifting = Sampler(clock=lambda: now[0], memory_every_s=5.0, rss_drift=16 << 20)
    drifting.sample([me])
    drifting.sample([me])
    assert len(reads) == 3  # RSS has not moved by 16 MiB: no re-read
    ballast = b"x" * (64 << 20)  # RSS grows by 64 MiB (every page written)
    grown = drifting.sample([me]).processes[me]
    assert len(reads) == 4 and grown.uss is not None
    del ballast
