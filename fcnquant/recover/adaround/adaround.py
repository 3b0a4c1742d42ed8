"""AdaRound on an ONNX model: per Conv / ConvTranspose, the weight rounding (up or down) that best reproduces the
float layer's output on the calibration images, instead of rounding to nearest.

Steps (the numerics live in ``rounding``, ``layer_rounding`` and ``conv_patches``, the graph side in ``layers``,
the image pass in ``moments``; this module drives them):

1. The layers: every 2-D Conv / ConvTranspose whose weight is an initializer read by that node alone (a weight
   shared by two nodes, a 1-D/3-D conv or a ConvTranspose with ``auto_pad`` / ``output_shape`` is skipped by name).
2. The weight scales emission uses (symmetric int8 per output channel or per tensor, powers of two for
   ``npu-pow2``), or the ``weight_scales`` given.
3. The float model (and, unless ``inputs="float"``, the int8 model with round-to-nearest weights from
   ``fcnquant.quantize.quantize_model`` with the table) run once per calibration image: each layer's float input
   ``x_f`` and its input in the int8 model ``x_q`` (the DequantizeLinear output the name map
   ``fcnquant.tensor_map`` pairs with it) feed the layer's patch moments (``conv_patches.GramStats``: exact
   over every position, ``D^2`` memory per layer, so 512x512 inputs cost no more memory than 160x160 ones).
   The pass runs on the executor given (:mod:`~fcnquant.recover.adaround.moments`).
   ``inputs`` (:data:`INPUT_MODES`) chooses the source of ``x_q``: ``float`` (default) feeds the float inputs,
   so each layer undoes its own rounding error only; ``sequential`` runs, for each layer, the int8 model whose
   earlier layers already have their AdaRound weights (one float + one int8 pass over the images per layer;
   the paper's and AIMET's choice); ``nearest`` takes all layers' inputs from the round-to-nearest int8 model in
   one pass. Measured on the demo fcn8s, npu-pow2 per-tensor, 1000 held-out images (nearest rounding 66.78
   mIoU, fp32 67.03): ``float`` 66.87 in 73 s (66.92 in a later run), ``sequential`` 66.79 in 249 s,
   ``nearest`` 66.31 in 115 s (every layer also undoes the input error its predecessors already undid); on
   ort-cpu per-channel ``sequential`` 67.02 in 497 s against ``float`` 67.01 in 70 s (nearest 67.03). The
   activations' own quantization error dominates these layers' output error (the loss of float weights on
   int8 inputs is within a few percent of nearest rounding's), and fitting the weights to it does not carry
   over to the model's output.
4. Per layer, Adam on the rounding variables (``layer_rounding.optimize_rounding``), then hard rounding; a
   layer keeps round-to-nearest when AdaRound does not lower its reconstruction loss.
5. The result model is the float model with every rounded weight replaced by ``s * W_int`` (exactly on the int8
   grid): emitting it with the same scales (``quantize_model(..., weight_scales=result.weight_scales)``)
   reproduces ``W_int``. Its metadata records ``fcnquant.adaround`` (settings and per-layer figures) and
   ``fcnquant.calibrated_model_sha256`` (the float model the activation table was made for: the table stays
   valid, since only weights moved, each by less than one quantization step).

Cost with float inputs: one float pass over the images, then ``iterations`` products of ``C x D x D`` per layer
(fcn8s demo, 17 convs, 50 images: ~70 s; fcn_r50_d8, 59 convs: ~130 s, on 2 cores shared at load 15; README).
"""
from __future__ import annotations

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import CalibrationError, ModelError
from fcnquant.execute import Executor, Progress, RunConfig
from fcnquant.quantize.config import QuantConfig
from fcnquant.recover.adaround.conv_patches import GramStats, row_scales, rows_to_weight, weight_rows
from fcnquant.recover.adaround.layer_rounding import optimize_rounding
from fcnquant.recover.adaround.layers import Layer, find_layers, nearest_int8, pair_inputs, save_model, set_int8_weight
from fcnquant.recover.adaround.moments import layer_moments

log = logging.getLogger(__name__)

