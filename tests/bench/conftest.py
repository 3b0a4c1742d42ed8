"""Fixtures of the bench script tests: the scripts loaded as modules (the int8 model they run is tests/conftest.py's
``pow2_fcn8s``)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_emulate(monkeypatch_module):
    """bench/bench_emulate.py as a module (its BLAS-thread setting kept out of the test session's environment)."""
    monkeypatch_module.setenv("OPENBLAS_NUM_THREADS", os.environ.get("OPENBLAS_NUM_THREADS", "1"))
    return load_script("bench_emulate", monkeypatch_module)


@pytest.fixture(scope="module")
def bench_gpu(monkeypatch_module):
    """bench/bench_gpu.py as a module."""
    return load_script("bench_gpu", monkeypatch_module)


def load_script(name: str, monkeypatch) -> object:
    """Returns bench/<name>.py loaded as a module, with bench/ on the path for its own imports."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()
