"""``compare_models``: per-layer drift and final-metric deltas between a float model and its quantized version.

Two passes, each a shard function merged exactly (any number of shards gives the report of one), each streaming
(memory stays constant in the number of images), run together by one shard function over the images
(:func:`fcnquant.compare.joint.compare_shard`, which reads each image once):

1. **final metrics** (:func:`fcnquant.compare.final.final_shard`): both models run as they are, plain onnxruntime
   sessions, over every image: mIoU, per-class IoU and changed pixels are bit for bit what ``fcnquant eval``
   computes, at the cost of two evaluations; the images with the most changed pixels are kept for the gallery;
2. **per-layer drift** (:func:`fcnquant.compare.drift.measure.drift_shard`): the models run exposing the paired
   activations, plus the isolated rewrite, on a deterministic subsample spread over the images
   (``drift_images``, default 16; :func:`fcnquant.compare.drift.measure.drift_ids`); with a calibration table the
   float activations also fill the report's histograms. Exposing tensors costs onnxruntime's fusions (and a QDQ
   model's integer kernels), and drift statistics settle on far fewer images than mIoU does, so this pass is
   kept small. A drift image's final metrics take the logits of these sessions where they are the plain
   sessions' bits (:mod:`fcnquant.compare.joint`), so it is not run a second time.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fcnquant._io import load_onnx, model_digests, model_identity
from fcnquant.compare.drift.measure import DEFAULT_DRIFT_IMAGES, DriftShard, DriftSpec, drift_ids, merge_drift
from fcnquant.compare.drift.metrics import LayerDrift
from fcnquant.compare.final import DEFAULT_BOUNDARY_RADIUS, FinalShard, merge_final
from fcnquant.compare.gallery import GALLERY_IMAGES, render_gallery
from fcnquant.compare.joint import compare_shard
from fcnquant.compare.histograms import HISTOGRAM_LAYERS, activation_histograms, table_histograms
from fcnquant.compare.report.compare_report import CompareReport
from fcnquant.compare.tensors.pairing import Pairing, pair_tensors
from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import DataError, ModelError
from fcnquant.execute import Executor, RunConfig
from fcnquant.recover.plan import read_recovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareOptions:
    """What compare measures besides both models' final metrics.

    ``drift_images``: per-layer drift is measured on that many of the images, spread evenly over them (an int, or
    ``"all"``/None for every image; :func:`~fcnquant.compare.drift.measure.drift_ids`). ``isolated``: also measure
    each layer's own drift (fed the float model's values). ``boundary_radius``: half-width in pixels of the
    boundary band for the changed-pixel share. ``gallery``: how many of the images with the most changed pixels
    the HTML report shows (input, ground truth, both predictions, changed pixels; 0 for none).
    ``histogram_layers``: activation histograms of that many of the worst layers (with a table or a statistics
    file). ``emulate``: also score the quantized model as the target's integer arithmetic computes it
    (:func:`fcnquant.emulate.emulate_eval`; ``emulate_target``: whose arithmetic, default the model's own).
    """

    drift_images: int | str | None = DEFAULT_DRIFT_IMAGES
    isolated: bool = True
    boundary_radius: int = DEFAULT_BOUNDARY_RADIUS
    gallery: int = GALLERY_IMAGES
    histogram_layers: int = HISTOGRAM_LAYERS
    emulate: bool = False
    emulate_target: str | None = None

    def __post_init__(self) -> None:
        if self.gallery < 0:
            raise DataError(f"gallery size must be >= 0, got {self.gallery}")
        if self.boundary_radius < 0:
            raise DataError(f"boundary radius must be >= 0, got {self.boundary_radius}")
        drift_ids((), self.drift_images)  # checks the count


def compare_models(
    float_model: str | os.PathLike[str],
    quant_model: str | os.PathLike[str],
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    options: CompareOptions | None = None,
    *,
    table: str | os.PathLike[str] | None = None,
    stats: str | os.PathLike[str] | None = None,
) -> CompareReport:
    """Returns the CompareReport of ``quant_model`` (QDQ int8 or fp16 ONNX) against ``float_model`` on a split.

    ``data``: a :class:`~fcnquant.data.DataConfig` (or a dataset root / open ``Dataset``; split ``val``): the
    images (``ids``, or the first ``num_images``; by default the data of ``fcnquant.data.resolve_data`` for the
    float model) and the preprocessing (the float model's ``fcnquant.preset`` metadata or ``awesome``, with
    ``size``/``mean``/``std`` overrides, as in ``fcnquant.evaluate``). The final metrics use every chosen image;
    per-layer drift ``options.drift_images`` of them. Unlabelled data gives the drift and changed-pixel shares only
    (mIoU is NaN). ``run``: the executor and batch size (:class:`~fcnquant.execute.RunConfig`); the report is the
    same on any executor and any number of shards, final metrics, gallery, histograms and drift bit for bit (use
    a Ray executor as a context manager to keep one connection for both passes). ``options``:
    :class:`CompareOptions`. ``table`` (a CalibrationTable JSON) adds each layer's clipping range; ``table`` or
    ``stats`` (a CalibrationStats ``.npz``) adds activation histograms of the worst layers to the HTML report
    (from ``table``: values seen on the drift images). Raises ModelError when no quantized activation can be
    paired.
    """
    cfg, run = DataConfig.of(data), RunConfig.of(run)
    options = options or CompareOptions()
    executor = run.resolved()
    start = time.perf_counter()
    fpath, qpath = Path(float_model), Path(quant_model)
    fm, qm = load_onnx(fpath), load_onnx(qpath)
    float_digests = model_digests(fpath)
    shas = (float_digests[0], model_identity(qpath))
    pairing = _pair(fm, qm, fpath, qpath)
    notes: list[str] = []
    recovery = read_recovery(qm)
    emitted_from = next((p.value for p in qm.metadata_props if p.key == "fcnquant.model_sha256"), None)
    # how the int8 model was made, for the report's header (fcnquant.quantize's metadata)
    quantization = {p.key.split(".", 1)[1]: p.value for p in qm.metadata_props
                    if p.key in ("fcnquant.method", "fcnquant.target", "fcnquant.per_channel")}
    if emitted_from and emitted_from not in float_digests:
        notes.append(f"{qpath.name} was emitted from another float model (sha256 {emitted_from[:12]}...) than "
                     f"{fpath.name}: per-layer drift compares against tensors of a different model (after "
                     "equalization, compare against the equalized float model written beside the int8 one)")
    entries = _table_entries(table, fm, float_digests, notes)
    if stats is not None:
        from fcnquant.calibrate.stats import CalibrationStats

        _note_other_model(f"calibration statistics {stats}", CalibrationStats.load(stats).model_sha256,
                          float_digests, notes)
    del fm, qm  # the drift pass loads its own copies
    dataset = cfg.open(fpath, progress=executor.progress)
    chosen = cfg.take(dataset)
    if not chosen:
        raise DataError(f"dataset {dataset.describe()} has no images to compare on")
    drift_on = drift_ids(chosen, options.drift_images)
    log.info("comparing on %d images of %s; drift on %d of them", len(chosen), dataset.describe(), len(drift_on))
    hists = table_histograms(entries, pairing.measured) if entries and stats is None else {}
    spec = DriftSpec(pairs=pairing.measured, isolated=options.isolated, batch_size=run.batch_size)
    parts = executor.map(
        compare_shard, dataset, chosen, models={"float": fpath, "quant": qpath}, desc="compare",
        args=(cfg, run.batch_size, options.boundary_radius, options.gallery, (str(fpath), str(qpath)), spec,
              tuple(drift_on), hists))
    final = merge_final([f for f, _ in parts])
    drift = merge_drift([d for _, d in parts if d is not None])
    log.info("preset %s", final.preset.describe())
    if final.counts.labelled:  # masks that label nothing would give a NaN mIoU (and a gate that measured nothing)
        final.counts.cm_float.check_labelled(len(chosen), dataset.describe())
    layers, histograms = _layers(final, drift, pairing, entries, options, stats, notes)
    emulation = None
    if options.emulate:
        from fcnquant.emulate.measure import emulate_eval

        emulation = emulate_eval(qpath, cfg, run, target=options.emulate_target).to_dict()
    return CompareReport(
        float_model=str(fpath), quant_model=str(qpath), float_sha256=shas[0], quant_sha256=shas[1],
        pairing=pairing.source, data=str(dataset.root), split=dataset.split, preset=final.preset.to_dict(),
        images=len(chosen), isolated=drift.sums.isolated is not None, final=final.counts.metrics(),
        unquantized=pairing.unquantized, unpaired_float=pairing.unpaired_float,
        unpaired_quant=pairing.unpaired_quant, table=str(table) if table is not None else None,
        stats=str(stats) if stats is not None else None, seconds=time.perf_counter() - start,
        gallery=render_gallery(final.gallery, dataset, final.preset), recovery=recovery, quantization=quantization,
        drift_images=len(drift_on), drift_ids=tuple(drift_on), layers=layers, histograms=histograms,
        notes=tuple(notes), emulation=emulation,
    )


def _pair(fm, qm, fpath: Path, qpath: Path) -> Pairing:
    """Returns the pairing of the two models' tensors; ModelError when no quantized activation pairs."""
    pairing = pair_tensors(fm, qm)
    if not pairing.measured:
        raise ModelError(f"no quantized activation of {qpath} could be paired with {fpath}: is it a quantized "
                         f"version of that model?")
    log.info("paired %d quantized activations (%s), %d unquantized; unpaired: %d float, %d quantized",
             len(pairing.measured), pairing.source, len(pairing.unquantized), len(pairing.unpaired_float),
             len(pairing.unpaired_quant))
    return pairing


def _layers(final: FinalShard, drift: DriftShard, pairing: Pairing, entries: dict, options: CompareOptions, stats,
            notes: list[str]) -> tuple[tuple[LayerDrift, ...], tuple]:
    """Returns the report's layers and activation histograms from the merged passes (adding to ``notes``)."""
    sums = drift.sums.result()
    layers = tuple(
        LayerDrift(
            float_name=p.float_name, quant_name=p.quant_name, op_type=p.op_type, order=k, source=p.source,
            accumulated=sums.accumulated[p.float_name],
            isolated=sums.isolated[p.float_name] if sums.isolated is not None else None,
            clip=(entries[p.float_name].lo, entries[p.float_name].hi) if p.float_name in entries else None,
        )
        for k, p in enumerate(pairing.measured)
    )
    if not final.counts.labelled:
        notes.append("the data has no labels: mIoU is not computed; boundaries come from the float predictions")
    return layers, activation_histograms(layers, drift.histograms, stats, entries, options.histogram_layers, notes)


def _note_other_model(what: str, made_for: str, float_digests: tuple[str, ...], notes: list[str]) -> None:
    """Adds a note (and logs a warning) when ``what`` was made for another model (its digest ``made_for`` is none
    of the float model's ``float_digests``)."""
    if made_for and made_for not in float_digests:
        notes.append(f"{what} was made for another model (sha256 {made_for[:12]}…, float model "
                     f"{float_digests[0][:12]}…)")
        log.warning(notes[-1])


def _table_entries(table, fm, float_digests: tuple[str, ...], notes: list[str]) -> dict:
    """Returns {tensor: TensorEntry} of the calibration table ({} without one)."""
    if table is None:
        return {}
    from fcnquant.calibrate.table import CalibrationTable
    from fcnquant.calibrate.tensors import inherited_scales

    t = CalibrationTable.load(table)
    _note_other_model(f"calibration table {table}", t.model_sha256, float_digests, notes)
    entries = dict(t.tensors)
    # A tensor that reuses another's scale (MaxPool, Resize, fused producers) is quantized with that range.
    for name, source in inherited_scales(fm).items():
        if name not in entries and source in t.tensors:
            entries[name] = t.tensors[source]
    return entries
