"""Agent import paths: three failures with three messages, the config file's directory,
the file form (a user's ``__main__`` script), and the probe before the tree starts."""

from __future__ import annotations

import sys

import pytest

from runtime.agents.loading import MAIN_MODULE, import_agent, probe_agents
from runtime.errors import InvalidInput

AGENTS = '''
import agora

class A(agora.Agent):
    @agora.capability("a")
    def a(self, input, task):
        return input

class NotOne:
    pass

if __name__ == "__main__":
    raise SystemExit("the main block ran in an agent process")
'''


@pytest.fixture()
def user_dir(tmp_path, monkeypatch):
    """A package ``upkg`` and a script next to an agora.toml, in a directory not on the path;
    the modules it adds are forgotten afterwards."""
    (tmp_path / "upkg").mkdir()
    (tmp_path / "upkg" / "__init__.py").write_text("")
    (tmp_path / "upkg" / "agents.py").write_text(AGENTS)
    (tmp_path / "upkg" / "broken.py").write_text("import not_a_dependency_anywhere\n")
    (tmp_path / "script.py").write_text(AGENTS)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_a_package_next_to_the_config_imports_from_any_directory(user_dir, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert import_agent("upkg.agents:A", user_dir).__name__ == "A"


def test_a_missing_module_names_where_it_was_looked_for(user_dir):
    with pytest.raises(InvalidInput, match=r"no module named 'nopkg' \(looked on sys.path and in .*") as e:
        import_agent("nopkg.agents:A", user_dir)
    assert str(user_dir) in e.value.message


def test_a_missing_class_lists_the_agents_the_module_has(user_dir):
    with pytest.raises(InvalidInput, match="module 'upkg.agents' has no attribute 'B'") as e:
        import_agent("upkg.agents:B", user_dir)
    assert e.value.hint == "Agent classes it defines: A"


def test_a_class_that_is_not_an_agent_says_so(user_dir):
    with pytest.raises(InvalidInput, match="'NotOne' is class NotOne, not an agora.Agent subclass"):
        import_agent("upkg.agents:NotOne", user_dir)


def test_a_module_that_fails_inside_is_not_called_missing(user_dir):
    with pytest.raises(InvalidInput, match="importing module 'upkg.broken' failed: ModuleNotFoundError"):
        import_agent("upkg.broken:A", user_dir)


def test_a_malformed_path_is_refused():
    with pytest.raises(InvalidInput, match="expected an agent import path"):
        import_agent("no_colon_here")


def test_a_script_is_imported_by_path_without_running_its_main_block(user_dir):
    cls = import_agent("script.py:A", user_dir)  # relative to the config's directory
    assert cls.__module__ == MAIN_MODULE and sys.modules[MAIN_MODULE].__file__ == str(user_dir / "script.py")
    assert import_agent(f"{user_dir}/script.py:A") is cls  # imported once
    with pytest.raises(InvalidInput, match="no such file"):
        import_agent("missing.py:A", user_dir)


def test_the_probe_reports_the_first_bad_pool_and_imports_nothing_here(user_dir):
    probe_agents([("a", "upkg.agents:A")], user_dir)
    assert "upkg.agents" not in sys.modules  # the child imported it, not us
    with pytest.raises(InvalidInput, match=r"pools.b.agent: agent 'upkg.agents:Nope'") as e:
        probe_agents([("a", "upkg.agents:A"), ("b", "upkg.agents:Nope")], user_dir)
    assert "nothing was started" in e.value.hint
