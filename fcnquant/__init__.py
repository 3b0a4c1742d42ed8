"""fcnquant: post-training quantization and calibration for FCN segmentation models in ONNX."""
from __future__ import annotations

__version__ = "0.1.0"
