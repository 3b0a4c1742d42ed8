"""Fixtures of the emulator tests: the demo fcn8s emitted for npu-pow2 with per-tensor weights."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pow2_fcn8s(tmp_path_factory) -> Path:
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
