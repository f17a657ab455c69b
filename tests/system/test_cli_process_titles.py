"""Every process of the tree shows its role in full in ``ps -eo pid,args`` (setproctitle),
while the kernel's 15-byte name stays what ``agora up`` and ``ps -o comm`` know (issue 17)."""

from __future__ import annotations

import os
import subprocess

import psutil
import pytest

from runtime.supervision.forking import full_title
from tests.support.daemons import config, running_daemon


@pytest.mark.parametrize("name,title", [
    ("agora:daemon", "agora: daemon"), ("registry.2", "agora: registry 2"),
    ("agent:summarize.3", "agora: agent summarize.3"), ("coordinator", "agora: coordinator"),
    ("pool:echo", "agora: pool echo"), ("registry.12", "agora: registry 12"),
])
def test_full_title(name, title):
    assert full_title(name) == title


def test_ps_shows_every_role_in_full(agora_env):
    pytest.importorskip("setproctitle")
    with running_daemon(agora_env, config(size=2)) as (_c, proc):
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        args = {p.pid: " ".join(p.cmdline()) for p in tree}
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        shown = {int(line.split(None, 1)[0]): line.split(None, 1)[1].strip()
                 for line in ps.splitlines()[1:] if line.split(None, 1)[0] in {str(p) for p in args}}
        names = {p.pid: p.name() for p in tree}
        envs = [p.environ().get("AGORA_RUNTIME_DIR") for p in tree]  # the title took argv's space only
    assert set(envs) == {os.environ["AGORA_RUNTIME_DIR"]}
    expected = {"agora: daemon", "agora: telemetry", "agora: coordinator", "agora: agent echo.0",
                "agora: agent echo.1", *(f"agora: registry {i}" for i in range(4))}
    assert expected <= set(shown.values()), shown
    assert shown[proc.pid] == "agora: daemon" and names[proc.pid] == "agora:daemon"
    assert {"agora:echo.0", "agora:echo.1", "agora:coordinat"} <= set(names.values())  # 15 bytes
