"""Power-of-two alignment (fcnquant.recover.equalize.align): exact rescaling of a channel space, spaces left alone."""
from __future__ import annotations

import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

from fcnquant.recover import align_pow2  # noqa: E402
from fcnquant.recover.equalize.pow2_grid import waste  # noqa: E402
from fcnquant.runtime import make_session, with_outputs  # noqa: E402
from tests.recover.helpers import RNG, conv, init, make_model, rel_diff, run, spread  # noqa: E402


def test_align_pow2_rescales_the_space_exactly():
    inits = {"w1": spread((4, 3, 3, 3), 0), "b1": RNG.normal(size=4), "w2": spread((2, 4, 1, 1), 1),
             "b2": RNG.normal(size=2)}
    nodes = [conv("c1", "x", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             conv("c2", "p1", "w2", "b2", out="y")]
    model = make_model(nodes, inits, (1, 3, 8, 8), metadata={"fcnquant.preset": "awesome"})
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    r1 = make_session(with_outputs(model, ["r1"]).SerializeToString()).run(["r1"], {"x": x})[0]
    t = float(np.abs(r1).max())
    res = align_pow2(model, {"r1": t, "y": 3.0})
    (space,) = res.spaces
    assert space.producer == "c1" and space.tensors == ("r1",)  # p1 is in the space but not calibrated
    a = space.factor
    assert res.thresholds == {"r1": pytest.approx(t / a)}
    assert waste(t / a) == pytest.approx(-math.log2(0.995)) and space.waste_after < space.waste_before
    np.testing.assert_allclose(init(res.model, "w1"), init(model, "w1") / a, rtol=1e-6)
    np.testing.assert_allclose(init(res.model, "b1"), init(model, "b1") / a, rtol=1e-6)
    np.testing.assert_allclose(init(res.model, "w2"), init(model, "w2") * a, rtol=1e-6)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5
    r1_new = make_session(with_outputs(res.model, ["r1"]).SerializeToString()).run(["r1"], {"x": x})[0]
    np.testing.assert_allclose(r1_new, r1 / a, rtol=1e-5, atol=1e-6)
    meta = {p.key for p in res.model.metadata_props}
    assert {"fcnquant.preset", "fcnquant.pow2_aligned"} <= meta


def test_align_pow2_leaves_spaces_behind_a_calibrated_concat_alone():
    inits = {"w0": spread((3, 3, 1, 1), 0), "w1": spread((4, 3, 3, 3), 0), "wc": spread((2, 7, 1, 1), 1)}
    nodes = [conv("feat", "x", "w0"), helper.make_node("Relu", ["feat"], ["f"]),
             conv("c1", "f", "w1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Concat", ["f", "r1"], ["cat"], axis=1), conv("conv_cat", "cat", "wc", out="y")]
    model = make_model(nodes, inits, (1, 3, 4, 4))
    res = align_pow2(model, {"f": 0.77, "r1": 1.3, "cat": 1.3})
    assert res.spaces == ()
    assert {s.node for s in res.skipped} == {"feat", "c1"}
    assert all("'cat' behind a Concat" in s.reason for s in res.skipped)
