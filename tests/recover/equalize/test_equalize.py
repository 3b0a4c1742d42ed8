"""Cross-layer equalization of ONNX graphs (fcnquant.recover.equalize: equalize, scalable): hand-built models in
onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fcnquant import demo_models  # noqa: E402
from fcnquant.errors import FcnquantError, ModelError  # noqa: E402
from fcnquant.data import DataConfig  # noqa: E402
from fcnquant.execute import LocalExecutor, RunConfig  # noqa: E402
from fcnquant.recover import EqualizeOptions, equalize, find_pairs  # noqa: E402
from fcnquant.recover.equalize import METADATA_KEY  # noqa: E402

QUIET = RunConfig(progress=False)
from fcnquant.runtime import make_session  # noqa: E402
from tests.recover.helpers import RNG, conv, init, make_model, rel_diff, run, spread  # noqa: E402


def two_conv_model(bias2=True):
    inits = {"w1": spread((4, 3, 3, 3), 0), "b1": RNG.normal(size=4), "w2": spread((2, 4, 1, 1), 1)}
    if bias2:
        inits["b2"] = RNG.normal(size=2)
    nodes = [conv("c1", "x", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             conv("c2", "r1", "w2", "b2" if bias2 else None, out="y")]
    return make_model(nodes, inits, (1, 3, 8, 8), metadata={"fcnquant.preset": "awesome", "other": "kept"}), inits


def test_two_conv_model_gets_the_formula_scales_and_the_same_outputs(tmp_path):
    model, w = two_conv_model()
    r1 = np.abs(w["w1"].astype(np.float32)).max(axis=(1, 2, 3)).astype(np.float64)
    r2 = np.abs(w["w2"].astype(np.float32)).max(axis=(0, 2, 3)).astype(np.float64)
    s = np.sqrt(r1 / r2)
    res = equalize(model, tmp_path / "eq.onnx")
    eq = onnx.load(str(tmp_path / "eq.onnx"))
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(init(eq, "w1"), f32(w["w1"]) / s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(init(eq, "b1"), f32(w["b1"]) / s, rtol=1e-6)
    np.testing.assert_allclose(init(eq, "w2"), f32(w["w2"]) * s[None, :, None, None], rtol=1e-6)
    np.testing.assert_allclose(init(eq, "b2"), f32(w["b2"]), rtol=0)
    assert [(p.producer, p.consumers) for p in res.pairs] == [("c1", ("c2",))]
    assert res.pairs[0].sweeps == 2 and res.skipped[0].node == "c2"
    np.testing.assert_allclose(res.pairs[0].scale_min, s.min(), rtol=1e-9)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    assert rel_diff(run(model, x), run(eq, x)) < 1e-5
    assert res.max_rel_diff < 1e-5
    # the balanced ranges: both sides sqrt(r1 r2) per channel
    np.testing.assert_allclose(np.abs(init(eq, "w1")).max(axis=(1, 2, 3)), np.sqrt(r1 * r2), rtol=1e-6)
    before, after = res.median_precision()
    assert after > before
    meta = {p.key: p.value for p in eq.metadata_props}
    assert meta["fcnquant.preset"] == "awesome" and meta["other"] == "kept"
    summary = json.loads(meta[METADATA_KEY])
    assert summary["format_version"] == 1 and summary["pairs"][0]["producer"] == "c1"
    assert summary["skipped"] == [{"node": "c2", "reason": res.skipped[0].reason}]
    assert json.loads(json.dumps(res.to_dict()))["pairs"][0]["consumers"] == ["c2"]


def test_hand_worked_two_channel_model():
    # c1: 1 -> 2 channels (1x1) with weights (2, 0.5); c2 reads them with (0.5, 8): s = (2, 0.25)
    inits = {"w1": np.array([2.0, 0.5]).reshape(2, 1, 1, 1), "b1": np.array([1.0, 1.0]),
             "w2": np.array([0.5, 8.0]).reshape(1, 2, 1, 1)}
    nodes = [conv("c1", "x", "w1", "b1"), helper.make_node("Relu", ["c1"], ["r"]), conv("c2", "r", "w2", out="y")]
    model = make_model(nodes, inits, (1, 1, 2, 2))
    res = equalize(model)
    eq = res.model
    np.testing.assert_array_equal(init(eq, "w1").ravel(), [1.0, 2.0])
    np.testing.assert_array_equal(init(eq, "b1"), [0.5, 4.0])
    np.testing.assert_array_equal(init(eq, "w2").ravel(), [1.0, 2.0])
    x = np.array([[[[1.0, -1.0], [0.25, 3.0]]]], np.float32)
    np.testing.assert_allclose(run(eq, x), run(model, x), rtol=1e-6)
    # hand-computed output at x = 1: relu(2 + 1) * 0.5 + relu(0.5 + 1) * 8 = 1.5 + 12
    assert run(eq, x)[0, 0, 0, 0] == pytest.approx(13.5)


def test_maxpool_chain_and_multi_consumer_converge_with_same_outputs():
    inits = {"w1": spread((6, 3, 3, 3), 0), "b1": RNG.normal(size=6),
             "w2": spread((5, 6, 3, 3), 1), "b2": RNG.normal(size=5),
             "wa": spread((4, 5, 3, 3), 1), "ba": RNG.normal(size=4),
             "wb": spread((4, 5, 1, 1), 1), "bb": RNG.normal(size=4)}
    nodes = [
        conv("c1", "x", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        conv("c2", "p1", "w2", "b2", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
        conv("ca", "r2", "wa", "ba", pads=[1, 1, 1, 1]), conv("cb", "r2", "wb", "bb"),
        helper.make_node("Add", ["ca", "cb"], ["y"]),
    ]
    model = make_model(nodes, inits, (1, 3, 8, 8))
    res = equalize(model, options=EqualizeOptions(tol=1e-9))
    assert [(p.producer, p.consumers) for p in res.pairs] == [("c1", ("c2",)), ("c2", ("ca", "cb"))]
    assert len(res.chains) == 1 and res.chains[0]["converged"] and res.chains[0]["sweeps"] > 2
    eq = res.model
    # at the fixed point c2's output ranges equal the max of both consumers' input ranges
    r1 = np.abs(init(eq, "w2")).max(axis=(1, 2, 3))
    r2 = np.maximum(np.abs(init(eq, "wa")).max(axis=(0, 2, 3)), np.abs(init(eq, "wb")).max(axis=(0, 2, 3)))
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    assert rel_diff(run(model, x), run(eq, x)) < 1e-5
    assert {s.node for s in res.skipped} == {"ca", "cb"}
    assert all("'y' (from c" in s.reason and "is a graph output" in s.reason for s in res.skipped)  # via the Add


def test_concat_slice_is_compensated_in_the_consumer():
    # mmseg FCNHead: conv_cat reads Concat(x_feat, relu(convs.1)); only convs.1's slice of conv_cat is rescaled
    inits = {"w0": spread((3, 3, 1, 1), 0), "w1": spread((4, 3, 3, 3), 0), "b1": RNG.normal(size=4),
             "wc": spread((2, 7, 3, 3), 1), "bc": RNG.normal(size=2)}
    nodes = [
        conv("feat", "x", "w0"), helper.make_node("Relu", ["feat"], ["f"]),
        conv("c1", "f", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Concat", ["f", "r1"], ["cat"], axis=1),
        conv("conv_cat", "cat", "wc", "bc", out="y", pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, inits, (1, 3, 6, 6))
    res = equalize(model, options=EqualizeOptions(tol=1e-10))
    pairs = {p.producer: p for p in res.pairs}
    # feat feeds c1 and (through the Concat, channels 0..2) conv_cat: both Convs, so it is a pair too
    assert pairs["feat"].consumers == ("c1", "conv_cat") and pairs["c1"].consumers == ("conv_cat",)
    wc = init(res.model, "wc")
    # at the fixed point: c1's output ranges equal conv_cat's input ranges of channels 3..6, and feat's
    # output ranges equal the max over c1's inputs and conv_cat's channels 0..2
    np.testing.assert_allclose(np.abs(init(res.model, "w1")).max(axis=(1, 2, 3)),
                               np.abs(wc[:, 3:]).max(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(np.abs(init(res.model, "w0")).max(axis=(1, 2, 3)),
                               np.maximum(np.abs(init(res.model, "w1")).max(axis=(0, 2, 3)),
                                          np.abs(wc[:, :3]).max(axis=(0, 2, 3))), rtol=1e-6)
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5


@pytest.mark.parametrize("group", [2, 6])
def test_grouped_and_depthwise_consumers_are_handled_exactly(group):
    inits = {"w1": spread((6, 3, 3, 3), 0), "b1": RNG.normal(size=6),
             "wd": spread((6, 6 // group, 3, 3), 1), "bd": RNG.normal(size=6),
             "w3": spread((2, 6, 1, 1), 1)}
    nodes = [
        conv("c1", "x", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        conv("dw", "r1", "wd", "bd", pads=[1, 1, 1, 1], group=group), helper.make_node("Relu", ["dw"], ["r2"]),
        conv("c3", "r2", "w3", out="y"),
    ]
    model = make_model(nodes, inits, (1, 3, 8, 8))
    res = equalize(model, options=EqualizeOptions(tol=1e-9))
    assert [p.producer for p in res.pairs] == ["c1", "dw"]
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5
    # c1 -> dw balanced per channel: a channel's input range in a grouped weight is over its group's rows only
    wd = init(res.model, "wd")
    cpg, rows = 6 // group, 6 // group
    r2 = np.array([np.abs(wd[(c // cpg) * rows:(c // cpg + 1) * rows, c % cpg]).max() for c in range(6)])
    r1 = np.abs(init(res.model, "w1")).max(axis=(1, 2, 3))
    assert res.chains[0]["converged"]
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_conv_transpose_producer_and_consumer():
    inits = {"w1": spread((4, 3, 3, 3), 0), "b1": RNG.normal(size=4),
             "wt": spread((4, 5, 4, 4), 0), "bt": RNG.normal(size=5),  # ConvTranspose weight (in, out, k, k)
             "w3": spread((2, 5, 1, 1), 1)}
    nodes = [
        conv("c1", "x", "w1", "b1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "wt", "bt"], ["up"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["up"], ["r2"]), conv("c3", "r2", "w3", out="y"),
    ]
    model = make_model(nodes, inits, (1, 3, 5, 5))
    res = equalize(model)
    assert [p.producer for p in res.pairs] == ["c1", "up"]
    x = RNG.normal(size=(1, 3, 5, 5)).astype(np.float32)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5
    r1 = np.abs(init(res.model, "wt")).max(axis=(0, 2, 3))
    r2 = np.abs(init(res.model, "w3")).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-5)


def test_missing_biases_are_fine():
    model, _ = two_conv_model(bias2=False)
    # drop c1's bias too
    node = model.graph.node[0]
    del node.input[2]
    keep = [t for t in model.graph.initializer if t.name != "b1"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    res = equalize(model)
    assert [p.producer for p in res.pairs] == ["c1"]
    assert {t.name for t in res.model.graph.initializer} == {"w1", "w2"}  # no bias invented for plain CLE
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5


def test_weights_shared_by_two_nodes_are_skipped_by_name(caplog):
    inits = {"w1": spread((4, 3, 3, 3), 0), "w2": spread((4, 4, 3, 3), 1), "w3": spread((2, 4, 1, 1), 1)}
    nodes = [
        conv("c1", "x", "w1", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
        conv("c2", "r1", "w2", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
        conv("c2b", "r2", "w2", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2b"], ["r3"]),  # same weight again
        conv("c3", "r3", "w3", out="y"),
    ]
    model = make_model(nodes, inits, (1, 3, 6, 6))
    with caplog.at_level("INFO", logger="fcnquant.recover.equalize"):
        res = equalize(model)
    reasons = {s.node: s.reason for s in res.skipped}
    assert res.pairs == ()
    assert "weight 'w2' of c2 is shared with c2b" in reasons["c1"]  # c1's consumer holds the shared weight
    assert "shared with c2" in reasons["c2b"]
    assert "shared with c2b" in caplog.text
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(model, x), run(res.model, x))  # nothing changed at all


def test_unsafe_uses_are_skipped_with_reasons():
    inits = {"w1": spread((4, 3, 1, 1), 0), "w2": spread((4, 4, 1, 1), 1), "w3": spread((4, 4, 1, 1), 1),
             "w4": spread((4, 4, 1, 1), 1)}
    nodes = [
        conv("c1", "x", "w1"), helper.make_node("Sigmoid", ["c1"], ["s1"], name="sig"),   # not scalable
        conv("c2", "s1", "w2"), helper.make_node("Relu", ["c2"], ["r2"], name="r2"),       # r2 is a graph output
        conv("c3", "r2", "w3"), helper.make_node("Relu", ["c3"], ["r3"]),
        conv("c4", "r3", "w4", out="y"),
    ]
    model = make_model(nodes, inits, (1, 3, 4, 4), outputs=("y", "r2"))
    res = equalize(model)
    reasons = {s.node: s.reason for s in res.skipped}
    assert [p.producer for p in res.pairs] == ["c3"]
    assert "feeds Sigmoid sig" in reasons["c1"]
    assert "'r2' (from c2) is a graph output" in reasons["c2"]
    assert "'y' (from c4) is a graph output" in reasons["c4"]


def test_non_constant_weights_are_skipped():
    inits = {"w2": spread((2, 4, 1, 1), 1)}
    nodes = [helper.make_node("Conv", ["x", "wdyn"], ["c1"], name="c1"), helper.make_node("Relu", ["c1"], ["r"]),
             conv("c2", "r", "w2", out="y")]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
         helper.make_tensor_value_info("wdyn", TensorProto.FLOAT, [4, 3, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])],
        [numpy_helper.from_array(inits["w2"].astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pairs, skipped = find_pairs(model)
    assert pairs == [] and "weight 'wdyn' of c1 is not a constant" in skipped[0].reason


def test_absorption_moves_the_positive_part_into_the_next_bias(tmp_path):
    from PIL import Image

    # pre-activation of c1's channel 0 stays around +5 (bias 5, small weights); channel 1 goes negative
    w1 = np.full((2, 3, 1, 1), 0.05)
    inits = {"w1": w1, "b1": np.array([5.0, -0.5]), "w2": spread((3, 2, 1, 1), 1), "b2": RNG.normal(size=3)}
    nodes = [conv("c1", "x", "w1", "b1"), helper.make_node("Relu", ["c1"], ["r"]), conv("c2", "r", "w2", "b2", out="y")]
    model = make_model(nodes, inits, (1, 3, 16, 16), metadata={"fcnquant.preset": "awesome"})
    images = tmp_path / "imgs"
    images.mkdir()
    for k in range(3):
        Image.fromarray(RNG.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)).save(images / f"im{k}.png")
    plain = equalize(model)
    res = equalize(model, None, DataConfig(root=images, split=None), QUIET, EqualizeOptions(absorb=True))
    assert res.absorb["channels"] == 1 and res.pairs[0].absorbed_channels == 1
    # the bound, measured here independently: min over the images of the (equalized) c1 output, channel 0
    from fcnquant.data import get_preset, iter_batches, open_dataset

    ds = open_dataset(images, None)
    batches = [b.images for b in iter_batches(ds, get_preset("awesome", model_hw=(16, 16)), with_masks=False)]
    sess = make_session(_expose(plain.model, "c1").SerializeToString())
    lows = [sess.run(["c1"], {"x": x.astype(np.float32)})[0] for x in batches]
    c0 = min(float(v[:, 0].min()) for v in lows)
    assert c0 > 0 and max(float(v[:, 1].min()) for v in lows) < 0
    np.testing.assert_allclose(init(res.model, "b1"), init(plain.model, "b1") - [c0, 0.0], rtol=1e-6)
    expected_b2 = init(plain.model, "b2") + init(plain.model, "w2")[:, 0, 0, 0] * c0
    np.testing.assert_allclose(init(res.model, "b2"), expected_b2, rtol=1e-5)
    for x in batches:  # exact on the bound images
        assert rel_diff(run(model, x.astype(np.float32)), run(res.model, x.astype(np.float32))) < 1e-5
    assert res.max_rel_diff < 1e-5
    act = res.absorb["activation_max"]["c1"]
    assert act["after"] < act["before"]
    for bound in ("min", "3sigma"):  # the bounds of three shards (one image each) merge bit for bit
        opts = EqualizeOptions(absorb=True, bound=bound)
        one = equalize(model, None, DataConfig(root=images, split=None), QUIET, opts)
        three = equalize(model, None, DataConfig(root=images, split=None), LocalExecutor(shards=3, progress=False),
                         opts)
        assert three.model.SerializeToString() == one.model.SerializeToString()
        assert three.to_dict() == one.to_dict()


def test_absorption_skips_padded_consumers_unless_asked(tmp_path):
    from PIL import Image

    from fcnquant.data import get_preset, iter_batches, open_dataset

    inits = {"w1": np.full((2, 3, 1, 1), 0.05), "b1": np.array([5.0, 4.0]), "w2": spread((3, 2, 3, 3), 1),
             "b2": RNG.normal(size=3)}
    nodes = [conv("c1", "x", "w1", "b1"), helper.make_node("Relu", ["c1"], ["r"]),
             conv("c2", "r", "w2", "b2", out="y", pads=[1, 1, 1, 1])]
    model = make_model(nodes, inits, (1, 3, 8, 8), metadata={"fcnquant.preset": "awesome"})
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(images / "a.png")
    res = equalize(model, None, DataConfig(root=images, split=None), QUIET, EqualizeOptions(absorb=True))
    assert res.absorb["channels"] == 0 and "pad with zeros" in res.pairs[0].absorb_note
    forced = equalize(model, None, DataConfig(root=images, split=None), QUIET,
                      EqualizeOptions(absorb=True, absorb_padded=True))
    assert forced.absorb["channels"] == 2 and "absorbed despite" in forced.pairs[0].absorb_note
    c = init(res.model, "b1").astype(np.float64) - init(forced.model, "b1")  # the absorbed constants
    assert (c > 3).all()
    x = next(iter_batches(open_dataset(images, None), get_preset("awesome", model_hw=(8, 8)), with_masks=False))
    x = x.images.astype(np.float32)
    delta = run(forced.model, x).astype(np.float64) - run(model, x)
    # expected: the new bias adds the absorbed constant on every tap, also those that fall on the zero padding
    w2 = init(res.model, "w2").astype(np.float64)
    expected = np.zeros((3, 8, 8))
    for i in range(8):
        for j in range(8):
            for kh in range(3):
                for kw in range(3):
                    if not (0 <= i + kh - 1 < 8 and 0 <= j + kw - 1 < 8):
                        expected[:, i, j] += w2[:, :, kh, kw] @ c
    np.testing.assert_allclose(delta[0], expected, atol=1e-4 * np.abs(run(model, x)).max())
    assert np.abs(delta[0, :, 1:-1, 1:-1]).max() < 1e-4 * np.abs(run(model, x)).max()
    assert np.abs(delta).max() > 1e-2


def _expose(model, name):
    from fcnquant.runtime import with_outputs

    return with_outputs(model, [name])


@pytest.fixture(scope="module")
def real_dataset(synthetic_voc):
    from fcnquant.data import open_dataset

    return open_dataset(synthetic_voc(train=0, val=1, size=96, seed=5), "val")


@pytest.mark.parametrize("name", demo_models.DEMO_MODELS)
def test_demo_models_keep_their_function(name, tmp_path, real_dataset):
    from fcnquant.data import iter_batches, preset_for_session

    path = demo_models.DEMO_DIR / f"{name}.onnx"
    original = onnx.load(str(path))
    res = equalize(path, tmp_path / "eq.onnx", options=EqualizeOptions(verify=False))
    eq = onnx.load(str(tmp_path / "eq.onnx"))
    s0, s1 = make_session(str(path)), make_session(str(tmp_path / "eq.onnx"))
    inp = s0.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    inputs = [np.random.default_rng(1).standard_normal(shape).astype(np.float32)]  # random and a real image
    inputs += [b.images.astype(np.float32) for b in iter_batches(real_dataset, preset_for_session(s0),
                                                                 with_masks=False)]
    for x in inputs:
        a = s0.run(None, {inp.name: x})[0]
        b = s1.run(None, {inp.name: x})[0]
        assert rel_diff(a, b) < 1e-4, name
    assert len(res.pairs) >= 14 and all(c["converged"] for c in res.chains)
    before = {p.key: p.value for p in original.metadata_props}
    after = {p.key: p.value for p in eq.metadata_props}
    assert {k: after[k] for k in before} == before and METADATA_KEY in after
    assert res.median_precision()[1] > res.median_precision()[0]


def test_bad_input_is_refused_without_writing(tmp_path):
    model, _ = two_conv_model()
    with pytest.raises(FcnquantError, match="output folder does not exist"):
        equalize(model, tmp_path / "missing" / "eq.onnx")
    with pytest.raises(ModelError, match="not found"):
        equalize(tmp_path / "nope.onnx", tmp_path / "eq.onnx")
    with pytest.raises(FcnquantError, match="bound rule"):
        equalize(model, options=EqualizeOptions(bound="median"))
    assert list(tmp_path.iterdir()) == []


def resnet_like(residual_input=None):
    """stem -> relu -> [conv1 -> relu -> conv3] + downsample -> Add -> relu -> [conv1b -> relu -> conv3b] + id -> Add
    -> relu -> head (a graph output). ``residual_input`` replaces the downsample branch by that tensor."""
    inits = {"ws": spread((4, 3, 3, 3), 0), "bs": RNG.normal(size=4),
             "w1": spread((3, 4, 1, 1), 0), "b1": RNG.normal(size=3), "w3": spread((6, 3, 3, 3), 0),
             "b3": RNG.normal(size=6), "wd": spread((6, 4, 1, 1), 0), "bd": RNG.normal(size=6),
             "w1b": spread((3, 6, 1, 1), 1), "b1b": RNG.normal(size=3), "w3b": spread((6, 3, 3, 3), 0),
             "b3b": RNG.normal(size=6), "wh": spread((2, 6, 1, 1), 1)}
    nodes = [
        conv("stem", "x", "ws", "bs", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["stem"], ["s"]),
        conv("conv1", "s", "w1", "b1"), helper.make_node("Relu", ["conv1"], ["r1"]),
        conv("conv3", "r1", "w3", "b3", pads=[1, 1, 1, 1]),
        conv("down", "s", "wd", "bd"),
        helper.make_node("Add", ["conv3", residual_input or "down"], ["a1"], name="add1"),
        helper.make_node("Relu", ["a1"], ["o1"]),
        conv("conv1b", "o1", "w1b", "b1b"), helper.make_node("Relu", ["conv1b"], ["r1b"]),
        conv("conv3b", "r1b", "w3b", "b3b", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv3b", "o1"], ["a2"], name="add2"), helper.make_node("Relu", ["a2"], ["o2"]),
        conv("head", "o2", "wh", out="y"),
    ]
    return nodes, inits


def test_residual_stream_is_one_channel_space_with_several_producers():
    nodes, inits = resnet_like()
    model = make_model(nodes, inits, (1, 3, 6, 6))
    res = equalize(model, options=EqualizeOptions(tol=1e-9))
    pairs = {p.producer: p for p in res.pairs}
    stream = pairs["conv3"]  # first producer of the stream in graph order
    assert stream.producers == ("conv3", "down", "conv3b")
    assert stream.consumers == ("conv1b", "head")
    assert set(pairs) == {"stem", "conv1", "conv3", "conv1b"} and [s.node for s in res.skipped] == ["head"]
    assert pairs["stem"].consumers == ("conv1", "down")
    x = RNG.normal(size=(1, 3, 6, 6)).astype(np.float32)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5
    # at the fixed point the stream's channel ranges (max over its 3 producers) equal its consumers' (max over 2)
    r1 = np.max([np.abs(init(res.model, w)).max(axis=(1, 2, 3)) for w in ("w3", "wd", "w3b")], axis=0)
    r2 = np.max([np.abs(init(res.model, w)).max(axis=(0, 2, 3)) for w in ("w1b", "wh")], axis=0)
    np.testing.assert_allclose(r1, r2, rtol=1e-6)
    assert "residual Add" in pairs["conv3"].absorb_note


@pytest.mark.parametrize("residual, message", [
    ("x", "'x' joins a residual Add of the channels of conv3 but is not computed by a node"),
    ("sig", "comes from Sigmoid sig, which cannot be rescaled"),
])
def test_residual_adds_with_unscalable_inputs_are_skipped(residual, message):
    nodes, inits = resnet_like(residual_input=residual)
    if residual == "sig":
        nodes.insert(0, helper.make_node("Sigmoid", ["x3"], ["sig"], name="sig"))
        nodes.insert(0, conv("widen", "x", "wwide"))
        nodes[1].input[0] = "widen"
        inits["wwide"] = spread((6, 3, 1, 1), 0)
        in_shape = (1, 3, 6, 6)
    else:
        inits["w3"] = spread((3, 3, 3, 3), 0)  # conv3 must match x's 3 channels for the Add
        inits["b3"] = RNG.normal(size=3)
        inits["w1b"] = spread((3, 3, 1, 1), 1)
        inits["w3b"] = spread((3, 3, 3, 3), 0)
        inits["b3b"] = RNG.normal(size=3)
        inits["wh"] = spread((2, 3, 1, 1), 1)
        in_shape = (1, 3, 6, 6)
    model = make_model(nodes, inits, in_shape)
    res = equalize(model)
    reasons = {s.node: s.reason for s in res.skipped}
    assert message in reasons["conv3"]
    x = RNG.normal(size=in_shape).astype(np.float32)
    assert rel_diff(run(model, x), run(res.model, x)) < 1e-5
