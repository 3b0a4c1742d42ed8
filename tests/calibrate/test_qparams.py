"""Scale and zero point per target (fcnquant.calibrate.qparams) against the target rules worked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from fcnquant.calibrate.qparams import MIN_SCALE, TARGETS, qparams
from fcnquant.errors import CalibrationError


def test_qparams_ort_cpu_uint8_asymmetric():
    lo, hi = -1.5, 4.2
    scale, zp = qparams(lo, hi, "ort-cpu")
    assert scale == float(np.float32((4.2 + 1.5) / 255))
    assert zp == round(1.5 / scale) and 0 <= zp <= 255
    # ReLU range: zero point 0, scale hi / 255; a positive-only range is widened to include 0
    assert qparams(0.0, 6.0, "ort-cpu") == (float(np.float32(6.0 / 255)), 0)
    assert qparams(2.0, 6.0, "ort-cpu") == qparams(0.0, 6.0, "ort-cpu")
    assert qparams(-3.0, -1.0, "ort-cpu") == (float(np.float32(3.0 / 255)), 255)


def test_qparams_symmetric_targets():
    scale, zp = qparams(-0.3, 2.54, "tensorrt")
    assert (scale, zp) == (float(np.float32(2.54 / 127)), 0)
    s2, zp2 = qparams(-0.3, 2.54, "npu-pow2")
    assert zp2 == 0 and math.log2(s2).is_integer()
    assert 2.54 / 127 <= s2 < 2 * 2.54 / 127
    assert qparams(0.0, 127 * 0.25, "npu-pow2")[0] == 0.25  # already a power of two: unchanged


def test_qparams_degenerate_and_bad_ranges():
    for name in TARGETS:
        scale, zp = qparams(0.0, 0.0, name)
        assert scale == MIN_SCALE and zp == 0
    with pytest.raises(CalibrationError, match="invalid range"):
        qparams(float("nan"), 1.0, "ort-cpu")
    with pytest.raises(CalibrationError, match="invalid range"):
        qparams(2.0, 1.0, "tensorrt")
    with pytest.raises(CalibrationError, match="unknown target"):
        qparams(0.0, 1.0, "gpu")


def test_qparams_bits_16_is_symmetric_int16_on_every_target_and_8_is_qparams():
    from fcnquant.calibrate.qparams import qparams, qparams_bits

    for lo, hi in ((-3.0, 5.0), (0.0, 6.5), (-0.25, 0.1), (0.0, 0.0)):
        amax = max(abs(lo), abs(hi))
        for target in ("ort-cpu", "tensorrt", "npu-pow2"):
            assert qparams_bits(lo, hi, target, 8) == qparams(lo, hi, target)
            scale, zp = qparams_bits(lo, hi, target, 16)
            assert zp == 0
            if amax == 0:
                assert scale == 2.0 ** -24
            elif target == "npu-pow2":  # the power of two at or above amax / 32767, by hand
                want = 2.0 ** math.ceil(math.log2(amax / 32767))
                assert scale == want and scale / 2 < amax / 32767 <= scale
            else:
                assert scale == float(np.float32(amax / 32767))
    with pytest.raises(CalibrationError, match="bits"):
        qparams_bits(0.0, 1.0, "tensorrt", 4)
    with pytest.raises(CalibrationError, match="invalid range"):
        qparams_bits(1.0, 0.0, "tensorrt", 16)
