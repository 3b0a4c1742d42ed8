"""Empirical bias correction of an int8 QDQ model: each quantized Conv's mean output shift per channel, cancelled.

Quantizing a Conv's weights shifts the mean of its output: ``E[W_q x] - E[W x] = (W_q - W) E[x]`` (Nagel et al.
2019). For every quantized Conv / ConvTranspose of the QDQ model (weights from an int8 DequantizeLinear, bias from
an int32 DequantizeLinear), over the calibration images, per output channel ``c``, ``e_c`` is measured and the
int32 bias lowered by ``round(e_c / s_b)`` (:mod:`fcnquant.recover.bias_correction.channel_means`). Two errors can
be cancelled:

* ``error="weights"`` (default): the shift the layer's own weight rounding causes on the inputs it actually gets
  in the int8 model, ``e_c = mean over images and positions of conv(W_q - W, x_q)[c] + (b_q s_b - b)[c]``,
  computed exactly from the mean of every kernel window of ``x_q`` (``WindowMeans``; borders and padding
  included) and the bias's own rounding. The inputs ``x_q`` are the quantized model's own, with every earlier
  layer already corrected.
* ``error="accumulated"``: the whole mean error of the layer's output against the float model's
  (``mean(Conv_q(x_q)) - mean(Conv(x))``), which also absorbs the mean error accumulated before the layer.
  Measured on the demo models at npu-pow2 with per-tensor weights, it *lost* accuracy where the accumulated error
  is dominated by clipped activations (KL thresholds): a clipped tail lowers the mean at a few positions and the
  correction raises every position, turning zeros after the next ReLU into positives (fcn16s -0.69, fcn32s -2.2
  mIoU vs no correction); the weight-rounding shift is the part a bias can cancel without that side effect.
* ``error="weights+rounding"``: the ``"weights"`` shift plus the mean rounding error of the layer's int8 input
  passed through its float weights, ``conv(W, r)`` with ``r = DQ(Q(x)) - x`` where ``x`` is inside the grid and
  0 where it is clipped (clipping is left alone, as above), from the window means of ``r``. On power-of-two
  grids a residual stream's step can exceed what a branch adds to some channels, whose rounding then has a
  systematic sign (measured on fcn_r50_d8 at npu-pow2: per-channel mean rounding errors up to the error's RMS).
  Measured on fcn_r50_d8 (npu-pow2, per-tensor, tuning split): no gain over ``"weights"`` (output SNR 19.60 vs
  19.62 dB), so the int8 workflow does not use it; ``"accumulated"`` gained 0.8 dB there
  (``fcnquant.workflows.int8``, ``"auto"``).

**Forms.** ``form="fast"`` (the default for ``"weights"``) computes the ``"weights"`` shift of every layer at once
from one pass over the calibration images: the mean, per input channel and kernel tap, of the *float model's*
input (:mod:`~fcnquant.recover.bias_correction.taps`; Conv and ConvTranspose of any group, explicit or automatic
pads), or with ``fast_inputs="int8"`` of the uncorrected int8 model's input. The two forms differ by
``(W_q - W) (E[x_q] - E[x])``, the product of two small errors; measured on the demo models they agree within
0.02 mIoU (``bench/bench_recover.py --bias-forms``). The int8 workflow gathers the float model's tap means in its
calibration pass (``tap_means``), so the fast form then runs no pass at all. ``form="sequential"`` is what follows.

Layers are corrected in dependency order: a layer's measurement waits until every quantized Conv it depends on
(through any path) is corrected. Layers that do not depend on each other (parallel branches: a ResNet's
downsample Conv beside its bottleneck, FCN's score Convs beside the deeper backbone) are measured and corrected
in the same pass, with the same result as one at a time, since neither's bias reaches the other's input.

Cost, in inference passes over the calibration images: ``D`` quantized passes (plus ``1`` float pass for the
``accumulated`` error, all layers' float means at once), ``D`` = the depth of the Conv dependency graph
(``schedule="levels"``, default; ``L`` passes, one per layer, with ``schedule="sequential"``, the reference). Each
quantized pass runs only the part of the graph its layers need (the model is cut at their outputs), so a pass over
the first layers costs a fraction of an inference: in total about ``D / 2`` full inferences per image.

Every pass is one :meth:`~fcnquant.execute.Executor.map` of :func:`means_shard` over the images; the shards'
means merge bit for bit (a shard after the first records its batch sums, :mod:`fcnquant.recover.ordered_sum`), so
any number of shards, local or on a cluster, gives the model of one pass (with the same batches: always with
batches of one image, the default). Memory is constant in the number of images: per layer, a sum per channel
(float64) and a count (plus, in a shard after the first, one such sum per batch).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from fcnquant._io import as_model
from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import FcnquantError
from fcnquant.execute import Executor, Progress, RunConfig, ShardContext, image_batches, resolve_batch
from fcnquant.recover.bias_correction.channel_means import ChannelMeans, WindowMeans, weight_shift_means
from fcnquant.recover.bias_correction.taps import TapGeometry, TapMeans, tap_shift_means
from fcnquant.recover.bias_correction.targets import (Target, apply_correction, cut_at, dependency_levels,
                                                      find_targets, rounding_error_tensor)

log = logging.getLogger(__name__)

SCHEDULES = ("levels", "sequential")
FORMS = ("fast", "sequential")
FAST_INPUTS = ("float", "int8")
ERRORS = ("weights", "accumulated", "weights+rounding")

#: a pass's accumulators: {key: (tensor, kernel geometry of a WindowMeans, or None for a ChannelMeans)}
Specs = Mapping[Any, tuple[str, "tuple | None"]]


@dataclass(frozen=True)
class BiasCorrectionOptions:
    """``error``: which mean error to cancel (:data:`ERRORS`, module docstring). ``form``: ``"fast"`` (one pass
    over the calibration images, every layer at once; ``error="weights"`` only) or ``"sequential"`` (layer by
    layer on the int8 model, the reference); None: fast for ``"weights"``, sequential for the other errors.
    ``fast_inputs``: whose inputs the fast form measures, the float model's (``"float"``, default) or the
    uncorrected int8 model's (``"int8"``). ``schedule`` (sequential form): ``"levels"`` (independent layers share
    a pass) or ``"sequential"`` (one pass per layer); both give the same biases.
    ``skip_logits`` (default) leaves the class-scoring Convs as emitted: their mean error over all pixels is
    dominated by confidently classified ones, and shifting a class's logits everywhere to cancel it moved the
    contested pixels the wrong way (measured on the demo fcn16s at npu-pow2: -0.69 mIoU with its score Convs
    corrected, -0.20 without)."""

    error: str = "weights"
    schedule: str = "levels"
    skip_logits: bool = True
    form: str | None = None
    fast_inputs: str = "float"

    def __post_init__(self) -> None:
        if self.error not in ERRORS:
            raise FcnquantError(f"unknown bias-correction error {self.error!r}; choose from {', '.join(ERRORS)}")
        if self.schedule not in SCHEDULES:
            raise FcnquantError(f"unknown bias-correction schedule {self.schedule!r}; choose from "
                                f"{', '.join(SCHEDULES)}")
        if self.form is not None and self.form not in FORMS:
            raise FcnquantError(f"unknown bias-correction form {self.form!r}; choose from {', '.join(FORMS)}")
        if self.form == "fast" and self.error != "weights":
            raise FcnquantError(f"the fast bias correction cancels the weight rounding only (error 'weights'), not "
                                f"{self.error!r}: use the sequential form")
        if self.fast_inputs not in FAST_INPUTS:
            raise FcnquantError(f"unknown fast bias-correction inputs {self.fast_inputs!r}; choose from "
                                f"{', '.join(FAST_INPUTS)}")

    @property
    def resolved_form(self) -> str:
        """Returns the form that runs: ``form``, else fast for ``error="weights"`` and sequential otherwise."""
        if self.form is not None:
            return self.form
        return "fast" if self.error == "weights" else "sequential"


@dataclass(frozen=True)
class LayerCorrection:
    """One corrected layer: the Conv node, its output tensor, and the size of the mean error it cancelled."""

    node: str
    output: str
    channels: int
    mean_abs_error: float  # mean over channels of |e_c| before correction (in the output's units)
    max_abs_error: float
    level: int  # the pass (1-based) that corrected it

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class BiasCorrectionResult:
    """The corrected QDQ model and what was done."""

    model: object  # onnx.ModelProto
    layers: tuple[LayerCorrection, ...]
    skipped: tuple[tuple[str, str], ...]  # (node, reason)
    schedule: str
    passes: int  # inference passes over the calibration images (float + quantized)
    images: int
    seconds: float

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (without the model)."""
        return {
            "schedule": self.schedule, "passes": self.passes, "images": self.images,
            "seconds": round(self.seconds, 3), "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [{"node": n, "reason": r} for n, r in self.skipped],
        }


