"""Fixtures shared across the test packages: synthetic VOC sets, the demo fcn8s in int8, the tuner's planted model.

Everything here is built once per session and only read by the tests; a test that changes a file copies it first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import pytest

from fcnquant.data import write_synthetic_voc
from tests.tune.helpers import TUNE_VOC, plant


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory) -> Callable[..., Path]:
    """``synthetic_voc(train=, val=, size=, seed=)``: the root of that synthetic VOC set, written on first use.

    Generation is deterministic in its parameters, so tests asking for the same set share one folder.
    """
    made: dict[tuple[int, int, int, int], Path] = {}

    def get(*, train: int, val: int, size: int, seed: int) -> Path:
        key = (train, val, size, seed)
        if key not in made:
            folder = tmp_path_factory.mktemp(f"voc-t{train}-v{val}-s{size}-r{seed}")
            made[key] = write_synthetic_voc(folder, train=train, val=val, size=size, seed=seed, progress=False)
        return made[key]

    return get


class Int8Model(NamedTuple):
    model: Path
    table: Path


@pytest.fixture(scope="session")
def demo_int8(tmp_path_factory) -> Int8Model:
    """The demo fcn8s emitted in int8 (ort-cpu) from 4 calibration images of the built-in set, and its table."""
    from fcnquant.data import DataConfig
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.workflows import Outputs, calibrate

    folder = tmp_path_factory.mktemp("int8")
    result = calibrate(demo_model_path("fcn8s"), DataConfig(split="train", num_images=4), run=RunConfig(progress=False),
                       outputs=Outputs(model=folder / "fcn8s.int8.onnx"))
    return Int8Model(folder / "fcn8s.int8.onnx", result.table.save(folder / "fcn8s.json"))


@pytest.fixture(scope="session")
def tune_voc(synthetic_voc) -> Path:
    """The synthetic set the tuner tests use: 32 train images (calibration and tuning), 6 val (reporting)."""
    return synthetic_voc(**TUNE_VOC)


@pytest.fixture(scope="session")
def planted_fcn8s(tmp_path_factory) -> Path:
    """The demo fcn8s with one planted layer that per-tensor int8 breaks (see :func:`tests.tune.helpers.plant`)."""
    return plant(tmp_path_factory.mktemp("planted") / "planted.onnx")


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
