"""agora's error hierarchy, shared by the daemon, the Client and the CLI.

Every error has a stable wire ``code``, a ``message`` (the facts) and a ``hint``
(what to do).  On the control channel an error is data::

    {"error": {"code": "UNKNOWN_CAPABILITY", "message": "...", "hint": "..."}}

and ``from_wire`` turns it back into the same class on the client side.

Hierarchy (modelled on trio's closed/broken split)::

    AgoraError
    ├── ClosedError          you closed it (client, runtime)
    ├── BrokenError          it broke under you; the cause is in __cause__
    ├── InvalidInput         the request is wrong; retrying it will not help
    │   ├── ProtocolError        the bytes on the wire are not a valid frame
    │   ├── UnknownCommand
    │   ├── UnknownCapability
    │   └── InvalidPipeline
    ├── NotFound
    ├── Conflict             a compare-and-set lost (version moved on)
    │   └── NoSale               a sale auction a bid took part in awarded nobody
    ├── Unavailable          retryable: the daemon / a partition is down or restarting
    │   └── DaemonNotRunning
    ├── ResourceExhausted    /dev/shm full, mailbox full, budget spent
    │   ├── MailboxFull
    │   └── InsufficientCredits  a ledger account cannot pay (bids, subcontracts, bonds)
    ├── DeadlineExceeded
    ├── PermissionDenied
    ├── Internal             a bug caught at a boundary: code INTERNAL + an incident id
    └── RemoteError          the far side raised something it could not classify

``shm`` sits below ``runtime`` and may not import it, so shm's errors are their
own small hierarchy; they carry the same ``code``/``hint`` attributes and
``to_wire`` accepts them as they are.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AgoraError", "ClosedError", "BrokenError", "InvalidInput", "ProtocolError",
    "UnknownCommand", "UnknownCapability", "InvalidPipeline", "NotFound", "Conflict",
    "Unavailable", "DaemonNotRunning", "ResourceExhausted", "MailboxFull", "InsufficientCredits", "NoSale",
    "DeadlineExceeded", "PermissionDenied", "Internal", "RemoteError", "to_wire", "from_wire",
    "EXIT_CODES",
]


class AgoraError(Exception):
    """Base of every error agora raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    default_hint: ClassVar[str] = ""
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ClosedError(AgoraError):
    code = "CLOSED"
    default_hint = "it was closed on this side; open a new one"


class BrokenError(AgoraError):
    code = "BROKEN"
    exit_code = 4


class InvalidInput(AgoraError):
    code = "INVALID_INPUT"
    exit_code = 2


class ProtocolError(InvalidInput):
    code = "PROTOCOL_ERROR"
    default_hint = "send 4-byte big-endian length + an orjson object with 'v', 'cmd', 'args'"


class UnknownCommand(InvalidInput):
    code = "UNKNOWN_COMMAND"


class UnknownCapability(InvalidInput):
    code = "UNKNOWN_CAPABILITY"
    default_hint = "`agora agents` lists the capabilities the running pools offer"


class InvalidPipeline(InvalidInput):
    code = "INVALID_PIPELINE"


class NotFound(AgoraError):
    code = "NOT_FOUND"
    exit_code = 3


class Conflict(AgoraError):
    code = "CONFLICT"
    default_hint = "read the current version and retry"
    exit_code = 5


class NoSale(Conflict):
    """An auction a sale bid took part in ended without an award (coordination.services.sales)."""

    code = "NO_SALE"


class Unavailable(AgoraError):
    code = "UNAVAILABLE"
    default_hint = "retryable: try again shortly"
    exit_code = 69  # EX_UNAVAILABLE


class DaemonNotRunning(Unavailable):
    code = "DAEMON_NOT_RUNNING"
    default_hint = "start it with `agora up` (or use `agora run FILE` for an embedded runtime)"


class ResourceExhausted(AgoraError):
    code = "RESOURCE_EXHAUSTED"
    exit_code = 6


class MailboxFull(ResourceExhausted):
    code = "MAILBOX_FULL"
    default_hint = "the pool is saturated: wait and retry, raise the mailbox limits, or scale the pool"


class InsufficientCredits(ResourceExhausted):
    """Defined here (not in coordination.ledger, which raises it) so that an agent
    process rebuilds it typed from the wire (``from_wire`` knows the classes it imported)."""

    code = "INSUFFICIENT_CREDITS"


class DeadlineExceeded(AgoraError):
    code = "DEADLINE_EXCEEDED"
    exit_code = 75  # EX_TEMPFAIL: the CLI's one code for "timed out" (runtime.cli.group.EXIT_CODES)


class PermissionDenied(AgoraError):
    code = "PERMISSION_DENIED"
    exit_code = 77  # EX_NOPERM


class Internal(AgoraError):
    """An exception that is not an ``AgoraError`` reached a boundary (a bug, or a lower
    layer's failure nobody typed): the caller gets this, with an ``incident`` id that
    names the traceback in the daemon log and the ``boundary.incident`` event."""

    code = "INTERNAL"
    default_hint = ("this is a bug in agora; the daemon log (agora.log) and the event "
                    "'boundary.incident' have the traceback under this incident id")
    exit_code = 8

    def __init__(self, message: str, *, incident: str, hint: str | None = None,
                 **details: Any) -> None:
        super().__init__(message, hint=hint, incident=incident, **details)
        self.incident = incident


class RemoteError(AgoraError):
    code = "INTERNAL"
    exit_code = 8


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def _by_code() -> dict[str, type[AgoraError]]:
    table: dict[str, type[AgoraError]] = {}
    for cls in [AgoraError, *_all_subclasses(AgoraError)]:
        table.setdefault(cls.code, cls)  # first (most general) class wins a shared code
    table["INTERNAL"] = RemoteError
    return table


def to_wire(exc: BaseException) -> dict[str, Any]:
    """The error object sent to a client.  Accepts shm's errors (duck-typed on ``code``)."""
    code = getattr(exc, "code", None)
    if not isinstance(code, str):
        return {"code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}",
                "hint": "this is a bug in agora; the daemon log has the traceback"}
    message = getattr(exc, "message", None) or str(exc)
    out: dict[str, Any] = {"code": code, "message": message, "hint": getattr(exc, "hint", "") or ""}
    details = getattr(exc, "details", None)
    if details:
        out["details"] = details
    return out


def from_wire(err: dict[str, Any]) -> AgoraError:
    """Rebuild the typed error a daemon sent; unknown codes become RemoteError."""
    code = str(err.get("code", "INTERNAL"))
    cls = _by_code().get(code, RemoteError)
    exc = cls(str(err.get("message", "")), hint=str(err.get("hint", "")), **(err.get("details") or {}))
    if cls is RemoteError:
        exc.code = code  # type: ignore[misc]  # keep the far side's code visible
    return exc


#: CLI exit code per error class (most specific first is resolved by the MRO).
EXIT_CODES = {cls.code: cls.exit_code for cls in [AgoraError, *_all_subclasses(AgoraError)]}
