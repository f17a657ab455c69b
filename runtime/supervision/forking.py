"""Forking one child: the only place in agora that starts a process.

The root supervisor calls :func:`fork_child`; the child runs :func:`_child_main`, which
ties the child's life to the root before running the spec's target:

* PR_SET_PDEATHSIG(SIGKILL), then a check that getppid() is still the root: the signal
  is only armed from the moment prctl runs, so a root that died just before would be
  missed without the check (gh-111873: workers outlive a killed parent).
* A *lifeline*: the root holds the write end of a pipe and no other process does; a
  daemon thread in the child blocks reading the other end and exits the child on EOF,
  whatever killed the root (the belt to PDEATHSIG's braces, e.g. across a setuid).
* The fds private to the root (lifeline write end, siblings' sentinels, the root's
  command sockets) are closed in the child so they cannot keep anything alive.
* ``gc.freeze()`` runs in the root before every fork, so that collections in the child
  do not write to the inherited heap's copy-on-write pages.
* The child names itself twice: PR_SET_NAME (15 bytes, ``ps -o comm``, ``top``; what
  ``agora up`` checks a pid file's process by) and, with the setproctitle package, its
  whole command line (``ps -eo pid,args``, ``top -c``): ``agora: registry 2``,
  ``agora: agent summarize.3``, in full where the kernel's name stops at 15 bytes (all
  four partitions read ``agora:registry.`` there).  Without setproctitle only the first.
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import signal
import sys
import threading
from typing import Any

import multiprocess

from runtime.supervision.child_spec import ChildSpec

try:
    from setproctitle import setproctitle as _set_cmdline
except ImportError:  # optional: without it ps shows the kernel's 15-byte name only
    _set_cmdline = None

__all__ = ["ChildContext", "fork_child", "set_process_name", "full_title", "root_private_fds",
           "Lifeline"]

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_FORK = multiprocess.get_context("fork")

#: fds that belong to the root alone; every child closes them right after fork.
root_private_fds: set[int] = set()


def set_process_name(title: str, role: str | None = None) -> None:
    """Name this process for ps/top: ``title`` as the kernel's name (15 bytes kept) and
    the full role (default: derived from ``title``) as its command line."""
    if _set_cmdline is not None:
        _set_cmdline_only(role or full_title(title))
    # after setproctitle, which sets the kernel's name too, from its own (longer) title
    _libc.prctl(_PR_SET_NAME, title.encode()[:15], 0, 0, 0)


def _set_cmdline_only(text: str) -> None:
    """setproctitle within the original argv's space only (SPT_NOENV, read at its first
    call): by default it would take the environment's space too, and /proc/PID/environ,
    which tools (and our tests) read to tell one daemon's processes from another's,
    would then hold the title.  An `agora up` command line is long enough for any role."""
    saved = os.environ.get("SPT_NOENV")
    os.environ["SPT_NOENV"] = "1"
    try:
        _set_cmdline(text)
    finally:
        if saved is None:
            del os.environ["SPT_NOENV"]
        else:
            os.environ["SPT_NOENV"] = saved


_NUMBERED = re.compile(r"([A-Za-z_-]+)\.(\d+)")


def full_title(name: str) -> str:
    """A process's role as ps shows it: a child id or short title made readable.

    ``agora:daemon`` -> ``agora: daemon``, ``registry.2`` -> ``agora: registry 2``,
    ``agent:summarize.3`` -> ``agora: agent summarize.3``, ``coordinator`` -> ``agora: coordinator``.
    """
    name = name.removeprefix("agora:")
    kind, sep, rest = name.partition(":")
    if sep:
        return f"agora: {kind} {rest}"
    numbered = _NUMBERED.fullmatch(name)
    return f"agora: {numbered[1]} {numbered[2]}" if numbered else f"agora: {name}"


class Lifeline:
    """A pipe whose write end only the root holds: EOF in a child means the root is gone."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        root_private_fds.add(self.w)

    def close(self) -> None:
        root_private_fds.discard(self.w)
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass


class ChildContext:
    """What a child's target receives: its identity and the hooks back to the root."""

    FAILURE_BYTES = 400  # of a failed start-up's reason, sent back on the ready pipe
    current: ChildContext | None = None  # this child's (one per process; _child_entry reads it)

    def __init__(self, spec: ChildSpec, ready_fd: int, root_pid: int, resources: Any):
        self.id = spec.id
        self.title = spec.process_title
        self.root_pid = root_pid
        self.resources = resources  # opaque here: the daemon's RunResources
        self._ready_fd: int | None = ready_fd
        ChildContext.current = self

    def ready(self) -> None:
        """Tell the supervisor that start-up is done (idempotent)."""
        self._say(b"R")

    def failed(self, exc: BaseException) -> None:
        """Start-up raised: tell the supervisor why (``F`` + one line; nothing after ready)."""
        self._say(b"F" + f"{type(exc).__name__}: {exc}"[:self.FAILURE_BYTES].encode(errors="replace"))

    def _say(self, what: bytes) -> None:
        if self._ready_fd is not None:
            os.write(self._ready_fd, what)  # at most PIPE_BUF: one atomic write
            os.close(self._ready_fd)
            self._ready_fd = None


def _watch_lifeline(fd: int) -> None:
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os._exit(70)  # the root is gone: nothing of ours may outlive it


def _tie_to_root(root_pid: int, lifeline_r: int) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != root_pid:
        os._exit(70)
    threading.Thread(target=_watch_lifeline, args=(lifeline_r,), name="agora-lifeline",
                     daemon=True).start()


def _child_main(spec: ChildSpec, ready_fd: int, root_pid: int, lifeline_r: int,
                private: frozenset[int], resources: Any) -> None:
    for fd in private:
        try:
            os.close(fd)
        except OSError:
            pass
    root_private_fds.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the root, which stops us in order
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _tie_to_root(root_pid, lifeline_r)
    set_process_name(spec.process_title, full_title(spec.id))
    spec.target(ChildContext(spec, ready_fd, root_pid, resources), *spec.args)


def fork_child(spec: ChildSpec, lifeline: Lifeline, resources: Any = None
               ) -> tuple[Any, int]:
    """Fork ``spec`` as a child; return (process, fd that becomes readable on ready).

    The caller owns the returned fd and must close it.
    """
    ready_r, ready_w = os.pipe()
    private = frozenset(root_private_fds | {ready_r})
    proc = _FORK.Process(target=_child_entry, name=spec.id, daemon=False,
                         args=(spec, ready_w, os.getpid(), lifeline.r, private, resources))
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        proc.start()
    finally:
        os.close(ready_w)
    root_private_fds.update(_popen_fds(proc))
    return proc, ready_r


def _popen_fds(proc: Any) -> tuple[int, ...]:
    # multiprocess keeps (sentinel, parent-side write end) open in the root; a sibling that
    # inherited the write end would keep this child's parent-death pipe from ever closing.
    fin = getattr(proc._popen, "finalizer", None)
    return tuple(getattr(fin, "_args", ()) or (proc.sentinel,))


def forget(proc: Any) -> None:
    """The root reaped ``proc``: its fds are no longer ours to hand out."""
    root_private_fds.difference_update(_popen_fds(proc))


def _child_entry(*args: Any) -> None:
    """The forked child's entry: ``_child_main``, and a start-up that raised before
    ``ctx.ready()`` says why on the ready pipe (the supervisor's StartFailed and
    ``agora pools`` show it, rather than only an exit code)."""
    try:
        _child_main(*args)
    except BaseException as e:
        if ChildContext.current is not None:
            ChildContext.current.failed(e)
        raise
