"""Tasks: what a user submits, the states a task goes through, and its retry backoff.

A task is a capability name, a JSON input and options.  On the wire (a client's request,
a task file, a pipeline step)::

    {"capability": "summarize",
     "input": {...any JSON value...},
     "options": {"deadline": 30.0,          # seconds from submission (see below)
                 "max_attempts": 3,         # attempts in all, first one included
                 "priority": 0,             # higher runs first
                 "idempotency_key": "k-1",  # a second submit with it returns the first id
                 "budget": 100,             # credits the market may spend; absent = no cap
                 "timeout_s": 10.0,         # execution time per attempt (default: the pool's)
                 "retryable": ["IOError"],  # only these exception types are retried
                 "fatal": ["KeyError"]}}    # these end the task at once (agora.Fatal always does)

Decisions where the spec was silent:

* ``deadline`` is given in *seconds from submission* and stored as an absolute epoch
  (``TaskSpec.deadline``) computed with the ``now`` passed to ``parse_task``.  A relative
  value cannot be wrong about the client's clock, and the absolute value stored in the
  journal keeps the deadline where it was across a daemon restart.
* Limits: ``max_attempts`` in 1..100, ``priority`` in -1e6..1e6, ``budget`` >= 0 and
  below 2**53, ``idempotency_key`` 1..200 characters, ``capability`` 1..200 characters.
  Booleans are not integers here (JSON ``true`` is not a priority).
* ``timeout_s`` bounds one attempt (0 < t <= 1e6 s; absent: the pool's ``timeout_s``,
  absent there too: no limit); an attempt past it is cancelled (the agent gets a cancel
  frame, then is killed after the pool's ``cancel_grace_s``) and counts as a failure
  (error code ``TIMED_OUT``) for the retry policy, the retry preferring another agent.
  ``deadline`` stays the wall clock of the whole task; its end state keeps its name
  ``deadline_exceeded`` (the issue's "timed_out").
* Retry policy (``error_outcome``): a handler error whose type is ``Fatal`` (or whose wire
  code is ``FATAL``), or is in the task's or pool's ``fatal`` list, or is not in a
  non-empty ``retryable`` list, ends the task at once (outcome ``fatal``); any other
  error is retried with backoff while attempts are left.  Type names are matched on the
  class name only (``"TimeoutError"``), as the agent reports ``type(e).__name__``.
* The input must be encodable by orjson (it is checked, so a Python caller cannot sneak a
  set or an object into the journal).

State machine (``transition(state, event)`` is the whole truth; everything else derives
from ``TRANSITIONS``)::

    blocked --unblock--> queued --start--> running --succeed--> succeeded
                           ^  ^               |  |---fail-------> failed
                           |  +---requeue-----+  |---dead_letter> dead_lettered
                           |                     +---fail_retry--> retry_wait
                           +-------retry_due---------------------------+
    retry_wait --start--> running   (a due retry may be started directly)
    queued, retry_wait --succeed--> succeeded  (a late success of an earlier attempt)
    any non-terminal --cancel--> cancelled,  --deadline--> deadline_exceeded
    retry_wait --dead_letter--> dead_lettered

``blocked`` is a pipeline step whose inputs do not exist yet.  ``requeue`` is an attempt
that did not finish (the agent died, its lease expired, the daemon restarted) while
attempts are left; ``dead_letter`` is the same with no attempt left (a poison task).
``fail_retry`` / ``fail`` is a handler error with / without attempts left.
``interrupted`` is an attempt a graceful stop cut short: the task goes back to ``queued``
and the attempt is not charged (``charged`` attempts exclude it), so a restart never
burns an attempt.  ``redrive`` (``agora retry ID``) puts a dead-lettered or failed task
back in the queue with fresh attempts, its attempt history kept.
``outcome_event`` maps an attempt's outcome to the event, so the journal and the
coordinator apply one rule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from runtime.errors import Conflict, InvalidInput, UnknownCapability

__all__ = [
    "TaskSpec", "parse_task", "parse_options", "transition", "sources", "outcome_event",
    "retry_delay", "IllegalTransition", "STATES", "TERMINAL", "ACTIVE", "EVENTS",
    "OUTCOMES", "TRANSITIONS", "error_outcome", "REDRIVABLE",
]

MAX_ATTEMPTS_LIMIT = 100
PRIORITY_LIMIT = 1_000_000
BUDGET_LIMIT = 2**53
NAME_LIMIT = 200
DEFAULT_MAX_ATTEMPTS = 3

STATES = ("blocked", "queued", "running", "retry_wait", "succeeded", "failed",
          "dead_lettered", "cancelled", "deadline_exceeded")
TERMINAL = frozenset({"succeeded", "failed", "dead_lettered", "cancelled", "deadline_exceeded"})
ACTIVE = tuple(s for s in STATES if s not in TERMINAL)

TRANSITIONS: dict[tuple[str, str], str] = {
    ("blocked", "unblock"): "queued",
    ("queued", "start"): "running",
    ("retry_wait", "start"): "running",
    ("running", "succeed"): "succeeded",
    # A late success of an earlier attempt (presumed lost, then requeued) still counts:
    # the first success wins whatever attempt it came from.
    ("queued", "succeed"): "succeeded",
    ("retry_wait", "succeed"): "succeeded",
    ("running", "fail"): "failed",
    ("running", "fail_retry"): "retry_wait",
    ("running", "requeue"): "queued",
    ("running", "dead_letter"): "dead_lettered",
    ("retry_wait", "dead_letter"): "dead_lettered",
    ("retry_wait", "retry_due"): "queued",
    ("running", "interrupt"): "queued",
    # nobody can take it (the market: no bid within the budget after its rounds)
    ("queued", "reject"): "failed",
    ("retry_wait", "reject"): "failed",
    ("dead_lettered", "redrive"): "queued",
    ("failed", "redrive"): "queued",
    **{(s, "cancel"): "cancelled" for s in ACTIVE},
    **{(s, "deadline"): "deadline_exceeded" for s in ACTIVE},
}
EVENTS = tuple(sorted({e for _, e in TRANSITIONS}))

#: What an attempt can end with: the handler returned (``succeeded``), raised
#: (``failed``: retried per policy), raised an error retrying cannot fix (``fatal``), or
#: the attempt did not finish (``crashed``, shown as LOST: agent died, lease expired, daemon
#: restarted), or a graceful stop cut it short (``interrupted``: not charged).
OUTCOMES = ("succeeded", "failed", "fatal", "crashed", "interrupted")
#: States ``agora retry`` can take a task out of.
REDRIVABLE = ("dead_lettered", "failed")


class IllegalTransition(Conflict):
    """A task cannot take this event in its current state (it moved on, or never could)."""

    code = "ILLEGAL_TRANSITION"
    default_hint = "read the task's current state (`agora task ID`) before acting on it"


def transition(state: str, event: str) -> str:
    """The state after ``event`` in ``state``; IllegalTransition if the machine forbids it."""
    if state not in STATES:
        raise InvalidInput(f"unknown task state {state!r}", hint=f"states are {', '.join(STATES)}")
    if event not in EVENTS:
        raise InvalidInput(f"unknown task event {event!r}", hint=f"events are {', '.join(EVENTS)}")
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"a task in state {state!r} cannot take event {event!r}", state=state, event=event
        ) from None


def sources(event: str) -> tuple[str, ...]:
    """The states from which ``event`` is legal (used to build conditional UPDATEs)."""
    return tuple(s for s in STATES if (s, event) in TRANSITIONS)


def outcome_event(outcome: str, attempts: int, max_attempts: int) -> str:
    """The event an attempt's outcome causes, given attempts made so far (this one included)."""
    left = attempts < max_attempts
    if outcome == "succeeded":
        return "succeed"
    if outcome == "failed":
        return "fail_retry" if left else "fail"
    if outcome == "fatal":
        return "fail"
    if outcome == "crashed":
        return "requeue" if left else "dead_letter"
    if outcome == "interrupted":
        return "interrupt"
    raise InvalidInput(f"unknown attempt outcome {outcome!r}", hint=f"outcomes are {', '.join(OUTCOMES)}")


