"""Tap means: the mean output of a weight error from one read per layer equals brute-force convolutions (Conv,
grouped and depthwise Conv, automatic pads, ConvTranspose), onnxruntime's, and merges bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.recover.bias_correction.taps import TapGeometry, TapMeans, tap_sums, tap_shift_means
from tests.recover.helpers import brute_conv_mean, ort_layer, whole_and_merged


def brute_grouped_conv_mean(x, w, group, pads, strides, dilations):
    """Independent: each group's convolution position by position (``brute_conv_mean``), the means concatenated."""
    cin, cout = x.shape[1] // group, w.shape[0] // group
    return np.concatenate([brute_conv_mean(x[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout], pads, strides,
                                           dilations) for g in range(group)])


def brute_deconv_mean(x, w, group, pads, strides, dilations, output_padding):
    """Independent: a ConvTranspose scattered input position by input position and tap, cropped by the pads."""
    n, c, h, wd = x.shape
    ci, co, kh, kw = w.shape
    full = [strides[a] * ((h, wd)[a] - 1) + dilations[a] * ((kh, kw)[a] - 1) + 1 + output_padding[a] for a in (0, 1)]
    y = np.zeros((n, co * group, full[0], full[1]))
    for i in range(c):
        g = i // (ci // group)  # input channels per group
        for r in range(h):
            for q in range(wd):
                for a in range(kh):
                    for b in range(kw):
                        y[:, g * co:(g + 1) * co, r * strides[0] + a * dilations[0], q * strides[1] + b * dilations[1]] \
                            += x[:, i, r, q, None] * w[i, :, a, b]
    y = y[:, :, pads[0]:full[0] - pads[2], pads[1]:full[1] - pads[3]]
    return y.mean(axis=(0, 2, 3))


CONVS = [  # kernel, pads, strides, dilations, group
    ((3, 3), (1, 1, 1, 1), (1, 1), (1, 1), 1),
    ((3, 2), (0, 2, 1, 0), (2, 1), (1, 2), 1),
    ((3, 3), (0, 0, 0, 0), (2, 2), (2, 1), 1),
    ((1, 1), (0, 0, 0, 0), (1, 1), (1, 1), 1),
    ((7, 7), (3, 3, 3, 3), (2, 2), (1, 1), 1),  # kernel almost the size of the input
    ((3, 3), (1, 1, 1, 1), (1, 1), (1, 1), 2),  # grouped
    ((3, 3), (2, 2, 2, 2), (1, 2), (2, 2), 4),  # depthwise
]


@pytest.mark.parametrize("kernel,pads,strides,dilations,group", CONVS)
def test_conv_tap_means_give_the_exact_mean_of_the_weight_error(kernel, pads, strides, dilations, group):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 4 // group, *kernel))
    xs = [np.maximum(rng.standard_normal((2, 4, 9, 11)), 0).astype(np.float32) for _ in range(3)]
    acc = TapMeans(TapGeometry(kernel, pads, strides, dilations))
    for x in xs:
        acc.update(x)
    ref = brute_grouped_conv_mean(np.concatenate(xs).astype(np.float64), w, group, pads, strides, dilations)
    np.testing.assert_allclose(tap_shift_means(w, acc.mean, group), ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("auto_pad,strides", [("SAME_UPPER", (2, 2)), ("SAME_LOWER", (2, 3)), ("VALID", (1, 2)),
                                              ("SAME_UPPER", (1, 1))])
def test_automatic_pads_match_onnxruntime(auto_pad, strides):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    x = rng.standard_normal((2, 2, 10, 9)).astype(np.float32)
    acc = TapMeans(TapGeometry((4, 3), strides=strides, auto_pad=auto_pad))
    acc.update(x)
    y = ort_layer("Conv", w.shape, {"auto_pad": auto_pad, "strides": list(strides)}, list(x.shape), w).run(
        None, {"x": x})[0]
    np.testing.assert_allclose(tap_shift_means(w, acc.mean), y.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5,
                               atol=1e-6)


DECONVS = [  # kernel, pads, strides, dilations, output_padding, group
    ((4, 4), (1, 1, 1, 1), (2, 2), (1, 1), (0, 0), 1),  # the FCN upsampler's shape
    ((3, 2), (0, 1, 2, 0), (3, 1), (1, 2), (1, 0), 1),
    ((3, 3), (0, 0, 0, 0), (1, 1), (1, 1), (0, 0), 2),
    ((2, 3), (1, 0, 0, 1), (2, 2), (2, 1), (1, 1), 4),  # depthwise
]


@pytest.mark.parametrize("kernel,pads,strides,dilations,output_padding,group", DECONVS)
def test_conv_transpose_tap_means_give_the_exact_mean(kernel, pads, strides, dilations, output_padding, group):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((4, 6 // group, *kernel))
    xs = [rng.standard_normal((1, 4, 5, 6)).astype(np.float32) for _ in range(2)]
    acc = TapMeans(TapGeometry(kernel, pads, strides, dilations, transposed=True, output_padding=output_padding))
    for x in xs:
        acc.update(x)
    ref = brute_deconv_mean(np.concatenate(xs).astype(np.float64), w, group, pads, strides, dilations,
                            output_padding)
    got = tap_shift_means(w, acc.mean, group, transposed=True)
    np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-12)
    attrs = {"pads": list(pads), "strides": list(strides), "dilations": list(dilations),
             "output_padding": list(output_padding), "group": group}
    y = ort_layer("ConvTranspose", w.shape, attrs, [2, 4, 5, 6], w.astype(np.float32)).run(
        None, {"x": np.concatenate(xs)})[0]
    np.testing.assert_allclose(got, y.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_sums_count_output_positions_by_hand():
    """A 1x1 input channel of ones, 3x3 kernel, pads 1, stride 1 on 3x3: the centre tap reads all 9 values, a
    corner tap the 4 of a 2x2 block."""
    s, count = tap_sums(np.ones((1, 1, 3, 3), np.float32), TapGeometry((3, 3), (1, 1, 1, 1)))
    assert count == 9
    assert s[0].tolist() == [[4, 6, 4], [6, 9, 6], [4, 6, 4]]


def test_recorded_tap_means_merge_bit_for_bit():
    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((1, 4, 7, 6)) * 10 ** rng.uniform(-8, 8, (1, 4, 1, 1))).astype(np.float32)
               for _ in range(9)]
    for geometry in (TapGeometry((3, 2), (1, 0, 1, 1), (2, 1), (1, 2)),
                     TapGeometry((4, 4), (1, 1, 1, 1), (2, 2), transposed=True)):
        whole, merged = whole_and_merged(lambda record=False, g=geometry: TapMeans(g, record=record), batches)
        assert merged.count == whole.count
        assert merged.mean.tobytes() == whole.mean.tobytes()