#: Adam steps per layer. Demo fcn8s, npu-pow2 per-tensor, 1000 held-out images (nearest 66.78 mIoU): 250 steps
#: 66.86 (34 s), 500 66.88 (54 s), 1000 66.92 (73 s), 2000 66.83 (128 s); the layer error removed grows
#: 73% -> 80% -> 83% -> 84%, the mIoU differences are within the split's noise. 1000 is AIMET's measured setting.
DEFAULT_ITERATIONS = 1000
DEFAULT_LR = 0.01
DEFAULT_REG = 0.01  # AIMET's regularisation weight
#: where a layer's calibration inputs come from: the float model (default; one pass; each layer undoes its own
#: rounding error), the int8 model with the earlier layers already AdaRounded (one float and one int8 pass per
#: layer), or the int8 model with nearest weights (one pass for all layers)
INPUT_MODES = ("float", "sequential", "nearest")
ADAROUND_KEY = "fcnquant.adaround"
CALIBRATED_SHA_KEY = "fcnquant.calibrated_model_sha256"


@dataclass(frozen=True)
class AdaRoundOptions:
    """``iterations`` Adam steps per layer with learning rate ``lr`` and regularisation weight ``reg``;
    ``inputs``: where each layer's quantized inputs come from (:data:`INPUT_MODES`, module docstring). The
    optimisation is deterministic (full-batch gradients over exact moments, V starts at the fractional parts)."""

    iterations: int = DEFAULT_ITERATIONS
    lr: float = DEFAULT_LR
    reg: float = DEFAULT_REG
    inputs: str = "float"

    def __post_init__(self) -> None:
        if self.inputs not in INPUT_MODES:
            raise ModelError(f"unknown adaround inputs '{self.inputs}'; choose one of {', '.join(INPUT_MODES)}")
        if self.iterations < 0:
            raise ModelError(f"iterations must be >= 0, got {self.iterations}")


@dataclass(frozen=True)
class LayerStats:
    """One layer's AdaRound figures: reconstruction losses (mean squared output error per position, summed over
    channels), share of weights rounded differently from nearest, time."""

    node: str
    weight: str
    op: str
    positions: int
    loss_float: float
    loss_nearest: float
    loss_adaround: float
    changed: float
    kept_nearest: bool
    seconds: float

    @property
    def gain(self) -> float:
        """Returns the share of the nearest-rounding loss that AdaRound removed (0 when nearest was kept)."""
        if self.kept_nearest or self.loss_nearest <= 0:
            return 0.0
        return 1.0 - self.loss_adaround / self.loss_nearest


