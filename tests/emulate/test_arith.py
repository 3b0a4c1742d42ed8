"""The emulator's numerics against exact rational references and onnxruntime's float kernels on small integers."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fcnquant.emulate import arith


def _round(v: Fraction, rounding: str) -> int:
    """Rounds a rational by the rule's definition (the independent reference)."""
    fl = math.floor(v)
    frac = v - fl
    if rounding == "floor":
        return fl
    if frac != Fraction(1, 2):
        return fl + (frac > Fraction(1, 2))
    return {"half_up": fl + 1, "half_even": fl + (fl % 2), "half_away": fl + 1 if v > 0 else fl}[rounding]


@pytest.mark.parametrize("rounding", arith.ROUNDINGS)
def test_round_shift_matches_rational_rounding(rounding):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-2 ** 40, 2 ** 40, 3000), np.arange(-40, 41)]).astype(np.int64)
    for n in (0, 1, 3, 8, 17):
        want = [_round(Fraction(int(v), 2 ** n), rounding) for v in x]
        np.testing.assert_array_equal(arith.round_shift(x, n, rounding), want)
        y = x.astype(np.float64) * 2.0 ** -n
        np.testing.assert_array_equal(arith.round_pow2_float(y, rounding), want)
    np.testing.assert_array_equal(arith.round_shift(x[:10], -3, rounding), x[:10] * 8)


def test_per_channel_shifts_broadcast():
    x = np.array([[5, 6], [5, 6]], np.int64)
    np.testing.assert_array_equal(arith.round_shift(x, np.array([[1], [2]]), "half_even"), [[2, 3], [1, 2]])


def test_multiplier_is_exact_for_powers_of_two_and_31_bits_otherwise():
    assert arith.multiplier(2.0 ** -7) == (1, 7)
    assert arith.multiplier(4.0) == (1, -2)
    for r in (0.3, 1e-5, 0.999999999, 3.7):
        m, n = arith.multiplier(r)
        assert 2 ** 30 <= m < 2 ** 31
        assert abs(Fraction(m, 2 ** n) - Fraction(r)) <= Fraction(1, 2 ** (n + 1))


@pytest.mark.parametrize("rounding", arith.ROUNDINGS)
def test_requantize_general_ratio_rounds_acc_times_the_fixed_point_multiplier(rounding):
    rng = np.random.default_rng(1)
    acc = rng.integers(-2 ** 31, 2 ** 31, 2000).astype(np.int64)
    r = 0.0123
    m, n = arith.multiplier(r)
    want = [min(max(_round(Fraction(int(a) * m, 2 ** n), rounding), -128), 127) for a in acc]
    np.testing.assert_array_equal(arith.requantize(acc, np.array([r]), rounding, -128, 127), want)


def test_wrap_is_twos_complement():
    acc = np.array([2 ** 31 - 1, 2 ** 31, -2 ** 31, -2 ** 31 - 1], np.int64)
    out, count = arith.wrap(acc, 32)
    np.testing.assert_array_equal(out, [2 ** 31 - 1, -2 ** 31, -2 ** 31, 2 ** 31 - 1])
    assert count == 2


def _ort(node_kwargs: dict, op: str, inputs: dict, extra_inits=()):
    """Runs one float ONNX op in onnxruntime (on small integers every float result is exact)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    from fcnquant.runtime import make_session

    node = h.make_node(op, list(inputs) + [i.name for i in extra_inits], ["y"], **node_kwargs)
    graph = h.make_graph([node], "g", [h.make_tensor_value_info(k, T.FLOAT, list(v.shape)) for k, v in inputs.items()],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], list(extra_inits))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    return make_session(model.SerializeToString(), optimization="none").run(
        None, {k: v.astype(np.float32) for k, v in inputs.items()})[0]


def test_conv_acc_long_sums_are_exact_in_chunks():
    """1200 channels of +-128 x +-127 exceed float32's exact range in one sum: the chunks must add exactly."""
    rng = np.random.default_rng(2)
    x = rng.choice([-128, 127], size=(1, 1200, 3, 3)).astype(np.int64)
    w = rng.choice([-127, 127], size=(2, 1200, 3, 3)).astype(np.int64)
    x[0, :, 1, 1] = -128
    w[0, :, 1, 1] = -127  # the centre products all +16256: the sum is 1200 * 16256 > 2**24 there
    acc = arith.conv_acc(x, w, pads=(1, 1, 1, 1))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.array([[[(xp[0, :, i:i + 3, j:j + 3] * w[o]).sum() for j in range(3)] for i in range(3)]
                    for o in range(2)])
    np.testing.assert_array_equal(acc[0], ref)
    assert abs(ref).max() > 2 ** 24


