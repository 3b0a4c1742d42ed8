"""The integer arithmetic of a fixed-point target, in numpy (no onnx): rounding shifts, requantization,
integer convolution, max pooling and fixed-point bilinear resizing.

Every function computes exact integers. float64 (53-bit mantissa) and float32 (24-bit) arrays carry integers where
every value and every partial sum provably fits the mantissa, so BLAS can do the sums: a float32 matrix product of
``K`` terms whose products are at most ``P`` in magnitude is exact when ``K * P <= 2**24`` (every partial sum is an
integer of at most that magnitude, whatever order the library adds in). Longer sums are split into such chunks and
the chunks added in float64 (exact below ``2**53``).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

#: rounding modes of a right shift by ``n`` bits (``x / 2**n`` to an integer)
ROUNDINGS = ("half_even", "half_up", "half_away", "floor")
#: fraction bits of the fixed-point bilinear coefficients (each axis's weights are integers summing to 2**10)
RESIZE_FRAC_BITS = 10
#: bits of a fixed-point requantization multiplier: a non-power-of-two ratio r is M * 2**-n, 2**30 <= M < 2**31
MULTIPLIER_BITS = 31
_F32_EXACT = float(2 ** 24)


def round_shift(x: np.ndarray, n: np.ndarray | int, rounding: str) -> np.ndarray:
    """Returns ``x / 2**n`` rounded to an integer by ``rounding`` (int64; ``n <= 0`` shifts left, exactly).

    ``x``: int64 array; ``n``: an int or an int64 array broadcasting against ``x`` (per-channel shifts).
    half_even: ties to the even integer; half_up: ties toward +inf (``(x + 2**(n-1)) >> n``); half_away: ties
    away from zero; floor: the arithmetic shift ``x >> n``.
    """
    x = np.asarray(x, np.int64)
    n = np.asarray(n, np.int64)
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose from {', '.join(ROUNDINGS)}")
    left = np.maximum(-n, 0)
    right = np.maximum(n, 0)
    if np.any(left):
        x = x << left
    if not np.any(right):
        return x
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    if rounding == "floor":
        return x >> right
    if rounding == "half_up":
        return (x + half) >> right
    if rounding == "half_away":
        return np.sign(x) * ((np.abs(x) + half) >> right)
    q = x >> right
    r = x - (q << right)
    return q + (r > half) + ((r == half) & (half > 0) & ((q & 1) == 1))


def round_pow2_float(y: np.ndarray, rounding: str) -> np.ndarray:
    """Rounds ``y`` in place (float64 holding ``x * 2**-n`` exactly, ``|y| < 2**51``) as :func:`round_shift` rounds
    ``x >> n``: the same integers, computed in float64 (faster; every step exact); returns ``y``."""
    if rounding == "half_even":
        return np.rint(y, out=y)
    if rounding == "half_up":
        y += 0.5
        return np.floor(y, out=y)
    if rounding == "half_away":
        sign = np.signbit(y)
        np.abs(y, out=y)
        y += 0.5
        np.floor(y, out=y)
        return np.negative(y, out=y, where=sign)
    if rounding == "floor":
        return np.floor(y, out=y)
    raise ValueError(f"unknown rounding {rounding!r}; choose from {', '.join(ROUNDINGS)}")


def pow2_exponent(v: float) -> int | None:
    """Returns k with ``v == 2**k`` exactly, or None when ``v`` is not a power of two."""
    m, e = np.frexp(float(v))
    return int(e) - 1 if m == 0.5 else None


def multiplier(ratio: float) -> tuple[int, int]:
    """Returns (M, n) with ``ratio ~= M * 2**-n``: exactly (M = 1) for a power of two, else ``2**30 <= M < 2**31``
    (the ratio's 31 leading bits, rounded to nearest)."""
    k = pow2_exponent(ratio)
    if k is not None:
        return 1, -k
    m, e = np.frexp(float(ratio))  # ratio = m * 2**e, 0.5 <= m < 1
    big = int(round(m * 2 ** MULTIPLIER_BITS))
    n = MULTIPLIER_BITS - int(e)
    if big == 2 ** MULTIPLIER_BITS:  # m rounded up to 1.0
        big, n = big // 2, n - 1
    return big, n


def requantize(acc: np.ndarray, ratios: np.ndarray, rounding: str, qmin: int, qmax: int, relu: bool = False,
               axis: int = 1) -> np.ndarray:
    """Returns the integers ``clip(round(acc * ratio), qmin, qmax)`` (int64, or float64 holding them), rounding by
    ``rounding``.

    ``acc``: the integer accumulator (int64, or float64 holding integers), within a 48-bit accumulator (so
    ``acc * 2**-k`` and the rounding are exact in float64 wherever the result is not saturated); ``ratios``:
    accumulator scale / output scale, one value or one per index of ``axis``. A power-of-two ratio is an
    arithmetic shift; any other is the fixed-point multiply of :func:`multiplier` then a rounding shift (``acc * M``
    in int64: exact for a 32-bit accumulator). ``relu``: clamp the accumulator at 0 first (a fused Relu).
    """
    ratios = np.atleast_1d(np.asarray(ratios, np.float64))
    pairs = [multiplier(r) for r in ratios]
    shape = [1] * acc.ndim
    if ratios.size > 1:
        shape[axis] = ratios.size
    if all(m == 1 for m, _ in pairs):
        scale = np.array([2.0 ** -n for _, n in pairs]).reshape(shape)
        y = np.multiply(acc, scale, dtype=np.float64)
        if relu:
            np.maximum(y, 0.0, out=y)  # a positive scale keeps the sign: max(acc, 0) * s = max(acc * s, 0)
        return np.clip(round_pow2_float(y, rounding), qmin, qmax, out=y)  # the caller casts once
    if relu:
        acc = np.maximum(acc, 0)
    mult = np.array([m for m, _ in pairs], np.int64).reshape(shape)
    shift = np.array([n for _, n in pairs], np.int64).reshape(shape)
    return np.clip(round_shift(np.asarray(acc).astype(np.int64) * mult, shift, rounding), qmin, qmax)


def wrap(acc: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Returns (``acc`` wrapped to a two's-complement ``bits``-bit accumulator, how many values overflowed)."""
    lim = 2 ** (bits - 1)
    if acc.size == 0 or (acc.max() < lim and acc.min() >= -lim):
        return acc, 0
    count = int(((acc >= lim) | (acc < -lim)).sum())
    a = np.asarray(acc).astype(np.int64)
    return ((a + lim) % (2 * lim)) - lim, count


def _pad(x: np.ndarray, pads: tuple[int, int, int, int], value: float) -> np.ndarray:
    t, left, b, r = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (left, r)), constant_values=value)


def conv_acc(x: np.ndarray, w: np.ndarray, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
             group: int = 1) -> np.ndarray:
    """Returns the exact integer accumulator ``sum x * w`` of a 2-D convolution (float64, integers).

    ``x``: (N, C, H, W) integers with the zero point already subtracted; ``w``: (O, C/group, kh, kw) integers
    likewise; ``pads``: (top, left, bottom, right), padded with 0 (the real zero). The sums run in float32 chunks
    (see the module doc); operands too wide for useful float32 chunks (int16 activations) sum in float64.
    """
    if group != 1:
        ci, co = x.shape[1] // group, w.shape[0] // group
        return np.concatenate([conv_acc(x[:, g * ci:(g + 1) * ci], w[g * co:(g + 1) * co], strides=strides,
                                        pads=pads, dilations=dilations) for g in range(group)], axis=1)
    n, c, _, _ = x.shape
    o, _, kh, kw = w.shape
    product = max(float(np.abs(w).max(initial=0)) * float(np.abs(x).max(initial=0)), 1.0)
    limit = int(_F32_EXACT // product)  # terms per exact float32 sum
    carrier = np.float32
    if limit < 256:  # wide operands (int16 activations): float64 sums, exact below 2**53
        carrier, limit = np.float64, max(1, int(2.0 ** 53 // product))
    xp = _pad(np.asarray(x, carrier), pads, 0.0)
    (sh, sw), (dh, dw) = strides, dilations
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    offsets = [(i, j) for i in range(kh) for j in range(kw)]
    wf = np.asarray(w, carrier)
    # chunks of (offsets, channel slice) whose sum has at most `limit` terms
    chunks = []
    if c <= limit:
        per = max(1, limit // c)
        chunks = [(offsets[k:k + per], slice(0, c)) for k in range(0, len(offsets), per)]
    else:
        chunks = [([off], slice(s, min(s + limit, c))) for off in offsets for s in range(0, c, limit)]
    out = np.zeros((n, o, ho * wo), np.float64 if len(chunks) > 1 else carrier)
    for offs, cs in chunks:
        wk = np.concatenate([wf[:, cs, i, j] for i, j in offs], axis=1)  # (O, K)
        width = cs.stop - cs.start
        cols = np.empty((len(offs) * width, ho, wo), carrier)
        for b in range(n):
            for k, (i, j) in enumerate(offs):  # im2col, one copy per kernel offset
                cols[k * width:(k + 1) * width] = xp[b, cs, i * dh:i * dh + sh * (ho - 1) + 1:sh,
                                                     j * dw:j * dw + sw * (wo - 1) + 1:sw]
            out[b] += wk @ cols.reshape(len(offs) * width, ho * wo)
    return out.reshape(n, o, ho, wo).astype(np.float64, copy=False)


def conv_transpose_acc(x: np.ndarray, w: np.ndarray, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                       output_padding=(0, 0), group: int = 1) -> np.ndarray:
    """Returns the exact integer accumulator of a 2-D transposed convolution (ONNX ConvTranspose, float64).

    ``w``: (C, O/group, kh, kw). Computed as the convolution of the stride-dilated input with the flipped kernel.
    """
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    (sh, sw), (dh, dw) = strides, dilations
    up = np.zeros((n, c, (h - 1) * sh + 1, (wd - 1) * sw + 1), np.float32)
    up[:, :, ::sh, ::sw] = x
    ci = c // group
    wt = np.concatenate([np.flip(w[g * ci:(g + 1) * ci], (2, 3)).transpose(1, 0, 2, 3) for g in range(group)], 0)
    t, left, b, r = pads
    ekh, ekw = dh * (kh - 1), dw * (kw - 1)
    full = (ekh - t, ekw - left, ekh - b + output_padding[0], ekw - r + output_padding[1])
    crop = [max(-p, 0) for p in full]
    up = _pad(up, tuple(max(p, 0) for p in full), 0.0)
    up = up[:, :, crop[0]:up.shape[2] - crop[2], crop[1]:up.shape[3] - crop[3]]
    return conv_acc(up, wt, dilations=dilations, group=group)


def maxpool(x: np.ndarray, kernel, strides, pads=(0, 0, 0, 0), dilations=(1, 1), ceil_mode: int = 0) -> np.ndarray:
    """Returns 2-D max pooling of integers ``x`` (N, C, H, W); padded cells never win (ONNX MaxPool)."""
    kh, kw = kernel
    (sh, sw), (dh, dw) = strides, dilations
    t, left, b, r = pads
    h, w = x.shape[2:]

    def size(n, k, s, d, begin, total):
        span = n + total - d * (k - 1) - 1
        if not ceil_mode:
            return span // s + 1
        out = -(-span // s) + 1
        return out - 1 if (out - 1) * s >= n + begin else out  # the last window must start inside

    ho, wo = size(h, kh, sh, dh, t, t + b), size(w, kw, sw, dw, left, left + r)
    need_b = max((ho - 1) * sh + dh * (kh - 1) + 1 - h - t, 0)
    need_r = max((wo - 1) * sw + dw * (kw - 1) + 1 - w - left, 0)
    low = np.iinfo(np.int64).min
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (0, 0), (t, need_b), (left, need_r)), constant_values=low)
    out = None
    for i in range(kh):
        for j in range(kw):
            v = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            out = v.copy() if out is None else np.maximum(out, v)
    return out


def resize_axis(n_in: int, n_out: int, mode: str, scale: Fraction | None = None,
                bits: int = RESIZE_FRAC_BITS) -> np.ndarray:
    """Returns the (n_out, n_in) integer matrix of one axis of a fixed-point linear resize; rows sum to 2**bits.

    The source coordinate of output index i is the exact rational of ONNX's ``coordinate_transformation_mode``
    (``scale`` = n_out / n_in unless the model gives scales), clamped to [0, n_in - 1] and rounded half up to
    ``bits`` fraction bits: ``p = round(x * 2**bits)``; the output interpolates ``in[p >> bits]`` with weight
    ``2**bits - (p & mask)`` and the next input with ``p & mask``.
    """
    one = 1 << bits
    scale = Fraction(n_out, n_in) if scale is None else scale
    mat = np.zeros((n_out, n_in), np.int64)
    for i in range(n_out):
        if mode == "align_corners":
            x = Fraction(i * (n_in - 1), n_out - 1) if n_out > 1 else Fraction(0)
        elif mode == "half_pixel":
            x = (i + Fraction(1, 2)) / scale - Fraction(1, 2)
        elif mode == "pytorch_half_pixel":
            x = (i + Fraction(1, 2)) / scale - Fraction(1, 2) if n_out > 1 else Fraction(0)
        elif mode == "asymmetric":
            x = i / scale
        else:
            raise ValueError(f"unsupported coordinate_transformation_mode {mode!r}")
        x = min(max(x, Fraction(0)), Fraction(n_in - 1))
        p = int((x * one + Fraction(1, 2)) // 1)  # round half up (x >= 0)
        i0, f = p >> bits, p & (one - 1)
        mat[i, i0] += one - f
        if f:
            mat[i, min(i0 + 1, n_in - 1)] += f
    return mat


def resize_acc(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Returns the fixed-point bilinear accumulator ``rows @ x @ cols.T`` per (N, C) plane (float64, integers, in
    units of the input LSB times ``2**-(2 * bits)``)."""
    r, c = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
    xf = np.asarray(x, np.float64)
    return np.matmul(np.matmul(r, xf), c.T)
