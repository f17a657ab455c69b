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
* The child names itself (PR_SET_NAME, 15 bytes, shown by ps -o comm and top).
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
import threading
from typing import Any

import multiprocess

from runtime.supervision.child_spec import ChildSpec

__all__ = ["ChildContext", "fork_child", "set_process_name", "root_private_fds", "Lifeline"]

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_FORK = multiprocess.get_context("fork")

#: fds that belong to the root alone; every child closes them right after fork.
root_private_fds: set[int] = set()


def set_process_name(title: str) -> None:
    """Name this process for ps/top (the kernel keeps 15 bytes)."""
    _libc.prctl(_PR_SET_NAME, title.encode()[:15], 0, 0, 0)


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
    set_process_name(spec.process_title)
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