def correct_biases(
    qmodel: str | os.PathLike[str] | object,
    float_model: str | os.PathLike[str] | object,
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    options: BiasCorrectionOptions | None = None,
    *,
    tap_means: Mapping | None = None,
) -> BiasCorrectionResult:
    """Returns the BiasCorrectionResult: a copy of the QDQ model ``qmodel`` whose int32 Conv biases cancel each
    layer's mean output error against ``float_model`` over the calibration images of ``data``.

    ``qmodel`` / ``float_model`` are paths or ModelProtos (the QDQ model must come from the float model: same
    Conv output names, as ``fcnquant.quantize.quantize_model`` keeps them). ``data``: a
    :class:`~fcnquant.data.DataConfig` (or a dataset root / open ``Dataset``, all of its images) with the
    calibration ``ids`` (else a seeded selection of ``num_images``) and the preprocessing (``preset``, ``size``,
    ``mean``, ``std``; default the model's own). ``run``: the executor and batch size; the result does not depend
    on the number of shards. ``options``: :class:`BiasCorrectionOptions`. ``tap_means``: the fast form's
    statistics of the float model measured already ({(tensor, TapGeometry): TapMeans}, as
    :func:`~fcnquant.recover.bias_correction.targets.float_tap_specs` names them, e.g. collected in the
    calibration pass): the layers they cover need no pass of their own.
    """
    options = options or BiasCorrectionOptions()
    cfg, run = DataConfig.of(data, split=None), RunConfig.of(run)
    executor = run.resolved()
    dataset = cfg.open(float_model if isinstance(float_model, (str, os.PathLike)) else None,
                       progress=executor.progress)
    ids = cfg.choose(dataset, progress=executor.progress)
    if not ids:
        raise FcnquantError("bias correction needs at least one calibration image")
    t0 = time.perf_counter()
    qm = _copy(as_model(qmodel))
    fm = as_model(float_model)
    targets, skipped = find_targets(qm, fm, skip_logits=options.skip_logits)
    for node, reason in skipped:
        log.info("bias correction skips %s: %s", node, reason)
    if not targets:
        log.warning("bias correction: no quantized Conv with an int32 bias in the model; nothing corrected")
        return BiasCorrectionResult(qm, (), tuple(skipped), options.schedule, 0, len(ids), time.perf_counter() - t0)
    passes = _MeansPass(executor, dataset, ids, cfg, run.batch_size)
    if options.resolved_form == "fast":
        known = dict(tap_means or {}) if options.fast_inputs == "float" else {}
        layers, more, count = _correct_fast(passes, qm, fm, targets, options.fast_inputs, known)
        seconds = time.perf_counter() - t0
        log.info("bias correction (fast, %s inputs): %d layers, %d pass(es) over %d images in %.1f s",
                 options.fast_inputs, len(layers), count, len(ids), seconds)
        return BiasCorrectionResult(qm, tuple(layers), tuple(skipped + more), "fast", count, len(ids), seconds)
    by_weights = options.error in ("weights", "weights+rounding")
    if by_weights:
        plain = [t.node for t in targets if t.delta_w is None]
        if plain:
            log.info("bias correction: %d layer(s) without a plain 2-D Conv geometry use their accumulated "
                     "error: %s", len(plain), ", ".join(plain[:5]))
    needs_float = [t.float_output for t in targets if not (by_weights and t.delta_w is not None)]
    float_means = {}
    if needs_float:
        accs = passes.run(fm, {n: (n, None) for n in needs_float}, "bias correction: float")
        float_means = {n: acc.mean for n, acc in accs.items()}
    groups = _groups(qm, targets, options.schedule)
    layers: list[LayerCorrection] = []
    # one line per 10 s over all the passes without a terminal (each pass may take less), a bar on one
    with Progress(len(groups), f"bias correction ({len(groups)} passes)", enabled=executor.progress,
                  unit="pass", leave=False) as bar:
        for k, group in enumerate(groups):
            layers += _correct_group(passes, qm, group, options.error, float_means, k, len(groups))
            bar.update(1)
    count = len(groups) + (1 if needs_float else 0)
    seconds = time.perf_counter() - t0
    log.info("bias correction (%s): %d layers, %d passes over %d images in %.1f s", options.schedule, len(layers),
             count, len(ids), seconds)
    return BiasCorrectionResult(qm, tuple(layers), tuple(skipped), options.schedule, count, len(ids), seconds)


