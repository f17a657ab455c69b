"""What ``agora.start`` writes before it starts anything: pool tables, agent paths,
the TOML, a config file's relative paths (the start itself: tests/system/test_api_daemon.py)."""

from __future__ import annotations

import sys
import tomllib
import types

import pytest

import agora
from runtime.api.embedded import Pool, _read_config, agent_path, to_toml
from runtime.config import parse_config
from runtime.errors import InvalidInput


class Echo(agora.Agent):
    @agora.capability("echo")
    def echo(self, input, task):
        return input


def test_a_module_class_is_named_by_module_and_a_main_class_by_its_file(tmp_path, monkeypatch):
    assert agent_path(Echo) == "tests.runtime.api.test_embedded:Echo"
    assert agent_path("pkg.m:A") == "pkg.m:A"
    main = types.ModuleType("__main__")
    main.__file__ = str(tmp_path / "script.py")
    monkeypatch.setitem(sys.modules, "__main__", main)
    Mine = type("Mine", (agora.Agent,), {"__module__": "__main__"})
    assert agent_path(Mine) == f"{tmp_path}/script.py:Mine"


def test_classes_no_agent_process_could_import_are_refused(monkeypatch):
    def make():
        class Local(agora.Agent):
            pass
        return Local
    with pytest.raises(InvalidInput, match="inside a function"):
        agent_path(make())
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a REPL: no file
    with pytest.raises(InvalidInput, match="interactively"):
        agent_path(type("Typed", (agora.Agent,), {"__module__": "__main__"}))


def test_the_written_config_reads_back_and_passes_the_daemon_loader(tmp_path):
    raw = {"daemon": {"drain_s": 2.0, "tracing": False},
           "pools": {"echo": Pool(Echo, size=2, max=4, capabilities={"echo": {"cost": 1.5}},
                                  options={"timeout_s": 3.0}).table()},
           "context": {"vocab": str(tmp_path / "v.npy")}}
    text = to_toml(raw)
    assert tomllib.loads(text) == raw
    cfg = parse_config(tomllib.loads(text), tmp_path, tmp_path)
    pool = cfg.pool("echo")
    assert (pool.agent, pool.size, pool.max, pool.timeout_s) == ("tests.runtime.api.test_embedded:Echo", 2, 4, 3.0)


def test_values_toml_cannot_hold_are_refused():
    with pytest.raises(InvalidInput, match="cannot write"):
        to_toml({"daemon": {"x": None}})


def test_a_config_file_keeps_its_relative_paths(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "agora.toml").write_text(
        '[context]\nv = "data/v.npy"\n[pools.a]\nagent = "tools/agents.py:A"\n[pools.b]\nagent = "pkg.m:B"\n')
    raw, base = _read_config(tmp_path / "conf" / "agora.toml")
    assert base == tmp_path / "conf"
    assert raw["context"]["v"] == str(tmp_path / "conf" / "data" / "v.npy")
    assert raw["pools"]["a"]["agent"] == str(tmp_path / "conf" / "tools" / "agents.py") + ":A"
    assert raw["pools"]["b"]["agent"] == "pkg.m:B"


def test_a_missing_config_file_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read config"):
        agora.start(config=tmp_path / "nope.toml")


def test_every_session_method_has_a_docstring_and_type_hints():
    import inspect
    for name, fn in inspect.getmembers(agora.Session, inspect.isfunction):
        if name.startswith("_"):
            continue
        assert fn.__doc__, f"Session.{name} has no docstring"
        assert "return" in fn.__annotations__, f"Session.{name} has no return type"


@pytest.mark.parametrize("kw, words", [
    ({"pools": {"echo": Pool(Echo, size=10**6, max=10**6)}}, "pools.echo.size"),
    ({"daemon": {"drain_s": float("nan")}}, "daemon.drain_s"),
    ({"pools": {"echo": Pool(Echo, capabilities={"echo": {"cost": -1}})}}, "pools.echo.capabilities.echo.cost"),
])
def test_a_bad_value_is_invalid_input_before_any_process_starts(tmp_path, kw, words):
    run = tmp_path / "run"
    with pytest.raises(InvalidInput, match=words.replace(".", r"\.")):
        agora.start(home=run, **kw)
    assert not (run / "agora.log").exists()  # no daemon was spawned to find out
