"""The CLI's surface, without a daemon: the exit-code table (help, README, error classes),
--version, --help on every option, --json on every command, global options after the
command, and the messages of a stopped daemon (issue 17, item 5)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from runtime import errors
from runtime.cli.group import EXIT_CODES, exit_table
from runtime.cli.main import cli, main

README = Path(__file__).resolve().parents[3] / "README.md"


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            if cmd.invoke_without_command:  # a group that prints data itself (`agora market`)
                yield (*path, name), cmd
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


ALL = list(_commands(cli))


def test_the_tree_is_walked():
    names = {" ".join(p) for p, _ in ALL}
    assert {"submit", "context put", "journal stats", "market", "market show", "top", "events"} <= names


@pytest.mark.parametrize("path,cmd", ALL, ids=[" ".join(p) for p, _ in ALL])
def test_every_option_has_help_and_every_command_json_and_home(path, cmd):
    missing = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not missing, f"agora {' '.join(path)}: options without help: {missing}"
    assert any(p.name == "as_json" for p in cmd.params), f"agora {' '.join(path)} has no --json"
    assert any("--home" in p.opts for p in cmd.params), f"agora {' '.join(path)} takes no --home"
    assert cmd.help, f"agora {' '.join(path)} has no help text"


def test_help_prints_the_exit_code_table_and_the_readme_repeats_it():
    res = CliRunner().invoke(cli, ["--help"])
    assert res.exit_code == 0
    for line in exit_table().splitlines():
        assert line.strip() in res.output
    section = README.read_text().split("## Exit codes", 1)[1]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", section, flags=re.M)
    assert [(int(c), m) for c, m in rows] == list(EXIT_CODES)


def test_every_error_class_exits_with_a_code_of_the_table():
    codes = {c for c, _ in EXIT_CODES}
    classes = [errors.AgoraError, *errors._all_subclasses(errors.AgoraError)]
    assert {c.__name__: c.exit_code for c in classes if c.exit_code not in codes} == {}
    assert errors.DeadlineExceeded.exit_code == 75 and errors.InvalidInput.exit_code == 2


def test_version(capsys):
    assert main(["--version"]) == 0
    assert re.fullmatch(r"agora \S+\n", capsys.readouterr().out)


def test_not_running_names_the_home_given_after_the_command(agora_env, tmp_path, capsys):
    other = tmp_path / "elsewhere"
    assert main(["status", "--home", str(other)]) == 69
    err = capsys.readouterr().err
    assert f"no agora daemon is running on home {other}" in err
    assert main(["context", "ls", "--home", str(other)]) == 69  # nested groups too
    assert str(other) in capsys.readouterr().err
    assert main(["--home", str(agora_env), "submit", "echo", "--home", str(other)]) == 69
    assert str(other) in capsys.readouterr().err  # after the command wins, as the last word


def test_down_on_a_stopped_daemon_exits_0_saying_so(agora_env, capsys):
    assert main(["down"]) == 0
    assert f"not running on home {agora_env}: nothing to stop" in capsys.readouterr().out
    res = CliRunner().invoke(cli, ["down", "--json"])
    assert res.exit_code == 0 and '"was_running": false' in res.output


def test_run_refuses_an_invalid_config_at_once_with_exit_2(agora_env, tmp_path):
    cfg = tmp_path / "agora.toml"
    cfg.write_text("[pools.x]\nagnt = 3\n")
    job = tmp_path / "job.json"
    job.write_text('{"capability": "x", "input": 1}')
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), str(job)])
    assert res.exit_code == 2, res.output
    assert "unknown key pools.x.agnt" in res.stderr and "Traceback" not in res.output


@pytest.mark.parametrize("text,says", [("[1, 2]", "must hold a JSON object"),
                                       ("{not json", "is not a JSON job file")])
def test_run_refuses_a_bad_job_file_with_exit_2(agora_env, tmp_path, text, says):
    cfg = tmp_path / "agora.toml"
    cfg.write_text("")
    job = tmp_path / "job.json"
    job.write_text(text)
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), str(job)])
    assert res.exit_code == 2 and says in res.stderr and "Traceback" not in res.output


def test_usage_errors_exit_2():
    assert CliRunner().invoke(cli, ["submit"]).exit_code == 2  # missing argument
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2
