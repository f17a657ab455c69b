"""Pipelines: a DAG of task steps whose inputs may reference earlier steps' outputs.

::

    {"name": "rag",
     "steps": [
       {"id": "embed", "capability": "embed", "input": {"text": "..."}},
       {"id": "search", "capability": "search",
        "input": {"vector": {"$ref": "embed.vector"}, "k": 5},
        "options": {"max_attempts": 2}},
       {"id": "answer", "capability": "llm",
        "input": {"docs": {"$ref": "search"}, "first": {"$ref": "search.hits.0.text"}},
        "consensus": {"k": 3, "method": "borda"}}]}

Everything here is pure: ``parse_pipeline`` validates at submit time and names the
offending step; ``Pipeline.topological_order``, ``Pipeline.ready_steps`` and
``resolve_inputs`` drive execution.

Decisions where the spec was silent:

* A reference is a JSON object whose *only* key is ``"$ref"``, anywhere inside a step's
  input; its value is ``"stepid"`` or ``"stepid.path.to.field"``.  An object with
  ``"$ref"`` and other keys is refused as ambiguous.  A path segment that is a decimal
  number indexes a list (``hits.0.text``).
* Step ids match ``[A-Za-z0-9_-]{1,64}`` (no dot: the dot separates the path).
* Steps may be listed in any order; the DAG decides.  ``topological_order`` breaks ties
  by listing order, so it is deterministic.
* Step options are task options (runtime.tasks.task) without ``idempotency_key``: keys belong to
  whole submissions, and a step key would collide on the second run of a pipeline.
* ``consensus`` asks ``k`` agents (2..16) and combines by ``method``; the method names
  are the ones the running consensus service accepts (``methods``: the coordinator passes
  those its decisions service registered; coordination.voting owns the vocabulary).  The journal
  stores a consensus step as one task; the coordinator runs the k calls and the vote
  inside one attempt.
* At most ``MAX_STEPS`` (1000) steps, so validation stays cheap for an untrusted request.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidInput, InvalidPipeline
from runtime.tasks.task import TaskSpec, check_capability, check_json, parse_options

__all__ = ["Pipeline", "Step", "Consensus", "parse_pipeline", "resolve_inputs",
           "resolve_refs", "find_refs", "MAX_STEPS",
           "PIPELINE_STATES", "PIPELINE_TERMINAL"]

#: A pipeline runs until every step has ended, then settles (runtime.tasks.journal);
#: ``cancelled`` when the user cancelled it.
PIPELINE_STATES = ("running", "succeeded", "failed", "cancelled")
PIPELINE_TERMINAL = frozenset(PIPELINE_STATES[1:])

MAX_STEPS = 1000
STEP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
STEP_FIELDS = ("id", "capability", "input", "options", "consensus")
STEP_OPTIONS = ("deadline", "max_attempts", "priority", "budget")


@dataclass(frozen=True, slots=True)
class Consensus:
    k: int
    method: str


@dataclass(frozen=True, slots=True)
class Step:
    """One step: its task (input is a template with refs), deps and optional consensus."""

    id: str
    spec: TaskSpec
    deps: tuple[str, ...] = ()
    consensus: Consensus | None = None


@dataclass(frozen=True)
class Pipeline:
    name: str
    steps: tuple[Step, ...]
    by_id: dict[str, Step] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_id", {s.id: s for s in self.steps})

    def topological_order(self) -> list[str]:
        """Step ids so that every step comes after the steps it references."""
        return _topological(self.steps)

    def ready_steps(self, done: Iterable[str]) -> list[str]:
        """Steps not in ``done`` whose every dependency is in ``done``, in listing order."""
        done = set(done)
        return [s.id for s in self.steps if s.id not in done and done.issuperset(s.deps)]

    def to_json(self) -> dict[str, Any]:
        """The validated form (absolute deadlines, deps spelled out), as the journal keeps it."""
        return {"name": self.name, "steps": [_step_json(s) for s in self.steps]}


def _step_json(step: Step) -> dict[str, Any]:
    options = step.spec.options()
    options.pop("idempotency_key")
    consensus = step.consensus and {"k": step.consensus.k, "method": step.consensus.method}
    return {"id": step.id, "capability": step.spec.capability, "input": step.spec.input,
            "options": options, "consensus": consensus, "deps": list(step.deps)}


# -- references --------------------------------------------------------------------------

def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and "$ref" in value


def find_refs(template: Any) -> list[str]:
    """Every ``$ref`` string inside ``template`` (depth first, in order)."""
    found: list[str] = []
    stack = [template]
    while stack:
        node = stack.pop()
        if _is_ref(node):
            found.append(node["$ref"])
        elif isinstance(node, dict):
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def _follow(value: Any, path: list[str]) -> Any:
    """The value at ``path`` inside ``value``; KeyError naming the first missing segment."""
    for i, seg in enumerate(path):
        if isinstance(value, dict) and seg in value:
            value = value[seg]
        elif isinstance(value, list) and seg.isdecimal() and int(seg) < len(value):
            value = value[int(seg)]
        else:
            raise KeyError(".".join(path[: i + 1]))
    return value


def _lookup(step_id: str, ref: str, outputs: Mapping[str, Any]) -> Any:
    source, *path = ref.split(".")
    if source not in outputs:
        raise InvalidPipeline(f"step {step_id!r}: input references {ref!r} but step "
                              f"{source!r} has no output yet", step=step_id, ref=ref,
                              hint="resolve a step only once every step it references succeeded")
    try:
        return _follow(outputs[source], path)
    except KeyError as exc:
        raise InvalidPipeline(
            f"step {step_id!r}: input references {ref!r} but the output of step {source!r} "
            f"has no {exc.args[0]!r}", step=step_id, ref=ref,
            hint=f"check the $ref path against what the {source!r} capability returns") from None


def resolve_refs(step_id: str, template: Any, outputs: Mapping[str, Any]) -> Any:
    """``template`` with every ``{"$ref": ...}`` replaced by the referenced output value."""
    if _is_ref(template):
        return _lookup(step_id, template["$ref"], outputs)
    if isinstance(template, dict):
        return {k: resolve_refs(step_id, v, outputs) for k, v in template.items()}
    if isinstance(template, list):
        return [resolve_refs(step_id, v, outputs) for v in template]
    return template


def resolve_inputs(step: Step, outputs: Mapping[str, Any]) -> Any:
    """The step's input with references substituted from ``outputs`` (step id -> output)."""
    return resolve_refs(step.id, step.spec.input, outputs)


