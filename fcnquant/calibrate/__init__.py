"""fcnquant.calibrate."""
from __future__ import annotations

# numerics (helper C): methods, target qparams, statistics artifact, calibration table
from fcnquant.calibrate.methods import METHODS, compute_range, resolve_params
from fcnquant.calibrate.qparams import TARGETS, Target, qparams
from fcnquant.calibrate.stats import CalibrationStats, TensorStats, merge_stats
from fcnquant.calibrate.table import CalibrationTable, TensorEntry, build_table
from fcnquant.calibrate.tensorrt import read_tensorrt_cache, write_tensorrt_cache

# collection and the step-by-step API (helper D): graph analysis, the inference loop, calibrate()
from fcnquant.calibrate.tensors import activation_tensors, inherited_scales
from fcnquant.calibrate.collect import Shard, collect_stats
from fcnquant.calibrate.api import calibrate, collect, compute_table, load_stats
