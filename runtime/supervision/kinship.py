"""Proof of kinship: an agent shows it was forked by this root before its ``hello`` counts.

A same-uid process can connect to the agents' socket (the directory is 0700, but the uid
is the same), so connecting proves nothing.  The root makes a per-run secret before it
forks anything (``runtime.daemon.resources.prepare_root``, 32 bytes of ``os.urandom``) and
keeps it in ``RunResources.agent_secret``: every child inherits it in memory through
fork.  It is never written to the environment, a file or a socket.

The coordinator sends each new agent connection a fresh nonce (``{"t": "challenge",
"nonce"}``); the agent answers with ``hello`` carrying ``proof = HMAC-SHA256(secret,
nonce | agent id | pid)``.  A replayed proof fails (the nonce is per connection); a proof
for another id or pid fails.  Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os

__all__ = ["new_secret", "new_nonce", "proof", "verify"]

SECRET_BYTES = 32
NONCE_BYTES = 16


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


def new_nonce() -> str:
    return os.urandom(NONCE_BYTES).hex()


def _message(nonce: str, agent_id: str, pid: int) -> bytes:
    return f"{nonce}|{agent_id}|{pid}".encode()


def proof(secret: bytes, nonce: str, agent_id: str, pid: int) -> str:
    return hmac.new(secret, _message(nonce, agent_id, pid), hashlib.sha256).hexdigest()


def verify(secret: bytes | None, nonce: str | None, agent_id: object, pid: object,
           given: object) -> bool:
    """True only for the proof of (nonce, agent_id, pid) under secret; any odd type is False."""
    if not secret or not nonce or not isinstance(agent_id, str) or not isinstance(given, str) \
            or not isinstance(pid, int) or isinstance(pid, bool):
        return False
    # bytes, not str: compare_digest refuses non-ASCII str (a forged proof must not raise)
    return hmac.compare_digest(proof(secret, nonce, agent_id, pid).encode(),
                               given.encode("utf-8", "surrogatepass"))
