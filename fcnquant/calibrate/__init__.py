"""fcnquant.calibrate: statistics over calibration images and the scales computed from them.

Steps::

    stats = collect_stats("fcn8s.onnx", DataConfig("VOCdevkit", split="train", num_images=500))
    stats.save("stats.npz")                                        # raw histograms, no pickle
    table = build_table(stats, "kl", "ort-cpu")                    # any method, no inference
    table.save("calib.json")

Collection runs on the executor it is given (``RunConfig``); ``collect_stats(..., shard="2/4")`` keeps one slice
for machines without a cluster, merged with ``merge_stats`` (exact). The int8 model in one call:
:func:`fcnquant.workflows.calibrate`.
"""
from __future__ import annotations

# numerics: methods, target qparams, the statistics artifact, the calibration table
from fcnquant.calibrate.methods import METHODS, compute_range, resolve_params
from fcnquant.calibrate.qparams import TARGETS, Target, qparams
from fcnquant.calibrate.stats import CalibrationStats, TensorStats, load_stats, merge_stats
from fcnquant.calibrate.table import CalibrationTable, TensorEntry, build_table
from fcnquant.calibrate.tensorrt import read_tensorrt_cache, write_tensorrt_cache

# collection: which tensors, the inference loop
from fcnquant.calibrate.tensors import activation_tensors, inherited_scales
from fcnquant.calibrate.collect import CollectOptions, collect_stats, collect_shard

__all__ = ["METHODS", "TARGETS", "CalibrationStats", "CalibrationTable", "CollectOptions", "Target", "TensorEntry",
           "TensorStats", "activation_tensors", "build_table", "collect_shard", "collect_stats", "compute_range",
           "inherited_scales", "load_stats", "merge_stats", "qparams", "read_tensorrt_cache", "resolve_params",
           "write_tensorrt_cache"]
