"""Threshold minimising the expected squared quantization error of a histogram, vectorised over candidates.

Model (``h`` = histogram of ``|x|`` with ``n`` equal bins of width ``w`` on ``[0, max|x|]``, values uniform inside
each bin; ``S`` = ``steps``, the number of quantization steps between 0 and the threshold: 127 for int8
symmetric, 255 for uint8 on a non-negative tensor). For every candidate ``T_i = i * w``, ``i = 1..n``, the grid is
``{k * s}`` with ``s = T_i / S`` (0 and ``T_i`` on the grid, so ``+-x`` have the same error):

    E_i = sum_{k < i} h_k * R_k(s)  +  sum_{k >= i} h_k * ((m_k - T_i)**2 + w**2 / 12)

* ``R_k(s)``: the exact mean squared rounding error of a value uniform on bin ``k``:
  ``R_k = (G(e_{k+1}) - G(e_k)) / w`` with ``G(x) = integral_0^x dist(t, grid)**2 dt
  = s**3 * (floor(x/s) / 12 + g(frac(x/s)))``, ``g(u) = u**3/3`` for ``u <= 1/2`` else ``1/12 - (1-u)**3/3``.
  (For bins much narrower than ``s`` this is the familiar ``s**2 / 12``; unlike that approximation it gives
  values at exactly 0 — ReLU zeros — almost no error.)
* clipped bins (``k >= i``, midpoint ``m_k``): every value maps to ``T_i``; the mean of ``(x - T_i)**2`` over a
  uniform bin is ``(m_k - T_i)**2 + w**2/12``.

The threshold is ``T_i`` for the ``i`` minimising ``E_i`` (values within a relative ``1e-9`` of the minimum are ties;
the largest such ``i`` wins). All candidates are evaluated with array
operations (in blocks of candidates to bound memory); clipping sums come from suffix sums.
"""
from __future__ import annotations

import numpy as np

from fcnquant.calibrate.kl import last_minimum
from fcnquant.errors import CalibrationError

_BLOCK = 128  # candidates per block: a block's arrays are 128 x (n + 1) float64 (2 MiB for n = 2048)


def _gamma(y: np.ndarray) -> np.ndarray:
    """Integral of the squared distance to the nearest integer over [0, y] (y >= 0), in units where the step is 1."""
    fl = np.floor(y)
    u = y - fl
    v = np.minimum(u, 1.0 - u)
    g = v * v * v / 3.0  # = u**3/3 below the midpoint; above it the integral is 1/12 - (1-u)**3/3
    return fl / 12.0 + np.where(u <= 0.5, g, 1.0 / 12.0 - g)


def mse_errors(hist: np.ndarray, bin_width: float, steps: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(candidates, errors)``: for each ``i`` in ``1..n`` the expected total squared error ``E_i``.

    ``errors[i - 1] / hist.sum()`` is the mean squared error per value when clipping at ``i * bin_width``.
    """
    h = np.asarray(hist, dtype=np.float64)
    n = h.size
    if h.ndim != 1 or n < 1:
        raise CalibrationError(f"MSE needs a non-empty 1-D histogram, got shape {h.shape}")
    if not (np.isfinite(h).all() and (h >= 0).all()):
        raise CalibrationError("MSE needs finite, non-negative histogram counts")
    if steps < 1 or not bin_width > 0:
        raise CalibrationError(f"MSE needs steps >= 1 and a positive bin width, got {steps}, {bin_width}")
    w = float(bin_width)
    cands = np.arange(1, n + 1)
    k = np.arange(n, dtype=np.float64)
    # clipping part in units of w**2: sum_{k>=i} h_k ((k + 0.5 - i)**2 + 1/12), from suffix sums
    def suffix(v: np.ndarray) -> np.ndarray:
        return np.concatenate((np.cumsum(v[::-1])[::-1], [0.0]))

    s0 = suffix(h)
    s1 = suffix(h * (k + 0.5))
    s2 = suffix(h * ((k + 0.5) ** 2 + 1.0 / 12.0))
    fi = cands.astype(np.float64)
    clip = s2[cands] - 2.0 * fi * s1[cands] + fi * fi * s0[cands]
    # rounding part in units of w**2: (i/S)**3 * sum_{k<i} h_k (Gamma((k+1) S/i) - Gamma(k S/i))
    rnd = np.empty(n, dtype=np.float64)
    edges = np.arange(n + 1, dtype=np.float64)
    for b0 in range(0, n, _BLOCK):
        ib = fi[b0:b0 + _BLOCK]
        top = int(ib[-1])  # only bins below the largest threshold of the block are ever rounded
        gam = _gamma(edges[None, :top + 1] * (steps / ib)[:, None])  # (block, top + 1)
        per_bin = np.diff(gam, axis=1)
        per_bin[np.arange(top)[None, :] >= ib[:, None]] = 0.0  # bins at or above the threshold are clipped
        rnd[b0:b0 + _BLOCK] = (ib / steps) ** 3 * (per_bin @ h[:top])
    return cands, (clip + rnd) * w * w


def mse_threshold_index(hist: np.ndarray, bin_width: float, steps: int = 127) -> int:
    """Returns the candidate bin count ``i`` minimising the expected squared error (near-ties: the largest ``i``)."""
    cands, err = mse_errors(hist, bin_width, steps)
    return int(cands[last_minimum(err, atol=0.0)])
