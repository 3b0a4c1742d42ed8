"""Cross-layer equalization numerics (fcnquant.recover.equalize.cle): hand-worked cases and brute force."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.recover.equalize import cle


def dense(w: np.ndarray, group: int) -> np.ndarray:
    """A grouped Conv weight (out, in/group, k, k) expanded to the equivalent dense (out, in, k, k) weight."""
    cout, cin_g = w.shape[:2]
    d = np.zeros((cout, cin_g * group) + w.shape[2:])
    rows = cout // group
    for g in range(group):
        d[g * rows:(g + 1) * rows, g * cin_g:(g + 1) * cin_g] = w[g * rows:(g + 1) * rows]
    return d


def test_hand_worked_two_channel_pair():
    # W1: 2 output channels with ranges 2 and 0.5; W2 reads them with ranges 0.5 and 8.
    # s = sqrt(r1 / r2) = (sqrt(4), sqrt(1/16)) = (2, 0.25); both sides then have ranges (1, 2).
    w1 = np.array([[[[2.0]], [[-1.0]]], [[[0.5]], [[0.25]]]])  # (2, 2, 1, 1)
    b1 = np.array([1.0, 1.0])
    w2 = np.array([[[[0.5]], [[8.0]]], [[[-0.25]], [[4.0]]]])  # (2, 2, 1, 1)
    pair = cle.Pair("p", (cle.Producer("w1", "b1", cle.Layout()),), (cle.Consumer("w2"),))
    new, results = cle.equalize_chains({"w1": w1, "b1": b1, "w2": w2}, [pair])
    np.testing.assert_allclose(results[0].pairs[0].scales, [2.0, 0.25], rtol=1e-12)
    np.testing.assert_allclose(new["w1"][:, :, 0, 0], [[1.0, -0.5], [2.0, 1.0]], rtol=1e-12)
    np.testing.assert_allclose(new["b1"], [0.5, 4.0], rtol=1e-12)
    np.testing.assert_allclose(new["w2"][:, :, 0, 0], [[1.0, 2.0], [-0.5, 1.0]], rtol=1e-12)
    # one sweep balances a single pair; the second finds s = 1 and stops
    assert results[0].sweeps == 2 and results[0].converged


def test_scales_follow_the_formula_from_raw_weights():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 3, 3, 3)) * rng.uniform(0.1, 5, size=(6, 1, 1, 1))
    w2 = rng.normal(size=(4, 6, 3, 3)) * rng.uniform(0.1, 5, size=(1, 6, 1, 1))
    r1 = np.abs(w1).max(axis=(1, 2, 3))
    r2 = np.abs(w2).max(axis=(0, 2, 3))
    expected = np.sqrt(r1 / r2)
    np.testing.assert_allclose(cle.equalization_scales(r1, r2), expected, rtol=1e-12)
    pair = cle.Pair("p", (cle.Producer("w1", None, cle.Layout()),), (cle.Consumer("w2"),))
    new, res = cle.equalize_chains({"w1": w1, "w2": w2}, [pair])
    np.testing.assert_allclose(res[0].pairs[0].scales, expected, rtol=1e-12)
    np.testing.assert_allclose(new["w1"], w1 / expected[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(new["w2"], w2 * expected[None, :, None, None], rtol=1e-12)
    after1 = np.abs(new["w1"]).max(axis=(1, 2, 3))
    after2 = np.abs(new["w2"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(after1, np.sqrt(r1 * r2), rtol=1e-12)
    np.testing.assert_allclose(after2, np.sqrt(r1 * r2), rtol=1e-12)


def test_zero_range_channels_keep_scale_one_and_bad_ranges_raise():
    np.testing.assert_array_equal(cle.equalization_scales([0.0, 4.0, 1.0], [3.0, 1.0, 0.0]), [1.0, 2.0, 1.0])
    with pytest.raises(ValueError):
        cle.equalization_scales([1.0, np.nan], [1.0, 1.0])
    with pytest.raises(ValueError):
        cle.equalization_scales([-1.0], [1.0])


@pytest.mark.parametrize("group", [1, 2, 4])
def test_grouped_channel_ranges_and_scaling_match_the_dense_weight(group):
    rng = np.random.default_rng(group)
    w = rng.normal(size=(8, 4 // group, 3, 3))
    d = dense(w, group)
    np.testing.assert_allclose(cle.channel_absmax(w, 1, group), np.abs(d).max(axis=(0, 2, 3)))
    np.testing.assert_allclose(cle.channel_absmax(w, 0, group), np.abs(d).max(axis=(1, 2, 3)))
    s = rng.uniform(0.5, 2, size=3)
    scaled = cle.scale_channels(w, s, 1, group, offset=1)
    full = np.ones(4)
    full[1:4] = s
    np.testing.assert_allclose(dense(scaled, group), d * full[None, :, None, None])
    np.testing.assert_allclose(cle.kernel_sum_matrix(w, group), d.sum(axis=(2, 3)))


def test_transposed_layout_uses_axis_1_for_outputs():
    rng = np.random.default_rng(3)
    wt = rng.normal(size=(4, 6, 2, 2)) * rng.uniform(0.2, 3, size=(1, 6, 1, 1))  # ConvTranspose (in, out, k, k)
    w2 = rng.normal(size=(5, 6, 1, 1))
    r1 = np.abs(wt).max(axis=(0, 2, 3))
    r2 = np.abs(w2).max(axis=(0, 2, 3))
    pair = cle.Pair("t", (cle.Producer("wt", None, cle.Layout(transposed=True)),), (cle.Consumer("w2"),))
    new, res = cle.equalize_chains({"wt": wt, "w2": w2}, [pair])
    s = np.sqrt(r1 / r2)
    np.testing.assert_allclose(res[0].pairs[0].scales, s, rtol=1e-12)
    np.testing.assert_allclose(new["wt"], wt / s[None, :, None, None], rtol=1e-12)


def test_chain_of_three_converges_to_balanced_ranges():
    rng = np.random.default_rng(5)
    ws = {f"w{k}": rng.normal(size=(6, 6, 3, 3)) * rng.uniform(0.05, 10, size=(6, 6, 1, 1)) for k in range(4)}
    pairs = [cle.Pair(f"p{k}", (cle.Producer(f"w{k}"),), (cle.Consumer(f"w{k + 1}"),)) for k in range(3)]
    new, res = cle.equalize_chains(ws, pairs, tol=1e-10)
    assert len(res) == 1 and res[0].converged and res[0].sweeps > 2
    for k in range(3):  # at the fixed point every pair is balanced: r1_i == r2_i
        r1 = np.abs(new[f"w{k}"]).max(axis=(1, 2, 3))
        r2 = np.abs(new[f"w{k + 1}"]).max(axis=(0, 2, 3))
        np.testing.assert_allclose(r1, r2, rtol=1e-7)
    # the end-to-end linear map (without the ReLUs) is unchanged: W3 W2 W1 on 1x1 kernels' centre taps
    prod = lambda d: d["w3"][:, :, 1, 1] @ d["w2"][:, :, 1, 1] @ d["w1"][:, :, 1, 1] @ d["w0"][:, :, 1, 1]  # noqa: E731
    np.testing.assert_allclose(prod(new), prod(ws), rtol=1e-9)


def test_max_sweeps_reports_not_converged():
    rng = np.random.default_rng(6)
    ws = {f"w{k}": rng.normal(size=(4, 4, 1, 1)) * rng.uniform(0.01, 10, size=(4, 4, 1, 1)) for k in range(5)}
    pairs = [cle.Pair(f"p{k}", (cle.Producer(f"w{k}"),), (cle.Consumer(f"w{k + 1}"),)) for k in range(4)]
    _, res = cle.equalize_chains(ws, pairs, tol=1e-14, max_sweeps=2)
    assert res[0].sweeps == 2 and not res[0].converged and res[0].last_max_log_scale > 0


def test_multi_consumer_range_is_the_max_over_consumers():
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(5, 3, 3, 3))
    wa = rng.normal(size=(4, 5, 3, 3)) * rng.uniform(0.1, 4, size=(1, 5, 1, 1))
    wb = rng.normal(size=(2, 8, 1, 1)) * rng.uniform(0.1, 4, size=(1, 8, 1, 1))  # reads w1's channels at offset 3
    r1 = np.abs(w1).max(axis=(1, 2, 3))
    r2 = np.maximum(np.abs(wa).max(axis=(0, 2, 3)), np.abs(wb[:, 3:8]).max(axis=(0, 2, 3)))
    s = np.sqrt(r1 / r2)
    pair = cle.Pair("p", (cle.Producer("w1", None, cle.Layout()),), (cle.Consumer("wa"), cle.Consumer("wb", offset=3)))
    new, res = cle.equalize_chains({"w1": w1, "wa": wa, "wb": wb}, [pair])
    np.testing.assert_allclose(res[0].pairs[0].scales, s, rtol=1e-12)
    np.testing.assert_allclose(new["wb"][:, :3], wb[:, :3])  # channels of another producer are untouched
    np.testing.assert_allclose(new["wb"][:, 3:], wb[:, 3:] * s[None, :, None, None], rtol=1e-12)


def test_pairs_sharing_no_weight_are_separate_chains():
    rng = np.random.default_rng(8)
    _ws = {k: rng.normal(size=(3, 3, 1, 1)) for k in "abcd"}  # draws as the other tests do
    pairs = [cle.Pair("ab", (cle.Producer("a"),), (cle.Consumer("b"),)),
             cle.Pair("cd", (cle.Producer("c", None, cle.Layout()),), (cle.Consumer("d"),)),
             cle.Pair("bc", (cle.Producer("b", None, cle.Layout()),), (cle.Consumer("c"),))]
    assert [[p.name for p in ch] for ch in cle.chains(pairs)] == [["ab", "cd", "bc"]]
    assert [[p.name for p in ch] for ch in cle.chains(pairs[:2])] == [["ab"], ["cd"]]


def test_bad_pairs_raise():
    w = np.ones((2, 2, 1, 1))
    with pytest.raises(ValueError, match="cannot take"):
        cle.equalize_chains({"a": w, "b": w}, [cle.Pair("p", (cle.Producer("a"),), (cle.Consumer("b", offset=1),))])
    with pytest.raises(ValueError, match="NaN"):
        cle.equalize_chains({"a": w * np.nan, "b": w}, [cle.Pair("p", (cle.Producer("a"),), (cle.Consumer("b"),))])


def test_absorb_high_bias_hand_worked():
    # producer pre-activation bounded below by (3, -1): c = (3, 0) leaves b1 and enters b2 through the kernel sums
    b1 = np.array([4.0, 2.0])
    w2 = np.zeros((1, 2, 2, 2))
    w2[0, 0] = [[1.0, 2.0], [0.5, -0.5]]  # kernel sum 3
    w2[0, 1] = 7.0
    b2 = np.array([1.0])
    new_b1, (new_b2,), c = cle.absorb_high_bias(b1, np.array([3.0, -1.0]), [(w2, b2, 1, 0)])
    np.testing.assert_array_equal(c, [3.0, 0.0])
    np.testing.assert_array_equal(new_b1, [1.0, 2.0])
    np.testing.assert_array_equal(new_b2, [1.0 + 3.0 * 3.0])


def test_range_metrics():
    w = np.zeros((3, 1, 1, 1))
    w[:, 0, 0, 0] = [4.0, -2.0, 1.0]
    assert cle.weight_range_ratio(w) == 4.0
    assert cle.mean_channel_precision(w) == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert cle.weight_range_ratio(np.zeros((2, 1, 1, 1))) == 1.0


def test_producers_joined_by_an_add_share_one_scale():
    # two producers summed (a residual Add), one consumer: r1 is the max over both producers
    rng = np.random.default_rng(10)
    wa = rng.normal(size=(4, 3, 3, 3)) * rng.uniform(0.1, 5, size=(4, 1, 1, 1))
    wb = rng.normal(size=(4, 2, 1, 1)) * rng.uniform(0.1, 5, size=(4, 1, 1, 1))
    w2 = rng.normal(size=(3, 4, 1, 1)) * rng.uniform(0.1, 5, size=(1, 4, 1, 1))
    r1 = np.maximum(np.abs(wa).max(axis=(1, 2, 3)), np.abs(wb).max(axis=(1, 2, 3)))
    s = np.sqrt(r1 / np.abs(w2).max(axis=(0, 2, 3)))
    pair = cle.Pair("res", (cle.Producer("wa", "ba"), cle.Producer("wb")), (cle.Consumer("w2"),))
    ba = rng.normal(size=4)
    new, res = cle.equalize_chains({"wa": wa, "ba": ba, "wb": wb, "w2": w2}, [pair])
    np.testing.assert_allclose(res[0].pairs[0].scales, s, rtol=1e-12)
    np.testing.assert_allclose(new["wa"], wa / s[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(new["wb"], wb / s[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(new["ba"], ba / s, rtol=1e-12)
    with pytest.raises(ValueError, match="output channels"):
        cle.equalize_chains({"wa": wa, "wb": wb[:3], "w2": w2},
                            [cle.Pair("bad", (cle.Producer("wa"), cle.Producer("wb")), (cle.Consumer("w2"),))])
