"""agora's shared memory: segments with an owner, context pools of read-only arrays,
payload arenas, and the sweeper that removes what a dead run left behind.

The bottom layer: imports nothing of agora's (its errors carry the same ``code`` and
``hint`` attributes as ``runtime.errors`` so the control channel can send them).
"""

from shm._sweeper import sweep
from shm.arena import DEFAULT_THRESHOLD, Arena, Handle, SlotWriter, use_arena
from shm.context import ContextInfo, ContextReader, ContextStore
from shm.errors import (
    ContextNotFound,
    InvalidArgument,
    ReadOnlyView,
    ResourceExhausted,
    SegmentBusy,
    SegmentNotFound,
    ShmError,
    StaleHandle,
)
from shm.segment import PREFIX, SHM_DIR, Manifest, RunId, Segment, parse_segment_name, segment_name

__all__ = [
    "ShmError", "InvalidArgument", "ResourceExhausted", "SegmentNotFound", "ContextNotFound",
    "StaleHandle", "ReadOnlyView", "SegmentBusy", "RunId", "Segment", "Manifest", "PREFIX",
    "SHM_DIR", "segment_name", "parse_segment_name", "ContextStore", "ContextReader",
    "ContextInfo", "Arena", "SlotWriter", "Handle", "DEFAULT_THRESHOLD", "use_arena", "sweep",
]
