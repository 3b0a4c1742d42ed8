"""AdaRound for one layer on its second-moment statistics: Adam on the rounding variables, numpy only.

A Conv output channel is ``y = w . x`` over the layer's input patches ``x``
(``fcnquant.recover.adaround.conv_patches``). AdaRound minimises, over the calibration inputs, the mean over output
positions of the squared error summed over channels (AIMET's reconstruction loss), between the float layer fed
float inputs ``x_f`` and the quantized layer fed the quantized model's inputs ``x_q``::

    L(W_q) = mean_p sum_c (W_q x_q - W x_f)^2 = tr(W_q A W_q^T) - 2 <W_q, B> + c
    A = E[x_q x_q^T],   B = W E[x_f x_q^T],   c = tr(W E[x_f x_f^T] W^T)

so one gradient step costs one ``[C, D] x [D, D]`` product (``D`` = inputs per output channel) whatever the
number of images and positions: the statistics are exact over every position of every calibration image, in
memory that does not grow with the image size. The gradient is ``dL/dW_q = 2 (W_q A - B)``, chained through
``W_q = s * clip(floor(W / s) + h(V), QMIN, QMAX)`` and the rectified sigmoid, plus ``reg`` times the
regulariser's gradient. It is computed as ``2 ((W_q - W) A + R)`` with ``R = W A - B``, so float32 steps do not
lose the small difference ``W_q - W`` against the large ``W A`` (arithmetic: ``fcnquant.recover.adaround.rounding``).
Everything is batched over the groups of a grouped conv.

The loop: ``V`` starts where ``h(V)`` equals the fractional part of ``W / s``; Adam (AIMET's optimiser) at
learning rate 0.01 for ``iterations`` steps (on the demo fcn8s, npu-pow2 per-tensor, 500 steps at 0.01 and
0.03 removed 80% and 81% of the nearest-rounding layer error and gave the same mIoU); the regulariser is off
for the first ``warm_start`` share of the steps, then its ``beta`` anneals 20 -> 2; finally ``h >= 0.5``
rounds up. The result is kept only when its loss is below round-to-nearest's (otherwise nearest is returned),
so a layer never gets worse on its own objective.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fcnquant.recover.adaround import rounding as rnd

_V_OFF = -20.0  # h(_V_OFF) = 0 with a zero gradient: a weight held at floor (its nearest integer)


@dataclass(frozen=True)
class LayerRounding:
    """The integers chosen for one layer and the reconstruction losses (mean squared output error per position)."""

    w_int: np.ndarray  # same shape as the weight rows given, integers in [QMIN, QMAX] (float array)
    loss_nearest: float
    loss_adaround: float  # loss of the hard-rounded AdaRound integers
    loss_float: float  # loss of the unquantized weights on the quantized inputs (a lower bound in practice)
    changed: float  # share of weights whose integer differs from round-to-nearest
    kept_nearest: bool  # AdaRound's result was not better than nearest, so nearest was kept


def quadratic_loss(wq: np.ndarray, a: np.ndarray, b: np.ndarray, c: float) -> float:
    """Returns ``sum_g tr(Wq_g A_g Wq_g^T) - 2 <Wq, B> + c`` in float64 (``wq``, ``b``: [G, C, D]; ``a``: [G, D, D])."""
    wq = np.asarray(wq, dtype=np.float64)
    return float(np.sum(np.matmul(wq, np.asarray(a, dtype=np.float64)) * wq) - 2.0 * np.sum(wq * b) + c)


def delta_loss(delta: np.ndarray, a: np.ndarray, r: np.ndarray) -> float:
    """Returns ``L(W + delta) - L(W) = 2 <delta, R> + tr(delta A delta^T)`` with ``R = W A - B``.

    The same quadratic as :func:`quadratic_loss`, written around the float weights: no cancellation of large
    terms, so the losses of two roundings compare exactly even when ``c`` is large.
    """
    delta = np.asarray(delta, dtype=np.float64)
    return float(2.0 * np.sum(delta * r) + np.sum(np.matmul(delta, a) * delta))


def optimize_rounding(
    w: np.ndarray,
    scales: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    c: float,
    *,
    iterations: int = 1000,
    lr: float = 0.01,
    reg: float = 0.01,
    warm_start: float = 0.2,
    beta_range: tuple[float, float] = (20.0, 2.0),
) -> LayerRounding:
    """Returns the AdaRound integers of the weight rows ``w`` [G, C, D] with ``scales`` broadcastable to [G, C, 1].

    ``a`` [G, D, D], ``b`` [G, C, D] and ``c`` define the quadratic reconstruction loss (module docstring).
    ``iterations=0`` returns round-to-nearest.
    """
    w = np.asarray(w, dtype=np.float64)
    s = np.broadcast_to(np.asarray(scales, dtype=np.float64), w.shape[:2] + (1,))
    ws = w / s
    a = np.asarray(a, dtype=np.float64)
    r = np.matmul(w, a) - b  # the gradient / 2 at the float weights (0 when the inputs are the float ones)
    loss_float = max(quadratic_loss(w, a, b, c), 0.0)
    nearest = rnd.nearest_int(ws)
    loss_nearest = loss_float + delta_loss(s * nearest - w, a, r)
    if iterations <= 0:
        return LayerRounding(nearest, loss_nearest, loss_nearest, loss_float, 0.0, True)

    floor = np.floor(ws)
    v = rnd.initial_v(ws - floor)
    # A weight at the channel's extreme (|w / s| rounds to QMAX) keeps its nearest integer: its rounding error
    # is ~0 there, and moving it would change max|W_q|, which a quantizer computing its own scale from the
    # rounded weights would then turn into another grid.
    pinned = np.abs(ws) >= rnd.QMAX - 0.5
    floor[pinned] = nearest[pinned]
    v[pinned] = _V_OFF
    v = v.astype(np.float32)
    _adam(v, floor.astype(np.float32), s.astype(np.float32), w.astype(np.float32),
          np.ascontiguousarray(a, dtype=np.float32), r.astype(np.float32), iterations, lr, reg, warm_start,
          beta_range)
    w_int = rnd.hard_round(floor, v)
    w_int[pinned] = nearest[pinned]
    loss_ada = loss_float + delta_loss(s * w_int - w, a, r)
    if not loss_ada < loss_nearest:
        return LayerRounding(nearest, loss_nearest, loss_ada, loss_float, 0.0, True)
    return LayerRounding(w_int, loss_nearest, loss_ada, loss_float, float(np.mean(w_int != nearest)), False)


def _adam(v, floor, s, w, a, r, iterations, lr, reg, warm_start, beta_range) -> None:
    """Runs ``iterations`` Adam steps on ``v`` in place (float32; the arithmetic of ``rounding``, inlined:
    one sigmoid per step serves h, dh/dv and the clip masks)."""
    span = rnd.ZETA - rnd.GAMMA
    m = np.zeros_like(v)
    m2 = np.zeros_like(v)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    with np.errstate(over="ignore"):
        for step in range(iterations):
            sig = 1.0 / (1.0 + np.exp(-v))  # exp overflow -> sig = 0, the right limit
            raw = sig * span + rnd.GAMMA
            h = np.clip(raw, 0.0, 1.0)
            soft = floor + h
            wq = s * np.clip(soft, rnd.QMIN, rnd.QMAX)
            grad = 2.0 * (np.matmul(wq - w, a) + r) * s
            grad *= (soft >= rnd.QMIN) & (soft <= rnd.QMAX)
            beta = rnd.beta_at(step, iterations, warm_start, beta_range)
            if beta is not None:
                u = 2.0 * h - 1.0
                grad -= (2.0 * reg * beta) * np.abs(u) ** (beta - 1.0) * np.sign(u)
            grad *= span * sig * (1.0 - sig) * ((raw > 0.0) & (raw < 1.0))  # 0 for pinned weights (h = 0)
            m *= beta1
            m += (1.0 - beta1) * grad
            m2 *= beta2
            m2 += (1.0 - beta2) * grad * grad
            t = step + 1
            v -= (lr / (1.0 - beta1 ** t)) * m / (np.sqrt(m2 / (1.0 - beta2 ** t)) + eps)
