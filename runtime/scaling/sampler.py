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
- USS/PSS come from ``memory_full_info()``, which reads ``/proc/PID/smaps_rollup`` (one
  file) on current kernels.  ``full=False`` skips it for callers that only need
  RSS and CPU.  The file is not cheap for an agent: the kernel walks every page table of
  the process, and an agent maps the payload arena and the shared contexts: ~1 ms of CPU
  per agent here (perf/pipelines.py's agents), so a coordinator sampling 6 agents every
  second spent 6 ms/s on it, a third of its CPU when idle.  ``memory_every_s`` re-reads
  USS/PSS of a pid only that often, or at once when its RSS moved by ``rss_drift``
  (default 8 MiB) since the last full read; in between a sample has the fresh RSS and CPU
  and the last USS/PSS.  Default 0: every sample reads everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

__all__ = ["ProcessSample", "MachineSample", "Sample", "Sampler", "RSS_DRIFT"]

#: With ``memory_every_s``, an RSS that moved by this much since the last full read
#: re-reads USS/PSS at once (a fast-growing agent is not judged on a stale USS).
RSS_DRIFT = 8 << 20


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

    def __init__(self, *, full: bool = True, clock: Callable[[], float] = time.monotonic,
                 memory_every_s: float = 0.0, rss_drift: int = RSS_DRIFT) -> None:
        self._full = full
        self._clock = clock
        self._memory_every_s = memory_every_s
        self._rss_drift = rss_drift
        self._full_reads: dict[int, tuple[float, int, int | None, int | None]] = {}  # at, rss, uss, pss
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_times: Any = None  # psutil's scputimes namedtuple

    def sample(self, pids: Iterable[int]) -> Sample:
        """One sample of each pid and of the machine; vanished pids are skipped."""
        wanted = list(dict.fromkeys(pids))
        self._forget_unwanted(wanted)
        processes: dict[int, ProcessSample] = {}
        vanished: list[int] = []
        for pid in wanted:
            try:
                processes[pid] = self._sample_pid(pid)
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
        self._full_reads.pop(pid, None)

    @property
    def tracked(self) -> frozenset[int]:
        return frozenset(self._procs)

    # -- steps

    def _forget_unwanted(self, wanted: list[int]) -> None:
        for pid in set(self._procs) - set(wanted):
            del self._procs[pid]
            self._full_reads.pop(pid, None)

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

    def _sample_pid(self, pid: int) -> ProcessSample:
        proc, new = self._process(pid)
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise _Vanished(pid)
                cpu = proc.cpu_percent(interval=None)
                rss, uss, pss = self._memory(proc)
        except psutil.NoSuchProcess as exc:  # includes ZombieProcess
            raise _Vanished(pid) from exc
        return ProcessSample(pid=pid, cpu_percent=None if new else cpu, rss=rss, uss=uss, pss=pss)

    def _memory(self, proc: psutil.Process) -> tuple[int, int | None, int | None]:
        if not self._full:
            return proc.memory_info().rss, None, None
        now, last = self._clock(), self._full_reads.get(proc.pid)
        if last is not None and now - last[0] < self._memory_every_s:
            rss = proc.memory_info().rss
            if abs(rss - last[1]) < self._rss_drift:
                return rss, last[2], last[3]  # USS/PSS of the last full read: RSS has not moved
        try:
            info = proc.memory_full_info()
        except psutil.AccessDenied:  # another user's process: smaps is unreadable, RSS is not
            return proc.memory_info().rss, None, None
        uss, pss = getattr(info, "uss", None), getattr(info, "pss", None)
        self._full_reads[proc.pid] = (now, info.rss, uss, pss)
        return info.rss, uss, pss

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
