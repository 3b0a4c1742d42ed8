"""pyproject.toml facts behind a quiet ``pip install``: no deprecated license table, no unlisted package folder."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_is_an_spdx_string_with_a_backend_that_reads_it(pyproject):
    # a TOML table here makes setuptools >= 77 print a SetuptoolsDeprecationWarning at every build step
    assert pyproject["project"]["license"] == "Apache-2.0"
    (spec,) = [r for r in pyproject["build-system"]["requires"] if r.startswith("setuptools")]
    low = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", spec.replace(" ", ""))
    assert low and int(low.group(1)) >= 77  # PEP 639 license expressions arrived in setuptools 77.0


def test_every_shipped_folder_is_a_listed_package(pyproject):
    """setuptools warns 'Package would be ignored' for an importable folder with files that `packages` omits."""
    tool = pyproject["tool"]["setuptools"]
    dirs = {name: ROOT / path for name, path in tool["package-dir"].items()}
    listed = set(tool["packages"])
    found = set()
    for top, folder in dirs.items():
        for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            if "__pycache__" in sub.parts or not any(f.is_file() for f in sub.iterdir()):
                continue
            rel = sub.relative_to(folder).parts
            name = ".".join((top, *rel))
            if not any(name.startswith(other + ".") or name == other for other in dirs if other != top
                       and other.startswith(top + ".")):
                found.add(name)
    assert found <= listed, f"folders not in [tool.setuptools] packages: {sorted(found - listed)}"
    data = tool["package-data"]
    assert data["fcnquant.assets.demo"] == ["*.onnx", "*.json"]
    assert any((ROOT / "fcnquant" / "assets" / "demo").glob("*.onnx"))


def test_the_builtin_target_files_ship(pyproject):
    """The built-in targets are read from package files: package-data must carry every one of them."""
    from fcnquant.targets import BUILTIN_NAMES, builtin_path

    tool = pyproject["tool"]["setuptools"]
    assert "fcnquant.targets" in tool["packages"] and tool["package-data"]["fcnquant.targets"] == ["*.toml"]
    for name in BUILTIN_NAMES:
        assert builtin_path(name).parent == ROOT / "fcnquant" / "targets" and builtin_path(name).suffix == ".toml"
