"""A pipeline step's input by reference (runtime.tasks.journal, "Inputs by reference"): the
journal keeps the step's template and its sources, not a copy of the results it references,
and every read resolves it; a result holding ``$ref``-shaped data is data; a journal written
before keeps its resolved inputs; compaction takes the sources with their tasks."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.tasks.journal import Journal

BIG = {"text": "x" * 50_000, "v": 7}
CHAIN = {"name": "chain", "steps": [
    {"id": "a", "capability": "c", "input": {"q": 1}},
    {"id": "b", "capability": "c", "input": {"doc": {"$ref": "a"}, "n": 1}},
    {"id": "c", "capability": "c", "input": {"$ref": "b.doc.v"}}]}


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "state", durability="normal")
    yield j
    j.close()


def _run(j: Journal, task_id: str, result: object):
    return j.finish_attempt(task_id, j.start_attempt(task_id, "agent"), "succeeded", result=result)


def test_a_step_unblocked_by_a_large_result_does_not_journal_a_copy_of_it(journal):
    journal.conn.execute("PRAGMA wal_autocheckpoint=0")  # the WAL only grows: its size is what was written
    _, ids = journal.submit_pipeline(CHAIN)
    wal = journal.path + "-wal"
    before = os.path.getsize(wal)
    _run(journal, ids["a"], BIG)  # a's result (~50 KB) once, b unblocked
    written = os.path.getsize(wal) - before
    # a's result is ~52 KB of frames; a copy of it as b's input made it ~104 KB
    assert written < 75_000, written
    assert journal.conn.execute("SELECT length(body) FROM task_inputs WHERE id = ?",
                                (ids["b"],)).fetchone()[0] < 100  # the template, as submitted
    expected = {"doc": BIG, "n": 1}
    assert journal.get(ids["b"]).input == expected
    assert [r.input for r in journal.list(state="queued")] == [expected]
    finish = _run(journal, ids["b"], {"doc": BIG})
    # the RETURNING record leaves the input unread (the scheduler's TaskRun holds it)
    assert finish.recorded and finish.record.input is None and finish.record.result == {"doc": BIG}
    assert journal.get(ids["b"]).input == expected  # still resolved once finished
    assert journal.get(ids["c"]).input == 7


def test_the_inputs_read_the_same_after_a_restart(tmp_path):
    with Journal(tmp_path, durability="normal") as j:
        _, ids = j.submit_pipeline(CHAIN)
        _run(j, ids["a"], BIG)
    with Journal(tmp_path, durability="normal") as j:
        assert [(r.step_id, r.input) for r in j.unfinished()] == [("b", {"doc": BIG, "n": 1}), ("c", {"$ref": "b.doc.v"})]


def test_a_result_holding_ref_shaped_data_is_passed_on_as_data(journal):
    _, ids = journal.submit_pipeline(CHAIN)
    literal = {"$ref": "nowhere.at.all", "v": 3}  # an output that looks like a reference
    _run(journal, ids["a"], literal)
    assert journal.get(ids["b"]).input == {"doc": literal, "n": 1}
    _run(journal, ids["b"], {"doc": {"v": {"$ref": "x"}}})
    assert journal.get(ids["c"]).input == {"$ref": "x"}


def test_a_step_resolved_by_an_earlier_version_is_read_as_stored(journal):
    _, ids = journal.submit_pipeline(CHAIN)
    _run(journal, ids["a"], {"v": 1})
    # what an earlier version left: the resolved input in task_inputs, no sources row
    journal.conn.execute("DELETE FROM task_sources WHERE id = ?", (ids["b"],))
    journal.conn.execute("UPDATE task_inputs SET body = ? WHERE id = ?", ('{"doc":{"v":1},"n":1,"old":true}', ids["b"]))
    assert journal.get(ids["b"]).input == {"doc": {"v": 1}, "n": 1, "old": True}


def test_compaction_takes_the_sources_with_their_steps(journal):
    _, ids = journal.submit_pipeline(CHAIN)
    for step in "abc":
        _run(journal, ids[step], {"doc": {"v": step}})
    assert journal.conn.execute("SELECT count(*) FROM task_sources").fetchone()[0] == 2
    assert journal.compact(keep=0)["pipelines"] == 1
    assert journal.conn.execute("SELECT count(*) FROM task_sources").fetchone()[0] == 0


def test_a_record_without_its_input_reads_neither_the_input_nor_its_sources(journal):
    _, ids = journal.submit_pipeline(CHAIN)
    _run(journal, ids["a"], BIG)
    seen: list[str] = []
    journal.conn.set_trace_callback(seen.append)
    try:
        rec = journal.get(ids["b"], with_input=False)
    finally:
        journal.conn.set_trace_callback(None)
    assert rec.input is None and rec.state == "queued" and rec.step_id == "b"
    assert len(seen) == 1 and "task_inputs" not in seen[0] and "task_sources" not in seen[0], seen
    assert journal.get(ids["a"], with_input=False).result == BIG  # the result is read
    listed = {r.step_id: r.input for r in journal.list(with_input=False)}
    assert listed == {"a": None, "b": None, "c": None}


def test_a_step_whose_sources_went_under_a_reader_is_not_found_not_broken(journal):
    from runtime.errors import BrokenError, NotFound
    from runtime.tasks.journal import TaskRecord, _RECORD
    _, ids = journal.submit_pipeline(CHAIN)
    _run(journal, ids["a"], {"v": 1})
    row = journal.conn.execute(f"SELECT {_RECORD} FROM tasks WHERE id = ?", (ids["b"],)).fetchone()
    journal.conn.execute("DELETE FROM task_results WHERE id = ?", (ids["a"],))
    with pytest.raises(BrokenError, match="not in the journal"):  # the task is there: a broken journal
        TaskRecord.from_row(row, journal.conn)
    journal.conn.execute("PRAGMA foreign_keys=OFF")
    journal.conn.execute("DELETE FROM tasks WHERE id = ?", (ids["b"],))  # what retention does meanwhile
    with pytest.raises(NotFound, match="removed by retention"):
        TaskRecord.from_row(row, journal.conn)


# -- a property: whatever the shape, a step reads the input its template and the results give

_LEAF = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=4)
# outputs may hold anything, ``$ref``-shaped dicts included: they are data
_OUT = st.recursive(_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.sampled_from(["$ref", "k", "a", "b"]), c, max_size=3), max_leaves=8)


def _model(template, outputs):
    """The expected input, computed apart from the journal: each reference replaced once."""
    if isinstance(template, dict) and set(template) == {"$ref"}:
        step, _, path = template["$ref"].partition(".")
        value = outputs[step]
        return value["k"] if path else value
    if isinstance(template, dict):
        return {key: _model(v, outputs) for key, v in template.items()}
    if isinstance(template, list):
        return [_model(v, outputs) for v in template]
    return template


@st.composite
def _pipelines(draw):
    n = draw(st.integers(2, 5))
    steps = [{"id": "s0", "capability": "c", "input": draw(st.dictionaries(st.sampled_from("xyz"), _LEAF, max_size=2))}]
    for i in range(1, n):
        refs = draw(st.lists(st.sampled_from([f"s{j}" + tail for j in range(i) for tail in ("", ".k")]),
                             min_size=1, max_size=3))
        shape = draw(st.sampled_from(["bare", "dict", "list"]))
        template = ({"$ref": refs[0]} if shape == "bare" else
                    {f"r{m}": {"$ref": r} for m, r in enumerate(refs)} | {"lit": draw(_LEAF)} if shape == "dict" else
                    [{"$ref": r} for r in refs] + [draw(_LEAF)])
        steps.append({"id": f"s{i}", "capability": "c", "input": template})
    return {"name": "prop", "steps": steps}


@given(_pipelines(), st.data())
@settings(max_examples=60, deadline=None)
def test_every_step_reads_its_template_resolved_against_its_sources(spec, data):
    import tempfile
    templates = {s["id"]: s["input"] for s in spec["steps"]}
    with tempfile.TemporaryDirectory() as home:
        j = Journal(home, durability="normal")
        try:
            _, ids = j.submit_pipeline(spec)
            outputs: dict[str, object] = {}
            while len(outputs) < len(ids):
                states = j.states(list(ids.values()))
                queued = sorted(step for step, tid in ids.items() if states[tid] == "queued")
                assert queued, states
                for step in queued:  # every queued step reads its input resolved
                    assert j.get(ids[step]).input == _model(templates[step], outputs)
                if data.draw(st.booleans(), label="reopen"):  # a restart reads the same
                    j.close()
                    j = Journal(home, durability="normal")
                    resumed = {r.step_id: r.input for r in j.unfinished() if r.state == "queued"}
                    assert resumed == {step: _model(templates[step], outputs) for step in queued}
                step = data.draw(st.sampled_from(queued), label="finish")
                result = {"k": data.draw(_OUT, label="k"), "extra": data.draw(_OUT, label="extra")}
                if data.draw(st.booleans(), label="batch"):  # the agents' prefetched batches' path
                    [fin] = j.finish_successes([(ids[step], j.start_attempt(ids[step], "agent"), result)])
                else:
                    fin = _run(j, ids[step], result)
                assert fin.recorded and fin.record.input is None and fin.record.result == result
                assert j.get(ids[step]).input == _model(templates[step], outputs)
                outputs[step] = result
        finally:
            j.close()
