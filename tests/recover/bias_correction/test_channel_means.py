"""Channel means and the int32 bias update (fcnquant.recover.bias_correction.channel_means) by hand and against a
brute-force convolution; the means of shards merge bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.recover.bias_correction.channel_means import ChannelMeans, WindowMeans, corrected_int32_bias
from tests.recover.helpers import brute_conv_mean, whole_and_merged


def test_channel_means_and_bias_update_by_hand():
    acc = ChannelMeans()
    acc.update(np.array([[[[1.0, 3.0]], [[0.0, 0.0]]]]))  # (1, 2, 1, 2)
    acc.update(np.array([[[[5.0, 7.0]], [[4.0, 8.0]]]]))
    assert acc.count == 4 and list(acc.mean) == [4.0, 3.0]
    # the module's worked example: s_b = 0.001, b = 500, mean error +0.0123 -> 488
    assert corrected_int32_bias(np.array([500], np.int32), np.array([0.001]), np.array([0.0123]))[0] == 488
    big = corrected_int32_bias(np.array([2 ** 31 - 5], np.int32), np.array([1.0]), np.array([-100.0]))
    assert big[0] == 2 ** 31 - 1 and big.dtype == np.int32


@pytest.mark.parametrize("pads,strides,dilations", [((1, 1, 1, 1), (1, 1), (1, 1)), ((0, 2, 1, 0), (2, 1), (1, 2)),
                                                    ((0, 0, 0, 0), (2, 2), (2, 1))])
def test_window_means_give_the_exact_mean_of_a_convolution(pads, strides, dilations):
    from fcnquant.recover.bias_correction.channel_means import weight_shift_means

    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 3, 3, 2))
    xs = [np.maximum(rng.standard_normal((2, 3, 9, 11)), 0) for _ in range(3)]
    acc = WindowMeans((3, 2), pads, strides, dilations)
    for x in xs:
        acc.update(x)
    ref = brute_conv_mean(np.concatenate(xs), w, pads, strides, dilations)
    np.testing.assert_allclose(weight_shift_means(w, acc.mean), ref, rtol=1e-12, atol=1e-12)


def test_recorded_means_merge_bit_for_bit():
    """A shard after the first records its batch sums; merged into the first shard's means they give exactly the
    sums of one pass over every batch in order (float64 addition is not associative: a plain sum of the shards'
    totals need not)."""
    rng = np.random.default_rng(7)
    batches = [(rng.standard_normal((1, 4, 5, 6)) * 10 ** rng.uniform(-8, 8, (1, 4, 1, 1))).astype(np.float32)
               for _ in range(9)]
    for make in (ChannelMeans, lambda **kw: WindowMeans((3, 2), (1, 0, 1, 1), (2, 1), (1, 2), **kw)):
        whole, merged = whole_and_merged(make, batches)
        assert merged.count == whole.count
        assert merged.sum.tobytes() == whole.sum.tobytes()
        assert merged.mean.tobytes() == whole.mean.tobytes()
