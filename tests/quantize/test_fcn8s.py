"""An exported FCN8s (zoo topology, narrow width) quantizes with no float island between int8 ops."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fcnquant.quantize import quantize_model
from tests.quantize.helpers import images, make_table, run

pytest.importorskip("torch")

SIZE = 64


@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory):
    from fcnquant.models.export import export_module
    from fcnquant.models.zoo import build_model, init_random_weights

    model = init_random_weights(build_model("fcn8s", num_classes=5, width=1 / 16), seed=0, calib_size=SIZE)
    path = tmp_path_factory.mktemp("fcn8s") / "fcn8s.onnx"
    export_module(model, path, SIZE)
    return path


@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt", "npu-pow2"])
def test_fcn8s_fully_int8(fcn8s, tmp_path, target):
    xs = images((1, 3, SIZE, SIZE), n=3)
    out = tmp_path / f"fcn8s.{target}.onnx"
    res = quantize_model(fcn8s, make_table(fcn8s, xs, target), out, target=target)
    q = onnx.load(str(out))
    made_by = {o: n.op_type for n in q.graph.node for o in n.output}
    ops = {"Conv": 0, "Add": 0, "Resize": 0, "MaxPool": 0}
    for n in q.graph.node:
        if n.op_type in ops:
            ops[n.op_type] += 1
            data = n.input[:1] if n.op_type in ("Resize", "MaxPool") else [i for i in n.input if i]
            assert all(made_by.get(i) == "DequantizeLinear" for i in data), (n.name, list(n.input))
    assert ops == {"Conv": 17, "Add": 2, "Resize": 3, "MaxPool": 5}
    assert res.float_nodes == ()
    # the two skip Adds feed a QuantizeLinear directly (their sums are requantized, not left in float)
    for n in q.graph.node:
        if n.op_type == "Add":
            assert [m.op_type for m in q.graph.node if n.output[0] in m.input] == ["QuantizeLinear"]
    assert all(v in made_by and made_by[v] == "DequantizeLinear" for v in res.tensor_map.values())
    x = images((1, 3, SIZE, SIZE), n=1, seed=11)[0]
    got, want = run(out, x), run(fcn8s, x)
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.98, cos
