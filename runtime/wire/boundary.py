"""The one exception policy of every server boundary of agora.

A *boundary* is the place where a server process hands one peer's input to its own code:
the control commands (coordinator), the agents' frames (coordinator), the root commands
(root), the registry requests (partitions) and the event datagrams (telemetry).  At every
one of them::

    AgoraError (and shm's ShmError: it has code/hint)  ->  its own typed error reply
    any other Exception                                 ->  Internal (code INTERNAL) with
                                                            an incident id; the traceback
                                                            goes to stderr (agora.log) and,
                                                            where the process has an emitter,
                                                            to the event ``boundary.incident``
    BaseException that is not an Exception              ->  not caught (KeyboardInterrupt,
                                                            SystemExit: the process is asked
                                                            to end)

and the process keeps serving: one peer's bad input never ends a server.  The only things
that may end a server process are the ones it cannot survive, and the code names them
where they are raised (a journal that cannot commit, a listening socket that is gone):
they are raised *outside* a boundary, never from a request's handler.

``MemoryError`` and ``RecursionError`` are Exceptions and are typed here too: the
request that caused them is dropped with its reference, so the process recovers.

Incident ids are ``<pid hex>-<counter>``: unique within a run, cheap, and enough to find
the traceback in the log (``grep`` the id).
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from runtime.errors import AgoraError, Internal, to_wire

__all__ = ["incident", "typed", "error_wire", "guard"]

_counter = itertools.count(1)


def _new_id() -> str:
    return f"{os.getpid():x}-{next(_counter)}"


def _is_typed(exc: BaseException) -> bool:
    """An AgoraError, or a lower layer's error with the same contract (shm's ShmError:
    a string ``code`` and a ``hint``; shm may not import runtime)."""
    if isinstance(exc, AgoraError):
        return True
    code = getattr(exc, "code", None)  # shm's base ShmError says INTERNAL: an incident
    return isinstance(code, str) and code != "INTERNAL" and hasattr(exc, "hint")


def incident(exc: BaseException, where: str, emit: Callable[..., Any] | None = None) -> Internal:
    """Record an untyped exception (traceback to stderr, event if ``emit``) and return
    the ``Internal`` error to send in its place."""
    iid = _new_id()
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        sys.stderr.write(f"agora: incident {iid} at {where}: {type(exc).__name__}: {exc}\n{tb}")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # no stderr left (closed log): the event below still carries it
    if emit is not None:
        try:
            emit("boundary.incident", incident=iid, where=where,
                 error=f"{type(exc).__name__}: {str(exc)[:500]}", traceback=tb[-4000:])
        except Exception:  # noqa: BLE001 - the event path itself failing must not recurse
            pass
    return Internal(f"internal error at {where} ({type(exc).__name__}); incident {iid}",
                    incident=iid)


def typed(exc: BaseException, where: str, emit: Callable[..., Any] | None = None) -> BaseException:
    """The error to reply with: ``exc`` itself when it is typed, else an ``Internal``."""
    return exc if _is_typed(exc) else incident(exc, where, emit)


def error_wire(exc: BaseException, where: str, emit: Callable[..., Any] | None = None) -> dict[str, Any]:
    """``to_wire`` of ``typed(exc)``: the error object of a reply."""
    return to_wire(typed(exc, where, emit))


def guard(fn: Callable[..., Any], where: str, emit: Callable[..., Any] | None = None,
          *args: Any) -> tuple[bool, Any]:
    """Run ``fn(*args)``: ``(True, value)`` or ``(False, error wire)`` under the policy."""
    try:
        return True, fn(*args)
    except Exception as e:  # noqa: BLE001 - this *is* the boundary (module docstring)
        return False, error_wire(e, where, emit)
