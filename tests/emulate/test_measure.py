"""The emulation pass: scores, disagreement with onnxruntime, exact merge over shards, the target's arithmetic."""
from __future__ import annotations

import numpy as np

from fcnquant.data import DataConfig
from fcnquant.emulate import Arithmetic, arithmetic_of, emulate_eval
from fcnquant.execute import LocalExecutor, RunConfig


def test_shards_merge_exactly_and_onnxruntimes_side_is_evaluate(pow2_fcn8s):
    from fcnquant.evaluate import evaluate

    data = DataConfig(num_images=5)
    one = emulate_eval(pow2_fcn8s, data, RunConfig(progress=False))
    three = emulate_eval(pow2_fcn8s, data, LocalExecutor(shards=3, progress=False))
    a, b = one.to_dict(), three.to_dict()
    for d in (a, b):
        d.pop("seconds")
    assert a == b
    assert one.simulated_miou == evaluate(pow2_fcn8s, data, RunConfig(progress=False)).miou
    assert one.arithmetic["target"] == "npu-pow2" and one.arithmetic["rounding"] == "half_up"
    assert one.pixels == 5 * 160 * 160
    assert 0 < one.differing_pixels < 0.05 * one.pixels  # half-up ties move a few boundary pixels
    assert {x.op for x in one.layers} >= {"Conv+Relu", "MaxPool", "Add", "Resize"}
    assert all(x.values > 0 for x in one.layers)


def test_half_even_emulation_of_the_first_layers_equals_onnxruntime(pow2_fcn8s):
    """With onnxruntime's own rounding, every tensor before the first Resize is bit-identical (integer kernels and
    exact power-of-two arithmetic); the rest differ only through the Resize coefficients."""
    report = emulate_eval(pow2_fcn8s, DataConfig(num_images=2), RunConfig(progress=False),
                          arithmetic=Arithmetic(rounding="half_even"))
    first_resize = next(k for k, x in enumerate(report.layers) if x.op == "Resize")
    assert first_resize > 10
    assert all(x.max_lsb == 0 for x in report.layers[:first_resize])
    assert report.disagreement < 0.5


def test_the_arithmetic_comes_from_the_target_file(tmp_path):
    from fcnquant.emulate.target import model_target
    from fcnquant.targets import builtin_path

    assert arithmetic_of("npu-pow2").rounding == "half_up"
    assert arithmetic_of("tensorrt").rounding == "half_even"
    assert arithmetic_of("ort-cpu").accumulator_bits == 32
    text = builtin_path("npu-pow2").read_text().replace('rounding = "half_up"', 'rounding = "floor"')
    text = text.replace('name = "npu-pow2"', 'name = "my-npu"')
    (tmp_path / "my.toml").write_text(text)
    a = arithmetic_of(str(tmp_path / "my.toml"))
    assert (a.target, a.rounding, a.max_shift) == ("my-npu", "floor", 8)

    class Meta:
        def __init__(self, **kv):
            self.metadata_props = [type("P", (), {"key": k, "value": v}) for k, v in kv.items()]

    assert model_target(Meta(**{"fcnquant.target": "my-npu", "fcnquant.target_source": str(tmp_path / "my.toml")})) \
        == str(tmp_path / "my.toml")
    assert model_target(Meta(**{"fcnquant.target": "tensorrt", "fcnquant.target_source": "builtin:tensorrt"})) \
        == "tensorrt"
    assert model_target(Meta()) == "npu-pow2"


def test_uint8_asymmetric_model_runs(demo_int8):
    """The ort-cpu model (uint8 activations, zero points, per-channel weights) runs too; with its half_even
    rounding the class disagreement stays small (general scales: 31-bit fixed-point multipliers)."""
    report = emulate_eval(demo_int8.model, DataConfig(num_images=2), RunConfig(progress=False))
    assert report.arithmetic["target"] == "ort-cpu"
    assert report.disagreement < 1.0
    assert np.isfinite(report.emulated.miou)
