"""ctx.service wiring (runtime.agents.services): guard decisions become events in the calling
task's trace and metrics; [services.NAME] tables are checked when the config loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.agents.agent import _CURRENT, AgentContext, TaskHandle
from runtime.agents.services import agent_guards
from runtime.config import parse_config
from runtime.errors import InvalidInput, NotFound
from runtime.guards.errors import ServiceError
from runtime.observability.metrics import EventMetrics
from runtime.observability.trace_context import TraceContext
from tests.support.helpers import FakeClock


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, TraceContext | None, dict]] = []

    def __call__(self, type_: str, trace: TraceContext | None = None, **fields) -> None:
        self.events.append((type_, trace, fields))


def test_decisions_are_events_in_the_running_tasks_trace_and_metrics():
    sink, clock = Sink(), FakeClock()
    guards = agent_guards({"api": {"retries": 0, "cache_ttl_s": 60,
                                   "breaker": {"min_calls": 1, "window_calls": 2, "open_s": 30}}},
                          None, sink, clock=clock)
    svc = guards.service("api")
    trace = TraceContext.new_trace()
    handle = TaskHandle("t1", 1, "cap", trace, sink)
    token = _CURRENT.set(handle)
    try:
        assert svc.call(lambda x: x * 2, 21) == 42  # a miss, then
        assert svc.call_with(lambda x: x * 2, (21,), key=b"k") == 42
        assert svc.call_with(lambda x: x * 3, (21,), key=b"k") == 42  # a hit on the explicit key

        def broken() -> None:
            raise ServiceError("boom", retryable=True)
        with pytest.raises(ServiceError):
            svc.call_with(broken, cache=False)
    finally:
        _CURRENT.reset(token)
    types = [t for t, _, _ in sink.events]
    assert "service.cache_hit" in types and "breaker.transition" in types
    for _, tr, fields in sink.events:
        assert tr is trace and fields["task_id"] == "t1"
    metrics = EventMetrics()
    for type_, _, fields in sink.events:
        metrics.observe({"type": type_, "ts": 1.0, **fields})
    assert metrics.value("agora_service_decisions_total", service="api", decision="cache_hit") == 1
    assert metrics.value("agora_breaker_state", breaker="api") == 2.0  # open
    assert metrics.value("agora_breaker_transitions_total", breaker="api", state="open") == 1


def test_outside_a_handler_decisions_are_system_events():
    sink = Sink()
    svc = agent_guards({"api": {"cache_ttl_s": 5}}, None, sink).service("api")
    svc.call(lambda: 1)
    assert sink.events and all(tr is None and "task_id" not in f for _, tr, f in sink.events)


def test_services_are_checked_at_load_and_ctx_service_names_what_is_missing():
    cfg = parse_config({"services": {"llm": {"rate": 5, "cache_ttl_s": 60}}}, Path("/tmp"), Path("/tmp"))
    assert cfg.services == {"llm": {"rate": 5, "cache_ttl_s": 60}}
    with pytest.raises(InvalidInput, match="unknown key"):
        parse_config({"services": {"llm": {"rat": 5}}}, Path("/tmp"), Path("/tmp"))
    with pytest.raises(InvalidInput, match="concurrency"):
        parse_config({"pools": {"p": {"agent": "m:A", "concurrency": 0}}}, Path("/tmp"), Path("/tmp"))
    ctx = AgentContext("a.0", "a", 0, {}, None, Sink())
    with pytest.raises(NotFound, match="llm"):
        ctx.service("llm")
    ctx.guards = agent_guards(cfg.services, None, Sink())
    assert ctx.service("llm").name == "llm"
    with pytest.raises(NotFound, match="configured: \\['llm'\\]"):
        ctx.service("search")
