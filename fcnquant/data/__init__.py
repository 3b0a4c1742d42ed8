"""fcnquant.data: VOC reading, preprocessing presets, calibration subsets and the synthetic VOC generator."""
from __future__ import annotations

from typing import TYPE_CHECKING

from fcnquant.data.config import DataConfig
from fcnquant.data.discover import DataChoice, resolve_data
from fcnquant.data.imageio import read_mask, read_rgb
from fcnquant.data.loader import Batch, iter_batches
from fcnquant.data.palette import IGNORE_INDEX, NUM_CLASSES, VOC_CLASSES, voc_palette
from fcnquant.data.presets import PRESETS, Preset, get_preset, preset_for_session
from fcnquant.data.resize import resize_bilinear
from fcnquant.data.subset import load_ids, save_ids, select_calibration_ids, take_ids
from fcnquant.data.voc import Dataset, open_dataset

if TYPE_CHECKING:
    from fcnquant.data.synth import builtin_dataset, write_synthetic_voc

__all__ = [
    "VOC_CLASSES", "NUM_CLASSES", "IGNORE_INDEX", "voc_palette", "read_rgb", "read_mask",
    "Preset", "PRESETS", "get_preset", "preset_for_session", "resize_bilinear",
    "Dataset", "open_dataset", "Batch", "iter_batches",
    "select_calibration_ids", "save_ids", "load_ids", "take_ids",
    "builtin_dataset", "write_synthetic_voc", "resolve_data", "DataChoice", "DataConfig",
]


def __getattr__(name: str):
    """``builtin_dataset`` and ``write_synthetic_voc``: the generator is imported when first used, not by every
    command that reads a real dataset."""
    if name in ("builtin_dataset", "write_synthetic_voc"):
        from fcnquant.data import synth

        globals()[name] = value = getattr(synth, name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
