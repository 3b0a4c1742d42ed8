"""Fixtures of the bench script tests: the scripts loaded as modules, a small int8 model for the emulator's."""
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
    monkeypatch_module.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_emulate_under_test", ROOT / "bench" / "bench_emulate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def pow2_fcn8s_bench(tmp_path_factory) -> Path:
    """The demo fcn8s in int8 for npu-pow2 (per-tensor weights), calibrated on 4 images of the built-in set."""
    from fcnquant.data import DataConfig
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.quantize import QuantConfig
    from fcnquant.workflows import Outputs, calibrate

    out = tmp_path_factory.mktemp("pow2") / "fcn8s.pow2.onnx"
    calibrate(demo_model_path("fcn8s"), DataConfig(split="train", num_images=4), run=RunConfig(progress=False),
              quant=QuantConfig(target="npu-pow2", per_channel=False), outputs=Outputs(model=out))
    return out
