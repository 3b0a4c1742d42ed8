"""fcnquant.quantize: int8 QDQ emission per deployment target, and fp16 conversion."""
from __future__ import annotations

from fcnquant.quantize.config import QuantConfig
from fcnquant.quantize.fp16 import Fp16Result, convert_fp16
from fcnquant.quantize.qdq import QuantizeResult, check_emittable, quantize_model, tensorrt_cache_path

__all__ = ["QuantConfig", "Fp16Result", "QuantizeResult", "check_emittable", "convert_fp16", "quantize_model", "tensorrt_cache_path"]