# -- validation ---------------------------------------------------------------------------

def _fail(step_id: str | None, message: str, hint: str = "", **details: Any) -> InvalidPipeline:
    where = f"step {step_id!r}: " if step_id is not None else "pipeline: "
    return InvalidPipeline(where + message, hint=hint or None, step=step_id, **details)


def _check_ref_shapes(step_id: str, template: Any) -> None:
    stack = [template]
    while stack:
        node = stack.pop()
        if isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if len(node) != 1 or not isinstance(ref, str) or not ref:
                raise _fail(step_id, f"bad reference {node!r:.120}",
                            'a reference is {"$ref": "stepid"} or {"$ref": "stepid.path"}, alone in its object')
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _consensus(step_id: str, obj: Any) -> Consensus | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or set(obj) - {"k", "method"}:
        raise _fail(step_id, f"consensus must be {{'k': int, 'method': str}}, got {obj!r:.120}")
    k, method = obj.get("k"), obj.get("method")
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 16:
        raise _fail(step_id, f"consensus.k must be an integer in 2..16, got {k!r}")
    if not isinstance(method, str) or not method:
        raise _fail(step_id, f"consensus.method must be a method name, got {method!r:.80}")
    return Consensus(k, method)


def _check_methods(steps: list[Step], methods: Collection[str]) -> None:
    for step in steps:
        if step.consensus is not None and step.consensus.method not in methods:
            raise _fail(step.id, f"consensus.method {step.consensus.method!r} is unknown",
                        f"methods are {', '.join(sorted(methods))}" if methods
                        else "no consensus service runs in this daemon")


def _step_id(obj: Any, index: int) -> str:
    if not isinstance(obj, dict):
        raise _fail(None, f"steps[{index}] must be an object, got {type(obj).__name__}")
    sid = obj.get("id")
    if not isinstance(sid, str) or not STEP_ID.fullmatch(sid):
        raise _fail(None, f"steps[{index}].id must match [A-Za-z0-9_-]{{1,64}}, got {sid!r:.80}")
    return sid


