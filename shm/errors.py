"""shm's own small error hierarchy.

``shm`` sits below ``runtime`` and may not import it, so these classes mirror
``runtime.errors``: a stable wire ``code`` (the same codes, so ``runtime.errors.from_wire``
rebuilds the matching runtime class on the far side), a ``message`` with the facts and a
``hint`` saying what to do::

    ShmError                 INTERNAL
    ├── InvalidArgument      INVALID_INPUT       bad name, size, dtype, handle
    ├── ResourceExhausted    RESOURCE_EXHAUSTED  /dev/shm or an arena slot is full
    ├── SegmentNotFound      NOT_FOUND           no such segment (or it was unlinked)
    │   └── ContextNotFound  NOT_FOUND           no such context (or it went away twice)
    ├── StaleHandle          NOT_FOUND           an arena block was released or its slot reset
    ├── ReadOnlyView         PERMISSION_DENIED   a write through a read-only attachment
    └── SegmentBusy          CONFLICT            close() while views of the mapping exist
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ShmError", "InvalidArgument", "ResourceExhausted", "SegmentNotFound", "ContextNotFound",
    "StaleHandle", "ReadOnlyView", "SegmentBusy",
]


class ShmError(Exception):
    """Base of every error shm raises on purpose."""

    code: ClassVar[str] = "INTERNAL"
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidArgument(ShmError):
    code = "INVALID_INPUT"


class ResourceExhausted(ShmError):
    code = "RESOURCE_EXHAUSTED"


class SegmentNotFound(ShmError):
    code = "NOT_FOUND"
    default_hint = "the owner may have unlinked it or its run ended; look the name up again"


class ContextNotFound(SegmentNotFound):
    default_hint = "ContextReader.names() lists what is published; publish it with ContextStore.put_*"


class StaleHandle(ShmError):
    code = "NOT_FOUND"
    default_hint = ("the block was released, or its producer died and the slot was reset: "
                    "treat the payload as lost and ask for it again")


class ReadOnlyView(ShmError):
    code = "PERMISSION_DENIED"
    default_hint = "only the owner writes; attach with readonly=False only in the owner"


class SegmentBusy(ShmError):
    code = "CONFLICT"
    default_hint = ("delete the arrays/memoryviews taken from it first, or just drop the object: "
                    "the mapping goes away with the last view")
