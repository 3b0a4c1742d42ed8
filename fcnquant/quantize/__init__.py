"""fcnquant.quantize: int8 QDQ emission per deployment target, and fp16 conversion."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fcnquant.quantize.config import QuantConfig

if TYPE_CHECKING:
    from fcnquant.quantize.fp16 import Fp16Result, convert_fp16
    from fcnquant.quantize.qdq import QuantizeResult, check_emittable, quantize_model, tensorrt_cache_path

__all__ = ["QuantConfig", "Fp16Result", "QuantizeResult", "check_emittable", "convert_fp16", "quantize_model", "tensorrt_cache_path"]

#: the emitters, imported on first use (a calibration that writes a table alone builds a QuantConfig only)
_LAZY = {"Fp16Result": "fp16", "convert_fp16": "fp16", "QuantizeResult": "qdq", "check_emittable": "qdq",
         "quantize_model": "qdq", "tensorrt_cache_path": "qdq"}


def __getattr__(name: str):
    """Returns the public name ``name``, importing its module on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    globals()[name] = value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    return value