@dataclass(frozen=True)
class AdaRoundResult:
    """The float model with AdaRound weights (exactly on the int8 grid), the scales that grid uses, and figures."""

    model: object = field(repr=False)  # onnx.ModelProto
    weight_scales: dict[str, tuple[np.ndarray, int | None]] = field(repr=False)
    layers: tuple[LayerStats, ...]
    skipped: tuple[tuple[str, str], ...]  # (node, why)
    target: str
    per_channel: bool
    iterations: int
    inputs: str
    images: int
    seconds: float
    source_sha256: str

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (without the model and the scale arrays)."""
        return {
            "format_version": 1,
            "target": self.target, "per_channel": self.per_channel, "iterations": self.iterations,
            "inputs": self.inputs, "images": self.images, "seconds": round(self.seconds, 3),
            "source_sha256": self.source_sha256,
            "layers": [{**asdict(s), "gain": s.gain} for s in self.layers],
            "skipped": [{"node": n, "why": w} for n, w in self.skipped],
        }

    def save_model(self, path: str | os.PathLike[str]) -> Path:
        """Writes the AdaRound model to ``path`` atomically; returns the path."""
        from fcnquant.runtime import written_model

        with written_model(path) as tmp:
            save_model(self.model, tmp)
        return Path(path)


def adaround(
    model,
    table,
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    quant: QuantConfig | None = None,
    run: RunConfig | Executor | None = None,
    options: AdaRoundOptions | None = None,
    *,
    weight_scales: Mapping[str, tuple[np.ndarray, int | None]] | None = None,
) -> AdaRoundResult:
    """Returns the AdaRoundResult of rounding every Conv/ConvTranspose weight of the float ``model`` adaptively.

    ``model``: path or ``onnx.ModelProto`` of the float model; ``table``: its CalibrationTable (or JSON path),
    which must have been made for this model (only ``sequential`` and ``nearest`` inputs use it; None is
    accepted with ``float`` inputs). ``data``: the calibration images (:class:`~fcnquant.data.DataConfig`: its
    ``ids``, else a seeded selection of ``num_images``; preprocessing by default the model's own). ``quant``: the
    grid emission will use (``target``, ``per_channel``, ``pow2_rounding``) and the nodes it keeps in float
    (``exclude_nodes`` / ``exclude_ops`` / ``exclude_regex``: those layers are left as they are). ``run``: the
    executor the image passes run on. ``options``: :class:`AdaRoundOptions`.
    ``weight_scales`` ({initializer: (scales, axis)}) fixes the grid; by default it is what emission uses,
    ``fcnquant.quantize.weights.weight_scales_for(model, target, per_channel, pow2_rounding)``. Emit the result
    with ``quantize_model(path, table, out, quant, weight_scales=result.weight_scales, verify_table=False)`` (the
    table of the float model stays valid: only weights moved).
    """
    from fcnquant.quantize.profiles import get_profile

    quant, options = quant or QuantConfig(), options or AdaRoundOptions()
    cfg, run = DataConfig.of(data, split=None), RunConfig.of(run)
    executor = run.resolved()
    t0 = time.perf_counter()
    profile = get_profile(quant.target)
    label, source_digests, model = _source(model)
    if table is None:
        if options.inputs != "float":
            raise CalibrationError(f"adaround with '{options.inputs}' inputs needs the calibration table of the model")
    else:
        table = _load_table(table)
        _check_table(table, model, source_digests, label)
    model = copy.deepcopy(model)
    excluded = _excluded(model, quant)
    if weight_scales is None:
        from fcnquant.quantize.weights import weight_scales_for

        weight_scales = weight_scales_for(model, quant.target, quant.per_channel, quant.pow2_rounding,
                                          skip_nodes=excluded)
    scales = {k: (np.asarray(v[0], np.float32), v[1]) for k, v in weight_scales.items()}
    layers, skipped = find_layers(model, scales, excluded)
    if not layers:
        log.warning("adaround: no Conv/ConvTranspose layer to round in %s", label)
    dataset = cfg.open(label if label != "(in-memory model)" else None, progress=executor.progress)
    ids = cfg.choose(dataset, progress=executor.progress)
    if not ids:
        raise CalibrationError("adaround needs calibration images (ids is empty)")
    log.info("adaround: %d layer(s), %d image(s), %d iterations, %s, %s inputs", len(layers), len(ids),
             options.iterations, profile.name, options.inputs)
    with tempfile.TemporaryDirectory(prefix="fcnquant-ada-") as tmp:
        qmodel = None if options.inputs == "float" else nearest_int8(model, table, Path(tmp), quant.target,
                                                                     quant.per_channel, scales, excluded)
        pair_inputs(layers, model, qmodel)
        stats = _round_layers(layers, model, qmodel, options, executor, dataset, ids, cfg)
    _write_weights(model, layers)
    result = AdaRoundResult(
        model=model, weight_scales={k: v for k, v in scales.items() if k in {l.weight for l in layers}},
        layers=tuple(stats), skipped=tuple(skipped), target=profile.name, per_channel=quant.per_channel,
        iterations=options.iterations, inputs=options.inputs, images=len(ids), seconds=time.perf_counter() - t0,
        source_sha256=source_digests[0],
    )
    _record(model, result)
    log.info("adaround: %d layer(s) in %.1f s; %d kept nearest", len(stats), result.seconds,
             sum(s.kept_nearest for s in stats))
    return result


def _source(model) -> tuple[str, str, object]:
    """Returns (label, its digests (``fcnquant._io.model_digests``), ModelProto) of a model path or ModelProto."""
    from fcnquant._io import load_onnx, model_digests, model_identity

    if isinstance(model, (str, os.PathLike)):
        return str(model), model_digests(model), load_onnx(model)
    return "(in-memory model)", (model_identity(model),), model


def _excluded(model, quant: QuantConfig) -> set[str]:
    """Names unnamed nodes of ``model`` (in place, as emission does) and returns the nodes ``quant`` keeps in
    float."""
    from fcnquant.quantize.exclude import name_unnamed_nodes, resolve_exclusions

    name_unnamed_nodes(model)
    if not quant.excludes:
        return set()
    return set(resolve_exclusions(model, quant.exclude_nodes, quant.exclude_ops, list(quant.exclude_regex) or None))


def _round_layers(layers: list[Layer], model, qmodel, options: AdaRoundOptions, executor: Executor, dataset,
                  ids: list[str], data: DataConfig) -> list[LayerStats]:
    """Measures the layers' moments on the executor and rounds them, in graph order; returns their figures."""
    stats: list[LayerStats] = []
    with Progress(len(layers), "adaround", enabled=executor.progress, unit="layer") as bar:
        if options.inputs == "sequential":
            for layer in layers:
                gram = layer_moments(executor, dataset, ids, data, model, qmodel, [layer])[0]
                stats.append(_round_layer(layer, gram, options))
                set_int8_weight(qmodel, layer)
                bar.update(1)
        else:
            grams = layer_moments(executor, dataset, ids, data, model, qmodel, layers)
            for k, layer in enumerate(layers):
                stats.append(_round_layer(layer, grams[k], options))
                grams[k] = None  # the moments of a layer are D^2 per statistic: free them as we go
                bar.update(1)
    return stats


def _round_layer(layer: Layer, gram: GramStats, options: AdaRoundOptions) -> LayerStats:
    """Rounds one layer (updates ``layer.w`` to ``s * W_int``) and returns its figures."""
    t0 = time.perf_counter()
    rows = weight_rows(layer.w.astype(np.float64), layer.spec)
    s = row_scales(layer.scales, layer.spec)
    a, b, c = gram.quadratic(rows)
    res = optimize_rounding(rows, s, a, b, c, iterations=options.iterations, lr=options.lr, reg=options.reg)
    layer.w = rows_to_weight(s * res.w_int, layer.spec).astype(np.float32)
    layer.w_int = rows_to_weight(res.w_int, layer.spec).astype(np.int8)
    out = LayerStats(layer.node.name, layer.weight, layer.node.op_type, gram.count, res.loss_float,
                     res.loss_nearest, res.loss_adaround, res.changed, res.kept_nearest,
                     time.perf_counter() - t0)
    log.debug("adaround %s: loss %.4g -> %.4g (float %.4g), %.1f%% changed, %.2f s", out.node, out.loss_nearest,
              out.loss_adaround, out.loss_float, 100 * out.changed, out.seconds)
    return out


def _write_weights(model, layers: list[Layer]) -> None:
    """Replaces each rounded layer's weight initializer of ``model`` by its values on the int8 grid."""
    import onnx

    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for layer in layers:
        src = model.graph.initializer[inits[layer.weight]]
        src.CopyFrom(onnx.numpy_helper.from_array(layer.w.astype(np.float32), layer.weight))


def _record(model, result: AdaRoundResult) -> None:
    """Stores the settings and per-layer figures (``fcnquant.adaround``) and the calibrated model's sha256."""
    from fcnquant.quantize.name_map import set_metadata

    summary = {k: v for k, v in result.to_dict().items() if k != "layers"}
    summary["layers"] = {s.node: {"changed": round(s.changed, 4), "gain": round(s.gain, 4)} for s in result.layers}
    set_metadata(model, {ADAROUND_KEY: json.dumps(summary, sort_keys=True), CALIBRATED_SHA_KEY: result.source_sha256})


def _load_table(table):
    if isinstance(table, (str, os.PathLike)):
        from fcnquant.calibrate.table import CalibrationTable

        return CalibrationTable.load(table)
    return table


def _check_table(table, model, source_digests: tuple[str, ...], label: str) -> None:
    """The table must belong to this model (or to the model this one was derived from by weight snapping)."""
    from fcnquant.quantize.validate import check_model_hash

    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(CALIBRATED_SHA_KEY) and getattr(table, "model_sha256", None) == meta[CALIBRATED_SHA_KEY]:
        return
    check_model_hash(table, source_digests, label, "(given)")