def _parse_step(obj: dict[str, Any], sid: str, now: float,
                capabilities: frozenset[str] | set[str] | None) -> Step:
    unknown = sorted(str(k) for k in obj if k not in STEP_FIELDS)
    if unknown:
        raise _fail(sid, f"unknown field(s) {', '.join(unknown)}", f"allowed: {', '.join(STEP_FIELDS)}")
    capability = obj.get("capability")
    if not isinstance(capability, str) or not capability:
        raise _fail(sid, f"capability must be a non-empty string, got {capability!r:.80}")
    check_capability(capability, capabilities, f"step {sid!r} capability")
    template = obj.get("input")
    check_json(template, f"step {sid!r} input")
    _check_ref_shapes(sid, template)
    try:
        options = parse_options(obj.get("options", {}), now=now, where=f"step {sid!r}",
                                allowed=STEP_OPTIONS)
    except InvalidInput as exc:
        raise InvalidPipeline(exc.message, hint=exc.hint or None, step=sid, **exc.details) from exc
    deps = tuple(dict.fromkeys(ref.split(".", 1)[0] for ref in find_refs(template)))
    return Step(sid, TaskSpec(capability, template, **options), deps,
                _consensus(sid, obj.get("consensus")))


def _check_deps(steps: tuple[Step, ...]) -> None:
    ids = {s.id for s in steps}
    for s in steps:
        for dep in s.deps:
            if dep not in ids:
                raise _fail(s.id, f"input references step {dep!r}, which does not exist",
                            f"steps are {', '.join(sorted(ids))}", ref=dep)


def _find_cycle(steps: tuple[Step, ...]) -> list[str] | None:
    """One cycle as [a, b, ..., a] (a references b ...), or None.  Iterative DFS."""
    deps = {s.id: s.deps for s in steps}
    colour: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in deps:
        if root in colour:
            continue
        path, iters = [root], [iter(deps[root])]
        colour[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                iters.pop()
            elif colour.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in colour:
                colour[nxt] = 1
                path.append(nxt)
                iters.append(iter(deps[nxt]))
    return None


def _topological(steps: tuple[Step, ...]) -> list[str]:
    """Kahn's algorithm; among ready steps the earlier-listed goes first."""
    order: list[str] = []
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [s for s in pending if done.issuperset(s.deps)]
        if not ready:
            raise _fail(None, "the steps form a cycle")  # parse_pipeline refuses these first
        order.extend(s.id for s in ready)
        done.update(s.id for s in ready)
        pending = [s for s in pending if s.id not in done]
    return order


def _steps_list(obj: dict[str, Any]) -> list[Any]:
    steps = obj.get("steps")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        raise _fail(None, f"steps must be a list of 1..{MAX_STEPS} step objects, got {steps!r:.80}")
    return steps


def parse_pipeline(obj: Any, *, now: float,
                   capabilities: frozenset[str] | set[str] | None = None,
                   methods: Collection[str] | None = None) -> Pipeline:
    """Validate an untrusted pipeline; InvalidPipeline names the offending step.

    Refused: unknown fields, duplicate ids, unknown capabilities (when ``capabilities``
    is given; UnknownCapability names the step), unknown consensus methods (when
    ``methods`` is given), bad options, malformed or dangling references, and cycles (the
    message spells the cycle: ``a -> b -> a``).
    """
    if not isinstance(obj, dict):
        raise _fail(None, f"a pipeline must be an object, got {type(obj).__name__}")
    if set(obj) - {"name", "steps"}:
        raise _fail(None, f"unknown field(s) {', '.join(sorted(map(str, set(obj) - {'name', 'steps'})))}",
                    "allowed: name, steps")
    name = obj.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise _fail(None, f"name must be a string of 1..200 characters, got {name!r:.80}")
    steps: list[Step] = []
    seen: set[str] = set()
    for index, raw in enumerate(_steps_list(obj)):
        sid = _step_id(raw, index)
        if sid in seen:
            raise _fail(sid, f"duplicate step id (steps[{index}])", "give every step its own id")
        seen.add(sid)
        steps.append(_parse_step(raw, sid, now, capabilities))
    if methods is not None:
        _check_methods(steps, methods)
    _check_deps(tuple(steps))
    cycle = _find_cycle(tuple(steps))
    if cycle:
        raise _fail(cycle[0], f"references form a cycle: {' -> '.join(cycle)}",
                    "a step may only reference steps that do not depend on it", cycle=cycle)
    return Pipeline(name, tuple(steps))
