"""What the journal reads when a pipeline step ends (docs/DECISIONS.md, "pipeline
coordination cost"): only the outputs that the steps it unblocks reference, each once;
``Journal.options`` reads a task's options without its input and result."""

from __future__ import annotations

import pytest

from runtime.errors import NotFound
from runtime.tasks.journal import Journal

DAG = {"name": "dag", "steps": [
    {"id": "a", "capability": "c", "input": {"text": "x" * 1000}},
    {"id": "b", "capability": "c", "input": {"$ref": "a"}},
    {"id": "c", "capability": "c", "input": {"from_a": {"$ref": "a.v"}, "from_b": {"$ref": "b.w.1"}}},
    {"id": "d", "capability": "c", "input": {"all": [{"$ref": "a"}, {"$ref": "b"}, {"$ref": "c"}]},
     "consensus": {"k": 3, "method": "plurality"}}]}


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path)
    yield j
    j.close()


def _finish(j: Journal, task_id: str, result: object) -> list[str]:
    """Finish the step and return the statements reading a result that it ran."""
    seen: list[str] = []
    j.conn.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("SELECT body FROM task_results") else None)
    try:
        j.finish_attempt(task_id, j.start_attempt(task_id, "agent"), "succeeded", result=result)
    finally:
        j.conn.set_trace_callback(None)
    return seen


def test_a_step_end_reads_only_the_outputs_the_unblocked_steps_reference(journal):
    _, ids = journal.submit_pipeline(DAG)
    assert len(_finish(journal, ids["a"], {"v": 1})) == 1  # b needs a
    assert journal.get(ids["b"]).input == {"v": 1}
    assert len(_finish(journal, ids["b"], {"w": [0, "two"]})) == 2  # c needs a and b, each once
    assert journal.get(ids["c"]).input == {"from_a": 1, "from_b": "two"}
    assert len(_finish(journal, ids["c"], "c-out")) == 3  # d needs a, b and c
    assert journal.get(ids["d"]).input == {"all": [{"v": 1}, {"w": [0, "two"]}, "c-out"]}
    assert _finish(journal, ids["d"], "done") == []  # nothing left to unblock
    assert journal.get_pipeline(journal.get(ids["d"]).pipeline_id).state == "succeeded"


def test_a_missing_path_still_fails_the_step_that_references_it(journal):
    _, ids = journal.submit_pipeline(DAG)
    _finish(journal, ids["a"], {"v": 1})
    _finish(journal, ids["b"], {"w": []})  # c references b.w.1: not there
    rec = journal.get(ids["c"])
    assert rec.state == "failed" and "b.w.1" in rec.error["message"]


def test_options_are_read_without_the_record(journal):
    _, ids = journal.submit_pipeline(DAG)
    assert journal.options(ids["d"])["consensus"] == {"k": 3, "method": "plurality"}
    assert journal.options(ids["a"])["consensus"] is None
    with pytest.raises(NotFound):
        journal.options("t-000000000000000")