def _copy(model):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _groups(qm, targets: list[Target], schedule: str) -> list[list[Target]]:
    """Returns the layers of each pass: by dependency level, or one layer per pass (``"sequential"``)."""
    if schedule == "sequential":
        return [[t] for t in targets]
    levels = dependency_levels(qm, [t.output for t in targets])
    return [[t for t in targets if levels[t.output] == lv] for lv in sorted(set(levels.values()))]


def _correct_group(passes: "_MeansPass", qm, group: list[Target], error: str, float_means: dict, k: int,
                   count: int) -> list[LayerCorrection]:
    """Measures the layers of one pass on ``qm`` and corrects their biases in ``qm``; returns what was done."""
    from onnx import numpy_helper

    by_weights = error in ("weights", "weights+rounding")
    specs: dict[tuple[str, str], tuple[str, tuple | None]] = {}
    for t in group:
        if by_weights and t.delta_w is not None:
            specs[(t.node, "in")] = (t.input, t.geometry)
        else:
            specs[(t.node, "out")] = (t.output, None)
    cut_model = qm
    if error == "weights+rounding":
        cut_model = _copy(qm)
        for t in group:
            if (t.node, "in") in specs:
                r = rounding_error_tensor(cut_model, t.input)
                if r is not None:
                    specs[(t.node, "r")] = (r, t.geometry)
    tensors = list(dict.fromkeys(name for name, _ in specs.values()))
    accs = passes.run(cut_at(cut_model, tensors), specs, f"bias correction: pass {k + 1}/{count}")
    inits = {t.name: t for t in qm.graph.initializer}
    layers = []
    for t in group:
        if (t.node, "in") in accs:  # weight rounding on the int8 inputs, plus the bias's own rounding
            b_now = numpy_helper.to_array(inits[t.bias_init]).astype(np.float64) * t.bias_scale
            err = weight_shift_means(t.delta_w, accs[(t.node, "in")].mean) + b_now - t.float_bias
            if (t.node, "r") in accs:  # the mean rounding error of the layer's int8 input, through W:
                # E[W_q x_q] - E[W x] = E[(W_q - W) x_q] + E[W (x_q - x)]
                err = err + weight_shift_means(t.float_weight, accs[(t.node, "r")].mean)
        else:
            err = accs[(t.node, "out")].mean - float_means[t.float_output]
        apply_correction(inits[t.bias_init], t.bias_scale, err)
        layers.append(LayerCorrection(t.node, t.output, int(err.size), float(np.abs(err).mean()),
                                      float(np.abs(err).max()), k + 1))
    return layers


