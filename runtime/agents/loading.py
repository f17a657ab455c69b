"""Finding a pool's agent class from its import path, with errors that say which part is
wrong, and probing every pool's path before the daemon forks anything.

Forms of ``agent = ...``::

    "mypkg.agents:Summarizer"    a module on the path, in the current directory, or in the
                                 config file's directory (a package next to agora.toml
                                 imports from any directory)
    "/abs/script.py:Echo"        a file, imported by path as ``__mp_main__`` (as
                                 multiprocessing's spawn imports the main script): a class
                                 defined in the user's own ``__main__`` script; its
                                 ``if __name__ == "__main__":`` block does not run again
    "tools/my_agents.py:Echo"    the same, relative to the config file's directory

Three different failures, three messages: the module is not found (and where it was
looked for), the module has no such class (and which Agent classes it has), the class is
not an ``agora.Agent``.  A module that is found but fails to import says so with its own
exception.  ``probe_agents`` runs these imports in a forked child (the daemon's root must
not import user code: it would run in every process forked from it) and reports the
first failure in well under a second, before the tree starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import orjson

from runtime.agents.agent import Agent
from runtime.errors import InvalidInput

__all__ = ["import_agent", "probe_agents", "MAIN_MODULE"]

#: The name a script imported by path gets (multiprocessing's spawn uses the same).
MAIN_MODULE = "__mp_main__"
PROBE_S = 10.0  # an import that takes longer is the user's; the probe then says so


def _split(path: str) -> tuple[str, str]:
    mod, _, cls = path.rpartition(":")
    if not mod or not cls or not cls.isidentifier():
        raise InvalidInput(f"expected an agent import path 'module:Class' or 'file.py:Class', got {path!r}",
                           hint="e.g. agent = 'mypkg.agents:MyAgent'")
    return mod, cls


def _search_dirs(config_dir: Path | None) -> list[str]:
    """Where a module is looked for beyond ``sys.path``: the current directory (``agora
    up`` runs from bin/, whose directory is sys.path[0]) and the config file's."""
    extra = [os.getcwd()] + ([str(config_dir)] if config_dir is not None else [])
    return [d for d in dict.fromkeys(extra) if d not in sys.path]


def _missing_itself(e: ModuleNotFoundError, mod: str) -> bool:
    """True when ``mod`` (or a package above it) is what is missing, not a module it imports."""
    return e.name is not None and (mod == e.name or mod.startswith(e.name + "."))


def _import_module(mod: str, path: str, config_dir: Path | None) -> ModuleType:
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if not _missing_itself(e, mod):
            raise _import_failed(path, mod, e) from e
    extra = _search_dirs(config_dir)
    sys.path.extend(extra)  # (kept: the agent's own later imports find their siblings)
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if not _missing_itself(e, mod):
            raise _import_failed(path, mod, e) from e
        where = " and ".join(dict.fromkeys([os.getcwd(), *([str(config_dir)] if config_dir else [])]))
        raise InvalidInput(f"agent {path!r}: no module named {e.name!r} (looked on sys.path and in {where})",
                           hint="check the spelling; put the package next to agora.toml, in the "
                                "current directory or on PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise _import_failed(path, mod, e) from e


def _import_failed(path: str, mod: str, e: BaseException) -> InvalidInput:
    return InvalidInput(f"agent {path!r}: importing module {mod!r} failed: {type(e).__name__}: {e}",
                        hint="the module was found; the error is inside it (run `python -c "
                             f"'import {mod}'` to see the traceback)")


def _import_file(file: str, path: str, config_dir: Path | None) -> ModuleType:
    p = Path(file)
    if not p.is_absolute():
        p = (config_dir or Path.cwd()) / p
    if not p.is_file():
        raise InvalidInput(f"agent {path!r}: no such file {str(p)!r}",
                           hint="a relative file is relative to the config file's directory")
    if sys.modules.get(MAIN_MODULE) is not None and getattr(sys.modules[MAIN_MODULE], "__file__", None) == str(p):
        return sys.modules[MAIN_MODULE]
    spec = importlib.util.spec_from_file_location(MAIN_MODULE, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[MAIN_MODULE] = module
    if str(p.parent) not in sys.path:
        sys.path.insert(0, str(p.parent))  # as for a script: its siblings import
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's script raised while importing
        del sys.modules[MAIN_MODULE]
        raise _import_failed(path, str(p), e) from e
    return module


def import_agent(path: str, config_dir: Path | None = None) -> type[Agent]:
    """``"package.module:ClassName"`` or ``"file.py:ClassName"`` -> the class."""
    mod, cls_name = _split(path)
    module = _import_file(mod, path, config_dir) if mod.endswith(".py") else _import_module(mod, path, config_dir)
    cls = getattr(module, cls_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Agent)
                       and v is not Agent)
        raise InvalidInput(f"agent {path!r}: module {mod!r} has no attribute {cls_name!r}",
                           hint=f"Agent classes it defines: {', '.join(found)}" if found
                           else "it defines no agora.Agent subclass")
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        what = f"class {cls.__qualname__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise InvalidInput(f"agent {path!r}: {cls_name!r} is {what}, not an agora.Agent subclass",
                           hint="subclass agora.Agent and mark its handlers with @agora.capability")
    return cls


def probe_agents(paths: Iterable[tuple[str, str]], config_dir: Path | None = None) -> None:
    """Import each (pool, agent path) in a forked child; raise the first failure as
    ``InvalidInput`` naming the pool.  Nothing of the user's code runs in this process."""
    todo = list(dict.fromkeys(paths))
    if not todo:
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: import, write the first error (or nothing), leave at once
        os.close(r)
        _probe_child(todo, config_dir, w)
    os.close(w)
    try:
        report = _read_report(r, pid)
    finally:
        os.close(r)
    if report:
        raise InvalidInput(report["message"], hint=f"{report['hint']}; nothing was started")


def _probe_child(todo: list[tuple[str, str]], config_dir: Path | None, w: int) -> None:
    code = 0
    try:
        for pool, path in todo:
            try:
                import_agent(path, config_dir)
            except InvalidInput as e:
                os.write(w, orjson.dumps({"message": f"pools.{pool}.agent: {e.message[:4000]}", "hint": e.hint}))
                break
    except BaseException:  # noqa: BLE001 - a forked child never returns into the caller
        code = 1
    finally:
        os._exit(code)


def _read_report(r: int, pid: int) -> dict[str, str] | None:
    import select
    chunks = []
    while True:
        ready, _, _ = select.select([r], [], [], PROBE_S)
        if not ready:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return {"message": f"importing the agents took more than {PROBE_S:g} s",
                    "hint": "an agent module blocks while it is imported (work belongs in setup())"}
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    if not chunks and status != 0:
        return {"message": "the agent import probe crashed", "hint": "see the daemon log"}
    return orjson.loads(b"".join(chunks)) if chunks else None
