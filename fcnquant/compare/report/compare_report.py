"""The result of ``compare_models`` (:class:`CompareReport`): its records together, JSON in and out, the terminal
table and the HTML page."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

from fcnquant._io import atomic_write_text
from fcnquant.compare.drift.metrics import LayerDrift
from fcnquant.compare.final import FinalMetrics
from fcnquant.compare.gallery import GalleryImage
from fcnquant.compare.histograms import ActivationHistogram
from fcnquant.errors import FcnquantError

FORMAT_VERSION = 1


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
    quantization: dict = field(default_factory=dict)  # the int8 model's method, target, per_channel (metadata)
    emulation: dict | None = None  # fcnquant.emulate's EmulationReport.to_dict(), with --emulate

    @property
    def drift_count(self) -> int:
        """Returns the number of images the per-layer drift was measured on."""
        return self.images if self.drift_images is None else self.drift_images

    @property
    def miou_drop(self) -> float:
        """Returns mIoU(float) - mIoU(quantized) in points; NaN without labels."""
        return self.final.miou_drop

    @property
    def miou_change(self) -> float:
        """Returns mIoU(quantized) - mIoU(float) in points (negative = worse); NaN without labels."""
        return self.final.miou_change

    @property
    def int8_description(self) -> str:
        """Returns how the quantized model was made, from its metadata: method, target, weight granularity and
        recovery ("" for a model without fcnquant metadata)."""
        q = self.quantization
        if not q:
            return ""
        weights = {"true": "per-channel", "false": "per-tensor"}.get(q.get("per_channel", ""), "unknown")
        from fcnquant.recover.plan import format_recovery

        return (f"method {q.get('method') or 'unknown'}, target {q.get('target') or 'unknown'}, {weights} weights, "
                f"recovery: {format_recovery(self.recovery) if self.recovery else 'none'}")

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
            "recovery": self.recovery, "quantization": self.quantization,
            **({"emulation": self.emulation} if self.emulation is not None else {}),
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
            drift_ids=tuple(d.get("drift_ids", ())), quantization=dict(d.get("quantization") or {}),
            emulation=d.get("emulation"),
        )

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Writes ``to_dict()`` to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    def format_table(self, top: int | None = 10, by: str = "accumulated") -> str:
        """Returns the terminal summary: final metrics, then the ``top`` layers with the worst SNR."""
        from fcnquant.compare.report.table import format_table

        return format_table(self, top=top, by=by)

    def to_html(self, path: str | os.PathLike[str], top: int = 10) -> None:
        """Writes a self-contained HTML report (inline SVG plots, no external resources) to ``path``, atomically."""
        from fcnquant.compare.report.html import render_html

        atomic_write_text(path, render_html(self, top=top))
