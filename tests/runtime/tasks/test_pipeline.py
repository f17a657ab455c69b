"""runtime.tasks.pipeline: validation that names the step, ordering, readiness and $ref resolution."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import InvalidInput, InvalidPipeline, UnknownCapability
from runtime.tasks.pipeline import MAX_STEPS, Consensus, parse_pipeline, resolve_inputs

NOW = 1_700_000_000.0
CAPS = {"embed", "search", "llm"}


def rag() -> dict:
    return {"name": "rag", "steps": [
        {"id": "answer", "capability": "llm",
         "input": {"docs": {"$ref": "search"}, "first": {"$ref": "search.hits.0.text"},
                   "also": [{"deep": {"$ref": "embed.meta.model"}}]},
         "consensus": {"k": 3, "method": "borda"}},
        {"id": "embed", "capability": "embed", "input": {"text": "why?"},
         "options": {"deadline": 10, "priority": 2}},
        {"id": "search", "capability": "search", "input": {"vector": {"$ref": "embed.vector"}}},
    ]}


def test_parse_valid_pipeline():
    p = parse_pipeline(rag(), now=NOW, capabilities=CAPS)
    assert p.name == "rag"
    assert p.by_id["answer"].deps == ("search", "embed")
    assert p.by_id["answer"].consensus == Consensus(3, "borda")
    assert p.by_id["embed"].spec.deadline == NOW + 10 and p.by_id["embed"].spec.priority == 2
    assert p.topological_order() == ["embed", "search", "answer"]


def test_ready_steps():
    p = parse_pipeline(rag(), now=NOW)
    assert p.ready_steps(set()) == ["embed"]
    assert p.ready_steps({"embed"}) == ["search"]
    assert p.ready_steps({"embed", "search"}) == ["answer"]
    assert p.ready_steps({"embed", "search", "answer"}) == []


def test_to_json_keeps_deps_and_absolute_deadline():
    js = parse_pipeline(rag(), now=NOW).to_json()
    embed = next(s for s in js["steps"] if s["id"] == "embed")
    assert embed["options"]["deadline"] == NOW + 10 and embed["deps"] == []
    assert "idempotency_key" not in embed["options"]


METHODS = ("plurality", "borda", "irv")  # what a consensus service would register


def _error(obj, caps=None, cls=InvalidPipeline):
    with pytest.raises(cls) as info:
        parse_pipeline(obj, now=NOW, capabilities=caps, methods=METHODS)
    return info.value


def test_consensus_methods_are_the_services_and_none_without_one():
    ok = {"name": "p", "steps": [{"id": "a", "capability": "c", "consensus": {"k": 2, "method": "irv"}}]}
    assert parse_pipeline(ok, now=NOW, methods=METHODS).steps[0].consensus.method == "irv"
    with pytest.raises(InvalidPipeline, match="no consensus service"):
        parse_pipeline(ok, now=NOW, methods=())


def test_cycle_is_named():
    obj = {"name": "c", "steps": [
        {"id": "ok", "capability": "llm", "input": 1},
        {"id": "a", "capability": "llm", "input": {"x": {"$ref": "b.y"}}},
        {"id": "b", "capability": "llm", "input": [{"$ref": "c"}, {"$ref": "ok"}]},
        {"id": "c", "capability": "llm", "input": {"$ref": "a"}},
    ]}
    err = _error(obj)
    assert "a -> b -> c -> a" in err.message
    assert err.details["step"] == "a" and err.details["cycle"] == ["a", "b", "c", "a"]


def test_self_reference_is_a_cycle():
    err = _error({"name": "s", "steps": [{"id": "me", "capability": "llm", "input": {"$ref": "me.x"}}]})
    assert "me -> me" in err.message and err.details["step"] == "me"


def test_dangling_reference_names_step_and_target():
    obj = rag()
    obj["steps"][2]["input"] = {"vector": {"$ref": "embedd.vector"}}
    err = _error(obj)
    assert "'search'" in err.message and "'embedd'" in err.message
    assert err.details["step"] == "search"


def test_unknown_capability_names_step():
    obj = rag()
    obj["steps"][1]["capability"] = "embedder"
    err = _error(obj, CAPS, UnknownCapability)
    assert "'embed'" in err.message and "'embedder'" in err.message


def test_duplicate_id_named():
    obj = rag()
    obj["steps"].append({"id": "embed", "capability": "embed"})
    err = _error(obj)
    assert err.details["step"] == "embed" and "duplicate" in err.message


@pytest.mark.parametrize("step_patch, words", [
    ({"options": {"max_attempts": 0}}, ["'search'", "max_attempts"]),
    ({"options": {"idempotency_key": "k"}}, ["'search'", "idempotency_key"]),
    ({"options": "fast"}, ["'search'", "options"]),
    ({"consensus": {"k": 1, "method": "borda"}}, ["'search'", "consensus.k"]),
    ({"consensus": {"k": 3, "method": "dictator"}}, ["'search'", "dictator"]),
    ({"consensus": {"k": 3, "method": "borda", "x": 1}}, ["'search'", "consensus"]),
    ({"input": {"$ref": "embed", "extra": 1}}, ["'search'", "bad reference"]),
    ({"input": {"$ref": 5}}, ["'search'", "bad reference"]),
    ({"colour": "red"}, ["'search'", "colour"]),
    ({"capability": ""}, ["'search'", "capability"]),
])
def test_bad_step_named(step_patch, words):
    obj = rag()
    obj["steps"][2].update(step_patch)
    err = _error(obj)
    assert err.details["step"] == "search"
    for word in words:
        assert word in err.message


@pytest.mark.parametrize("obj, words", [
    ([], ["object"]),
    ({"name": "x"}, ["steps"]),
    ({"name": "x", "steps": []}, ["steps"]),
    ({"name": "", "steps": [{"id": "a", "capability": "x"}]}, ["name"]),
    ({"name": "x", "steps": [{"id": "a", "capability": "x"}], "when": 1}, ["when"]),
    ({"name": "x", "steps": [{"id": "a.b", "capability": "x"}]}, ["steps[0].id"]),
    ({"name": "x", "steps": ["a"]}, ["steps[0]"]),
    ({"name": "x", "steps": [{"id": f"s{i}", "capability": "x"} for i in range(MAX_STEPS + 1)]}, ["1000"]),
])
def test_bad_pipeline_shape(obj, words):
    err = _error(obj)
    for word in words:
        assert word in err.message


# -- resolution ---------------------------------------------------------------------------

OUTPUTS = {"embed": {"vector": [0.1, 0.2], "meta": {"model": "m1"}},
           "search": {"hits": [{"text": "first hit"}, {"text": "second"}]}}


def test_resolve_whole_output_nested_paths_and_list_index():
    p = parse_pipeline(rag(), now=NOW)
    assert resolve_inputs(p.by_id["answer"], OUTPUTS) == {
        "docs": OUTPUTS["search"], "first": "first hit", "also": [{"deep": "m1"}]}
    assert resolve_inputs(p.by_id["embed"], OUTPUTS) == {"text": "why?"}


def test_resolution_does_not_alias_or_mutate_template():
    p = parse_pipeline(rag(), now=NOW)
    before = repr(p.by_id["answer"].spec.input)
    resolve_inputs(p.by_id["answer"], OUTPUTS)
    assert repr(p.by_id["answer"].spec.input) == before


@pytest.mark.parametrize("outputs, missing", [
    ({"embed": OUTPUTS["embed"], "search": {"hits": []}}, "hits.0"),
    ({"embed": {"vector": [], "meta": {}}, "search": OUTPUTS["search"]}, "meta.model"),
    ({"embed": {"vector": [], "meta": "m"}, "search": OUTPUTS["search"]}, "meta.model"),
])
def test_missing_path_names_step_and_path(outputs, missing):
    p = parse_pipeline(rag(), now=NOW)
    with pytest.raises(InvalidPipeline) as info:
        resolve_inputs(p.by_id["answer"], outputs)
    assert "'answer'" in info.value.message and repr(missing) in info.value.message
    assert info.value.details["step"] == "answer"


def test_missing_output_is_an_error():
    p = parse_pipeline(rag(), now=NOW)
    with pytest.raises(InvalidPipeline) as info:
        resolve_inputs(p.by_id["search"], {})
    assert "'embed' has no output" in info.value.message
    assert isinstance(info.value, InvalidInput)


# -- random DAGs --------------------------------------------------------------------------

def random_dag(seed: int, n: int, p: float) -> tuple[dict, list[tuple[str, str]]]:
    """n steps; edges only from a lower to a higher rank (acyclic); listed in random order."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(n)]
    rng.shuffle(names)  # rank order differs from the name order
    edges = [(names[i], names[j]) for j in range(n) for i in range(j) if rng.random() < p]
    steps = [{"id": name, "capability": "x",
              "input": {"refs": [{"$ref": f"{a}.out"} for a, b in edges if b == name]}}
             for name in names]
    rng.shuffle(steps)
    return {"name": "dag", "steps": steps}, edges


