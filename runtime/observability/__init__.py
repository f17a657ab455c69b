"""Observability: trace context carried by every message (``trace_context``), structured
events every process emits (``events``), the telemetry process that writes them down
(``telemetry``), reading the log back (``eventlog``), metrics folded from events
(``metrics``), span trees of one trace (``tracing``), and the coordinator service that
serves ``trace``/``metrics``/``top`` (``service``).

May import: ``runtime.errors`` and, for ``service`` only, the coordinator's service
surface (``runtime.coordinator.host``, ``runtime.coordinator.commands``).
"""

from runtime.observability.events import Emitter
from runtime.observability.trace_context import TraceContext, new_id

__all__ = ["Emitter", "TraceContext", "new_id"]
