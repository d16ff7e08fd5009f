"""The import graph of qcompile, passes, backends and search has no cycle.

Every `import` statement counts, including those inside functions (a lazy import still makes the
two modules depend on each other). An edge goes to the module named: `from qcompile.errors import X`
-> `qcompile.errors`, `from qcompile import ops` -> `qcompile.ops` (a submodule), `from qcompile
import lower` -> `qcompile` (the package). Parent packages that Python imports implicitly are not
edges, so a cycle here is a real mutual dependency between two modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
#: source directory -> import name (pyproject.toml's [tool.setuptools.package-dir])
PACKAGES = {"qcompile": "qcompile", "passes": "qcompile.passes", "backends": "qcompile.backends",
            "search": "qcompile.search"}
#: the commands run on top of the public API; they may import the top-level package
COMMANDS = "qcompile.cli"


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for d, name in PACKAGES.items():
        for f in sorted((ROOT / d).rglob("*.py")):
            parts = list(f.relative_to(ROOT / d).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([name, *parts])] = f
    return mods


def _targets(node: ast.AST, mod: str, is_pkg: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph() -> nx.DiGraph:
    """Module -> modules it imports (within the four packages), from the source text."""
    mods = _modules()
    known = set(mods)
    g = nx.DiGraph()
    g.add_nodes_from(known)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(node, mod, path.name == "__init__.py", known):
                    while t and t not in known:  # `import qcompile.x.attr` names a module prefix
                        t = t.rpartition(".")[0]
                    if t and t != mod:
                        g.add_edge(mod, t, line=node.lineno)
    return g


def test_graph_covers_the_tree():
    g = import_graph()
    assert {"qcompile.api", "qcompile.passes.to_integer", "qcompile.backends.onnx.export",
            "qcompile.search.cost.bitops"} <= set(g)
    # a known edge, from a function-level import in qcompile.api
    assert g.has_edge("qcompile.api", "qcompile.backends.tvm")


def test_no_import_cycle():
    cycles = sorted(sorted(c) for c in nx.simple_cycles(import_graph()))
    assert not cycles, "import cycles (imports inside functions included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles[:20])


def test_library_modules_do_not_import_the_top_level_package():
    g = import_graph()
    # the rule sees imports inside functions: the commands' `import qcompile as qc` are all function-level
    assert g.has_edge("qcompile.cli.app", "qcompile") and g.has_edge("qcompile.cli.demo", "qcompile")
    offenders = sorted(m for m in g.predecessors("qcompile") if m != COMMANDS and not m.startswith(COMMANDS + "."))
    assert not offenders, f"modules below the top level import the `qcompile` package itself: {offenders}"


def test_backends_have_no_cycle_and_targets_stay_apart():
    """Inside `qcompile.backends` no cycle; the tuning database knows no schedule, and each target's kernels
    import only shared schedule modules, never the other target's."""
    g = import_graph()
    backends = g.subgraph(m for m in g if m.startswith("qcompile.backends"))
    assert not list(nx.simple_cycles(backends))
    tuning = "qcompile.backends.tvm.tuning"
    assert not [t for t in g.successors(tuning) if t.startswith("qcompile.backends.tvm.schedules")]
    for a, b in (("x86", "arm"), ("arm", "x86")):
        mine = [m for m in g if m.startswith(f"qcompile.backends.tvm.schedules.{a}")]
        assert mine
        crossing = [(m, t) for m in mine for t in g.successors(m)
                    if t.startswith(f"qcompile.backends.tvm.schedules.{b}")]
        assert not crossing, crossing
