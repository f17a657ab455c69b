"""psutil sampling of agent processes and of the machine, for the scaling policy.

The coordinator calls ``Sampler.sample(pids)`` once per scaling tick; nothing here runs
on its own (no thread).  What one sample holds per pid:

``cpu_percent``  CPU used since the previous sample of that pid, in percent of one core
                 (psutil's convention: 200.0 is two cores busy).  ``None`` on the first
                 sample of a pid, because a rate needs two readings.
``rss``          resident set size, bytes.
``uss``          unique set size, bytes: what killing the agent would give back.  This is
                 the figure that matters with shared memory, since mapped context pages
                 are counted in every agent's RSS.
``pss``          proportional set size, bytes, where the kernel offers it (Linux).

``uss``/``pss`` are ``None`` when they cannot be read (another user's process, or a
platform without them); the sample then still has ``rss``.

Design decisions:
- ``psutil.Process`` objects are kept between samples: ``cpu_percent()`` measures since
  the previous call *on the same object*, and reusing them avoids re-reading the process
  start time.  A kept object whose pid was reused by a new process is detected with
  ``is_running()`` (psutil compares the start time) and treated as vanished.
- A pid that vanishes before or during its sample (``NoSuchProcess``, or a zombie
  waiting to be reaped) is skipped and listed in ``Sample.vanished``; its Process object
  is dropped.  The supervisor sees deaths through sentinels; the sampler only must not
  fail on them.
- Machine CPU is computed from ``psutil.cpu_times()`` deltas held by this Sampler, not
  ``psutil.cpu_percent(interval=None)``, whose baseline is module-global and would be
  moved by any other caller in the process.
- USS/PSS come from ``memory_full_info()``, which reads ``/proc/PID/smaps_rollup``.  One
  file, but the kernel walks the process's page tables to fill it: about 0.5 ms for an
  agent that maps the arenas (against 12 us for RSS), so a sample of 64 agents read them
  all took 35 ms of the coordinator's loop every second (66 ms/s of CPU on an idle
  daemon).  Each sample therefore reads USS/PSS for a pid it has never read, plus the
  ``1 / FULL_EVERY`` of the others read longest ago; the rest keep their last USS/PSS
  (with a fresh RSS): every pid's USS is at most ``FULL_EVERY`` samples old.
  ``full=False`` skips it for callers that only need RSS and CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

__all__ = ["ProcessSample", "MachineSample", "Sample", "Sampler", "FULL_EVERY"]

FULL_EVERY = 5  # a pid's USS/PSS is re-read at least once per this many samples


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    cpu_percent: float | None
    rss: int
    uss: int | None = None
    pss: int | None = None

    @property
    def memory(self) -> int:
        """The best per-agent figure available: USS, else RSS."""
        return self.uss if self.uss is not None else self.rss


@dataclass(frozen=True)
class MachineSample:
    cpu_percent: float | None  # all cores together, 0-100; None on the first sample
    available_memory: int
    total_memory: int


@dataclass(frozen=True)
class Sample:
    at: float
    machine: MachineSample
    processes: dict[int, ProcessSample] = field(default_factory=dict)
    vanished: tuple[int, ...] = ()


class _Vanished(Exception):
    """Internal: the pid is gone (or is a zombie, or was reused)."""


class Sampler:
    """Samples a changing set of pids; keep one per coordinator."""

    def __init__(self, *, full: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self._full = full
        self._clock = clock
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_times: Any = None  # psutil's scputimes namedtuple
        self._shared: dict[int, tuple[int, int | None, int | None]] = {}  # pid -> (sample no, uss, pss)
        self._count = 0

    def sample(self, pids: Iterable[int]) -> Sample:
        """One sample of each pid and of the machine; vanished pids are skipped."""
        wanted = list(dict.fromkeys(pids))
        self._forget_unwanted(wanted)
        self._count += 1
        fresh = self._due_full(wanted)
        processes: dict[int, ProcessSample] = {}
        vanished: list[int] = []
        for pid in wanted:
            try:
                processes[pid] = self._sample_pid(pid, pid in fresh)
            except _Vanished:
                self._procs.pop(pid, None)
                vanished.append(pid)
        return Sample(
            at=self._clock(),
            machine=self._sample_machine(),
            processes=processes,
            vanished=tuple(vanished),
        )

    def forget(self, pid: int) -> None:
        """Drop a pid's kept Process (the driver calls it when an agent exits)."""
        self._procs.pop(pid, None)
        self._shared.pop(pid, None)

    def _due_full(self, wanted: list[int]) -> set[int]:
        """The pids whose USS/PSS this sample reads (module docstring): never read, or
        the longest-unread ``1 / FULL_EVERY`` of the rest."""
        if not self._full:
            return set()
        shared = self._shared
        new = [pid for pid in wanted if pid not in shared]
        known = sorted((pid for pid in wanted if pid in shared), key=lambda pid: shared[pid][0])
        quota = -(-len(known) // FULL_EVERY)
        return set(new).union(known[:quota])

    @property
    def tracked(self) -> frozenset[int]:
        return frozenset(self._procs)

    # -- steps

    def _forget_unwanted(self, wanted: list[int]) -> None:
        for pid in set(self._procs) - set(wanted):
            del self._procs[pid]
        for pid in set(self._shared) - set(wanted):
            del self._shared[pid]

    def _process(self, pid: int) -> tuple[psutil.Process, bool]:
        """The kept Process for pid (and whether it is new), checked against pid reuse."""
        proc = self._procs.get(pid)
        if proc is not None and proc.is_running():
            return proc, False
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess as exc:
            raise _Vanished(pid) from exc
        self._procs[pid] = proc
        return proc, True

    def _sample_pid(self, pid: int, full: bool) -> ProcessSample:
        proc, new = self._process(pid)
        if new:
            self._shared.pop(pid, None)  # a reused pid: its old figures are another process's
            full = self._full
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise _Vanished(pid)
                cpu = proc.cpu_percent(interval=None)
                if full:
                    rss, uss, pss = self._memory(proc)
                    self._shared[pid] = (self._count, uss, pss)
                else:
                    rss = proc.memory_info().rss
                    _, uss, pss = self._shared.get(pid, (0, None, None))
        except psutil.NoSuchProcess as exc:  # includes ZombieProcess
            raise _Vanished(pid) from exc
        return ProcessSample(pid=pid, cpu_percent=None if new else cpu, rss=rss, uss=uss, pss=pss)

    def _memory(self, proc: psutil.Process) -> tuple[int, int | None, int | None]:
        try:
            info = proc.memory_full_info()
        except psutil.AccessDenied:  # another user's process: smaps is unreadable, RSS is not
            return proc.memory_info().rss, None, None
        return info.rss, getattr(info, "uss", None), getattr(info, "pss", None)

    def _sample_machine(self) -> MachineSample:
        vm = psutil.virtual_memory()
        return MachineSample(
            cpu_percent=self._machine_cpu(), available_memory=vm.available, total_memory=vm.total
        )

    def _machine_cpu(self) -> float | None:
        now = psutil.cpu_times()
        before, self._cpu_times = self._cpu_times, now
        if before is None:
            return None
        return _busy_percent(before, now)


def _total(t: Any) -> float:
    # Linux counts guest time inside user/nice as well: subtract it (as psutil does).
    return sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _idle(t: Any) -> float:
    return getattr(t, "idle", 0.0) + getattr(t, "iowait", 0.0)


def _busy_percent(before: Any, now: Any) -> float:
    """Percent of CPU time not idle between two cpu_times() readings (all cores)."""
    total = _total(now) - _total(before)
    if total <= 0:
        return 0.0
    busy = total - (_idle(now) - _idle(before))
    return max(0.0, min(100.0, 100.0 * busy / total))
