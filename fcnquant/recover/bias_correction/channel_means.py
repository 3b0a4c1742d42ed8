"""Per-channel means of activations, streamed, and the int32 bias update that cancels a mean error (numpy only).

A Conv output ``y`` of shape (N, C, H, W) contributes ``sum over n, h, w`` per channel to a float64 sum and
``N * H * W`` to the count, so the mean over any number of batches is exact up to float64 summation order and
needs memory for ``C`` numbers only. Accumulators of shards merge bit for bit (:mod:`fcnquant.recover.ordered_sum`:
a shard after the first records its batch sums, ``record=True``, and :meth:`ChannelMeans.merge` replays them).

Bias update (QDQ graphs store a quantized Conv's bias as int32 ``b_q`` with scale ``s_b = s_x * s_w``): a mean
output error ``e_c`` (quantized minus float) in channel ``c`` is cancelled by ``b_q[c] -= round(e_c / s_b[c])``,
exact to half a bias step (``s_b / 2``, far below the output's own quantization step ``s_y``).
Worked example: ``s_b = 0.001``, ``b_q = 500`` (0.5), mean error ``+0.0123`` -> ``b_q = 500 - 12 = 488`` (0.488).
"""
from __future__ import annotations

import numpy as np

from fcnquant.recover.ordered_sum import OrderedMean

INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1


class ChannelMeans(OrderedMean):
    """Running per-channel (axis 1) means of NC... tensors in float64; ``record``: see the module docstring."""

    def update(self, x: np.ndarray) -> None:
        """Adds every value of ``x`` (shape (N, C, ...)) to its channel's sum."""
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"expected an (N, C, ...) tensor, got shape {x.shape}")
        axes = (0,) + tuple(range(2, x.ndim))
        self.add(x.sum(axis=axes, dtype=np.float64), x.size // x.shape[1])


def corrected_int32_bias(bias_q: np.ndarray, bias_scale: np.ndarray, mean_error: np.ndarray) -> np.ndarray:
    """Returns the int32 bias ``bias_q - round(mean_error / bias_scale)`` (per channel, clipped to int32)."""
    b = np.asarray(bias_q, dtype=np.int64)
    step = np.broadcast_to(np.asarray(bias_scale, dtype=np.float64), b.shape)
    delta = np.round(np.asarray(mean_error, dtype=np.float64) / step)
    return np.clip(b - delta.astype(np.int64), INT32_MIN, INT32_MAX).astype(np.int32)


class WindowMeans(OrderedMean):
    """Running means, per input channel and kernel offset, of the values a 2-D convolution reads.

    For an input ``x`` (N, C, H, W), zero padding ``pads`` (top, left, bottom, right), kernel (KH, KW), strides and
    dilations, ``M[i, kh, kw]`` is the mean over images and output positions ``(oh, ow)`` of
    ``x_padded[:, i, oh * sh + kh * dh, ow * sw + kw * dw]``. The mean output of a convolution with weights ``D``
    (no bias) is then exactly ``sum_{i, kh, kw} D[c, i, kh, kw] * M[i, kh, kw]`` (border positions included).
    """

    def __init__(self, kernel: tuple[int, int], pads: tuple[int, int, int, int] = (0, 0, 0, 0),
                 strides: tuple[int, int] = (1, 1), dilations: tuple[int, int] = (1, 1), *,
                 record: bool = False) -> None:
        super().__init__(record=record)
        self.kernel, self.pads, self.strides, self.dilations = kernel, pads, strides, dilations

    def update(self, x: np.ndarray) -> None:
        """Adds the windows of every image of ``x`` (N, C, H, W)."""
        x = np.asarray(x)
        (kh_n, kw_n), (pt, pl, pb, pr) = self.kernel, self.pads
        (sh, sw), (dh, dw) = self.strides, self.dilations
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(self.pads) else x
        hp, wp = xp.shape[2], xp.shape[3]
        oh = (hp - dh * (kh_n - 1) - 1) // sh + 1
        ow = (wp - dw * (kw_n - 1) - 1) // sw + 1
        s = np.empty((x.shape[1], kh_n, kw_n), dtype=np.float64)
        for kh in range(kh_n):
            for kw in range(kw_n):
                r0, c0 = kh * dh, kw * dw
                win = xp[:, :, r0:r0 + sh * (oh - 1) + 1:sh, c0:c0 + sw * (ow - 1) + 1:sw]
                s[:, kh, kw] = win.sum(axis=(0, 2, 3), dtype=np.float64)
        self.add(s, x.shape[0] * oh * ow)


def weight_shift_means(delta_w: np.ndarray, window_means: np.ndarray) -> np.ndarray:
    """Returns the mean output shift per output channel of a convolution with weight error ``delta_w``
    (Cout, Cin, KH, KW) over inputs whose window means are ``window_means`` (Cin, KH, KW)."""
    return np.einsum("oikl,ikl->o", np.asarray(delta_w, np.float64), np.asarray(window_means, np.float64))