def error_outcome(error: Any, fatal: tuple[str, ...] | list[str] = (),
                  retryable: tuple[str, ...] | list[str] = ()) -> str:
    """``failed`` (retried per policy) or ``fatal`` (ends the task) for a handler's error
    as the agent reported it (``{"type", "message", "code"?}``).  Pure."""
    if not isinstance(error, dict):
        return "failed"
    kind = str(error.get("type") or "")
    if kind == "Fatal" or error.get("code") == "FATAL" or kind in fatal:
        return "fatal"
    if retryable and kind not in retryable:
        return "fatal"
    return "failed"


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempt-1))].

    ``attempt`` is the number of the attempt that just failed (1 for the first).  Full
    jitter (AWS architecture blog, "Exponential Backoff and Jitter") spreads retries of
    many tasks that failed together instead of having them return in lockstep.
    """
    if attempt < 1 or base < 0 or cap < 0:
        raise InvalidInput(f"retry_delay needs attempt >= 1 and base, cap >= 0, "
                           f"got attempt={attempt}, base={base}, cap={cap}")
    exponent = min(attempt - 1, 1023)  # 2.0**1024 overflows; cap wins long before that
    return rng.random() * min(cap, base * 2.0**exponent)


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated task.  ``deadline`` is an absolute epoch (seconds) or None."""

    capability: str
    input: Any = None
    deadline: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    priority: int = 0
    idempotency_key: str | None = None
    budget: int | None = None
    timeout_s: float | None = None
    retryable: tuple[str, ...] = ()
    fatal: tuple[str, ...] = ()

    FIELDS: ClassVar[tuple[str, ...]] = ("capability", "input", "options")

    def options(self) -> dict[str, Any]:
        """The options as stored in the journal (deadline absolute there)."""
        return {"deadline": self.deadline, "max_attempts": self.max_attempts,
                "priority": self.priority, "idempotency_key": self.idempotency_key,
                "budget": self.budget, "timeout_s": self.timeout_s,
                "retryable": list(self.retryable), "fatal": list(self.fatal)}


