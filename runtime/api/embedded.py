"""``agora.start()``: a private daemon for the length of a with-block.

::

    with agora.start(pools={"echo": agora.Pool(Echo, size=2)}) as rt:   # a Session
        rt.submit("echo", {"x": 1}).result(timeout=10)

What it does, in order: make a temporary home; write its ``agora.toml`` from ``config``
(a file, whose relative paths keep meaning the file's directory), ``pools`` and
``daemon``; save each ``context`` array as ``.npy`` there (published to shared memory
before any agent starts); start ``agora up --foreground`` on it as a child in its own
session (``runtime.daemon.launch``), wait until it answers (bounded), connect.  Leaving
the block (normally or by an exception), ``stop()`` or the interpreter's exit asks the
daemon ``down``, SIGKILLs its session if it overstays, and removes the home: nothing is
left behind.

Agents defined in the user's ``__main__`` script are named by the script's path
(``/path/script.py:Echo``): each agent process imports the script by path as
``__mp_main__``, as multiprocessing's spawn does, so the script's top level runs again
there and everything that starts work must sit under ``if __name__ == "__main__":``.
The daemon's ``PYTHONPATH`` is this process's ``sys.path``, so agents imported from
modules import there as they do here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.api.session import Session
from runtime.errors import InvalidInput

__all__ = ["Pool", "Runtime", "start", "agent_path"]

START_S = 60.0  # bound on the daemon's start-up (every initial agent said hello)


@dataclass(frozen=True)
class Pool:
    """One ``[pools.NAME]`` table: the agent class (or its import path) and its knobs
    (``size``, ``min``, ``max``, ``concurrency``; any other key of the table in ``options``;
    ``capabilities`` as ``{cap: {"cost": .., "quality": ..}}``)."""

    agent: type | str
    size: int = 1
    min: int | None = None
    max: int | None = None
    concurrency: int = 1
    capabilities: dict[str, dict[str, Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def table(self) -> dict[str, Any]:
        """The pool's config table (checked by the daemon's loader like a file's)."""
        t: dict[str, Any] = {"agent": agent_path(self.agent), "size": self.size,
                             "concurrency": self.concurrency, **self.options}
        t.update({k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None})
        if self.capabilities:
            t["capabilities"] = self.capabilities
        return t


def agent_path(agent: type | str) -> str:
    """The import path an agent process finds ``agent`` by (module docstring)."""
    if isinstance(agent, str):
        return agent
    if "<locals>" in agent.__qualname__:
        raise InvalidInput(f"agent class {agent.__qualname__} is defined inside a function",
                           hint="define agent classes at the top level of a module or script")
    if agent.__module__ not in ("__main__", "__mp_main__"):
        return f"{agent.__module__}:{agent.__qualname__}"
    main = getattr(sys.modules.get(agent.__module__), "__file__", None)
    if not main:
        raise InvalidInput(f"agent class {agent.__qualname__} was defined interactively (no script file)",
                           hint="agent processes import agents from files: put the class in a .py file")
    return f"{os.path.abspath(main)}:{agent.__qualname__}"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise InvalidInput(f"cannot write {type(v).__name__} {v!r} into agora.toml",
                       hint="config values are strings, numbers, booleans, lists and tables")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def to_toml(raw: dict[str, Any]) -> str:
    """A config dict (sections of tables) as TOML (tomllib reads it back the same)."""
    lines = []
    for section, body in raw.items():
        if section == "pools" or section == "services":
            for name, table in body.items():
                lines.append(f"[{section}.{_toml_key(name)}]")
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
        else:
            lines.append(f"[{section}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def _read_config(config: str | os.PathLike[str] | None) -> tuple[dict[str, Any], Path | None]:
    if config is None:
        return {}, None
    path = Path(config).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"cannot read config {path}: {e}") from e
    base = path.parent  # relative paths in it keep meaning the file's directory
    if "context" in raw:
        raw["context"] = {n: str((base / p).resolve()) for n, p in raw["context"].items()}
    for table in raw.get("pools", {}).values():
        mod = str(table.get("agent", "")).rpartition(":")[0]
        if mod.endswith(".py") and not os.path.isabs(mod):
            table["agent"] = str((base / table["agent"]).resolve())
    return raw, base


def _save_contexts(home: Path, context: dict[str, Any]) -> dict[str, str]:
    """Each array as ``<home>/context/NAME.npy`` (a path is taken as it is)."""
    out = {}
    for name, value in context.items():
        if isinstance(value, (str, os.PathLike)):
            out[name] = os.path.abspath(value)
            continue
        import numpy as np
        path = home / "context" / f"{name}.npy"
        path.parent.mkdir(exist_ok=True)
        np.save(path, np.ascontiguousarray(value), allow_pickle=False)
        out[name] = str(path)
    return out