@pytest.mark.parametrize("kw", [dict(strides=(2, 2), pads=(1, 0, 1, 2), dilations=(1, 1), group=1),
                                dict(strides=(1, 1), pads=(2, 2, 2, 2), dilations=(2, 2), group=2)])
def test_conv_acc_matches_onnxruntime_on_small_integers(kw):
    rng = np.random.default_rng(3)
    x = rng.integers(-5, 6, (2, 4, 7, 6))
    w = rng.integers(-5, 6, (6, 4 // kw["group"], 3, 3))
    from onnx import numpy_helper as nh

    ref = _ort({"pads": list(kw["pads"]), "strides": list(kw["strides"]), "dilations": list(kw["dilations"]),
                "group": kw["group"]}, "Conv", {"x": x}, [nh.from_array(w.astype(np.float32), "w")])
    np.testing.assert_array_equal(arith.conv_acc(x, w, **kw), ref)


def test_conv_transpose_acc_matches_onnxruntime_on_small_integers():
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(4)
    x = rng.integers(-5, 6, (1, 3, 5, 4))
    w = rng.integers(-5, 6, (3, 2, 4, 4))
    ref = _ort({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}, "ConvTranspose", {"x": x},
               [nh.from_array(w.astype(np.float32), "w")])
    got = arith.conv_transpose_acc(x, w, strides=(2, 2), pads=(1, 1, 1, 1), output_padding=(1, 0))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kw", [dict(kernel_shape=[2, 2], strides=[2, 2]),
                                dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)])
def test_maxpool_matches_onnxruntime(kw):
    x = np.random.default_rng(5).integers(-128, 128, (1, 2, 9, 8))
    ref = _ort(kw, "MaxPool", {"x": x})
    got = arith.maxpool(x, tuple(kw["kernel_shape"]), tuple(kw["strides"]), tuple(kw.get("pads", (0, 0, 0, 0))),
                        ceil_mode=kw.get("ceil_mode", 0))
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("mode", ["align_corners", "half_pixel", "asymmetric", "pytorch_half_pixel"])
def test_resize_axis_rounds_the_exact_source_coordinate(mode):
    """Rows of the coefficient matrix: the exact rational coordinate (ONNX's formula), clamped, rounded half up to
    10 bits, split between the two neighbours."""
    n_in, n_out = 5, 13
    mat = arith.resize_axis(n_in, n_out, mode)
    assert (mat.sum(1) == 1024).all()
    for i in range(n_out):
        s = Fraction(n_out, n_in)
        x = {"align_corners": Fraction(i * (n_in - 1), n_out - 1), "half_pixel": (i + Fraction(1, 2)) / s - Fraction(1, 2),
             "pytorch_half_pixel": (i + Fraction(1, 2)) / s - Fraction(1, 2), "asymmetric": i / s}[mode]
        x = min(max(x, Fraction(0)), Fraction(n_in - 1))
        p = _round(x * 1024, "half_up")
        want = np.zeros(n_in, np.int64)
        want[p // 1024] += 1024 - p % 1024
        if p % 1024:
            want[p // 1024 + 1] += p % 1024
        np.testing.assert_array_equal(mat[i], want)


def test_resize_acc_is_the_separable_integer_interpolation():
    x = np.random.default_rng(6).integers(-128, 128, (1, 2, 4, 3))
    rows, cols = arith.resize_axis(4, 7, "half_pixel"), arith.resize_axis(3, 5, "align_corners")
    want = np.einsum("ai,ncij,bj->ncab", rows, x, cols)
    np.testing.assert_array_equal(arith.resize_acc(x, rows, cols), want)
