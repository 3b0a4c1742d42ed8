"""``compare_models``: per-layer drift and final-metric deltas between a float model and its quantized version.

Per batch of images (memory stays constant in the number of images):

1. each model runs exposing the activations that were paired (the float model's are the reference values, the
   quantized model's give the accumulated drift); its first output is the logits for the final metrics;
2. the isolated rewrite (``fcnquant.compare.isolated``) runs fed the float activations (isolated drift).

The final metrics must be bit for bit what ``fcnquant eval`` computes, but exposing intermediate tensors changes
onnxruntime's fusions and with them the low bits of the logits (for QDQ models it turns off the integer kernels).
So each model also runs as is on the first batch: when its exposed run gives bit-identical logits (same kernels),
the plain run is dropped for the remaining batches; otherwise the plain run supplies the logits throughout.

The drift sums, confusion matrices and histograms are updated and each batch's tensors are dropped.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from fcnquant._io import file_sha256, load_onnx
from fcnquant.compare.drift import DriftAccumulator
from fcnquant.compare.final import DEFAULT_BOUNDARY_RADIUS, FinalAccumulator
from fcnquant.compare.gallery import GALLERY_IMAGES, GalleryCollector, render_gallery
from fcnquant.compare.histogram import FixedHistogram
from fcnquant.compare.isolated import build_isolated
from fcnquant.compare.pairing import TensorPair, pair_tensors
from fcnquant.compare.report import ActivationHistogram, CompareReport, FinalMetrics, LayerDrift
from fcnquant.errors import CalibrationError, DataError, ModelError
from fcnquant.recover.plan import read_recovery

log = logging.getLogger(__name__)

HISTOGRAM_LAYERS = 6  # activation histograms drawn in the HTML report (the worst layers that have data)
HISTOGRAM_BINS = 120


def compare_models(
    float_model: str | os.PathLike[str],
    quant_model: str | os.PathLike[str],
    data: str | os.PathLike[str] | None = None,
    split: str | None = "val",
    num_images: int | None = None,
    preset=None,
    table: str | os.PathLike[str] | None = None,
    stats: str | os.PathLike[str] | None = None,
    isolated: bool = True,
    progress: bool = True,
    *,
    batch_size: int = 1,
    ids: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    boundary_radius: int = DEFAULT_BOUNDARY_RADIUS,
    threads: int = 0,
    histogram_layers: int = HISTOGRAM_LAYERS,
    ann_dir: str | None = None,
    gallery: int = GALLERY_IMAGES,
) -> CompareReport:
    """Returns the CompareReport of ``quant_model`` (QDQ int8 or fp16 ONNX) against ``float_model`` on a split.

    ``data`` defaults to ``fcnquant.data.resolve_data(None, float_model)`` (the built-in synthetic VOC for a demo
    model, else a VOC found on the machine, else the synthetic set with a warning); ``ann_dir`` picks the
    annotation folder; ``preset`` to the float model's ``fcnquant.preset`` metadata or
    ``awesome`` (``size``/``mean``/``std`` override it, as in ``fcnquant.evaluate``). Unlabelled data gives the
    drift and changed-pixel shares only (mIoU is NaN). ``table`` (a CalibrationTable JSON) adds each layer's
    clipping range; ``table`` or ``stats`` (a CalibrationStats ``.npz``) adds activation histograms of the worst
    ``histogram_layers`` layers to the HTML report. ``boundary_radius``: half-width in pixels of the boundary band
    for the changed-pixel share. ``gallery``: how many of the images with the most changed pixels the HTML report
    shows (input, ground truth, both predictions, changed pixels; ``fcnquant.compare.gallery``), 0 for none.
    Raises ModelError when no quantized activation can be paired.
    """
    from tqdm import tqdm

    from fcnquant.data import iter_batches, open_dataset, preset_for_session, resolve_data, take_ids
    from fcnquant.runtime import input_spec, make_session, with_outputs

    if gallery < 0:
        raise DataError(f"gallery size must be >= 0, got {gallery}")
    start = time.perf_counter()
    fpath, qpath = Path(float_model), Path(quant_model)
    fm, qm = load_onnx(fpath), load_onnx(qpath)
    pairing = pair_tensors(fm, qm)
    measured = pairing.measured
    if not measured:
        raise ModelError(f"no quantized activation of {qpath} could be paired with {fpath}: is it a quantized "
                         f"version of that model?")
    log.info("paired %d quantized activations (%s), %d unquantized; unpaired: %d float, %d quantized",
             len(measured), pairing.source, len(pairing.unquantized), len(pairing.unpaired_float),
             len(pairing.unpaired_quant))
    notes: list[str] = []
    emitted_from = next((p.value for p in qm.metadata_props if p.key == "fcnquant.model_sha256"), None)
    if emitted_from and emitted_from != file_sha256(fpath):
        notes.append(f"{qpath.name} was emitted from another float model (sha256 {emitted_from[:12]}...) than "
                     f"{fpath.name}: per-layer drift compares against tensors of a different model (after "
                     "equalization, compare against the equalized float model written beside the int8 one)")

    f_plain = make_session(fpath, threads=threads)
    q_plain = make_session(qpath, threads=threads)
    f_input, f_shape = input_spec(f_plain)
    q_input, q_shape = input_spec(q_plain)
    if f_shape[1:] != q_shape[1:]:
        raise ModelError(f"input shapes differ: {fpath} takes {f_shape}, {qpath} takes {q_shape}")
    f_inputs, q_inputs = set(_graph_inputs(fm)), set(_graph_inputs(qm))
    f_names = list(dict.fromkeys(p.float_name for p in measured if p.float_name not in f_inputs))
    q_names = list(dict.fromkeys(p.quant_name for p in measured if p.quant_name not in q_inputs))
    f_run = _TappedModel("float", f_plain, with_outputs(fm, f_names), f_input, f_names, threads)
    q_run = _TappedModel("quantized", q_plain, with_outputs(qm, q_names), q_input, q_names, threads)
    pre = preset_for_session(f_plain, preset, size=size, mean=mean, std=std)
    del f_plain, q_plain  # held by the _TappedModels only as long as they are needed
    plan = build_isolated(qm, measured) if isolated else None
    iso = make_session(plan.model.SerializeToString(), threads=threads) if plan is not None else None
    iso_inputs = {i.name for i in iso.get_inputs()} if iso is not None else set()
    dataset = open_dataset(resolve_data(data, fpath, progress=progress).root, split, ann_dir)
    chosen = take_ids(dataset, ids, num_images)
    if not chosen:
        raise DataError(f"dataset {dataset.describe()} has no images to compare on")
    batch_size = _batch_size(batch_size, f_shape[0], q_shape[0])
    fixed_batch = f_shape[0] or q_shape[0]

    entries = _table_entries(table, fm, fpath, notes)
    acc = {p.float_name: DriftAccumulator() for p in measured}
    isod = {p.float_name: DriftAccumulator() for p in measured} if plan is not None else {}
    hists = _table_histograms(entries, measured) if entries and stats is None else {}
    final: FinalAccumulator | None = None
    keep = GalleryCollector(gallery)  # the most changed images, for the report's gallery (k entries at most)

    log.info("comparing on %d images of %s with preset %s", len(chosen), dataset.describe(), pre.describe())
    with tqdm(total=len(chosen), desc="compare", unit="img", disable=not progress) as bar:
        for batch in iter_batches(dataset, pre, chosen, batch_size):
            n = batch.images.shape[0]
            images = batch.images
            if fixed_batch is not None and n < fixed_batch:
                images = np.concatenate([images, np.repeat(images[-1:], fixed_batch - n, axis=0)])
            f_logits, f_vals = f_run.run(images, n)
            q_logits, q_vals = q_run.run(images, n)
            if final is None:
                final = FinalAccumulator(_num_classes(f_logits, q_logits), boundary_radius=boundary_radius)
            hw = batch.masks.shape[1:] if batch.masks is not None else f_logits.shape[2:]
            pred_f, pred_q = _predict(f_logits, hw, final.num_classes), _predict(q_logits, hw, final.num_classes)
            final.update(pred_f, pred_q, batch.masks)
            keep.update(batch.ids, pred_f, pred_q)
            del pred_f, pred_q
            for name in f_inputs:
                f_vals[name] = images.astype(f_run.dtype, copy=False)
            for name in q_inputs:
                q_vals[name] = images.astype(q_run.dtype, copy=False)
            for p in measured:
                _update(acc[p.float_name], f_vals[p.float_name][:n], q_vals[p.quant_name][:n], p, "accumulated")
            del q_vals
            if plan is not None:
                feeds = {name: f_vals[src].astype(dtype, copy=False) for name, (src, dtype) in plan.feeds.items()}
                if q_input in iso_inputs:
                    feeds[q_input] = images.astype(q_run.dtype, copy=False)
                outs = list(dict.fromkeys(plan.outputs.values()))
                iso_vals = dict(zip(outs, iso.run(outs, feeds)))
                del feeds
                for p in measured:
                    _update(isod[p.float_name], f_vals[p.float_name][:n], iso_vals[plan.outputs[p.float_name]][:n],
                            p, "isolated")
                del iso_vals
            for name, h in hists.items():
                h.update(f_vals[name][:n])
            del f_vals
            bar.update(n)

    assert final is not None
    layers = tuple(
        LayerDrift(
            float_name=p.float_name, quant_name=p.quant_name, op_type=p.op_type, order=k, source=p.source,
            accumulated=acc[p.float_name].result(),
            isolated=isod[p.float_name].result() if plan is not None else None,
            clip=(entries[p.float_name].lo, entries[p.float_name].hi) if p.float_name in entries else None,
        )
        for k, p in enumerate(measured)
    )
    report_final = _final_metrics(final)
    if not report_final.labelled:
        notes.append("the data has no labels: mIoU is not computed; boundaries come from the float predictions")
    histograms = _histograms(layers, hists, stats, entries, histogram_layers, notes)
    gallery_images = render_gallery(keep, dataset, pre)
    return CompareReport(
        float_model=str(fpath), quant_model=str(qpath), float_sha256=file_sha256(fpath),
        quant_sha256=file_sha256(qpath), pairing=pairing.source, data=str(dataset.root), split=dataset.split,
        preset=pre.to_dict(), images=len(chosen), isolated=plan is not None, layers=layers, final=report_final,
        unquantized=pairing.unquantized, unpaired_float=pairing.unpaired_float,
        unpaired_quant=pairing.unpaired_quant, histograms=histograms,
        table=str(table) if table is not None else None, stats=str(stats) if stats is not None else None,
        seconds=time.perf_counter() - start, notes=tuple(notes), gallery=gallery_images,
        recovery=read_recovery(qm),
    )


class _TappedModel:
    """One model run exposing ``names``, plus its plain session until the exposed logits prove bit-identical."""

    def __init__(self, label: str, plain, tapped_model, input_name: str, names: list[str], threads: int) -> None:
        from fcnquant.runtime import input_dtype, make_session

        self.label = label
        self.plain = plain
        self.input_name = input_name
        self.logits_name = plain.get_outputs()[0].name
        self.dtype = np.dtype(input_dtype(plain))
        self.names = list(dict.fromkeys([self.logits_name, *names]))
        self.tapped = make_session(tapped_model.SerializeToString(), threads=threads)
        self.checked = False

    def run(self, images: np.ndarray, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Returns (logits of the first ``n`` images, {exposed tensor: value}) for one batch."""
        feed = {self.input_name: images.astype(self.dtype, copy=False)}
        values = dict(zip(self.names, self.tapped.run(self.names, feed)))
        logits = values[self.logits_name]
        if self.plain is not None:
            plain_logits = self.plain.run([self.logits_name], feed)[0]
            if not self.checked:
                self.checked = True
                if np.array_equal(plain_logits, logits):
                    log.info("%s model: exposing its activations leaves the logits bit-identical; one run per "
                             "batch", self.label)
                    self.plain = None
                else:
                    diff = np.abs(plain_logits.astype(np.float64) - logits.astype(np.float64)).max()
                    log.info("%s model: exposing its activations changes onnxruntime's kernels (logits differ by up "
                             "to %.3g); the final metrics come from an extra plain run", self.label, diff)
            logits = plain_logits
        return np.asarray(logits)[:n], values