def _correct_fast(passes: "_MeansPass", qm, fm, targets: list[Target], inputs: str, known: dict
                  ) -> tuple[list[LayerCorrection], list[tuple[str, str]], int]:
    """Measures every layer's input tap means in one pass (of the float model, or of the uncorrected int8 model;
    none for those in ``known``) and corrects each bias by its weight rounding's mean shift plus the bias's own
    rounding; returns (what was done, [(node, reason)] of the layers left as emitted, passes run)."""
    from onnx import numpy_helper

    fast = [t for t in targets if t.taps is not None]
    skipped = [(t.node, "the fast form handles 2-D Conv/ConvTranspose with constant weights only (use the "
                "sequential form)") for t in targets if t.taps is None]
    for node, reason in skipped:
        log.info("bias correction skips %s: %s", node, reason)
    if not fast:
        return [], skipped, 0
    model = fm if inputs == "float" else qm
    specs: dict[tuple, tuple[str, TapGeometry]] = {}
    for t in fast:  # one accumulator per input tensor and geometry (layers reading the same windows share it)
        tensor = t.float_input if inputs == "float" else t.input
        if (tensor, t.taps.geometry) not in known:
            specs.setdefault((tensor, t.taps.geometry), (tensor, t.taps.geometry))
    accs = dict(known)
    if specs:
        tensors = list(dict.fromkeys(name for name, _ in specs.values()))
        accs.update(passes.run(cut_at(model, tensors), specs, f"bias correction: {len(specs)} layers, one pass"))
    inits = {init.name: init for init in qm.graph.initializer}
    layers = []
    for t in fast:
        tensor = t.float_input if inputs == "float" else t.input
        means = accs[(tensor, t.taps.geometry)].mean
        b_now = numpy_helper.to_array(inits[t.bias_init]).astype(np.float64) * t.bias_scale
        err = tap_shift_means(t.taps.delta_w, means, t.taps.group, t.taps.geometry.transposed) + b_now \
            - t.taps.float_bias
        apply_correction(inits[t.bias_init], t.bias_scale, err)
        layers.append(LayerCorrection(t.node, t.output, int(err.size), float(np.abs(err).mean()),
                                      float(np.abs(err).max()), 1))
    return layers, skipped, 1 if specs else 0


