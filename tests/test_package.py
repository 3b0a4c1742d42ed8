"""Packaging facts: the core imports and its CLI works without torch or ray; models install as fcnquant.models."""
from __future__ import annotations

import subprocess
import sys
import textwrap

CORE_MODULES = [
    "fcnquant", "fcnquant.cli", "fcnquant.errors", "fcnquant._io", "fcnquant.runtime",
    "fcnquant.data", "fcnquant.metrics", "fcnquant.evaluate",
    "fcnquant.observers", "fcnquant.execute", "fcnquant.calibrate", "fcnquant.quantize", "fcnquant.compare",
    "fcnquant.workflows",
]


def _run_without(module: str, code: str) -> subprocess.CompletedProcess:
    # A meta-path finder that refuses ``module``, exactly as if it were not installed.
    prelude = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class _Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == {module!r} or name.startswith({module!r} + "."):
                    raise ModuleNotFoundError("No module named " + repr(name), name=name)
                return None
        sys.meta_path.insert(0, _Refuse())
        """
    )
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    return _run_without("torch", code)


def test_core_imports_without_torch():
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in CORE_MODULES)
    code += "assert 'torch' not in sys.modules\nprint('ok')\n"
    res = _run_without_torch(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("ok")


def test_cli_help_without_torch():
    code = "from fcnquant.cli import build_parser\nbuild_parser().format_help()\nassert 'torch' not in sys.modules\n"
    res = _run_without_torch(code)
    assert res.returncode == 0, res.stderr


def test_core_runs_without_ray():
    # Every module imports, a plain eval runs, and --ray without Ray is a one-line error (exit 2) naming the extra.
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in CORE_MODULES)
    code += textwrap.dedent(
        """
        import os, fcnquant.distributed, fcnquant.distributed.executor
        from fcnquant.cli import main
        m = os.path.join(os.path.dirname(fcnquant.__file__), "assets", "demo", "fcn8s.onnx")
        assert main(["eval", m, "--num-images", "2", "--no-progress"]) == 0
        assert main(["eval", m, "--num-images", "2", "--ray"]) == 2
        assert 'ray' not in sys.modules
        """)
    res = _run_without("ray", code)
    assert res.returncode == 0, res.stderr
    assert 'Ray is not installed: pip install "fcnquant[ray]"' in res.stderr


def test_models_is_not_a_top_level_package():
    import importlib.util

    import fcnquant.models  # noqa: F401  (mapped from the repository's models/ folder)

    spec = importlib.util.find_spec("fcnquant.models")
    assert spec is not None and spec.origin.replace("\\", "/").endswith("models/__init__.py")
    from pathlib import Path

    site = [p for p in sys.path if p.endswith("site-packages")]
    for s in site:
        assert not (Path(s) / "models" / "__init__.py").exists()


def test_lazy_package_names_are_the_modules_objects():
    """recover, quantize and data import some modules on first use; every public name still resolves to the object
    its module defines, and ``fcnquant.recover.adaround`` / ``.equalize`` stay the functions, whoever imported
    their subpackages first."""
    code = textwrap.dedent(
        """
        import importlib, sys
        import fcnquant.recover.equalize.cle, fcnquant.recover.adaround.layers  # subpackages imported first
        from fcnquant.recover import adaround, equalize
        from fcnquant.recover.adaround.adaround import adaround as ada
        from fcnquant.recover.equalize.equalize import equalize as eq
        assert adaround is ada and equalize is eq
        import fcnquant.recover as recover
        assert recover.adaround is ada and recover.equalize is eq
        for pkg in ("fcnquant.recover", "fcnquant.quantize", "fcnquant.data"):
            mod = importlib.import_module(pkg)
            for name in mod.__all__:
                value = getattr(mod, name)
                home = getattr(value, "__module__", None)
                if home and home.startswith(pkg):  # a class or function: the very object of its module
                    assert getattr(sys.modules[home], name) is value, (pkg, name)
        print("ok")
        """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
