"""One-shot workflows over the passes: the int8 model with its artifacts (:func:`calibrate`) and the whole demo
job (:func:`run_pipeline`: calibrate, int8 and fp16, compare both, summarise)."""
from __future__ import annotations

from fcnquant.workflows.demo import PipelineResult, run_pipeline
from fcnquant.workflows.int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    FlowResult,
    Outputs,
    RecoverOptions,
    calibrate,
    equalized_model_path,
)

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "FlowResult", "Outputs", "PipelineResult", "RecoverOptions", "calibrate", "equalized_model_path",
           "run_pipeline"]
