"""Power-of-two scales chosen by expected quantization error instead of always rounding up (numpy only).

A fixed-point accelerator (target ``npu-pow2``) needs ``scale = 2**e``. Rounding the method's scale
``T / 127`` *up* never clips beyond the threshold ``T`` but can nearly double the step (``T / 127 = 1.01 * 2**e``
gives ``2**(e+1)``: twice the rounding error everywhere, to avoid clipping a sliver of the tail). The two
neighbouring powers of two, ``s_up = 2**ceil(log2(T/127))`` and ``s_up / 2``, are both reasonable; this module
picks the one with the smaller expected squared error of the whole observed distribution.

Expected error of a symmetric grid ``{k s : |k| <= Q}`` (clip level ``C = Q s``) for a histogram ``h`` of ``|x|``
with bins ``[e_k, e_{k+1})`` of width ``w``, values uniform inside a bin::

    E(s) = sum_k h_k / w * (F(e_{k+1}) - F(e_k)),
    F(x) = s**3 * Gamma(x / s)               for x <= C   (Gamma: see fcnquant.calibrate.mse._gamma)
    F(x) = F(C) + (x - C)**3 / 3             for x >  C   (every value above C maps to C)

Worked example: one value ``x = 1.0`` with ``Q = 127`` has ``T / 127 = 0.007874``; ``s_up = 2**-6 = 0.015625``
represents it exactly (64 steps), ``s_up / 2 = 2**-7`` clips it to ``127 * 2**-7 = 0.9921875`` (error
``6.1e-5``), so the exact histogram of that single value picks ``s_up``; a Gaussian tensor whose threshold sits
just above a power of two picks ``s_up / 2`` (clipping a few values far out costs less than doubling the step
for all of them).
"""
from __future__ import annotations

import math

import numpy as np

from fcnquant.calibrate.mse import _gamma
from fcnquant.calibrate.qparams import pow2_ceil

#: the rounding modes of power-of-two scales: always up (never clip past the threshold) or by expected error
POW2_ROUNDING = ("up", "error")


def _integral(x: np.ndarray, s: float, qmax: int) -> np.ndarray:
    """Returns ``F(x)``: the integral over ``[0, x]`` of the squared error of the clipped grid of step ``s``."""
    clip = qmax * s
    inside = np.minimum(x, clip)
    f = s ** 3 * _gamma(inside / s)
    over = np.maximum(x - clip, 0.0)
    return f + over ** 3 / 3.0


def expected_sq_error(counts: np.ndarray, edges: np.ndarray, scale: float, qmax: int = 127) -> float:
    """Returns the expected total squared error of quantizing the values of histogram ``(counts, edges)`` of
    ``|x|`` on the symmetric grid ``{k * scale : |k| <= qmax}`` (values uniform within each bin)."""
    h = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    width = np.diff(e)
    nz = (h > 0) & (width > 0)
    per_bin = np.zeros_like(h)
    per_bin[nz] = (_integral(e[1:][nz], scale, qmax) - _integral(e[:-1][nz], scale, qmax)) / width[nz]
    # zero-width bins (a point mass at an edge) fall back to the exact error of that point
    point = (h > 0) & ~(width > 0)
    if point.any():
        per_bin[point] = point_sq_error(e[:-1][point], scale, qmax)
    return float(h @ per_bin)


def point_sq_error(values: np.ndarray, scale: float, qmax: int = 127) -> np.ndarray:
    """Returns the squared error of each value quantized on the symmetric clipped grid of step ``scale``."""
    v = np.asarray(values, dtype=np.float64)
    q = np.clip(np.round(v / scale), -qmax, qmax) * scale
    return (v - q) ** 2


def pow2_candidates(raw_scale: float) -> tuple[float, float]:
    """Returns ``(s_up, s_up / 2)``: the power of two at or above ``raw_scale`` (> 0) and the one below it."""
    up = pow2_ceil(raw_scale)
    return up, up / 2.0


def choose_pow2_scale(counts: np.ndarray, edges: np.ndarray, raw_scale: float, qmax: int = 127) -> float:
    """Returns the neighbouring power of two of ``raw_scale`` with the smaller expected squared error on the
    histogram ``(counts, edges)`` of ``|x|``; ties go up (no extra clipping)."""
    if not (raw_scale > 0 and math.isfinite(raw_scale)):
        raise ValueError(f"raw scale must be positive and finite, got {raw_scale}")
    up, down = pow2_candidates(raw_scale)
    e_up = expected_sq_error(counts, edges, up, qmax)
    e_down = expected_sq_error(counts, edges, down, qmax)
    return down if e_down < e_up * (1.0 - 1e-12) else up


def choose_pow2_scales_exact(values: np.ndarray, raw_scales: np.ndarray, axis: int | None, qmax: int = 127) -> np.ndarray:
    """Returns per-channel (``axis``) or per-tensor (``axis=None``) power-of-two scales, each the neighbour of its
    raw scale with the smaller exact squared error of quantizing ``values`` (e.g. a weight tensor); ties go up."""
    w = np.asarray(values, dtype=np.float64)
    raw = np.asarray(raw_scales, dtype=np.float64)
    if axis is None:
        chans = [w.ravel()]
        raws = [float(raw)]
    else:
        axis = axis % w.ndim
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        chans = list(moved)
        raws = [float(r) for r in np.ravel(raw)]
    out = []
    for vals, r in zip(chans, raws):
        up, down = pow2_candidates(r)
        e_up = float(point_sq_error(vals, up, qmax).sum())
        e_down = float(point_sq_error(vals, down, qmax).sum())
        out.append(down if e_down < e_up * (1.0 - 1e-12) else up)
    res = np.array(out, dtype=np.float64)
    return res.reshape(()) if axis is None else res
