"""The architecture, checked: every import of the tree (top level, inside functions and
under ``TYPE_CHECKING`` alike) is read with ``ast`` and held against the layering rules.

Rules (docs/DECISIONS.md, "Layout"):

1. no import cycle between modules of ``shm``, ``runtime``, ``coordination`` and ``agora``;
2. ``shm`` imports nothing of agora's;
3. in ``runtime``, only the composition root (``runtime.daemon``) and the CLI
   (``runtime.cli``) may import ``coordination``;
4. ``coordination`` never imports ``runtime.daemon``, ``runtime.cli`` or ``agora``; nothing
   of the product imports ``agora`` (the public face is the top), but the demo's agents,
   which are written as a user writes them;
5. no module imports another package's ``_private`` module;
6. ``perf`` does not import ``tests``; tests import ``tests.support``, never another test
   module.

Each violation names the importing file and line.  The checker is run on a small synthetic
tree too, so that a broken checker cannot pass silently.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("shm", "runtime", "coordination", "agora")
OURS = PRODUCT + ("tests", "perf")
COMPOSITION = ("runtime.daemon", "runtime.cli")
USER_CODE = ("runtime.demo",)  # written as a user writes agents: `import agora`


@dataclass(frozen=True)
class Import:
    source: str      # importing module
    target: str      # imported module (the longest prefix that is a module of the tree)
    where: str       # file:line


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules_of(root: Path) -> dict[str, Path]:
    found = {}
    for top in OURS:
        if (root / f"{top}.py").is_file():
            found[top] = root / f"{top}.py"
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else ():
            if "__pycache__" not in path.parts:
                found[module_name(root, path)] = path
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(root: Path) -> list[Import]:
    known = modules_of(root)
    out = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        package = _package_of(name, path)
        for node in ast.walk(tree):
            for target in _targets(node, package, known):
                resolved = _resolve(target, known)
                if resolved and target.split(".")[0] in OURS:
                    out.append(Import(name, resolved, f"{path.relative_to(root)}:{node.lineno}"))
    return list(dict.fromkeys(out))


def _targets(node: ast.AST, package: str, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the package upwards
        up = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(up + ([base] if base else []))
    # `from pkg import mod` imports the module pkg.mod when there is one, else names of pkg
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def _is_private(module: str) -> bool:
    return any(part.startswith("_") and part != "__init__" for part in module.split("."))


def _private_package(module: str) -> str:
    """The package that owns the first private part of ``module``."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            return ".".join(parts[:i])
    return module


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(root: Path) -> list[str]:
    edges = imports_of(root)
    found = []
    for e in edges:
        src, dst = e.source, e.target
        if src == dst:
            continue
        product_src = _under(src, PRODUCT)
        if _under(src, ("shm",)) and not _under(dst, ("shm",)):
            found.append(f"{e.where}: shm imports {dst} (shm imports nothing of agora's)")
        if _under(src, ("runtime",)) and not _under(src, COMPOSITION) and _under(dst, ("coordination",)):
            found.append(f"{e.where}: {src} imports {dst} (only {' and '.join(COMPOSITION)} may)")
        if _under(src, ("coordination",)) and _under(dst, COMPOSITION + ("agora",)):
            found.append(f"{e.where}: {src} imports {dst} (a wrong-way import)")
        if product_src and src != "agora" and not _under(src, USER_CODE) and _under(dst, ("agora",)):
            found.append(f"{e.where}: {src} imports agora (the public face imports the product, not back)")
        if (product_src or _under(src, ("perf",))) and _is_private(dst):
            owner = _private_package(dst)
            if not _under(src, (owner,)) or (owner == "" and src != dst):
                found.append(f"{e.where}: {src} imports {dst}, private to {owner or 'its module'}")
        if _under(src, ("perf",)) and _under(dst, ("tests",)):
            found.append(f"{e.where}: perf imports {dst} (perf may not depend on tests)")
        if _under(src, ("tests",)) and _under(dst, ("tests",)) and dst.rpartition(".")[2].startswith("test_"):
            found.append(f"{e.where}: {src} imports the test module {dst} (shared code goes in tests.support)")
    return list(dict.fromkeys(found)) + [f"import cycle: {c}" for c in cycles(edges)]


def cycles(edges: list[Import]) -> list[str]:
    """Every strongly connected component of more than one product module, with the lines
    that close it (Tarjan's algorithm, iterative)."""
    graph: dict[str, dict[str, str]] = {}
    for e in edges:
        if e.source != e.target and _under(e.source, PRODUCT) and _under(e.target, PRODUCT):
            graph.setdefault(e.source, {}).setdefault(e.target, e.where)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    members = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        members.append(m)
                        if m == node:
                            break
                    if len(members) > 1:
                        ms = set(members)
                        lines = sorted(f"{s} -> {t} ({w})" for s in ms for t, w in graph.get(s, {}).items()
                                       if t in ms)
                        out.append("; ".join(lines))
    return out


def test_the_tree_keeps_its_layers():
    found = violations(REPO)
    assert not found, "layering violations:\n" + "\n".join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_a_cycle_a_wrong_way_import_and_a_private_one(tmp_path):
    _write(tmp_path, {
        "shm/__init__.py": "", "shm/a.py": "import runtime.errors\n",
        "runtime/__init__.py": "", "runtime/errors.py": "",
        "runtime/x.py": "def f():\n    from runtime.y import g\n",
        "runtime/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runtime import x\n",
        "runtime/tasks/__init__.py": "", "runtime/tasks/_p.py": "",
        "runtime/wire/__init__.py": "", "runtime/wire/c.py": "from runtime.tasks._p import q\n",
        "runtime/core.py": "import coordination.voting\n",
        "coordination/__init__.py": "", "coordination/voting.py": "",
        "tests/__init__.py": "", "tests/test_a.py": "", "tests/test_b.py": "from tests.test_a import z\n",
    })
    found = "\n".join(violations(tmp_path))
    assert "import cycle: runtime.x -> runtime.y (runtime/x.py:2); runtime.y -> runtime.x (runtime/y.py:3)" in found
    assert "shm/a.py:1: shm imports runtime.errors" in found
    assert "runtime/wire/c.py:1: runtime.wire.c imports runtime.tasks._p, private to runtime.tasks" in found
    assert "runtime/core.py:1: runtime.core imports coordination.voting" in found
    assert "tests/test_b.py:1: tests.test_b imports the test module tests.test_a" in found


def test_a_clean_tree_passes_the_checker(tmp_path):
    _write(tmp_path, {
        "shm/__init__.py": "", "runtime/__init__.py": "import shm\n",
        "runtime/tasks/__init__.py": "from runtime.tasks._p import q\n", "runtime/tasks/_p.py": "",
        "runtime/daemon/__init__.py": "import coordination\n", "coordination/__init__.py": "import runtime\n",
    })
    assert violations(tmp_path) == []
