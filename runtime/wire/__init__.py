"""The wire: how processes talk.  Length-prefixed orjson frames with limits on size, depth
and integers (``protocol``), the non-blocking unix-socket server plumbing every server of
the tree uses (``server``), where sockets live and how their directories stay private
(``paths``), waiting for a reply (``spin``), read sizes (``buffers``), and the Python
``Client`` of the control channel (``client``).

May import: ``runtime.errors``, ``runtime.observability.trace_context``; nothing above.
"""

from runtime.wire.client import Client
from runtime.wire.protocol import PROTOCOL_VERSION, Limits, default_limits

__all__ = ["Client", "Limits", "PROTOCOL_VERSION", "default_limits"]
