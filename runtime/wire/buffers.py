"""How much one ``recv`` asks for.

``sock.recv(n)`` allocates an ``n``-byte buffer before the call and shrinks it after.
Above glibc's mmap threshold (128 KiB by default) that buffer is a fresh ``mmap`` and
``munmap`` with page faults in between: measured here, ``recv(256 KiB)`` of a 200-byte
message took 7.2 us against 0.5 us for ``recv(64 KiB)`` (/tmp harness, socketpair, median
of 20,000).  Stream readers therefore ask for ``RECV_BYTES`` at a time; a larger message
simply takes more calls.  (Datagram sockets must still ask for a whole datagram.)
"""

from __future__ import annotations

__all__ = ["RECV_BYTES"]

RECV_BYTES = 1 << 16
