"""Builders for the calibration tests: a tiny FCN with every kind of observed tensor."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
from onnx import numpy_helper

from fcnquant.calibrate.stats import CalibrationStats, TensorStats

TINY_FCN = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,3,32,32] input) => (float[N,3,32,32] output) {
    c1 = Conv <pads = [1,1,1,1]> (input, w1, b1)
    r1 = Relu (c1)
    p1 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r1)
    c2 = Conv <pads = [1,1,1,1]> (p1, w2, b2)
    r2 = Relu (c2)
    p2 = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r2)
    s2 = Conv (p2, ws2, bs2)
    s1 = Conv (p1, ws1, bs1)
    u2 = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (s2, , sc)
    a = Add (u2, s1)
    output = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (a, , sc)
}
"""
SAMPLE_SHA256 = "0f" * 32  # the model hash sample_stats records
OBSERVED = ["input", "r1", "r2", "s2", "s1", "a", "output"]  # the tensors calibration observes, in graph order


def tiny_fcn(path, batch: str = "N"):
    """Writes the tiny FCN (dynamic batch, or a fixed one) to ``path`` and returns the path."""
    rng = np.random.default_rng(1)
    model = onnx.parser.parse_model(TINY_FCN.replace("[N,", f"[{batch},"))

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)

    model.graph.initializer.extend([
        w("w1", 6, 3, 3, 3), w("b1", 6), w("w2", 6, 6, 3, 3), w("b2", 6), w("ws2", 3, 6, 1, 1), w("bs2", 3),
        w("ws1", 3, 6, 1, 1), w("bs1", 3), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc"),
    ])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def tensor_stats(x: np.ndarray, m: int = 10) -> TensorStats:
    """The statistics of one tensor holding the values ``x`` (histogram with ``m`` mantissa bits)."""
    ts = TensorStats.new(m)
    ts.update(np.asarray(x, np.float32))
    return ts


def sample_stats() -> CalibrationStats:
    """Statistics of three tensors with names unsafe as file names: ReLU-like, Laplace and shifted Gaussian values."""
    rng = np.random.default_rng(0)
    st = CalibrationStats.new(["relu1", "add: out", "logits"], model_sha256=SAMPLE_SHA256, preset={"name": "awesome"},
                              image_ids=["a", "b"], model_name="fcn.onnx")
    st.tensors["relu1"].update(np.maximum(rng.standard_normal(20_000), 0).astype(np.float32) * 3)
    st.tensors["add: out"].update(rng.laplace(size=20_000).astype(np.float32))
    st.tensors["logits"].update(rng.standard_normal(5_000).astype(np.float32) * 8 - 2)
    return st
