"""The copy that gives an exposing model's logits as the model without exposures computes them."""
from __future__ import annotations

import numpy as np
import onnx

from fcnquant.compare.tensors.plain_logits import plain_logits
from fcnquant.demo_models import demo_model_path
from fcnquant.runtime import make_session, with_outputs
from tests.compare.helpers import HW, skip_model

EXPOSED = ["h", "r", "c", "s"]


def _run(model, names, x):
    return make_session(model.SerializeToString()).run(names, {"x": x})


def test_copy_gives_the_plain_logits_and_leaves_the_exposed_tensors():
    model = skip_model()
    x = np.random.default_rng(1).standard_normal((1, 3, HW, HW)).astype(np.float32)
    got = plain_logits(model, EXPOSED, max_share=1.0)
    assert got.copied == 3 and got.output not in {t for n in model.graph.node for t in n.output}
    copies = list(got.model.graph.node)[len(model.graph.node):]
    assert [n.op_type for n in copies] == ["Conv", "Add", "Conv"]
    # c2's copy reads only original tensors, so it reads copies of its weights (no merge back into c2)
    assert copies[0].input[0] == "r" and copies[0].input[1:] != ["c2_w", "c2_b"]
    assert copies[1].input == [copies[0].output[0], "r"] and copies[2].input[1:] == ["c3_w", "c3_b"]
    assert list(got.model.graph.node)[:len(model.graph.node)] == list(model.graph.node)
    (plain,) = _run(model, ["output"], x)
    exposing = with_outputs(got.model, EXPOSED)
    copy, *taps = _run(exposing, [got.output, *EXPOSED], x)
    assert copy.tobytes() == plain.tobytes()
    before = _run(with_outputs(model, EXPOSED), EXPOSED, x)  # the exposing model without the copy
    assert all(a.tobytes() == b.tobytes() for a, b in zip(taps, before))


def test_exposures_that_block_no_fusion_copy_nothing():
    model = skip_model()
    got = plain_logits(model, ["h", "r", "s"])  # a Relu's, a Conv's read by that Relu, an Add's
    assert got.model is model and got.output == "output" and got.copied == 0


def test_a_copy_holding_more_than_its_share_of_the_weights_is_refused():
    # c2 (16 x 16 x 3 x 3 = 2304 weights) and c3 (21 x 16 = 336) of 2304 + 336 + 16 x 3 x 3 x 3 = 3072: 0.859
    model = skip_model()
    assert plain_logits(model, EXPOSED) is None
    assert plain_logits(model, EXPOSED, max_share=0.86) is not None
    assert plain_logits(model, EXPOSED, max_share=0.85) is None


def test_demo_fcn8s_skip_scores():
    """The demo fcn8s exposing every Conv/Relu/Add output: the copy gives the plain logits bit for bit."""
    model = onnx.load(str(demo_model_path("fcn8s")))
    names = [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Relu", "Add", "MaxPool")]
    got = plain_logits(model, names)
    assert got is not None and got.copied > 0
    x = np.random.default_rng(2).standard_normal((1, 3, 160, 160)).astype(np.float32)
    inp = model.graph.input[0].name
    (plain,) = make_session(model.SerializeToString()).run(None, {inp: x})[:1]
    (copy,) = make_session(with_outputs(got.model, names).SerializeToString()).run([got.output], {inp: x})
    assert copy.tobytes() == plain.tobytes()

