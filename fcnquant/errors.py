"""User-facing error types. The CLI prints their message (no traceback) and exits with status 2."""
from __future__ import annotations


class FcnquantError(Exception):
    """Base class for errors caused by bad input or configuration, with a message meant for the user."""


class ModelError(FcnquantError):
    """A model file is missing, unreadable, not ONNX, or not what the operation needs."""


class DataError(FcnquantError):
    """A dataset is missing, malformed, or inconsistent (masks vs images, split lists, values)."""


class CalibrationError(FcnquantError):
    """Statistics or a calibration table are unusable (NaN/Inf activations, missing tensors, wrong model)."""


class ProviderError(FcnquantError):
    """An onnxruntime execution provider is unknown or not in the installed onnxruntime build."""
