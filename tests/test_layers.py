"""The import contract of the package: layers that import only downward, and no import cycle between packages.

Every ``import``/``from ... import`` in every file counts, lazy ones (inside functions) included. A unit is a
subpackage (``fcnquant.compare``) or a top-level module (``fcnquant.evaluate``). The layers are listed
bottom to top in ``LAYERS``; README's Layout section draws them.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: each unit's layer; a unit may import its own layer's units or lower ones, never higher ones
LAYERS: list[tuple[str, ...]] = [
    ("fcnquant", "fcnquant.errors", "fcnquant._io"),
    ("fcnquant.observers", "fcnquant.metrics", "fcnquant.runtime", "fcnquant.graph", "fcnquant.demo_models",
     "fcnquant.info", "fcnquant.targets"),
    ("fcnquant.data",),
    ("fcnquant.execute",),
    ("fcnquant.calibrate",),
    ("fcnquant.quantize",),
    ("fcnquant.check",),
    ("fcnquant.evaluate",),
    ("fcnquant.recover",),
    ("fcnquant.compare",),
    ("fcnquant.tune",),
    ("fcnquant.distributed",),
    ("fcnquant.workflows",),
    ("fcnquant.models",),
    ("fcnquant.cli",),
    ("fcnquant.__main__",),
]
#: passes never import the cluster backend: they are given an executor
PASSES = ("fcnquant.calibrate", "fcnquant.quantize", "fcnquant.evaluate", "fcnquant.recover", "fcnquant.compare",
          "fcnquant.tune")
#: the cluster backend imports nothing above the execution layer
DISTRIBUTED_MAY_IMPORT = {u for layer in LAYERS[:4] for u in layer} | {"fcnquant.distributed"}


def _files() -> dict[str, Path]:
    """Returns {dotted module name: path} for the package (models/ is installed as fcnquant.models)."""
    out = {}
    for base, prefix in ((ROOT / "fcnquant", "fcnquant"), (ROOT / "models", "fcnquant.models")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix] + parts)] = path
    return out


def unit_of(module: str) -> str:
    """Returns the unit (subpackage or top-level module) a dotted module name belongs to."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}  # "from fcnquant import calibrate" names a unit
    return {n for n in found if n == "fcnquant" or n.startswith("fcnquant.")}


def unit_graph() -> dict[str, set[str]]:
    """Returns {unit: units it imports} over the whole package."""
    files = _files()
    units = {unit_of(m) for m in files}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for module, path in files.items():
        for name in _imports(module, path):
            target = unit_of(name)
            if target not in units:  # "from fcnquant import __version__": the root package
                target = "fcnquant"
            if target != unit_of(module):
                graph[unit_of(module)].add(target)
    return graph


def test_every_unit_has_a_layer():
    layered = {u for layer in LAYERS for u in layer}
    assert set(unit_graph()) <= layered, sorted(set(unit_graph()) - layered)


def test_layers_import_only_downward():
    level = {u: i for i, layer in enumerate(LAYERS) for u in layer}
    upward = sorted(f"{u} -> {t}" for u, ts in unit_graph().items() for t in ts if level[t] > level[u])
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_passes_do_not_import_the_cluster_backend_nor_it_them():
    graph = unit_graph()
    assert not [p for p in PASSES if "fcnquant.distributed" in graph.get(p, set())]
    assert graph["fcnquant.distributed"] <= DISTRIBUTED_MAY_IMPORT, graph["fcnquant.distributed"]


def test_no_cycle_between_units():
    graph = unit_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for t in sorted(graph[u]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state:
            cycle = visit(u)
            assert cycle is None, " -> ".join(cycle)
