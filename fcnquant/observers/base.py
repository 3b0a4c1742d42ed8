"""Shared pieces of the observers: the non-finite error and input normalisation."""
from __future__ import annotations

import numpy as np

from fcnquant.errors import CalibrationError


class NonFiniteError(CalibrationError):
    """A batch held NaN or +-Inf values; ``count`` says how many. The observer's state is unchanged.

    The collector catches it and re-raises with the tensor and image names.
    """

    def __init__(self, count: int, message: str | None = None) -> None:
        self.count = int(count)
        super().__init__(message or f"{self.count} non-finite value(s) (NaN or Inf)")


def as_float32(x: np.ndarray) -> np.ndarray:
    """Returns ``x`` as a flat, C-contiguous float32 array (a view when it already is one).

    Other float dtypes are converted (float64 values are rounded to float32), so both observers always see the
    same float32 values.
    """
    a = np.asarray(x)
    if a.dtype != np.float32:
        if a.dtype.kind not in "fiu":
            raise CalibrationError(f"observers take float arrays, got dtype {a.dtype}")
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).reshape(-1)
