"""AdaRound on an ONNX model: per Conv / ConvTranspose, the weight rounding (up or down) that best reproduces the
float layer's output on the calibration images, instead of rounding to nearest.

Steps (the numerics live in ``rounding``, ``layer_rounding`` and ``conv_patches``; this module is graph code):

1. The layers: every 2-D Conv / ConvTranspose whose weight is an initializer read by that node alone (a weight
   shared by two nodes, a 1-D/3-D conv or a ConvTranspose with ``auto_pad`` / ``output_shape`` is skipped by name).
2. The weight scales emission uses (symmetric int8 per output channel or per tensor, powers of two for
   ``npu-pow2``), or the ``weight_scales`` given.
3. The float model (and, unless ``inputs="float"``, the int8 model with round-to-nearest weights from
   ``fcnquant.quantize.quantize_model`` with the table) run once per calibration image: each layer's float input
   ``x_f`` and its input in the int8 model ``x_q`` (the DequantizeLinear output the name map
   ``fcnquant.tensor_map`` pairs with it) feed the layer's patch moments (``conv_patches.GramStats``: exact
   over every position, ``D^2`` memory per layer, so 512x512 inputs cost no more memory than 160x160 ones).
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

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from fcnquant.errors import CalibrationError, ModelError
from fcnquant.recover.conv_patches import (ConvSpec, GramStats, row_scales, rows_to_weight, spec_from_attributes,
                                           weight_rows)
from fcnquant.recover.layer_rounding import optimize_rounding

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
        from fcnquant._io import atomic_path

        with atomic_path(path) as tmp:
            _save(self.model, tmp)
        return Path(path)


@dataclass
class _Layer:
    node: object
    spec: ConvSpec
    weight: str
    w: np.ndarray
    scales: np.ndarray
    axis: int | None
    x_float: str = ""
    x_quant: str = ""
    w_int: np.ndarray | None = None


def adaround(
    model,
    table,
    target: str = "ort-cpu",
    *,
    per_channel: bool = True,
    dataset,
    ids: Sequence[str],
    preset=None,
    iterations: int = DEFAULT_ITERATIONS,
    weight_scales: Mapping[str, tuple[np.ndarray, int | None]] | None = None,
    progress: bool = True,
    seed: int = 0,
    lr: float = DEFAULT_LR,
    reg: float = DEFAULT_REG,
    inputs: str = "float",
    exclude_nodes: Iterable[str] = (),
    pow2_rounding: str = "up",
) -> AdaRoundResult:
    """Returns the AdaRoundResult of rounding every Conv/ConvTranspose weight of the float ``model`` adaptively.

    ``model``: path or ``onnx.ModelProto`` of the float model; ``table``: its CalibrationTable (or JSON path),
    which must have been made for this model (only ``sequential`` and ``nearest`` inputs use it; None is
    accepted with ``float`` inputs); ``dataset`` + ``ids``: the calibration images (e.g.
    ``fcnquant.calibrate.api.open_calibration_data`` and ``choose_ids``); ``preset``: preprocessing (default:
    the model's own). ``iterations`` Adam steps per layer with learning rate ``lr`` and regularisation ``reg``;
    ``inputs``: where each layer's inputs come from (:data:`INPUT_MODES`; see the module docstring).
    ``exclude_nodes``: layers left as they are (e.g. those emission keeps in float).
    ``weight_scales`` ({initializer: (scales, axis)}) fixes the grid; by default it is what emission uses,
    ``fcnquant.quantize.weights.weight_scales_for(model, target, per_channel, pow2_rounding)``. Emit the result
    with ``quantize_model(path, table, out, target, per_channel=..., weight_scales=result.weight_scales,
    verify_table=False)`` (the table of the float model stays valid: only weights moved).
    ``seed`` is accepted for API stability: the optimisation is deterministic (full-batch, fixed start).
    """
    import onnx

    from fcnquant._io import load_onnx
    from fcnquant.quantize.profiles import get_profile

    del seed  # deterministic: full-batch gradients over exact moments, V starts at the fractional parts
    t0 = time.perf_counter()
    profile = get_profile(target)
    if inputs not in INPUT_MODES:
        raise ModelError(f"unknown adaround inputs '{inputs}'; choose one of {', '.join(INPUT_MODES)}")
    if iterations < 0:
        raise ModelError(f"iterations must be >= 0, got {iterations}")
    if isinstance(model, (str, os.PathLike)):
        from fcnquant._io import file_sha256

        label, source_sha = str(model), file_sha256(model)
        model = load_onnx(model)
    else:
        label = "(in-memory model)"
        source_sha = hashlib.sha256(model.SerializeToString()).hexdigest()
    if table is None:
        if inputs != "float":
            raise CalibrationError(f"adaround with '{inputs}' inputs needs the calibration table of the model")
    else:
        table = _load_table(table)
        _check_table(table, model, source_sha, label)
    model = copy.deepcopy(model)

    from fcnquant.quantize.exclude import name_unnamed_nodes

    name_unnamed_nodes(model)
    excluded = set(exclude_nodes)
    if weight_scales is None:
        from fcnquant.quantize.weights import weight_scales_for

        weight_scales = weight_scales_for(model, target, per_channel, pow2_rounding, skip_nodes=excluded)
    scales = {k: (np.asarray(v[0], np.float32), v[1]) for k, v in weight_scales.items()}
    layers, skipped = _find_layers(model, scales, excluded)
    if not layers:
        log.warning("adaround: no Conv/ConvTranspose layer to round in %s", label)
    ids = list(ids)
    if not ids:
        raise CalibrationError("adaround needs calibration images (ids is empty)")
    log.info("adaround: %d layer(s), %d image(s), %d iterations, %s, %s inputs", len(layers), len(ids), iterations,
             profile.name, inputs)

    stats: list[LayerStats] = []
    with tempfile.TemporaryDirectory(prefix="fcnquant-ada-") as tmp:
        qmodel = None if inputs == "float" else _nearest_int8(model, table, Path(tmp), target, per_channel, scales,
                                                              excluded)
        _pair_inputs(layers, model, qmodel)
        runner = _Runner(model, qmodel, dataset, ids, preset)
        if inputs == "sequential":
            for layer in _progress(layers, progress, "adaround"):
                gram = runner.moments([layer])[0]
                stats.append(_round_layer(layer, gram, iterations, lr, reg))
                runner.set_int8_weight(layer)
        else:
            grams = runner.moments(layers, progress=progress)
            for layer, gram in zip(_progress(layers, progress, "adaround"), grams):
                stats.append(_round_layer(layer, gram, iterations, lr, reg))
                del gram

    inits = {t.name: i for i, t in enumerate(model.graph.initializer)}
    for layer in layers:
        src = model.graph.initializer[inits[layer.weight]]
        src.CopyFrom(onnx.numpy_helper.from_array(layer.w.astype(np.float32), layer.weight))
    seconds = time.perf_counter() - t0
    result = AdaRoundResult(
        model=model, weight_scales={k: v for k, v in scales.items() if k in {l.weight for l in layers}},
        layers=tuple(stats), skipped=tuple(skipped), target=profile.name, per_channel=per_channel,
        iterations=iterations, inputs=inputs, images=len(ids), seconds=seconds, source_sha256=source_sha,
    )
    from fcnquant.quantize.name_map import set_metadata

    summary = {k: v for k, v in result.to_dict().items() if k != "layers"}
    summary["layers"] = {s.node: {"changed": round(s.changed, 4), "gain": round(s.gain, 4)} for s in stats}
    set_metadata(model, {ADAROUND_KEY: json.dumps(summary, sort_keys=True), CALIBRATED_SHA_KEY: source_sha})
    log.info("adaround: %d layer(s) in %.1f s; %d kept nearest", len(stats), seconds,
             sum(s.kept_nearest for s in stats))
    return result


def _round_layer(layer: _Layer, gram: GramStats, iterations: int, lr: float, reg: float) -> LayerStats:
    """Rounds one layer (updates ``layer.w`` to ``s * W_int``) and returns its figures."""
    t0 = time.perf_counter()
    rows = weight_rows(layer.w.astype(np.float64), layer.spec)
    s = row_scales(layer.scales, layer.spec)
    a, b, c = gram.quadratic(rows)
    res = optimize_rounding(rows, s, a, b, c, iterations=iterations, lr=lr, reg=reg)
    layer.w = rows_to_weight(s * res.w_int, layer.spec).astype(np.float32)
    layer.w_int = rows_to_weight(res.w_int, layer.spec).astype(np.int8)
    out = LayerStats(layer.node.name, layer.weight, layer.node.op_type, gram.count, res.loss_float,
                     res.loss_nearest, res.loss_adaround, res.changed, res.kept_nearest,
                     time.perf_counter() - t0)
    log.debug("adaround %s: loss %.4g -> %.4g (float %.4g), %.1f%% changed, %.2f s", out.node, out.loss_nearest,
              out.loss_adaround, out.loss_float, 100 * out.changed, out.seconds)
    return out


def _load_table(table):
    if isinstance(table, (str, os.PathLike)):
        from fcnquant.calibrate.table import CalibrationTable

        return CalibrationTable.load(table)
    return table


def _check_table(table, model, source_sha: str, label: str) -> None:
    """The table must belong to this model (or to the model this one was derived from by weight snapping)."""
    from fcnquant.quantize.validate import check_model_hash

    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(CALIBRATED_SHA_KEY) and getattr(table, "model_sha256", None) == meta[CALIBRATED_SHA_KEY]:
        return
    check_model_hash(table, source_sha, label, "(given)")


def _find_layers(model, scales: Mapping, excluded: set[str]) -> tuple[list[_Layer], list[tuple[str, str]]]:
    """Returns (the layers to round in graph order, [(node, why skipped)])."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    layers, skipped = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        why = None
        w_name = node.input[1] if len(node.input) > 1 else ""
        if node.name in excluded:
            why = "excluded"
        elif w_name not in inits:
            why = "its weight is not an initializer"
        elif readers.get(w_name, 0) > 1:
            why = f"its weight '{w_name}' is shared with another node"
        elif w_name not in scales:
            why = f"no weight scale for '{w_name}'"
        spec = None
        if why is None:
            w = numpy_helper.to_array(inits[w_name])
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            try:
                spec = spec_from_attributes(node.op_type, w.shape, attrs)
            except ModelError as exc:
                why = str(exc)
        if why is not None:
            log.warning("adaround: skipping %s '%s': %s", node.op_type, node.name, why)
            skipped.append((node.name, why))
            continue
        s, axis = scales[w_name]
        layers.append(_Layer(node, spec, w_name, w.astype(np.float32), np.asarray(s, np.float64), axis))
    return layers, skipped


def _nearest_int8(model, table, tmp: Path, target: str, per_channel: bool, scales: Mapping, excluded: set[str]):
    """Returns the int8 QDQ ModelProto of ``model`` with round-to-nearest weights (the inputs' source)."""
    from fcnquant._io import load_onnx
    from fcnquant.quantize import QuantConfig, quantize_model

    src = tmp / "float.onnx"
    _save(model, src)
    # the same model the caller checked the table against, serialized again here
    quantize_model(src, table, tmp / "int8.onnx",
                   QuantConfig(target=target, per_channel=per_channel, exclude_nodes=tuple(excluded)),
                   weight_scales=scales, verify_table=False)
    return load_onnx(tmp / "int8.onnx")


def _pair_inputs(layers: list[_Layer], model, qmodel) -> None:
    """Sets each layer's float input name and the int8 model's tensor standing for it."""
    from fcnquant.quantize.name_map import read_tensor_map

    if qmodel is None:
        for layer in layers:
            layer.x_float = layer.x_quant = layer.node.input[0]
        return
    tmap = read_tensor_map(qmodel)
    produced = {o for n in qmodel.graph.node for o in n.output} | {i.name for i in qmodel.graph.input}
    for layer in layers:
        layer.x_float = layer.node.input[0]
        q = tmap.get(layer.x_float, layer.x_float)
        if q not in produced:
            raise ModelError(f"the int8 model has no tensor for the input '{layer.x_float}' of '{layer.node.name}'")
        if q == layer.x_float:
            log.info("adaround: '%s' reads a float input in the int8 model", layer.node.name)
        layer.x_quant = q


class _Runner:
    """Runs the float and int8 models over the calibration images and feeds the layers' moments."""

    def __init__(self, model, qmodel, dataset, ids: list[str], preset) -> None:
        self.model = model
        self.qmodel = qmodel
        self.dataset = dataset
        self.ids = ids
        self.preset_arg = preset
        self._qsession = None

    def set_int8_weight(self, layer: _Layer) -> None:
        """Writes the layer's AdaRound integers into the int8 model (its weight's DequantizeLinear input)."""
        from onnx import numpy_helper

        made_by = {o: n for n in self.qmodel.graph.node for o in n.output}
        node = next((n for n in self.qmodel.graph.node if n.name == layer.node.name), None)
        dq = made_by.get(node.input[1]) if node is not None else None
        if dq is None or dq.op_type != "DequantizeLinear":
            log.warning("adaround: cannot find the int8 weight of '%s'; later layers see its nearest weights",
                        layer.node.name)
            return
        inits = {t.name: t for t in self.qmodel.graph.initializer}
        old = inits[dq.input[0]]
        if tuple(old.dims) != layer.w_int.shape:
            raise ModelError(f"int8 weight of '{layer.node.name}' has shape {list(old.dims)}, "
                             f"expected {list(layer.w_int.shape)}")
        old.CopyFrom(numpy_helper.from_array(layer.w_int, old.name))
        self._qsession = None

    def moments(self, layers: list[_Layer], progress: bool = False) -> list[GramStats]:
        """Returns each layer's patch moments over the calibration images (one float and one int8 pass)."""
        from tqdm import tqdm

        from fcnquant.data import iter_batches, preset_for_session
        from fcnquant.runtime import make_session, with_outputs

        f_names = list(dict.fromkeys(l.x_float for l in layers))
        q_names = list(dict.fromkeys(l.x_quant for l in layers))
        fsess = make_session(with_outputs(self.model, _not_inputs(self.model, f_names)).SerializeToString())
        if self.qmodel is None:
            q_names = []
        elif self._qsession is None:
            self._qsession = make_session(
                with_outputs(self.qmodel, _not_inputs(self.qmodel, q_names)).SerializeToString())
        qsess = self._qsession if self.qmodel is not None else None
        in_name = fsess.get_inputs()[0].name
        preset = preset_for_session(fsess, self.preset_arg)
        grams = [GramStats(l.spec, same_inputs=qsess is None) for l in layers]
        bar = tqdm(total=len(self.ids), desc="adaround inputs", unit="img", disable=None if progress else True,
                   leave=False)
        try:
            for batch in iter_batches(self.dataset, preset, self.ids, 1, with_masks=False):
                x = np.ascontiguousarray(batch.images, np.float32)
                fo = _fetch(fsess, in_name, x, f_names)
                qo = _fetch(qsess, qsess.get_inputs()[0].name, x, q_names) if qsess is not None else fo
                for layer, gram in zip(layers, grams):
                    gram.update(fo[layer.x_float], qo[layer.x_quant])
                bar.update(len(batch.ids))
        finally:
            bar.close()
        return grams


def _not_inputs(model, names: list[str]) -> list[str]:
    inputs = {i.name for i in model.graph.input}
    return [n for n in names if n not in inputs]


def _fetch(session, in_name: str, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    fetch = [n for n in names if n != in_name]
    out = dict(zip(fetch, session.run(fetch, {in_name: x}))) if fetch else {}
    if in_name in names:
        out[in_name] = x
    return out


def _progress(items, progress: bool, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="layer", disable=None if progress else True, leave=False)


def _save(model, path: Path) -> None:
    import onnx

    onnx.save_model(model, str(path))
