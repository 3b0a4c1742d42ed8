"""Input values for the observer tests and an independent count of their bit-pattern bins."""
from __future__ import annotations

import numpy as np


def wide_values(seed: int = 0, n: int = 50_000) -> np.ndarray:
    """Signed values over many binades, with +0, -0, subnormals and large values."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-12, 12, n))).astype(np.float32)
    x[:50] = 0.0
    x[50:60] = -0.0
    x[60:70] = np.float32(1e-42)  # subnormal
    x[70:75] = np.float32(3e38)
    return rng.permutation(x)


def bit_pattern_counts(x: np.ndarray, m: int) -> np.ndarray:
    """Independent reference: bin = top (9 + m) bits of the float32 pattern, counted with integer division."""
    bits = np.frombuffer(np.asarray(x, np.float32).tobytes(), dtype="<u4").astype(np.int64)
    return np.bincount(bits // 2 ** (23 - m), minlength=2 ** (9 + m))
