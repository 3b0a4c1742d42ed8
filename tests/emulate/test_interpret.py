"""The emulator's integer arithmetic: a hand-worked Conv -> Add -> Resize model, and every Conv of the demo
fcn8s against onnxruntime's integer kernel (QLinearConv) on the same integers."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.emulate import Arithmetic, build_program, run_program


def _hand_model():
    """x (1,1,2,2) -Q(0.5)-> Conv 1x1 (w 3 at 2**-2, bias 5 at 2**-3) -Q(1)-> Add(conv, x) -Q(1)-> Resize 2x2->3x3
    (bilinear, align_corners) -Q(1)-> DQ output."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    def init(name, value, dtype):
        return nh.from_array(np.array(value, dtype), name)

    inits = [init("s_half", 0.5, np.float32), init("s_one", 1.0, np.float32), init("z", 0, np.int8),
             init("w_q", [[[[3]]]], np.int8), init("w_s", 0.25, np.float32),
             init("b_q", [5], np.int32), init("b_s", [0.125], np.float32), init("b_z", [0], np.int32),
             init("sizes", [1, 1, 3, 3], np.int64)]
    nodes = [
        h.make_node("QuantizeLinear", ["x", "s_half", "z"], ["xq"]),
        h.make_node("DequantizeLinear", ["xq", "s_half", "z"], ["xd"]),
        h.make_node("DequantizeLinear", ["w_q", "w_s", "z"], ["w"]),
        h.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"]),
        h.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv"),
        h.make_node("QuantizeLinear", ["c", "s_one", "z"], ["cq"]),
        h.make_node("DequantizeLinear", ["cq", "s_one", "z"], ["cd"]),
        h.make_node("Add", ["cd", "xd"], ["a"], name="add"),
        h.make_node("QuantizeLinear", ["a", "s_one", "z"], ["aq"]),
        h.make_node("DequantizeLinear", ["aq", "s_one", "z"], ["ad"]),
        h.make_node("Resize", ["ad", "", "", "sizes"], ["r"], name="resize", mode="linear",
                    coordinate_transformation_mode="align_corners"),
        h.make_node("QuantizeLinear", ["r", "s_one", "z"], ["rq"]),
        h.make_node("DequantizeLinear", ["rq", "s_one", "z"], ["out"]),
    ]
    graph = h.make_graph(nodes, "hand", [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 2, 2])],
                         [h.make_tensor_value_info("out", T.FLOAT, [1, 1, 3, 3])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


X = np.array([[[[1.0, 2.5], [-1.5, 0.75]]]], np.float32)
# By hand. Input: x / 0.5 rounded half to even: [2, 5, -3, 1.5 -> 2].
# Conv accumulator (units 2**-3): 3 q + 5 = [11, 20, -4, 11]; to scale 1 is a shift by 3: 11/8 = 1.375 -> 1,
# 20/8 = 2.5 and -4/8 = -0.5 are ties.
# Add: conv at scale 1 shifted left by 1 onto x's grid (0.5) plus x, then a shift right by 1 to scale 1.
# Resize 3x3, align_corners: source coordinates 0, 0.5, 1 -> coefficients (1024, 0), (512, 512), (0, 1024);
# the middle row and column average two inputs, the centre four (a tie when their sum is 2 mod 4).
HAND = {
    "half_up": {  # ties toward +inf
        "cq": [[1, 3], [0, 1]],  # 20/8 -> 3, -4/8 -> 0
        "aq": [[2, 6], [-1, 2]],  # (2+2)/2, (6+5)/2 = 5.5 -> 6, (0-3)/2 = -1.5 -> -1, (2+2)/2
        "rq": [[2, 4, 6], [1, 2, 4], [-1, 1, 2]],  # (2-1)/2 = 0.5 -> 1, 9/4 -> 2, (-1+2)/2 -> 1
    },
    "half_even": {
        "cq": [[1, 2], [0, 1]],  # 2.5 -> 2, -0.5 -> 0
        "aq": [[2, 4], [-2, 2]],  # (4+5)/2 = 4.5 -> 4, -1.5 -> -2
        "rq": [[2, 3, 4], [0, 2, 3], [-2, 0, 2]],  # (2+4)/2 = 3, (2-2)/2 = 0, 6/4 = 1.5 -> 2, (4+2)/2 = 3
    },
    "half_away": {
        "cq": [[1, 3], [-1, 1]],  # -0.5 -> -1
        "aq": [[2, 6], [-3, 2]],  # (2+2)/2, (6+5)/2 -> 6, (-2-3)/2 = -2.5 -> -3
        "rq": [[2, 4, 6], [-1, 2, 4], [-3, -1, 2]],  # (2-3)/2 = -0.5 -> -1, 7/4 -> 2, (-3+2)/2 -> -1
    },
    "floor": {
        "cq": [[1, 2], [-1, 1]],
        "aq": [[2, 4], [-3, 2]],  # (4+5)/2 = 4.5 -> 4, (-2-3)/2 -> -3
        "rq": [[2, 3, 4], [-1, 1, 3], [-3, -1, 2]],  # (2-3)/2 -> -1, 5/4 -> 1, (4+2)/2 = 3, (-3+2)/2 -> -1
    },
}


@pytest.mark.parametrize("rounding", sorted(HAND))
def test_hand_worked_conv_add_resize_is_bit_exact(rounding):
    prog = build_program(_hand_model())
    assert [s.op for s in prog.steps] == ["Conv", "Add", "Resize"]
    run = run_program(prog, X, Arithmetic(rounding=rounding))
    np.testing.assert_array_equal(run.values["xq"][0, 0], [[2, 5], [-3, 2]])
    for name, want in HAND[rounding].items():
        np.testing.assert_array_equal(run.values[name][0, 0], want, err_msg=f"{rounding} {name}")
    np.testing.assert_array_equal(run.outputs[0][0, 0], np.array(HAND[rounding]["rq"], np.float64))


def test_hand_worked_half_even_is_what_onnxruntime_computes():
    """onnxruntime's QDQ simulation rounds half to even, and on these power-of-two scales every float step is
    exact: its values are the hand-worked half_even ones."""
    from fcnquant.runtime import make_session, with_outputs

    model = _hand_model()
    sess = make_session(with_outputs(model, ["cq", "aq", "rq"]).SerializeToString(), optimization="none")
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": X})))
    for name, want in HAND["half_even"].items():
        np.testing.assert_array_equal(outs[name][0, 0], want, err_msg=name)


def _qlinear_conv(step, x: np.ndarray) -> np.ndarray:
    """Returns onnxruntime's QLinearConv (its integer kernel) of the step's own int8 weights, bias and scales."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from fcnquant.runtime import make_session

    t, out = step.inputs[0], step.out
    ws = np.asarray(step.weight_scale, np.float32)
    ws = ws.reshape(()) if ws.size == 1 else ws
    inits = [nh.from_array(np.array(t.scale, np.float32), "xs"), nh.from_array(np.array(t.zero_point, np.int8), "xz"),
             nh.from_array(step.weight.astype(np.int8), "w"), nh.from_array(ws, "ws"),
             nh.from_array(np.zeros(ws.shape, np.int8), "wz"),
             nh.from_array(np.array(out.scale, np.float32), "ys"), nh.from_array(np.array(out.zero_point, np.int8), "yz"),
             nh.from_array(step.bias.astype(np.int32), "b")]
    attrs = {k: v for k, v in step.attrs.items() if k in ("pads", "strides", "dilations", "group", "kernel_shape")}
    node = h.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], **attrs)
    graph = h.make_graph([node], "qconv", [h.make_tensor_value_info("x", T.INT8, list(x.shape))],
                         [h.make_tensor_value_info("y", T.INT8, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    # "basic": the ONNX QLinearConv kernel itself (the NHWC rewrite of "all" takes uint8 activations only)
    y = make_session(model.SerializeToString(), optimization="basic").run(None, {"x": x})[0]
    return np.maximum(y, out.zero_point) if step.relu else y


def _reference_acc(step, x: np.ndarray) -> np.ndarray:
    """Returns the exact int64 accumulator of a Conv step by brute force (windows and an integer einsum)."""
    at = step.attrs
    t, left, b, r = at.get("pads", (0, 0, 0, 0))
    s = tuple(at.get("strides", (1, 1)))
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (t, b), (left, r)))
    kh, kw = step.weight.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::s[0], ::s[1]]
    acc = np.einsum("nchwij,ocij->nohw", win, step.weight.astype(np.int64))
    return acc + step.bias.reshape(1, -1, 1, 1)


@pytest.fixture(scope="module")
def demo_run(pow2_fcn8s):
    """The npu-pow2 fcn8s program and one built-in validation image, preprocessed as the model wants."""
    import onnx

    from fcnquant.data import DataConfig, iter_batches
    from fcnquant.runtime import make_session

    cfg = DataConfig(num_images=1)
    ds = cfg.open(pow2_fcn8s, progress=False)
    batch = next(iter(iter_batches(ds, cfg.preset_for(make_session(str(pow2_fcn8s))), cfg.take(ds), 1)))
    return build_program(onnx.load(str(pow2_fcn8s))), batch.images, pow2_fcn8s


def test_every_conv_equals_onnxruntimes_integer_kernel_with_half_even(demo_run):
    """QLinearConv rounds the int32 accumulator times the scale ratio (a float32 product) to even: on power-of-two
    scales that is the emulator's half_even shift exactly, while the accumulator is below 2**24 (onnxruntime
    converts it to float32 first; beyond it saturates anyway at these shifts: counted, none here)."""
    prog, image, _ = demo_run
    run = run_program(prog, image, Arithmetic(target="npu-pow2", rounding="half_even"))
    convs = [s for s in prog.steps if s.op == "Conv" and s.out is not None]
    assert len(convs) >= 15
    for step in convs:
        x = run.values[step.inputs[0].name]
        acc = _reference_acc(step, x)
        big = np.abs(acc) >= 2 ** 24
        assert not big.any(), step.name
        np.testing.assert_array_equal(run.values[step.output], _qlinear_conv(step, x), err_msg=step.name)


def test_half_up_differs_from_the_integer_kernel_only_at_ties(demo_run):
    """half_up and half_even differ exactly where the accumulator sits half-way between two outputs and half to
    even rounds down: the low k bits equal 2**(k-1) and the even neighbour is the lower one."""
    prog, image, _ = demo_run
    half_up = run_program(prog, image, Arithmetic(rounding="half_up"))
    ties_total = 0
    for step in [s for s in prog.steps if s.op == "Conv" and s.out is not None]:
        x = half_up.values[step.inputs[0].name]  # the same integers into both
        acc = _reference_acc(step, x)
        k = -int(np.log2(step.inputs[0].scale * float(step.weight_scale.reshape(-1)[0]) / step.out.scale))
        if step.relu:
            acc = np.maximum(acc, 0)
        tie = (acc & ((1 << k) - 1)) == (1 << (k - 1))
        differ = half_up.values[step.output] != _qlinear_conv(step, x)
        assert not (differ & ~tie).any(), step.name
        # at a tie below saturation the two differ exactly when the lower neighbour is even
        lower = acc >> k
        expected = tie & (lower % 2 == 0) & (lower + 1 <= 127) & (lower >= -128)
        np.testing.assert_array_equal(differ, expected, err_msg=step.name)
        ties_total += int(differ.sum())
    assert ties_total > 0  # power-of-two scales make ties common: the rule matters


def test_the_adds_of_a_half_up_model_round_nothing(demo_run):
    """npu-pow2 rounds ties up, so its int8 models put every Add input onto the sum's grid or a coarser one: each
    Add is then the exact integer sum of its inputs shifted left (numpy here), whatever the rounding."""
    prog, image, _ = demo_run
    run = run_program(prog, image, Arithmetic(rounding="half_up"))
    adds = [s for s in prog.steps if s.op == "Add"]
    assert len(adds) == 2
    for step in adds:
        total = 0
        for t in step.inputs:
            ratio = t.scale / step.out.scale
            assert ratio >= 1 and ratio == 2.0 ** round(np.log2(ratio)), (step.name, t.name, ratio)
            total = total + (run.values[t.name].astype(np.int64) - t.zero_point) * int(ratio)
        if step.relu:
            total = np.maximum(total, 0)
        expected = np.clip(total + step.out.zero_point, *step.out.qrange)
        np.testing.assert_array_equal(run.values[step.output], expected, err_msg=step.name)


def test_each_op_fed_the_same_integers_differs_from_onnxruntime_only_in_resize(demo_run):
    """Each step alone (the model's own DQ -> op -> Q nodes, cut out with onnx's extractor) in onnxruntime,
    fed the emulator's integer inputs: Conv (fused integer kernels), MaxPool and Add (power-of-two scales: exact
    in float) agree exactly with half_even; Resize differs by at most 1 LSB, where the 10-bit bilinear
    coefficients move a value across a rounding boundary (counted)."""
    import onnx
    from onnx.utils import Extractor

    from fcnquant.runtime import make_session

    prog, image, _ = demo_run
    run = run_program(prog, image, Arithmetic(rounding="half_even"))
    model = onnx.shape_inference.infer_shapes(onnx.load(str(demo_run[2])))
    extractor = Extractor(model)
    counts: dict[str, list[int]] = {}
    for step in prog.layers():
        names = [t.name for t in step.inputs]
        sub = extractor.extract_model(names, [step.output])
        sess = make_session(sub.SerializeToString())
        ref = sess.run(None, {n: run.values[n] for n in names})[0]
        diff = np.abs(run.values[step.output].astype(int) - ref.astype(int))
        c = counts.setdefault(step.op, [0, 0, 0])
        c[0] = max(c[0], int(diff.max()))
        c[1] += int((diff > 0).sum())
        c[2] += diff.size
    for op in ("Conv", "MaxPool", "Add"):
        assert counts[op][:2] == [0, 0], (op, counts[op])
    assert counts["Resize"][0] <= 1, counts["Resize"]
    assert counts["Resize"][1] <= 0.01 * counts["Resize"][2], counts["Resize"]  # a few per thousand at most


def test_int16_activations_conv_equals_onnxruntimes_exact_float_simulation():
    """int16 activations (opset 21 QDQ): on power-of-two scales with small sums onnxruntime's float Conv is exact,
    so half_even emulation must give its integers; the operands are too wide for float32 chunks (float64 sums)."""
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from fcnquant.runtime import make_session

    rng = np.random.default_rng(7)
    w = rng.integers(-4, 5, (4, 3, 3, 3)).astype(np.int8)  # |acc| <= 27 * 25600 * 4 < 2**24: float32 exact
    inits = [nh.from_array(np.array(2.0 ** -8, np.float32), "sx"), nh.from_array(np.array(0, np.int16), "zx"),
             nh.from_array(np.array(2.0 ** -3, np.float32), "sy"), nh.from_array(w, "wq"),
             nh.from_array(np.array(2.0 ** -7, np.float32), "sw"), nh.from_array(np.array(0, np.int8), "zw")]
    nodes = [h.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             h.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             h.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"]),
             h.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("QuantizeLinear", ["c", "sy", "zx"], ["cq"]),
             h.make_node("DequantizeLinear", ["cq", "sy", "zx"], ["y"])]
    graph = h.make_graph(nodes, "i16", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 6, 6])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4, 6, 6])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
    x = rng.uniform(-100, 100, (1, 3, 6, 6)).astype(np.float32)
    prog = build_program(model)
    assert prog.steps[0].inputs[0].dtype == "int16"
    run = run_program(prog, x, Arithmetic(rounding="half_even"))
    assert np.abs(run.values["xq"]).max() > 2 ** 14  # wide: beyond what int8 holds
    from fcnquant.runtime import with_outputs

    sess = make_session(with_outputs(model, ["cq"]).SerializeToString(), optimization="none")
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))["cq"]
    np.testing.assert_array_equal(run.values["cq"], ref)
    assert np.abs(ref).max() < 2 ** 15 - 1 and len(np.unique(ref)) > 50  # not saturated: the values say something
