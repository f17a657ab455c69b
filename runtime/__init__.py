"""agora's runtime: supervision tree, daemon, control channel, registry, agents, tasks,
journal, scaling, tracing and the CLI.

Layering: ``shm`` <- ``runtime`` <- ``coordination`` <- cli.  ``runtime`` may import
``shm`` and the standard library plus multiprocess, psutil, numpy, orjson and click;
never ``coordination`` (the coordinator process imports coordination lazily, through
the allocation-policy and voting interfaces).
"""

from runtime.agents.agent import Agent, AgentContext, TaskHandle, capability
from runtime.errors import (
    AgoraError,
    BrokenError,
    ClosedError,
    Conflict,
    DaemonNotRunning,
    DeadlineExceeded,
    InvalidInput,
    InvalidPipeline,
    MailboxFull,
    NotFound,
    PermissionDenied,
    ProtocolError,
    ResourceExhausted,
    Unavailable,
    UnknownCapability,
    UnknownCommand,
)
from runtime.observability.trace_context import TraceContext
from runtime.wire.client import Client

__all__ = [
    "Agent", "AgentContext", "TaskHandle", "capability", "Client",
    "AgoraError", "BrokenError", "ClosedError", "Conflict", "DaemonNotRunning",
    "DeadlineExceeded", "InvalidInput", "InvalidPipeline", "MailboxFull", "NotFound",
    "PermissionDenied", "ProtocolError", "ResourceExhausted", "TraceContext", "Unavailable",
    "UnknownCapability", "UnknownCommand",
]
