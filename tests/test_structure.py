"""
The package's layout: layers, no import cycle, short modules, and a light ``import astro_dia``.

The layers are drawn in docs/architecture.rst; `LAYERS` is the same table.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import astro_dia

PACKAGE_DIR = Path(astro_dia.__file__).resolve().parent
PACKAGE = "astro_dia"
TESTS_DIR = Path(__file__).resolve().parent

#: The units of the package (a module directly in astro_dia/ or a subpackage,
#: named by its folder), lowest layer first. A unit imports only units of its
#: own layer or below it, and no two units import each other. ``""`` is the
#: package's own ``__init__``, which hands the public names on. The pipeline
#: layer names subpackages that are not here yet; a unit that is absent is
#: passed over, a unit that is present and not in the table fails the test.
LAYERS = (
    ("exceptions", "flags", "kernels", "background", "losses", "plotting",
     "_package_version", "_version"),
    ("model", "simulate"),
    ("noise",),
    ("fitting",),
    ("result", "metrics"),
    ("batch",),
    ("core",),
    ("photometry", "detection"),
    ("pipeline", "registration", "reference", "demo"),
    ("cli",),
    ("__main__", ""),
)

#: Most modules directly in astro_dia/ (``__init__`` and ``__main__`` count;
#: the generated, uncommitted ``_version`` does not).
MAX_TOP_LEVEL_MODULES = 12

#: Most lines of any module.
MAX_MODULE_LINES = 500


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
    assert "astro_dia.photometry" in graph["astro_dia.cli._photometry"]


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


def unit_of(module):
    """The unit of a module: its top-level module or subpackage under astro_dia, ``""`` for the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(unit):
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    return None


def unit_imports():
    """``{(importer unit, imported unit)}``: the imports between distinct units."""
    return {(unit_of(module), unit_of(target)) for module, targets in import_graph().items()
            for target in targets if unit_of(module) != unit_of(target)}


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in _module_names()}
    missing = sorted(unit for unit in units if layer_of(unit) is None)
    assert not missing, f"add {missing} to LAYERS (and to docs/architecture.rst)"


def test_imports_run_down_the_layers():
    upward = sorted(f"{importer} -> {imported}" for importer, imported in unit_imports()
                    if layer_of(imported) > layer_of(importer))
    assert not upward, "imports up the layers: " + ", ".join(upward)


def test_no_two_units_import_each_other():
    pairs = unit_imports()
    both_ways = sorted(f"{a} <-> {b}" for a, b in pairs if (b, a) in pairs and a < b)
    assert not both_ways, "two-way imports: " + ", ".join(both_ways)


def test_layer_table_orders_the_flow():
    # The unit of a module is its first name below the package.
    assert unit_of("astro_dia.fitting.solvers.cg") == "fitting"
    assert unit_of("astro_dia.core") == "core"
    assert unit_of("astro_dia") == ""
    assert layer_of("noise") < layer_of("fitting") < layer_of("result") < layer_of("core")
    assert layer_of("core") < layer_of("photometry") < layer_of("pipeline") < layer_of("cli")
    assert layer_of("registration") == layer_of("reference") == layer_of("pipeline")


def test_at_most_twelve_modules_directly_in_the_package():
    top = sorted(path.name for path in PACKAGE_DIR.glob("*.py") if path.name != "_version.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_module_over_five_hundred_lines():
    long = {str(path.relative_to(PACKAGE_DIR)): n for path in _module_names().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, long


def test_every_subpackage_has_its_tests_folder():
    packages = [path.parent.relative_to(PACKAGE_DIR) for path in PACKAGE_DIR.rglob("__init__.py")
                if path.parent != PACKAGE_DIR]
    missing = sorted(str(package) for package in packages
                     if not (TESTS_DIR / package / "__init__.py").exists())
    assert not missing, f"no tests/<name>/ for {missing}"
