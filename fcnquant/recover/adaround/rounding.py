"""AdaRound's rounding arithmetic (Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization",
ICML 2020), numpy only.

A weight ``w`` with scale ``s`` is quantized as ``s * clip(floor(w / s) + h(v), qmin, qmax)`` where ``v`` is a
free variable per weight and ``h`` the rectified sigmoid::

    h(v) = clip(sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1),   ZETA = 1.1, GAMMA = -0.1

``h`` reaches exactly 0 and 1 (the stretch past [0, 1] lets the optimiser settle there). The regulariser
``sum(1 - |2 h(v) - 1| ** beta)`` is 1 per weight at ``h = 0.5`` and 0 at ``h`` in {0, 1}; annealing ``beta``
from 20 to 2 first leaves ``h`` free, then pushes every ``h`` to 0 or 1. At the end every weight rounds to
``floor(w / s) + (h >= 0.5)`` (hard rounding).

Worked example: ``v = 0`` gives ``sigmoid(0) = 0.5``, ``h = 0.5 * 1.2 - 0.1 = 0.5``, regulariser ``1 - 0 = 1``;
``v = log(11)`` (``sigmoid = 11/12``) gives ``h = 11/12 * 1.2 - 0.1 = 1.0`` exactly and regulariser 0.
"""
from __future__ import annotations

import math

import numpy as np

ZETA = 1.1
GAMMA = -0.1
QMIN, QMAX = -127, 127  # symmetric int8 weights (onnxruntime's restricted range)


def sigmoid(v: np.ndarray) -> np.ndarray:
    """Returns the logistic sigmoid of ``v``, computed without overflow for large |v|."""
    v = np.asarray(v)
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def rectified_sigmoid(v: np.ndarray) -> np.ndarray:
    """Returns ``h(v) = clip(sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)``."""
    return np.clip(sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def initial_v(frac: np.ndarray) -> np.ndarray:
    """Returns the ``v`` with ``h(v) = frac`` for ``frac`` in [0, 1) (AdaRound starts at the exact weights).

    ``frac = w / s - floor(w / s)``; the inverse of the stretched sigmoid is
    ``-log((ZETA - GAMMA) / (frac - GAMMA) - 1)``.
    """
    frac = np.clip(np.asarray(frac, dtype=np.float64), 0.0, 1.0)
    return -np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0)


def regularizer(h: np.ndarray, beta: float) -> float:
    """Returns ``sum(1 - |2 h - 1| ** beta)``: 0 when every ``h`` is 0 or 1, 1 per weight at ``h = 0.5``."""
    return float(np.sum(1.0 - np.abs(2.0 * np.asarray(h) - 1.0) ** beta))


def regularizer_grad(h: np.ndarray, beta: float) -> np.ndarray:
    """Returns d regularizer / d h = ``-2 beta |2h - 1| ** (beta - 1) * sign(2h - 1)``."""
    u = 2.0 * np.asarray(h) - 1.0
    return -2.0 * beta * np.abs(u) ** (beta - 1.0) * np.sign(u)


def rectified_sigmoid_grad(v: np.ndarray) -> np.ndarray:
    """Returns d h / d v: ``(ZETA - GAMMA) sigmoid(v) (1 - sigmoid(v))`` inside (0, 1), 0 where ``h`` is clipped."""
    sig = sigmoid(v)
    raw = sig * (ZETA - GAMMA) + GAMMA
    return np.where((raw > 0.0) & (raw < 1.0), (ZETA - GAMMA) * sig * (1.0 - sig), 0.0)


def beta_at(
    step: int, iterations: int, warm_start: float = 0.2, beta_range: tuple[float, float] = (20.0, 2.0)
) -> float | None:
    """Returns the regulariser's ``beta`` at ``step`` (0-based), or None during the warm start (no regulariser).

    After the first ``warm_start * iterations`` steps, beta decays from ``beta_range[0]`` to ``beta_range[1]``
    along a half cosine (AIMET's schedule): ``end + (start - end) / 2 * (1 + cos(pi * t))``, ``t`` from 0 to 1.
    """
    warm = warm_start * iterations
    if step < warm:
        return None
    start, end = beta_range
    t = (step - warm) / max(iterations - warm, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def nearest_int(w_over_s: np.ndarray) -> np.ndarray:
    """Returns round-to-nearest (half to even, as onnxruntime's quantizer) of ``w / s``, clipped to [QMIN, QMAX]."""
    return np.clip(np.rint(w_over_s), QMIN, QMAX)


def hard_round(floor: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Returns the final integers ``clip(floor + (h(v) >= 0.5), QMIN, QMAX)`` (``h >= 0.5`` iff ``v >= 0``)."""
    return np.clip(np.asarray(floor) + (rectified_sigmoid(v) >= 0.5), QMIN, QMAX)
