"""runtime.tasks.task: parsing untrusted tasks, the state machine, and full-jitter backoff."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import InvalidInput, UnknownCapability
from runtime.tasks.task import (
    EVENTS,
    OUTCOMES,
    STATES,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    TaskSpec,
    outcome_event,
    parse_task,
    retry_delay,
    sources,
    transition,
)

NOW = 1_700_000_000.0


def test_parse_full_task():
    spec = parse_task({"capability": "summarize", "input": {"text": "hi", "n": [1, 2]},
                       "options": {"deadline": 30, "max_attempts": 5, "priority": -2,
                                   "idempotency_key": "k1", "budget": 7}}, now=NOW)
    assert spec == TaskSpec("summarize", {"text": "hi", "n": [1, 2]}, deadline=NOW + 30,
                            max_attempts=5, priority=-2, idempotency_key="k1", budget=7)


def test_defaults():
    spec = parse_task({"capability": "x"}, now=NOW)
    assert (spec.input, spec.deadline, spec.max_attempts, spec.priority, spec.idempotency_key,
            spec.budget) == (None, None, 3, 0, None, None)


@pytest.mark.parametrize("obj, field", [
    ({"capability": "x", "colour": 1}, "colour"),
    ({"capability": "x", "options": {"retries": 2}}, "options.retries"),
    ({"capability": "x", "options": {"priority": 1, "zz": 0, "aa": 0}}, "options.aa"),
])
def test_unknown_fields_are_refused_by_name(obj, field):
    with pytest.raises(InvalidInput) as info:
        parse_task(obj, now=NOW)
    assert info.value.details["field"] == field
    assert field in info.value.message


@pytest.mark.parametrize("obj, field, expected", [
    ([], "task", "object"),
    ({}, "capability", "missing"),
    ({"capability": ""}, "capability", "string of 1..200"),
    ({"capability": 3}, "capability", "string"),
    ({"capability": "x", "options": []}, "options", "object"),
    ({"capability": "x", "options": {"deadline": 0}}, "options.deadline", "> 0"),
    ({"capability": "x", "options": {"deadline": "soon"}}, "options.deadline", "seconds"),
    ({"capability": "x", "options": {"deadline": True}}, "options.deadline", "seconds"),
    ({"capability": "x", "options": {"max_attempts": 0}}, "options.max_attempts", "1..100"),
    ({"capability": "x", "options": {"max_attempts": 2.0}}, "options.max_attempts", "integer"),
    ({"capability": "x", "options": {"priority": True}}, "options.priority", "integer"),
    ({"capability": "x", "options": {"priority": 10**7}}, "options.priority", "integer"),
    ({"capability": "x", "options": {"budget": -1}}, "options.budget", "integer"),
    ({"capability": "x", "options": {"idempotency_key": ""}}, "options.idempotency_key", "string"),
    ({"capability": "x", "options": {"idempotency_key": "k" * 201}}, "options.idempotency_key", "string"),
    ({"capability": "x", "input": {1, 2}}, "input", "JSON"),
    ({"capability": "x", "input": {"n": 2**70}}, "input", "JSON"),
])
def test_bad_values_name_field_and_expectation(obj, field, expected):
    with pytest.raises(InvalidInput) as info:
        parse_task(obj, now=NOW)
    assert info.value.details["field"] == field
    assert expected in info.value.message


def test_unknown_capability():
    with pytest.raises(UnknownCapability) as info:
        parse_task({"capability": "summarise"}, now=NOW, capabilities={"summarize", "embed"})
    assert "summarise" in info.value.message and "summarize" in info.value.message
    assert parse_task({"capability": "embed"}, now=NOW, capabilities={"embed"}).capability == "embed"


# -- state machine ------------------------------------------------------------------------

def test_happy_path_and_retries():
    s = transition("queued", "start")
    assert s == "running"
    assert transition(s, "fail_retry") == "retry_wait"
    assert transition("retry_wait", "retry_due") == "queued"
    assert transition("running", "requeue") == "queued"
    assert transition("running", "succeed") == "succeeded"
    assert transition("blocked", "unblock") == "queued"
    assert transition("running", "dead_letter") == "dead_lettered"


@given(st.sampled_from(STATES), st.sampled_from(EVENTS))
@settings(max_examples=200)
def test_transition_is_exactly_the_table(state, event):
    if (state, event) in TRANSITIONS:
        assert transition(state, event) == TRANSITIONS[(state, event)]
    else:
        with pytest.raises(IllegalTransition) as info:
            transition(state, event)
        assert state in info.value.message and event in info.value.message


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_take_no_event(state):
    """Only an operator's re-drive (`agora retry`) takes a dead letter or failure out."""
    for event in EVENTS:
        if event == "redrive" and state in ("dead_lettered", "failed"):
            assert transition(state, event) == "queued"
            continue
        with pytest.raises(IllegalTransition):
            transition(state, event)


def test_every_active_state_can_be_cancelled_and_expire():
    for state in set(STATES) - TERMINAL:
        assert transition(state, "cancel") == "cancelled"
        assert transition(state, "deadline") == "deadline_exceeded"


def test_unknown_state_or_event_is_invalid_input_not_illegal():
    with pytest.raises(InvalidInput) as info:
        transition("sleeping", "start")
    assert not isinstance(info.value, IllegalTransition)
    with pytest.raises(InvalidInput):
        transition("queued", "explode")


def test_sources():
    assert set(sources("start")) == {"queued", "retry_wait"}
    assert sources("unblock") == ("blocked",)


@pytest.mark.parametrize("outcome, attempts, max_attempts, event", [
    ("succeeded", 3, 3, "succeed"),
    ("failed", 1, 3, "fail_retry"),
    ("failed", 3, 3, "fail"),
    ("fatal", 1, 3, "fail"),
    ("crashed", 2, 3, "requeue"),
    ("crashed", 3, 3, "dead_letter"),
])
def test_outcome_event(outcome, attempts, max_attempts, event):
    assert outcome_event(outcome, attempts, max_attempts) == event
    assert outcome in OUTCOMES


def test_outcome_event_refuses_unknown():
    with pytest.raises(InvalidInput):
        outcome_event("meh", 1, 3)


# -- backoff ------------------------------------------------------------------------------

@given(st.integers(1, 5000), st.floats(0, 10), st.floats(0, 100), st.integers(0, 2**32))
@settings(max_examples=200)
def test_retry_delay_within_full_jitter_bounds(attempt, base, cap, seed):
    delay = retry_delay(attempt, base, cap, random.Random(seed))
    assert 0 <= delay <= min(cap, base * 2.0 ** min(attempt - 1, 1023))


def test_retry_delay_is_seeded_and_jittered():
    a = [retry_delay(4, 1.0, 100.0, random.Random(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(11)
    many = {retry_delay(4, 1.0, 100.0, rng) for _ in range(50)}
    assert len(many) > 40 and max(many) <= 8.0


def test_retry_delay_refuses_bad_arguments():
    with pytest.raises(InvalidInput):
        retry_delay(0, 1.0, 10.0, random.Random(0))
    with pytest.raises(InvalidInput):
        retry_delay(1, -1.0, 10.0, random.Random(0))
