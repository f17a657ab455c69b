"""agora: cooperating Python agents on one machine, as supervised processes that share
large read-only context, find work through a registry and a market, and decide together.

This module is the public face; ``import agora`` is all a user needs::

    import agora

    class Echo(agora.Agent):
        @agora.capability("echo")
        def echo(self, input, task):
            return input

    if __name__ == "__main__":                # agent processes import this script again
        with agora.start(pools={"echo": agora.Pool(Echo, size=2)}) as rt:   # a private daemon
            print(rt.submit("echo", {"x": 1}).result(timeout=10))

    with agora.connect() as s:                # or a running daemon (`agora up`)
        print(list(s.map("echo", [{"x": i} for i in range(100)])))

The packages ``runtime``, ``coordination`` and ``shm`` are agora's internals (see their
``__init__`` docstrings for the layers); their layout may change, these names will not.
"""

from __future__ import annotations

from runtime.agents.agent import Agent, AgentContext, Cancelled, Fatal, TaskHandle, capability, current_task
from runtime.agents.economy import SubcontractFailed
from runtime.api import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    PipelineFuture,
    RemoteTraceback,
    Session,
    TaskFailed,
    TaskFuture,
    aio,
    as_completed,
    connect,
    wait,
)
from runtime.api.embedded import Pool, Runtime, start
from runtime.errors import (
    AgoraError,
    BrokenError,
    ClosedError,
    Conflict,
    DaemonNotRunning,
    DeadlineExceeded,
    InsufficientCredits,
    InvalidInput,
    InvalidPipeline,
    MailboxFull,
    NoSale,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RemoteError,
    ResourceExhausted,
    Unavailable,
    UnknownCapability,
    UnknownCommand,
)
from runtime.guards.errors import CallTimeout, CircuitOpen, ServiceError, Throttled
from runtime.observability.trace_context import TraceContext
from runtime.observability.vclock import compare as compare_clocks
from runtime.wire.client import Client

__version__ = "0.2.0"

__all__ = [
    "Agent", "AgentContext", "TaskHandle", "capability", "Fatal", "Cancelled", "Client", "TraceContext",
    "AgoraError", "BrokenError", "ClosedError", "Conflict", "DaemonNotRunning", "DeadlineExceeded",
    "InvalidInput", "InvalidPipeline", "MailboxFull", "NotFound", "PermissionDenied", "ProtocolError",
    "RemoteError", "ResourceExhausted", "Unavailable", "UnknownCapability", "UnknownCommand",
    "InsufficientCredits", "NoSale", "SubcontractFailed",
    "current_task", "CircuitOpen", "CallTimeout", "Throttled", "ServiceError",
    "start", "connect", "Pool", "Runtime", "Session", "TaskFuture", "PipelineFuture", "TaskFailed",
    "RemoteTraceback", "wait", "as_completed", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED",
    "aio", "compare_clocks", "__version__",
]
