"""The registry: who is alive and what each can do.

From the bottom: the entry model, its checks and query predicates, and the ``Backend``
protocol (``model``); stable key hashing (``partitioning``); the pure in-process store and
the ``local`` backend (``_local``); the shared-memory table each partition writes and every
process reads without a round trip (``table``); one partition process (``_partition``);
the ``partitioned`` backend every process of the tree uses (``_client``); and the
registry inside the daemon: partitions under a supervisor, ``make_backend`` and
``open_registry`` (``service``).

May import: ``runtime.errors``, ``runtime.config``, ``runtime.wire``, ``runtime.supervision``,
``runtime.observability``.
"""

from runtime.registry.model import Backend, Entry, Predicate, parse_filter, parse_filters
from runtime.registry.backends import BACKENDS, make_backend
from runtime.registry.service import open_registry, registry_spec

__all__ = ["Backend", "Entry", "Predicate", "parse_filter", "parse_filters", "BACKENDS", "make_backend",
           "open_registry", "registry_spec"]