class _MeansPass:
    """Runs a model over the calibration images on the executor, merging the shards' per-channel means."""

    def __init__(self, executor: Executor, dataset, ids: list[str], data: DataConfig, batch_size: int) -> None:
        self.executor, self.dataset, self.ids, self.data, self.batch_size = executor, dataset, ids, data, batch_size

    def run(self, model, specs: Specs, desc: str) -> dict:
        """Returns {key: ChannelMeans or WindowMeans} of ``specs``' tensors of ``model`` over the images."""
        from fcnquant.runtime import with_outputs

        names = list(dict.fromkeys(t for t, _ in specs.values()))
        raw = with_outputs(model, names).SerializeToString()
        parts = self.executor.map(means_shard, self.dataset, self.ids, args=(self.data, self.batch_size, dict(specs)),
                                  models={"model": raw}, desc=desc)
        merged = parts[0]
        for part in parts[1:]:
            for key, acc in part.items():
                merged[key].merge(acc)
        return merged


def means_shard(ctx: ShardContext, data: DataConfig, batch_size: int, specs: Specs) -> dict:
    """Returns {key: ChannelMeans or WindowMeans} of the tensors ``specs`` of the model ``"model"`` over the shard's
    images (a shard function; a shard after the first records its batch sums, so the merge is bit for bit)."""
    from fcnquant.runtime import input_spec

    # graph optimisation "all", intra-op threads not spinning: the collection session's settings
    session = ctx.session("model", optimization="all", spinning=False, disabled_optimizers=())
    record = ctx.start > 0
    accs = {key: (tensor, _accumulator(geometry, record)) for key, (tensor, geometry) in specs.items()}
    input_name, shape = input_spec(session)
    names = list(dict.fromkeys(t for t, _ in accs.values()))
    fetch = [n for n in names if n != input_name]
    preset = data.preset_for(session)
    batch, fixed = resolve_batch(batch_size, shape[0])
    for mb in image_batches(ctx.dataset, preset, ctx.ids, batch, fixed, with_masks=False):
        images = np.ascontiguousarray(mb.feed, np.float32)
        values = dict(zip(fetch, session.run(fetch, {input_name: images}))) if fetch else {}
        values[input_name] = images
        for tensor, acc in accs.values():
            acc.update(values[tensor][:mb.n])
        ctx.advance(mb.n)
    return {key: acc for key, (_, acc) in accs.items()}


def _accumulator(geometry, record: bool):
    """Returns the accumulator of one spec: TapMeans (a TapGeometry), WindowMeans (a geometry tuple) or
    ChannelMeans (None)."""
    if isinstance(geometry, TapGeometry):
        return TapMeans(geometry, record=record)
    if geometry is not None:
        return WindowMeans(*geometry, record=record)
    return ChannelMeans(record=record)
