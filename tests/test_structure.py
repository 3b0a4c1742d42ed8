"""Size limits that keep the package easy to change: no public function takes more than 12 parameters (related
settings travel as one config object), and no function is longer than 100 lines."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_PARAMETERS = 12
MAX_LINES = 100


def _functions():
    for base in (ROOT / "fcnquant", ROOT / "models"):
        for path in sorted(base.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield path.relative_to(ROOT), node


def _parameters(fn: ast.FunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return len([n for n in names if n not in ("self", "cls")])


def test_public_functions_take_at_most_12_parameters():
    wide = [f"{p}:{fn.lineno} {fn.name}: {_parameters(fn)}" for p, fn in _functions()
            if not fn.name.startswith("_") and _parameters(fn) > MAX_PARAMETERS]
    assert not wide, "public functions with more than 12 parameters:\n" + "\n".join(wide)


def test_functions_are_at_most_100_lines():
    long = [f"{p}:{fn.lineno} {fn.name}: {fn.end_lineno - fn.lineno + 1} lines" for p, fn in _functions()
            if fn.end_lineno - fn.lineno + 1 > MAX_LINES]
    assert not long, "functions longer than 100 lines:\n" + "\n".join(long)
