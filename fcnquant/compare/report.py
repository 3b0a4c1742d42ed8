"""The typed result of ``compare_models``: per-layer drift, final-output deltas, histograms; JSON, table, HTML."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

from fcnquant._io import atomic_write_text
from fcnquant.compare.drift import DriftMetrics
from fcnquant.compare.gallery import GalleryImage
from fcnquant.errors import FcnquantError
from fcnquant.recover.plan import format_recovery

FORMAT_VERSION = 1


def _num(v: float | None) -> float | None:
    """Returns a JSON-safe float: None for NaN/inf."""
    return None if v is None or not math.isfinite(v) else float(v)


def _float(v) -> float:
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class LayerDrift:
    """Drift of one quantized activation, accumulated (whole quantized model) and isolated (its own quantization)."""

    float_name: str
    quant_name: str
    op_type: str
    order: int  # depth: position among the quantized activations, in the float model's topological order
    source: str  # how it was paired: "tensor_map" or "structure"
    accumulated: DriftMetrics
    isolated: DriftMetrics | None = None
    clip: tuple[float, float] | None = None  # calibration range (lo, hi) when a table was given

    @property
    def inherited_db(self) -> float:
        """Returns isolated SNR minus accumulated SNR: how much of this layer's drift comes from upstream."""
        if self.isolated is None:
            return math.nan
        a, i = self.accumulated.snr_db, self.isolated.snr_db
        return i - a if math.isfinite(a) and math.isfinite(i) else math.nan

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {
            "float_name": self.float_name, "quant_name": self.quant_name, "op_type": self.op_type,
            "order": self.order, "source": self.source, "accumulated": self.accumulated.to_dict(),
            "isolated": self.isolated.to_dict() if self.isolated is not None else None,
            "clip": list(self.clip) if self.clip is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LayerDrift":
        """Returns the LayerDrift stored by ``to_dict``."""
        return cls(
            float_name=d["float_name"], quant_name=d["quant_name"], op_type=d["op_type"], order=int(d["order"]),
            source=d["source"], accumulated=DriftMetrics.from_dict(d["accumulated"]),
            isolated=DriftMetrics.from_dict(d["isolated"]) if d.get("isolated") else None,
            clip=tuple(d["clip"]) if d.get("clip") else None,
        )


@dataclass(frozen=True)
class FinalMetrics:
    """Scores of both models' final predictions; IoU and mIoU in percent, NaN when the data has no labels."""

    class_names: tuple[str, ...]
    labelled: bool
    miou_float: float
    miou_quant: float
    miou_awesome_float: float
    miou_awesome_quant: float
    iou_float: tuple[float, ...]
    iou_quant: tuple[float, ...]
    pixel_acc_float: float
    pixel_acc_quant: float
    pixels: int
    changed: int
    boundary_pixels: int
    boundary_changed: int
    boundary_radius: int

    @property
    def miou_drop(self) -> float:
        """Returns mIoU(float) - mIoU(quantized) in points (positive = the quantized model is worse)."""
        return self.miou_float - self.miou_quant

    @property
    def iou_delta(self) -> tuple[float, ...]:
        """Returns per-class IoU(quantized) - IoU(float) in points (NaN where a class has no pixels)."""
        return tuple(q - f for f, q in zip(self.iou_float, self.iou_quant))

    @property
    def changed_share(self) -> float:
        """Returns the fraction of pixels whose predicted class changed."""
        return self.changed / self.pixels if self.pixels else math.nan

    @property
    def boundary_changed_share(self) -> float:
        """Returns the fraction of boundary-band pixels whose predicted class changed."""
        return self.boundary_changed / self.boundary_pixels if self.boundary_pixels else math.nan

    @property
    def interior_changed_share(self) -> float:
        """Returns the fraction of pixels outside the boundary band whose predicted class changed."""
        n = self.pixels - self.boundary_pixels
        return (self.changed - self.boundary_changed) / n if n else math.nan

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (NaN as null), with the derived deltas and shares."""
        return {
            "labelled": self.labelled,
            "miou_float": _num(self.miou_float), "miou_quant": _num(self.miou_quant), "miou_drop": _num(self.miou_drop),
            "miou_awesome_float": _num(self.miou_awesome_float), "miou_awesome_quant": _num(self.miou_awesome_quant),
            "pixel_acc_float": _num(self.pixel_acc_float), "pixel_acc_quant": _num(self.pixel_acc_quant),
            "per_class": [
                {"class": c, "iou_float": _num(f), "iou_quant": _num(q), "delta": _num(q - f)}
                for c, f, q in zip(self.class_names, self.iou_float, self.iou_quant)
            ],
            "pixels": self.pixels, "changed": self.changed, "changed_share": _num(self.changed_share),
            "boundary_radius": self.boundary_radius, "boundary_pixels": self.boundary_pixels,
            "boundary_changed": self.boundary_changed, "boundary_changed_share": _num(self.boundary_changed_share),
            "interior_changed_share": _num(self.interior_changed_share),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FinalMetrics":
        """Returns the FinalMetrics stored by ``to_dict``."""
        per = d["per_class"]
        return cls(
            class_names=tuple(c["class"] for c in per), labelled=bool(d["labelled"]),
            miou_float=_float(d["miou_float"]), miou_quant=_float(d["miou_quant"]),
            miou_awesome_float=_float(d["miou_awesome_float"]), miou_awesome_quant=_float(d["miou_awesome_quant"]),
            iou_float=tuple(_float(c["iou_float"]) for c in per), iou_quant=tuple(_float(c["iou_quant"]) for c in per),
            pixel_acc_float=_float(d["pixel_acc_float"]), pixel_acc_quant=_float(d["pixel_acc_quant"]),
            pixels=int(d["pixels"]), changed=int(d["changed"]), boundary_pixels=int(d["boundary_pixels"]),
            boundary_changed=int(d["boundary_changed"]), boundary_radius=int(d["boundary_radius"]),
        )


@dataclass(frozen=True)
class ActivationHistogram:
    """A float activation's value histogram with the calibration's clipping range, for the HTML report."""

    tensor: str
    edges: tuple[float, ...]  # len(counts) + 1 bin edges
    counts: tuple[int, ...]
    lo: float | None = None  # chosen clipping range (calibration table), None when unknown
    hi: float | None = None
    min: float | None = None  # observed range
    max: float | None = None
    source: str = "compare"  # "stats" (calibration statistics file) or "compare" (values seen during compare)

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"tensor": self.tensor, "edges": [float(e) for e in self.edges], "counts": [int(c) for c in self.counts],
                "lo": _num(self.lo), "hi": _num(self.hi), "min": _num(self.min), "max": _num(self.max),
                "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "ActivationHistogram":
        """Returns the histogram stored by ``to_dict``."""
        return cls(tensor=d["tensor"], edges=tuple(d["edges"]), counts=tuple(d["counts"]), lo=d.get("lo"),
                   hi=d.get("hi"), min=d.get("min"), max=d.get("max"), source=d.get("source", "compare"))


@dataclass(frozen=True)
class CompareReport:
    """Everything ``compare_models`` measured; ``layers`` are in the float model's topological order."""

    float_model: str
    quant_model: str
    float_sha256: str
    quant_sha256: str
    pairing: str  # "tensor_map" or "structure"
    data: str
    split: str | None
    preset: dict
    images: int
    isolated: bool
    layers: tuple[LayerDrift, ...]
    final: FinalMetrics
    unquantized: tuple[str, ...] = ()
    unpaired_float: tuple[str, ...] = ()
    unpaired_quant: tuple[str, ...] = ()
    histograms: tuple[ActivationHistogram, ...] = ()
    table: str | None = None
    stats: str | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())
    gallery: tuple[GalleryImage, ...] = ()  # the images with the most changed pixels, most first
    recovery: dict = field(default_factory=dict)  # the int8 model's recovery record (fcnquant.recovery metadata)
    drift_images: int | None = None  # images the per-layer drift was measured on (None: all ``images``)
    drift_ids: tuple[str, ...] = ()  # their ids (the deterministic subsample), when recorded

    @property
    def drift_count(self) -> int:
        """Returns the number of images the per-layer drift was measured on."""
        return self.images if self.drift_images is None else self.drift_images

    @property
    def miou_drop(self) -> float:
        """Returns mIoU(float) - mIoU(quantized) in points; NaN without labels."""
        return self.final.miou_drop

    def worst(self, top: int | None = None, by: str = "accumulated") -> list[LayerDrift]:
        """Returns the layers sorted by ascending SNR (``by`` "accumulated" or "isolated"), the first ``top``."""
        if by not in ("accumulated", "isolated"):
            raise FcnquantError(f"sort key must be 'accumulated' or 'isolated', got '{by}'")

        def key(layer: LayerDrift):
            m = layer.accumulated if by == "accumulated" else layer.isolated
            snr = m.snr_db if m is not None else math.nan
            return (math.isnan(snr), snr if not math.isnan(snr) else 0.0, layer.order)

        ranked = sorted(self.layers, key=key)
        return ranked if top is None else ranked[: max(0, top)]

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict of the whole report (NaN and infinities written as null)."""
        return {
            "format_version": FORMAT_VERSION,
            "float_model": self.float_model, "quant_model": self.quant_model,
            "float_sha256": self.float_sha256, "quant_sha256": self.quant_sha256,
            "pairing": self.pairing, "data": self.data, "split": self.split, "preset": self.preset,
            "images": self.images, "drift_images": self.drift_count, "drift_ids": list(self.drift_ids),
            "isolated": self.isolated, "seconds": round(self.seconds, 3),
            "table": self.table, "stats": self.stats,
            "final": self.final.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
            "unquantized": list(self.unquantized), "unpaired_float": list(self.unpaired_float),
            "unpaired_quant": list(self.unpaired_quant),
            "histograms": [h.to_dict() for h in self.histograms],
            "notes": list(self.notes),
            "gallery": [g.to_dict() for g in self.gallery],
            "recovery": self.recovery,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CompareReport":
        """Returns the report stored by ``to_dict`` (raises FcnquantError for an unknown format version)."""
        if d.get("format_version") != FORMAT_VERSION:
            raise FcnquantError(f"unsupported compare report format_version {d.get('format_version')!r}")
        return cls(
            float_model=d["float_model"], quant_model=d["quant_model"], float_sha256=d["float_sha256"],
            quant_sha256=d["quant_sha256"], pairing=d["pairing"], data=d["data"], split=d["split"],
            preset=d["preset"], images=int(d["images"]), isolated=bool(d["isolated"]),
            layers=tuple(LayerDrift.from_dict(x) for x in d["layers"]), final=FinalMetrics.from_dict(d["final"]),
            unquantized=tuple(d["unquantized"]), unpaired_float=tuple(d["unpaired_float"]),
            unpaired_quant=tuple(d["unpaired_quant"]),
            histograms=tuple(ActivationHistogram.from_dict(h) for h in d["histograms"]),
            table=d.get("table"), stats=d.get("stats"), seconds=float(d.get("seconds", 0.0)),
            notes=tuple(d.get("notes", ())),
            gallery=tuple(GalleryImage.from_dict(g) for g in d.get("gallery", ())),
            recovery=dict(d.get("recovery") or {}),
            drift_images=int(d["drift_images"]) if d.get("drift_images") is not None else None,
            drift_ids=tuple(d.get("drift_ids", ())),
        )

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Writes ``to_dict()`` to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    def format_table(self, top: int | None = 10, by: str = "accumulated") -> str:
        """Returns the terminal summary: final metrics, then the ``top`` layers with the worst SNR."""
        return format_table(self, top=top, by=by)

    def to_html(self, path: str | os.PathLike[str], top: int = 10) -> None:
        """Writes a self-contained HTML report (inline SVG plots, no external resources) to ``path``, atomically."""
        from fcnquant.compare.html import render_html

        atomic_write_text(path, render_html(self, top=top))


def fmt(v: float | None, spec: str = ".2f") -> str:
    """Returns ``v`` formatted with ``spec``; "inf"/"-inf" for infinities and "-" for NaN/None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def format_table(report: CompareReport, top: int | None = 10, by: str = "accumulated") -> str:
    """Returns the terminal summary of ``report`` (see ``CompareReport.format_table``)."""
    f = report.final
    lines = [f"float:     {report.float_model}", f"quantized: {report.quant_model}",
             f"images: {report.images} from {report.data}" + (f" ({report.split})" if report.split else "")
             + f"; pairing: {report.pairing}; {len(report.layers)} quantized activations",
             f"final metrics on all {report.images} images; per-layer drift on {report.drift_count} of them"
             + (" (spread evenly over the list)" if report.drift_count < report.images else "")]
    if report.recovery:
        lines.append(f"recovery applied to the int8 model: {format_recovery(report.recovery)}")
    if f.labelled:
        lines.append(f"mIoU float {fmt(f.miou_float)}  quantized {fmt(f.miou_quant)}  drop {fmt(f.miou_drop, '+.2f')}"
                     f"  (awesome convention: {fmt(f.miou_awesome_float)} -> {fmt(f.miou_awesome_quant)})")
        deltas = [(d, c) for c, d in zip(f.class_names, f.iou_delta) if not math.isnan(d) and d < 0]
        if deltas:
            worst = sorted(deltas)[:3]
            lines.append("largest class IoU losses: " + ", ".join(f"{c} {d:+.2f}" for d, c in worst))
    else:
        lines.append("no labels: mIoU not computed")
    lines.append(f"pixels with a changed class: {fmt(100 * f.changed_share, '.3f')}% overall, "
                 f"{fmt(100 * f.boundary_changed_share, '.3f')}% within {f.boundary_radius} px of boundaries, "
                 f"{fmt(100 * f.interior_changed_share, '.3f')}% elsewhere")
    rows = report.worst(top, by=by)
    if rows:
        w = min(48, max(12, max(len(r.float_name) for r in rows)))
        lines.append("")
        lines.append(f"worst {len(rows)} of {len(report.layers)} layers by {by} SNR:")
        head = (f"{'#':>3} {'tensor':<{w}} {'op':<8} {'depth':>5} {'SNR dB':>8} {'iso dB':>8} {'cosine':>10}"
                f" {'rel L2':>8} {'max|err|':>9} {'MSE':>9}")
        lines.append(head)
        lines.append("-" * len(head))
        for k, r in enumerate(rows, 1):
            a, i = r.accumulated, r.isolated
            lines.append(
                f"{k:>3} {_short(r.float_name, w):<{w}} {r.op_type[:8]:<8} {r.order:>5} {fmt(a.snr_db):>8}"
                f" {fmt(i.snr_db if i else None):>8} {fmt(a.cosine, '.8f'):>10} {fmt(a.rel_l2, '.4f'):>8}"
                f" {fmt(a.max_abs, '.3g'):>9} {fmt(a.mse, '.3g'):>9}"
                + (f"  ({a.nonfinite} non-finite)" if a.nonfinite else "")
            )
        if report.isolated:
            lines.append("SNR dB: whole quantized model (accumulated); iso dB: that layer's quantization alone")
    missing = len(report.unpaired_float) + len(report.unpaired_quant)
    if missing:
        lines.append(f"unpaired: {len(report.unpaired_float)} float, {len(report.unpaired_quant)} quantized tensors"
                     + (f" (e.g. {_short((report.unpaired_float or report.unpaired_quant)[0], 60)})"))
    lines.extend(report.notes)
    return "\n".join(lines)


def layers_by_name(layers: Sequence[LayerDrift]) -> dict[str, LayerDrift]:
    """Returns {float tensor name: LayerDrift}."""
    return {layer.float_name: layer for layer in layers}
