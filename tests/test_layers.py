"""The package layers hold: imports point only downward, sit at the top of files, and form no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("localize", "datasets", "matching", "pose", "retrieval")
# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = {"localize.core": 0, "datasets": 1, "matching": 2, "pose": 3, "retrieval": 4, "localize": 5}


def layer_of(module: str) -> int:
    """The layer of a dotted module name (longest matching prefix of LAYERS)."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path], root: Path = ROOT) -> list[tuple[str, int, bool]]:
    """Project modules imported by a file: (module, line, at top level of the file)."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body}
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` names a submodule when one exists
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                out.append((name, node.lineno, id(node) in top))
    return sorted(set(out), key=lambda t: (t[1], t[0]))


def violations(root: Path = ROOT) -> list[str]:
    """Every upward import, function-level project import and import cycle under root."""
    modules = project_modules(root)
    problems, graph = [], {}
    for mod, path in modules.items():
        graph[mod] = set()
        for target, line, at_top in imports_of(path, modules, root):
            where = f"{path.relative_to(root)}:{line}"
            if layer_of(target) > layer_of(mod):
                problems.append(f"{where}: upward import {mod} -> {target}")
            if not at_top:
                problems.append(f"{where}: project import inside a function or block ({target})")
            if target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_project_layers_hold():
    problems = violations()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("from localize.core.geometry import Pose\n", None),
    ("from matching.model import ImMatchNet\n", "upward import"),
    ("def f():\n    from datasets.tum import read_tum\n", "inside a function"),
])
def test_checker_catches_upward_and_hidden_imports(tmp_path, source, expected):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "localize" / "core").mkdir()
    (tmp_path / "localize" / "core" / "__init__.py").write_text("")
    (tmp_path / "localize" / "core" / "geometry.py").write_text("Pose = 1\n")
    (tmp_path / "matching" / "model.py").write_text("ImMatchNet = 1\n")
    (tmp_path / "datasets" / "tum.py").write_text("read_tum = 1\n")
    (tmp_path / "datasets" / "reader.py").write_text(source)
    found = violations(tmp_path)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found


def test_checker_catches_cycles(tmp_path):
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "matching" / "a.py").write_text("from matching import b\n")
    (tmp_path / "matching" / "b.py").write_text("from matching.a import x\n")
    assert violations(tmp_path) == ["import cycle: matching.a -> matching.b"]
