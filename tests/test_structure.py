"""The package's layout: no import cycle inside astro_dia, and a light ``import astro_dia``."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import astro_dia

PACKAGE_DIR = Path(astro_dia.__file__).resolve().parent
PACKAGE = "astro_dia"


def _module_names():
    """``{dotted name: path}`` of every module of astro_dia (``__init__`` as its package)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((PACKAGE,) + parts)] = path
    return modules


def _is_package(name, modules):
    return modules[name].name == "__init__.py"


def _resolve_base(module, node, modules):
    """The absolute name an ``ImportFrom`` imports from (relative imports resolved)."""
    if node.level == 0:
        return node.module
    # The package a relative import starts from: the module's own package.
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[:len(parts) - (node.level - 1)]
    base = ".".join(parts)
    return f"{base}.{node.module}" if node.module else base


def _internal(name, modules):
    """``name`` if it is a module of the package, else None (e.g. an uncommitted ``_version``)."""
    return name if name in modules else None


def _imports(module, modules):
    """The astro_dia modules that ``module`` imports, anywhere in its source (functions too)."""
    tree = ast.parse(modules[module].read_text(encoding="utf-8"), str(modules[module]))
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    targets.add(_internal(alias.name, modules))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_base(module, node, modules)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    # ``from . import x`` with x a module: x itself (the package
                    # ``__init__`` runs first, but it is the importer's own parent).
                    targets.add(submodule)
                else:
                    # A name defined in a module or a package ``__init__``: that module.
                    targets.add(_internal(base, modules))
    targets.discard(None)
    targets.discard(module)
    return targets


def import_graph():
    """``{module: set of astro_dia modules it imports}`` for the whole package."""
    modules = _module_names()
    return {module: _imports(module, modules) for module in modules}


def find_cycle(graph):
    """One import cycle as a list ``[a, b, ..., a]``, or None."""
    state = {}            # 1: on the current path, 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return path[path.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_graph_sees_imports_inside_functions_and_relative_imports():
    graph = import_graph()
    # Lazy imports, in functions, count (ccdproc_step imports the imager in a function).
    assert "astro_dia.core" in graph["astro_dia.pipeline.ccdproc_step"]
    # ``from ..exceptions import DIAError`` in a subpackage resolves to the top level.
    assert "astro_dia.exceptions" in graph["astro_dia.photometry.lightcurve"]
    # A name from a package __init__ counts as importing the package.
    assert "astro_dia.fitting.solvers" in graph["astro_dia.fitting._fitting"]
    assert "astro_dia.photometry" in graph["astro_dia.cli._main"]


def test_find_cycle_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", ["result._record", "result.io", "plotting", "batch"])
def test_result_side_does_not_import_the_imager(module):
    graph = import_graph()
    assert "astro_dia.core" not in graph[f"astro_dia.{module}"]


def test_import_loads_neither_matplotlib_nor_dask():
    code = "import astro_dia, sys; print('matplotlib' in sys.modules, 'dask' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               check=True)
    assert completed.stdout.split() == ["False", "False"]
