"""``compare_models``: per-layer drift and final-metric deltas between a float model and its quantized version.

Two passes, each streaming (memory stays constant in the number of images):

1. **final metrics** (:func:`fcnquant.compare.final_pass.final_metrics`): both models run as they are, plain
   onnxruntime sessions, over every image: mIoU, per-class IoU and changed pixels are bit for bit what
   ``fcnquant eval`` computes, at the cost of two evaluations;
2. **per-layer drift** (:func:`fcnquant.compare.drift_pass.layer_drift`): the models run exposing the paired
   activations, plus the isolated rewrite, on a deterministic subsample spread over the images
   (``drift_images``, default 16; :func:`fcnquant.compare.drift_pass.drift_ids`). Exposing tensors costs
   onnxruntime's fusions (and a QDQ model's integer kernels), and drift statistics settle on far fewer images
   than mIoU does, so this pass is kept small.
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
from fcnquant.compare.batching import resolve_batch
from fcnquant.compare.drift_pass import DEFAULT_DRIFT_IMAGES, drift_ids, layer_drift
from fcnquant.compare.final import DEFAULT_BOUNDARY_RADIUS
from fcnquant.compare.final_pass import BatchHook, final_metrics, to_final_metrics
from fcnquant.compare.gallery import GALLERY_IMAGES, GalleryCollector, render_gallery
from fcnquant.compare.histogram import FixedHistogram, observe_images
from fcnquant.compare.pairing import TensorPair, pair_tensors
from fcnquant.compare.report import ActivationHistogram, CompareReport, LayerDrift
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
    drift_images: int | str | None = DEFAULT_DRIFT_IMAGES,
    on_batch: BatchHook | None = None,
    ray_address: str | None = None,
    shards: int | None = None,
) -> CompareReport:
    """Returns the CompareReport of ``quant_model`` (QDQ int8 or fp16 ONNX) against ``float_model`` on a split.

    ``data`` defaults to ``fcnquant.data.resolve_data(None, float_model)`` (the built-in synthetic VOC for a demo
    model, else a VOC found on the machine, else the synthetic set with a warning); ``ann_dir`` picks the
    annotation folder; ``preset`` to the float model's ``fcnquant.preset`` metadata or ``awesome`` (``size``/``mean``/``std`` override it, as in ``fcnquant.evaluate``). The final metrics use every
    chosen image (``ids``, or the first ``num_images``); per-layer drift uses ``drift_images`` of them spread
    evenly over the list (an int, or ``"all"``/None for every image). Unlabelled data gives the drift and
    changed-pixel shares only (mIoU is NaN). ``table`` (a CalibrationTable JSON) adds each layer's clipping range;
    ``table`` or ``stats`` (a CalibrationStats ``.npz``) adds activation histograms of the worst
    ``histogram_layers`` layers to the HTML report (from ``table``: values seen on the drift images).
    ``boundary_radius``: half-width in pixels of the boundary band for the changed-pixel share. ``on_batch``:
    see :func:`fcnquant.compare.final_pass.final_metrics`. ``gallery``: how many of the images with the most
    changed pixels the HTML report shows (input, ground truth, both predictions, changed pixels;
    ``fcnquant.compare.gallery``), 0 for none. ``ray_address`` ("local": a local Ray instance, "auto" or
    "HOST:PORT": a running cluster) runs both passes as ``shards`` Ray tasks each
    (:func:`fcnquant.distributed.compare_passes`; default: the cluster's CPU count): the report is the same,
    final metrics, gallery and drift bit for bit. Raises ModelError when no quantized activation can be paired.
    """
    from fcnquant.data import open_dataset, preset_for_session, resolve_data, take_ids
    from fcnquant.runtime import input_spec, make_session

    if gallery < 0:
        raise DataError(f"gallery size must be >= 0, got {gallery}")
    if ray_address is None and shards is not None:
        raise DataError("shards= sets the number of shards of a Ray run: add ray_address=")
    if ray_address is not None and on_batch is not None:
        raise DataError("on_batch= sees every batch in this process; it cannot be combined with ray_address=")
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
    recovery = read_recovery(qm)
    emitted_from = next((p.value for p in qm.metadata_props if p.key == "fcnquant.model_sha256"), None)
    if emitted_from and emitted_from != file_sha256(fpath):
        notes.append(f"{qpath.name} was emitted from another float model (sha256 {emitted_from[:12]}...) than "
                     f"{fpath.name}: per-layer drift compares against tensors of a different model (after "
                     "equalization, compare against the equalized float model written beside the int8 one)")

    # the two sessions take turns on every image: threads that spin-wait after a run would take the cores the
    # other one needs (the final pass ran ~10 % slower than the two evaluations with spinning on)
    f_plain = make_session(fpath, threads=threads, spinning=False)
    q_plain = make_session(qpath, threads=threads, spinning=False)
    _, f_shape = input_spec(f_plain)
    _, q_shape = input_spec(q_plain)
    if f_shape[1:] != q_shape[1:]:
        raise ModelError(f"input shapes differ: {fpath} takes {f_shape}, {qpath} takes {q_shape}")
    pre = preset_for_session(f_plain, preset, size=size, mean=mean, std=std)
    dataset = open_dataset(resolve_data(data, fpath, progress=progress).root, split, ann_dir)
    chosen = take_ids(dataset, ids, num_images)
    if not chosen:
        raise DataError(f"dataset {dataset.describe()} has no images to compare on")
    drift_on = drift_ids(chosen, drift_images)
    batch_size, fixed_batch = resolve_batch(batch_size, f_shape[0], q_shape[0])
    entries = _table_entries(table, fm, fpath, notes)
    hists = _table_histograms(entries, measured) if entries and stats is None else {}

    log.info("comparing on %d images of %s with preset %s; drift on %d of them", len(chosen), dataset.describe(),
             pre.describe(), len(drift_on))
    if ray_address is not None:
        del f_plain, q_plain
        from fcnquant.distributed import compare_passes

        passes = compare_passes(fpath, qpath, dataset, pre, chosen, drift_on, pairs=measured, isolated=isolated,
                                batch_size=batch_size, fixed_batch=fixed_batch, boundary_radius=boundary_radius,
                                gallery=gallery, histograms=hists, threads=threads, address=ray_address,
                                shards=shards, progress=progress)
        final, keep, drift = to_final_metrics(passes.final), passes.gallery, passes.drift.result()
    else:
        keep = GalleryCollector(gallery)  # the most changed images, for the report's gallery (k entries at most)

        def hook(batch, pred_f, pred_q) -> None:
            keep.update(batch.ids, pred_f, pred_q)
            if on_batch is not None:
                on_batch(batch, pred_f, pred_q)

        final = final_metrics(f_plain, q_plain, dataset, pre, chosen, batch_size=batch_size,
                              fixed_batch=fixed_batch, boundary_radius=boundary_radius, progress=progress,
                              on_batch=hook)
        del f_plain, q_plain

        def observe(values, n):
            observe_images(hists, values, n)

        drift = layer_drift(fm, qm, dataset, pre, drift_on, pairs=measured, isolated=isolated,
                            batch_size=batch_size, threads=threads, progress=progress,
                            on_float=observe if hists else None)
    del fm, qm
    layers = tuple(
        LayerDrift(
            float_name=p.float_name, quant_name=p.quant_name, op_type=p.op_type, order=k, source=p.source,
            accumulated=drift.accumulated[p.float_name],
            isolated=drift.isolated[p.float_name] if drift.isolated is not None else None,
            clip=(entries[p.float_name].lo, entries[p.float_name].hi) if p.float_name in entries else None,
        )
        for k, p in enumerate(measured)
    )
    if not final.labelled:
        notes.append("the data has no labels: mIoU is not computed; boundaries come from the float predictions")
    histograms = _histograms(layers, hists, stats, entries, histogram_layers, notes)
    gallery_images = render_gallery(keep, dataset, pre)
    return CompareReport(
        float_model=str(fpath), quant_model=str(qpath), float_sha256=file_sha256(fpath),
        quant_sha256=file_sha256(qpath), pairing=pairing.source, data=str(dataset.root), split=dataset.split,
        preset=pre.to_dict(), images=len(chosen), isolated=drift.isolated is not None, layers=layers, final=final,
        unquantized=pairing.unquantized, unpaired_float=pairing.unpaired_float,
        unpaired_quant=pairing.unpaired_quant, histograms=histograms,
        table=str(table) if table is not None else None, stats=str(stats) if stats is not None else None,
        seconds=time.perf_counter() - start, notes=tuple(notes), gallery=gallery_images,
        recovery=recovery, drift_images=len(drift_on), drift_ids=tuple(drift_on),
    )


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
