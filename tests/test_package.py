"""Packaging facts: the core imports and its CLI works without torch; models install as fcnquant.models."""
from __future__ import annotations

import subprocess
import sys
import textwrap

CORE_MODULES = [
    "fcnquant", "fcnquant.cli", "fcnquant.errors", "fcnquant._io", "fcnquant.runtime",
    "fcnquant.data", "fcnquant.metrics", "fcnquant.evaluate",
    "fcnquant.observers", "fcnquant.calibrate", "fcnquant.quantize", "fcnquant.compare",
]


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    # A meta-path finder that refuses torch, exactly as if it were not installed.
    prelude = textwrap.dedent(
        """
        import sys, importlib.abc
        class _NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name=name)
                return None
        sys.meta_path.insert(0, _NoTorch())
        """
    )
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)


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


def test_models_is_not_a_top_level_package():
    import importlib.util

    import fcnquant.models  # noqa: F401  (mapped from the repository's models/ folder)

    spec = importlib.util.find_spec("fcnquant.models")
    assert spec is not None and spec.origin.replace("\\", "/").endswith("models/__init__.py")
    from pathlib import Path

    site = [p for p in sys.path if p.endswith("site-packages")]
    for s in site:
        assert not (Path(s) / "models" / "__init__.py").exists()
