"""Convolution patches and moments (fcnquant.recover.adaround.conv_patches) against onnxruntime's Conv and ConvTranspose."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.errors import ModelError
from fcnquant.recover.adaround.conv_patches import (GramStats, output_hw, patches, rows_to_weight, spec_from_attributes,
                                           weight_rows)
from fcnquant.recover.adaround.layer_rounding import quadratic_loss
from tests.recover.helpers import ort_layer


CASES = [
    ("Conv", (6, 3, 3, 3), dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2]), (2, 3, 9, 11)),
    ("Conv", (6, 2, 3, 2), dict(auto_pad="SAME_UPPER", strides=[2, 3], group=2), (1, 4, 10, 11)),
    ("Conv", (6, 2, 3, 2), dict(auto_pad="SAME_LOWER", strides=[2, 3], group=2), (1, 4, 10, 11)),
    ("Conv", (4, 1, 3, 3), dict(auto_pad="VALID", group=4, dilations=[2, 2]), (1, 4, 10, 11)),
    ("ConvTranspose", (4, 3, 3, 3), dict(strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]), (2, 4, 5, 6)),
    ("ConvTranspose", (4, 2, 4, 3), dict(strides=[3, 2], pads=[1, 2, 0, 1], dilations=[1, 2], group=2), (1, 4, 5, 6)),
    ("ConvTranspose", (4, 2, 2, 2), dict(pads=[1, 1, 1, 1]), (1, 4, 5, 6)),
]


@pytest.mark.parametrize("op,wshape,attrs,xshape", CASES)
def test_patches_reproduce_onnxruntime(op, wshape, attrs, xshape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    y = ort_layer(op, wshape, attrs, xshape, w).run(None, {"x": x})[0]
    spec = spec_from_attributes(op, wshape, attrs)
    rows = weight_rows(w.astype(np.float64), spec)
    np.testing.assert_array_equal(rows_to_weight(rows, spec), w)
    g, cpg, _ = rows.shape
    ours = np.matmul(rows, patches(x.astype(np.float64), spec).transpose(0, 2, 1))  # [G, C/g, P]
    ho, wo = output_hw(xshape, spec)
    ours = ours.reshape(g * cpg, xshape[0], ho, wo).transpose(1, 0, 2, 3)
    assert ours.shape == y.shape
    np.testing.assert_allclose(ours, y, rtol=0, atol=1e-5)


def test_moments_give_the_output_error_of_onnxruntime():
    """The quadratic loss from the moments equals the mean squared output error measured with onnxruntime."""
    op, wshape, attrs, xshape = CASES[1]
    rng = np.random.default_rng(3)
    w = rng.standard_normal(wshape).astype(np.float32)
    wq = (w + 0.05 * rng.standard_normal(wshape)).astype(np.float32)
    spec = spec_from_attributes(op, wshape, attrs)
    gram = GramStats(spec, rows_per_chunk=2)  # several chunks per image
    err = []
    for _ in range(3):
        xf = rng.standard_normal(xshape).astype(np.float32)
        xq = (xf + 0.1 * rng.standard_normal(xshape)).astype(np.float32)
        gram.update(xf, xq)
        yf = ort_layer(op, wshape, attrs, xshape, w).run(None, {"x": xf})[0]
        yq = ort_layer(op, wshape, attrs, xshape, wq).run(None, {"x": xq})[0]
        err.append(((yq - yf).astype(np.float64) ** 2).sum(axis=1).ravel())  # summed over channels
    a, b, c = gram.quadratic(weight_rows(w.astype(np.float64), spec))
    loss = quadratic_loss(weight_rows(wq.astype(np.float64), spec), a, b, c)
    assert loss == pytest.approx(np.concatenate(err).mean(), rel=1e-5)


def test_unsupported_layers_are_refused_by_name():
    with pytest.raises(ModelError, match="auto_pad or output_shape"):
        spec_from_attributes("ConvTranspose", (2, 2, 3, 3), {"auto_pad": b"SAME_UPPER"})
    with pytest.raises(ModelError, match="2-D"):
        spec_from_attributes("Conv", (2, 2, 3), {})


def test_gram_stats_of_shards_add_up():
    spec = spec_from_attributes("Conv", (4, 3, 3, 3), {"pads": [1, 1, 1, 1]})
    rng = np.random.default_rng(5)
    xs = [(rng.standard_normal((1, 3, 6, 7)).astype(np.float32), rng.standard_normal((1, 3, 6, 7)).astype(np.float32))
          for _ in range(5)]
    whole, first, second = GramStats(spec), GramStats(spec), GramStats(spec)
    for k, (xf, xq) in enumerate(xs):
        whole.update(xf, xq)
        (first if k < 2 else second).update(xf, xq)
    for arr in (second.ff, second.fq, second.qq):
        arr.flags.writeable = False  # a shard's arrays arrive read-only from a cluster
    first.merge(second)
    assert first.count == whole.count
    for got, want in ((first.ff, whole.ff), (first.fq, whole.fq), (first.qq, whole.qq)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
