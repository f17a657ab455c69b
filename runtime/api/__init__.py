"""agora's Python API (users reach it as ``agora.connect``, ``agora.start``, futures).

Layer: above ``daemon/`` (the embedded runtime starts a private daemon with
``runtime.daemon.launch``), beside ``cli/``; imports ``errors``, ``wire``, ``agents`` and
``daemon.launch``, never ``coordination`` or ``cli``.

    connection.py   one socket, many requests in flight, replies matched by id
    futures.py      TaskFuture, PipelineFuture, TaskFailed, wait, as_completed
    session.py      connect(): the command table as typed methods, map in chunks
    embedded.py     start(): a private daemon for a with-block, Pool
    aio.py          the asyncio flavour (await futures, gather, as_completed)
"""

from runtime.api.connection import Connection
from runtime.api.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    PipelineFuture,
    RemoteTraceback,
    TaskFailed,
    TaskFuture,
    as_completed,
    wait,
)
from runtime.api.session import Session, connect

__all__ = ["Connection", "Session", "connect", "TaskFuture", "PipelineFuture", "TaskFailed",
           "RemoteTraceback", "wait", "as_completed", "FIRST_COMPLETED", "FIRST_EXCEPTION",
           "ALL_COMPLETED"]
