"""The package's layout rules, read from its source: no import cycles (imports inside
functions count too), CuPy imported in one module only, and light subpackages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gpuknn

PACKAGE = Path(__file__).resolve().parents[1] / "gpuknn"


def module_files() -> dict[str, Path]:
    """``{"gpuknn.search.exact": path, ...}`` for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found.update(_owner(target, known) for target in targets)
    found.discard(None)
    return {other for other in found if other != name and not name.startswith(other + ".")}


def _owner(target: str, known: set[str]) -> str | None:
    """The longest known module that ``target`` names or lies in (None outside gpuknn);
    a public name of the package (``gpuknn.KNNModel``) counts as the module it comes from."""
    target = gpuknn._PUBLIC.get(target.removeprefix("gpuknn."), target)
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules ``start`` imports, directly or through others."""
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph.get(module, ()))
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Groups of modules that import each other, directly or round a loop."""
    reach = {module: reachable(graph, module) for module in graph}
    groups = {frozenset({module} | {other for other in reach[module] if module in reach[other]})
              for module in graph if module in reach[module]}
    return sorted(sorted(group) for group in groups)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from gpuknn.model import files\n"
                      "    import gpuknn.search.topk\n")
    known = {"gpuknn", "gpuknn.model", "gpuknn.model.files", "gpuknn.search",
             "gpuknn.search.topk"}
    assert imported_modules("gpuknn.lazy", module, known) == {
        "gpuknn.model.files", "gpuknn.model", "gpuknn.search.topk"}


def test_a_public_name_counts_as_its_module(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def load():\n    from gpuknn import KNNModel, errors\n")
    known = set(module_files())
    assert imported_modules("gpuknn.lazy", module, known) == {"gpuknn.model.knn_model",
                                                              "gpuknn.errors"}


def test_no_import_cycles():
    graph = import_graph()
    assert "gpuknn.model.files" in graph["gpuknn.model.knn_model"]  # the graph is real
    assert cycles(graph) == [], "modules that import each other, directly or round a loop"


def test_model_files_never_import_the_model_class():
    """The format reads and writes parts; the model class uses the format, one way."""
    graph = import_graph()
    for module in ("gpuknn.model.files", "gpuknn.model.checks", "gpuknn.model.layout",
                   "gpuknn.model.archives", "gpuknn.model.buffers", "gpuknn.model.parts"):
        assert "gpuknn.model.knn_model" not in reachable(graph, module), module


def test_cupy_is_imported_in_one_module():
    importers = sorted(name for name, path in module_files().items()
                       if any(isinstance(node, ast.Import | ast.ImportFrom) and
                              any((getattr(node, "module", None) or alias.name)
                                  .split(".")[0] == "cupy" for alias in node.names)
                              for node in ast.walk(ast.parse(path.read_text()))))
    assert importers == ["gpuknn._backend"]


@pytest.mark.parametrize("module", ["gpuknn.search", "gpuknn.model", "gpuknn.search.topk",
                                    "gpuknn.model.predict", "gpuknn.model.reduction"])
def test_light_modules_need_only_numpy(module):
    """Kernel tests and the CUDA path import these without faiss, scipy or the server."""
    code = (f"import sys, {module}\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'faiss', 'scipy', 'starlette', 'uvicorn', 'ray', 'google'})\n"
            "print(','.join(heavy))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == ""
