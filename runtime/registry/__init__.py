"""The registry: who is alive and what each can do.

From the bottom: the entry model, its checks and query predicates, and the ``Backend``
protocol (``model``); stable key hashing (``partitioning``); the pure in-process store and
the ``local`` backend (``_local``); the shared-memory table each partition writes and every
process reads without a round trip (``table``); one partition process (``_partition``);
the ``partitioned`` backend every process of the tree uses (``_client``); and the
registry inside the daemon: partitions under a supervisor, ``make_backend`` and
``open_registry`` (``service``).

``service`` is imported by name (it reads ``runtime.config``, which reads this package's
vocabulary).  May import: ``runtime.errors``, ``runtime.config``, ``runtime.wire``, ``runtime.supervision``,
``runtime.observability``.
"""

from runtime.registry._client import PartitionedBackend
from runtime.registry._local import LocalBackend
from runtime.registry._partition import partition_main
from runtime.registry.backends import BACKENDS, make_backend
from runtime.registry.model import Backend, Entry, Predicate, parse_filter, parse_filters

__all__ = ["PartitionedBackend", "LocalBackend", "partition_main", "Backend", "Entry", "Predicate",
           "parse_filter", "parse_filters", "BACKENDS", "make_backend"]
