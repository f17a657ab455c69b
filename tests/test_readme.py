"""The README's "Using it" section, run as written: every ``python`` and ``sh`` block in
order, in one fresh directory, as a user following it would.

* A ``python`` block whose first line is ``# path.py`` is written to that path; a block at
  the top level (no ``/`` in the path) or without a path is then run with ``python``.
* A ``toml`` block is written to ``agora.toml``.
* An ``sh`` block runs whole under ``bash -e -o pipefail``, with ``agora`` the checkout's
  ``bin/agora`` and ``~`` a private directory; its ``export`` lines hold for the blocks
  after it (one shell session).  Three of its lines cannot run as written
  and are rewritten, bounded: ``agora events --follow`` and ``agora top`` never end by
  themselves (each gets ``timeout 3``, and must still be running then or have exited 0),
  and ``agora trace TASK_ID`` gets a real task id.
* Blocks without a language (sample output) are not run.  The install lines at the top of
  the README (a venv and ``pip install``) are outside this section: not run here.

A daemon the README starts (``agora up``) is stopped here whatever happens.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.daemon.root import running, wait_gone
from runtime.errors import AgoraError
from runtime.wire.client import Client

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
BLOCK_S = 240  # one block's bound (a daemon start on a loaded machine, the work, a stop)
FIRST_ID = ("agora tasks --json | python -c "
            "'import json, sys; print(json.load(sys.stdin)[0][\"id\"])'")
REWRITES = {
    "agora events --follow": "timeout 3 agora events --follow || [ $? -eq 124 ]",
    "agora top": "timeout 3 agora top < /dev/null || [ $? -eq 124 ]",
    "agora trace TASK_ID": f'agora trace "$({FIRST_ID})"',
}

pytestmark = pytest.mark.timeout(900)


def using_it_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    return [(lang, body) for lang, body in BLOCK.findall(section)]


def rewrite(line: str) -> str:
    command = line.split("  #", 1)[0].strip()
    return REWRITES.get(command, line)


def run_block(lang: str, body: str, cwd: Path, env: dict[str, str], n: int,
              exports: list[str]) -> str | None:
    first = body.splitlines()[0] if body.strip() else ""
    if lang == "toml":
        (cwd / "agora.toml").write_text(body)
        return None
    if lang == "python":
        name = first[2:].strip() if first.startswith("# ") and first.endswith(".py") else f"_block{n}.py"
        (cwd / name).parent.mkdir(parents=True, exist_ok=True)
        (cwd / name).write_text(body)
        if "/" in name:
            return None  # a module of a package: imported by what follows
        cmd = [sys.executable, name]
    elif lang == "sh":
        exports.extend(ln for ln in body.splitlines() if ln.startswith("export "))  # one shell session
        script = "\n".join([*exports, *(rewrite(ln) for ln in body.splitlines())])
        cmd = ["bash", "-e", "-o", "pipefail", "-c", script]
    else:
        return None
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=BLOCK_S)
    assert out.returncode == 0, (f"README block {n} ({lang}) exited {out.returncode}:\n{body}\n"
                                 f"--- stdout\n{out.stdout[-3000:]}\n--- stderr\n{out.stderr[-3000:]}")
    return out.stdout


def stop_daemon(home: Path) -> None:
    found = running(home)
    if found is None:
        return
    try:
        with Client(str(home), timeout=10) as c:
            c.call("down")
    except AgoraError:
        os.kill(found[0], signal.SIGTERM)
    wait_gone(home, found[0], time.monotonic() + 60)
    if running(home) is not None:
        os.killpg(found[0], signal.SIGKILL)


def test_the_readme_runs_as_written(tmp_path, agora_env):
    user_home = tmp_path / "user"
    user_home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HOME": str(user_home), "PYTHONPATH": str(REPO),
           "PATH": os.pathsep.join([str(REPO / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("AGORA_HOME", None)
    outputs: list[str | None] = []
    exports: list[str] = []
    try:
        for n, (lang, body) in enumerate(using_it_blocks()):
            outputs.append(run_block(lang, body, work, env, n, exports))
    finally:
        stop_daemon(user_home / ".agora")
    printed = "\n".join(o for o in outputs if o)
    assert "{'x': 1} t-" in printed                                   # the first example
    assert "[{'x': 0}, {'x': 1}," in printed and "'second': {'got': {'text': 'hi'}}" in printed
    assert "'vocab': 1000" in printed                                 # context through agora.toml
    assert "['doc 0', 'doc 1'," in printed                            # agora.connect's map


def test_the_section_holds_what_the_runner_expects():
    langs = [lang for lang, _ in using_it_blocks()]
    assert langs[0] == "python" and "toml" in langs and langs.count("sh") >= 3
    sh = "\n".join(body for lang, body in using_it_blocks() if lang == "sh")
    assert all(cmd in sh for cmd in REWRITES), "a rewritten line left the README: update REWRITES"