def _where(where: str, field: str) -> str:
    return f"{where}.{field}" if where else field


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidInput(f"{field} must be an integer in {lo}..{hi}, got {value!r}", field=field)
    return value


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= NAME_LIMIT:
        raise InvalidInput(f"{field} must be a string of 1..{NAME_LIMIT} characters, "
                           f"got {value!r:.80}", field=field)
    return value


def _deadline(value: Any, field: str, now: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise InvalidInput(f"{field} must be a number of seconds from now, > 0 and < 1e9, "
                           f"got {value!r}", field=field)
    return now + float(value)


def _refuse_unknown(obj: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s) {', '.join(_where(where, k) for k in unknown)}",
                           hint=f"allowed here: {', '.join(allowed)}", field=_where(where, unknown[0]))


def parse_options(obj: Any, *, now: float, where: str = "",
                  allowed: tuple[str, ...] = ("deadline", "max_attempts", "priority",
                                              "idempotency_key", "budget", "timeout_s",
                                              "retryable", "fatal")) -> dict[str, Any]:
    """Validate an ``options`` object; return TaskSpec keyword arguments (deadline absolute)."""
    where = _where(where, "options")
    if not isinstance(obj, dict):
        raise InvalidInput(f"{where} must be an object, got {type(obj).__name__}", field=where)
    _refuse_unknown(obj, allowed, where)
    out: dict[str, Any] = {}
    if obj.get("deadline") is not None:
        out["deadline"] = _deadline(obj["deadline"], _where(where, "deadline"), now)
    if "max_attempts" in obj:
        out["max_attempts"] = _int(obj["max_attempts"], _where(where, "max_attempts"), 1, MAX_ATTEMPTS_LIMIT)
    if "priority" in obj:
        out["priority"] = _int(obj["priority"], _where(where, "priority"), -PRIORITY_LIMIT, PRIORITY_LIMIT)
    if obj.get("idempotency_key") is not None:
        out["idempotency_key"] = _name(obj["idempotency_key"], _where(where, "idempotency_key"))
    if obj.get("budget") is not None:
        out["budget"] = _int(obj["budget"], _where(where, "budget"), 0, BUDGET_LIMIT)
    if obj.get("timeout_s") is not None:
        out["timeout_s"] = _seconds(obj["timeout_s"], _where(where, "timeout_s"))
    for key in ("retryable", "fatal"):
        if obj.get(key) is not None:
            out[key] = type_names(obj[key], _where(where, key))
    return out


def _seconds(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1e6:
        raise InvalidInput(f"{field} must be a number of seconds, > 0 and <= 1e6, got {value!r}",
                           field=field)
    return float(value)


def type_names(value: Any, field: str) -> tuple[str, ...]:
    """A list of exception class names (``["KeyError", "TimeoutError"]``), at most 50."""
    if not isinstance(value, list) or len(value) > 50 or not all(
            isinstance(v, str) and v.isidentifier() for v in value):
        raise InvalidInput(f"{field} must be a list of at most 50 exception class names, "
                           f"got {value!r:.80}", field=field)
    return tuple(value)


def check_json(value: Any, field: str) -> None:
    """Refuse a value orjson cannot encode (sets, objects, NaN-free floats are fine)."""
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidInput(f"{field} must be a JSON value: {exc}", field=field) from exc


def check_capability(capability: str, capabilities: frozenset[str] | set[str] | None,
                     field: str) -> None:
    if capabilities is not None and capability not in capabilities:
        known = ", ".join(sorted(capabilities)[:20]) or "none"
        raise UnknownCapability(f"{field}: no pool offers capability {capability!r} "
                                f"(offered: {known})", field=field, capability=capability)


def parse_task(obj: Any, *, now: float,
               capabilities: frozenset[str] | set[str] | None = None) -> TaskSpec:
    """Validate an untrusted task object; InvalidInput names the field and what was expected.

    ``now`` turns the relative deadline into an absolute one; ``capabilities``, when
    given, is the set of capabilities some pool offers (UnknownCapability otherwise).
    """
    if not isinstance(obj, dict):
        raise InvalidInput(f"a task must be an object, got {type(obj).__name__}", field="task")
    _refuse_unknown(obj, TaskSpec.FIELDS, "")
    if "capability" not in obj:
        raise InvalidInput("capability is missing", hint="a task needs a capability name", field="capability")
    capability = _name(obj["capability"], "capability")
    check_capability(capability, capabilities, "capability")
    check_json(obj.get("input"), "input")
    options = parse_options(obj.get("options", {}), now=now)
    return TaskSpec(capability, obj.get("input"), **options)