def _graph_inputs(model) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def _batch_size(requested: int, f_batch: int | None, q_batch: int | None) -> int:
    if requested < 1:
        raise DataError(f"batch size must be at least 1, got {requested}")
    if f_batch is not None and q_batch is not None and f_batch != q_batch:
        raise ModelError(f"the models have different fixed batch sizes ({f_batch} and {q_batch})")
    fixed = f_batch or q_batch
    if fixed is not None and fixed != requested:
        log.info("model has a fixed batch of %d; running %s", fixed,
                 "image by image" if fixed == 1 else f"padded batches of {fixed}")
        return fixed
    return requested


def _num_classes(f_logits: np.ndarray, q_logits: np.ndarray) -> int:
    if f_logits.ndim != 4 or q_logits.shape != f_logits.shape:
        raise ModelError(f"expected both models to output (N, C, H, W) logits of one shape, got {f_logits.shape} "
                         f"and {q_logits.shape}")
    return int(f_logits.shape[1])


def _predict(logits: np.ndarray, hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """Returns class ids exactly as ``fcnquant.evaluate`` derives them (bilinear resize to the labels, argmax)."""
    from fcnquant.evaluate import output_to_classes

    return output_to_classes(logits, tuple(hw), num_classes)


def _update(accumulator: DriftAccumulator, ref: np.ndarray, test: np.ndarray, pair: TensorPair, kind: str) -> None:
    try:
        accumulator.update(ref, test)
    except ValueError as exc:
        raise ModelError(f"{kind} drift of '{pair.float_name}' against '{pair.quant_name}': {exc}") from exc


def _table_entries(table, fm, fpath: Path, notes: list[str]) -> dict:
    """Returns {tensor: TensorEntry} of the calibration table ({} without one)."""
    if table is None:
        return {}
    from fcnquant.calibrate.table import CalibrationTable

    from fcnquant.calibrate.tensors import inherited_scales

    t = CalibrationTable.load(table)
    sha = file_sha256(fpath)
    if t.model_sha256 and t.model_sha256 != sha:
        notes.append(f"calibration table {table} was made for another model (sha256 {t.model_sha256[:12]}…, "
                     f"float model {sha[:12]}…)")
        log.warning(notes[-1])
    entries = dict(t.tensors)
    # A tensor that reuses another's scale (MaxPool, Resize, fused producers) is quantized with that range.
    for name, source in inherited_scales(fm).items():
        if name not in entries and source in t.tensors:
            entries[name] = t.tensors[source]
    return entries


def _table_histograms(entries: dict, measured: Sequence[TensorPair]) -> dict[str, FixedHistogram]:
    """Returns a FixedHistogram over each table tensor's range, for the measured tensors the table lists."""
    out: dict[str, FixedHistogram] = {}
    for p in measured:
        e = entries.get(p.float_name)
        if e is None:
            continue
        lo, hi = min(e.min, e.lo), max(e.max, e.hi)
        if math.isfinite(lo) and math.isfinite(hi):
            out[p.float_name] = FixedHistogram(lo, hi, HISTOGRAM_BINS)
    return out


def _integer_counts(counts: np.ndarray) -> tuple[int, ...]:
    """Returns fractional bin counts as integers with the same total (rounding the running sum)."""
    cum = np.rint(np.cumsum(np.asarray(counts, dtype=np.float64)))
    return tuple(int(c) for c in np.diff(np.concatenate(([0.0], cum))))


def _final_metrics(final: FinalAccumulator) -> FinalMetrics:
    from fcnquant.data import VOC_CLASSES

    n = final.num_classes
    names = tuple(VOC_CLASSES) if n == len(VOC_CLASSES) else tuple(f"class {k}" for k in range(n))
    nan = math.nan
    if final.labelled:
        cf, cq = final.cm_float, final.cm_quant
        iou_f, iou_q = tuple(float(v) for v in cf.iou() * 100), tuple(float(v) for v in cq.iou() * 100)
        scores = (cf.miou(), cq.miou(), cf.miou_awesome(), cq.miou_awesome(), cf.pixel_accuracy() * 100,
                  cq.pixel_accuracy() * 100)
    else:
        iou_f = iou_q = tuple(nan for _ in range(n))
        scores = (nan,) * 6
    return FinalMetrics(
        class_names=names, labelled=final.labelled, miou_float=scores[0], miou_quant=scores[1],
        miou_awesome_float=scores[2], miou_awesome_quant=scores[3], iou_float=iou_f, iou_quant=iou_q,
        pixel_acc_float=scores[4], pixel_acc_quant=scores[5], pixels=final.pixels, changed=final.changed,
        boundary_pixels=final.boundary_pixels, boundary_changed=final.boundary_changed,
        boundary_radius=final.boundary_radius,
    )


def _histograms(layers, hists: dict[str, FixedHistogram], stats, entries: dict, top: int,
                notes: list[str]) -> tuple[ActivationHistogram, ...]:
    """Returns the activation histograms of the ``top`` worst layers that have data (stats file or table)."""
    if top <= 0 or (stats is None and not hists):
        return ()
    ranked = sorted(layers, key=lambda layer: (math.isnan(layer.accumulated.snr_db), layer.accumulated.snr_db))
    out: list[ActivationHistogram] = []
    if stats is not None:
        from fcnquant.calibrate.stats import CalibrationStats

        st = CalibrationStats.load(stats)
        for layer in ranked:
            ts = st.tensors.get(layer.float_name)
            if ts is None or ts.count == 0:
                continue
            e = entries.get(layer.float_name)
            lo = min(ts.min, e.lo) if e is not None else ts.min
            hi = max(ts.max, e.hi) if e is not None else ts.max
            if not hi > lo:
                continue
            try:
                counts, edges = ts.hist.to_linear(HISTOGRAM_BINS, hi, absolute=False, lower=lo, vmin=ts.min,
                                                  vmax=ts.max)
            except CalibrationError as exc:
                log.warning("no histogram for %s: %s", layer.float_name, exc)
                continue
            out.append(ActivationHistogram(
                tensor=layer.float_name, edges=tuple(float(v) for v in edges),
                counts=_integer_counts(counts), lo=e.lo if e is not None else None,
                hi=e.hi if e is not None else None, min=ts.min, max=ts.max, source="stats"))
            if len(out) == top:
                break
        if not out:
            notes.append(f"statistics file {stats} has none of the quantized activations")
        return tuple(out)
    for layer in ranked:
        h = hists.get(layer.float_name)
        if h is None or not h.counts.any():
            continue
        e = entries[layer.float_name]
        out.append(ActivationHistogram(
            tensor=layer.float_name, edges=tuple(float(v) for v in h.edges), counts=tuple(int(c) for c in h.counts),
            lo=e.lo, hi=e.hi, min=h.min if math.isfinite(h.min) else None,
            max=h.max if math.isfinite(h.max) else None, source="compare"))
        if len(out) == top:
            break
    return tuple(out)