def _daemon_path(config_dir: Path | None) -> list[str]:
    """The agent processes' import path: agora itself, then what this process sees."""
    here = str(Path(__file__).resolve().parents[2])
    seen = [here, *([str(config_dir)] if config_dir else []), *(p or os.getcwd() for p in sys.path)]
    return list(dict.fromkeys(seen))


class Runtime(Session):
    """A :class:`Session` that owns its daemon and its temporary home (module docstring)."""

    def __init__(self, home: Path, proc: Any, owns_home: bool, timeout: float) -> None:
        self._proc, self._owns_home, self._stopped = proc, owns_home, False
        super().__init__(home, timeout=timeout)
        atexit.register(self.stop)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int | None:
        """Stop the daemon (graceful, then SIGKILL of its session) and remove its home;
        the daemon's exit status.  Idempotent."""
        if self._stopped:
            return self._proc.returncode
        self._stopped = True
        atexit.unregister(self.stop)
        from runtime.daemon.launch import stop
        try:
            self.close()
            return stop(Path(self.home), self._proc)
        finally:
            if self._owns_home:
                shutil.rmtree(self.home, ignore_errors=True)

    @property
    def log(self) -> str:
        """The daemon's log so far (its start-up errors, its agents' stderr)."""
        try:
            return (Path(self.home) / "agora.log").read_text(errors="replace")
        except OSError:
            return ""


def start(pools: dict[str, Pool] | None = None, *, context: dict[str, Any] | None = None,
          config: str | os.PathLike[str] | None = None, daemon: dict[str, Any] | None = None,
          home: str | os.PathLike[str] | None = None, timeout: float = 30.0,
          start_timeout: float = START_S) -> Runtime:
    """Start a private daemon; the :class:`Runtime` (a Session) to use it with.

    ``pools``: name -> :class:`Pool`, added to (and replacing same-named pools of) the
    ``config`` file's; ``context``: name -> numpy array (or ``.npy`` path), shared with
    every agent; ``daemon``: ``[daemon]`` keys; ``home``: keep the run's files there
    instead of a temporary directory (it is not removed).  ``timeout`` bounds each
    command, ``start_timeout`` the start-up (``Unavailable`` with the log's end if the
    daemon does not come up)."""
    raw, config_dir = _read_config(config)
    raw.setdefault("daemon", {}).update(daemon or {})
    raw.setdefault("pools", {}).update({name: p.table() for name, p in (pools or {}).items()})
    owns_home = home is None
    run_home = Path(tempfile.mkdtemp(prefix="agora-")) if home is None else Path(home).resolve()
    try:
        run_home.mkdir(parents=True, exist_ok=True)
        raw.setdefault("context", {}).update(_save_contexts(run_home, context or {}))
        raw = {k: v for k, v in raw.items() if v}
        _check(raw, run_home, config_dir)
        return _launch(run_home, raw, config_dir, owns_home, timeout, start_timeout)
    except BaseException:
        if owns_home:
            shutil.rmtree(run_home, ignore_errors=True)
        raise


def _check(raw: dict[str, Any], home: Path, config_dir: Path | None) -> None:
    """The config loader's checks (every section's keys and numbers: daemon, pools and their
    scaling, services), in the caller's process: a bad value is InvalidInput naming its key
    now, not a daemon that fails to start and a log to read.  ~35 ms, mostly imports.  The
    [market], grader and [resources] shapes are left to the daemon's own load: checking
    them here imports the coordination services, ~250 ms more on every start."""
    from runtime.config import parse_config
    parse_config(raw, home, config_dir or Path.cwd())


def _launch(home: Path, raw: dict[str, Any], config_dir: Path | None, owns_home: bool,
            timeout: float, start_timeout: float) -> Runtime:
    from runtime.daemon import launch
    from runtime.daemon.root import wait_until_up
    from runtime.errors import AgoraError, Unavailable
    from runtime.wire.client import Client
    proc = launch.spawn(home, to_toml(raw), path=_daemon_path(config_dir), cwd=os.getcwd())
    try:
        wait_until_up(lambda: Client(home, timeout=2.0), time.monotonic() + start_timeout, proc)
        return Runtime(home, proc, owns_home, timeout)
    except BaseException as e:
        launch.stop(home, proc)
        if isinstance(e, AgoraError):
            tail = _log_tail(home)
            raise Unavailable(f"the embedded agora daemon did not start: {e.message}\n{tail}",
                              hint="the lines above are the end of its log") from None
        raise


def _log_tail(home: Path, lines: int = 15) -> str:
    try:
        text = (home / "agora.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("  | " + ln for ln in text.splitlines()[-lines:])
