"""Model bytes with extra graph outputs (fcnquant.runtime.outputs_patch) equal the model rebuilt with them."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fcnquant.errors import ModelError
from fcnquant.runtime import outputs_patch, with_outputs
from tests.calibrate.helpers import tiny_fcn


def test_patched_bytes_are_the_model_with_outputs(tmp_path):
    path = tiny_fcn(tmp_path / "m.onnx")
    raw = path.read_bytes()
    model = onnx.load_from_string(raw)
    names = ["r1", "s1", "a", "output"]  # "output" is already a graph output: not repeated
    patched = onnx.load_from_string(raw + outputs_patch(model, names))
    want = with_outputs(model, names)
    assert [o.name for o in patched.graph.output] == [o.name for o in want.graph.output] == ["output", "r1", "s1", "a"]
    assert patched.graph.node == want.graph.node and patched.graph.initializer == want.graph.initializer
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(raw + outputs_patch(model, names), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(want.SerializeToString(), providers=["CPUExecutionProvider"])
    for u, v in zip(a.run(None, {"input": x}), b.run(None, {"input": x})):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ModelError, match="nope"):
        outputs_patch(model, ["nope"])