@given(st.integers(0, 2**32), st.integers(1, 25), st.floats(0, 0.5))
@settings(max_examples=60, deadline=None)
def test_topological_order_respects_every_edge(seed, n, p):
    obj, edges = random_dag(seed, n, p)
    order = parse_pipeline(obj, now=NOW).topological_order()
    pos = {sid: i for i, sid in enumerate(order)}
    assert sorted(order) == sorted(s["id"] for s in obj["steps"]), f"seed={seed}"
    for a, b in edges:
        assert pos[a] < pos[b], f"seed={seed}: {a} must come before {b}"


@given(st.integers(0, 2**32), st.integers(1, 25), st.floats(0, 0.5))
@settings(max_examples=40, deadline=None)
def test_ready_steps_runs_every_step_after_its_deps(seed, n, p):
    obj, edges = random_dag(seed, n, p)
    pipe = parse_pipeline(obj, now=NOW)
    done: list[str] = []
    while wave := pipe.ready_steps(done):
        for sid in wave:
            assert all(a in done for a, b in edges if b == sid), f"seed={seed}"
        done.extend(wave)
    assert len(done) == n, f"seed={seed}"


@given(st.integers(0, 2**32), st.integers(2, 20))
@settings(max_examples=40, deadline=None)
def test_added_back_edge_is_reported_as_a_real_cycle(seed, n):
    obj, edges = random_dag(seed, n, 0.3)
    rng = random.Random(seed)
    by_id = {s["id"]: s for s in obj["steps"]}
    chain = sorted(by_id)
    first, last = chain[0], chain[-1]
    # force a path first -> last, then close it with last -> first
    by_id[last]["input"]["refs"].append({"$ref": first})
    by_id[first]["input"]["refs"].append({"$ref": f"{last}.x.{rng.randint(0, 3)}"})
    err = _error(obj)
    cycle = err.details["cycle"]
    assert cycle[0] == cycle[-1], f"seed={seed}"
    deps = {s["id"]: {r["$ref"].split(".")[0] for r in s["input"]["refs"]} for s in obj["steps"]}
    for a, b in zip(cycle, cycle[1:]):
        assert b in deps[a], f"seed={seed}: {a} does not reference {b}"
