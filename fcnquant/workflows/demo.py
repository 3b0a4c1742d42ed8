"""The whole job in one call: calibrate, emit int8 and fp16, compare both with the float model, summarise.

This is what ``fcnquant demo`` runs (on the shipped demo model and the built-in synthetic VOC by default), and
what a pipeline calls to go from a float ONNX model to deployable artifacts plus an accuracy verdict::

    result = run_pipeline("fcn8s.onnx", "out/", DataConfig("VOCdevkit", "train", num_images=50),
                          QuantConfig(method="kl", target="ort-cpu"))
    print(result.format_summary())

Every step is the public API of its own package (``fcnquant.calibrate``, ``fcnquant.quantize``,
``fcnquant.compare``); this module only sequences them and names the files.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import FcnquantError
from fcnquant.execute import Executor, RunConfig
from fcnquant.quantize.config import QuantConfig
from fcnquant.recover.plan import format_recovery

log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """Paths of every artifact written by :func:`run_pipeline` and the two comparison reports."""

    model: Path
    out_dir: Path
    method: str
    target: str
    calibration_images: int
    table: Path
    stats: Path
    int8_model: Path
    fp16_model: Path
    int8_report: Any  # fcnquant.compare.CompareReport
    fp16_report: Any
    int8_html: Path
    fp16_html: Path
    json: Path
    tensorrt_cache: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    per_channel: bool = True
    recovery: dict[str, Any] = field(default_factory=dict)  # what the int8 workflow ran (empty: plain emission)

    def rows(self) -> list[dict[str, Any]]:
        """Returns one summary row per model (fp32, fp16, int8): mIoU, mIoU change (quantized - float), changed
        pixels, worst SNR, size."""
        f_int8, f_fp16 = self.int8_report.final, self.fp16_report.final
        rows = [{"model": "fp32", "file": self.model, "miou": f_int8.miou_float, "miou_change": 0.0, "delta": 0.0, "changed": 0.0,
                 "worst_snr": None, "worst_layer": "", "mb": self.model.stat().st_size / 1e6}]
        for name, path, rep, fin in (("fp16", self.fp16_model, self.fp16_report, f_fp16),
                                      (f"int8 {self.method}", self.int8_model, self.int8_report, f_int8)):
            worst = rep.worst(1)
            rows.append({
                "model": name, "file": path, "miou": fin.miou_quant,
                "miou_change": fin.miou_change, "delta": fin.miou_change,  # delta: the former key
                "changed": fin.changed_share, "worst_snr": worst[0].accumulated.snr_db if worst else None,
                "worst_layer": worst[0].float_name if worst else "", "mb": path.stat().st_size / 1e6,
            })
        return rows

    def format_summary(self) -> str:
        """Returns the summary table (one line per model) as text."""
        head = f"{'model':<12} {'mIoU':>7} {'mIoU change':>11} {'changed px':>10} {'worst SNR':>10} {'size MB':>8}  worst layer"
        lines = [head, "-" * len(head)]
        for r in self.rows():
            snr = "" if r["worst_snr"] is None else f"{r['worst_snr']:.1f} dB"
            lines.append(f"{r['model']:<12} {r['miou']:7.2f} {r['miou_change']:+11.2f} {100 * r['changed']:9.2f}% "
                         f"{snr:>10} {r['mb']:8.2f}  {r['worst_layer']}")
        weights = "per-channel" if self.per_channel else "per-tensor"
        lines.append(f"int8: {self.target}, {weights} weights, recovery: {format_recovery(self.recovery)}")
        return "\n".join(lines)

    def format_card(self) -> str:
        """Returns the model-card table (Markdown) of the fp32, fp16 and int8 models: FLOPs, params, mIoU, shape."""
        from fcnquant.compare.report.card import card_table

        return card_table([self.json])

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict: artifact paths, timings, summary rows and both full comparison reports."""
        rows = [{**r, "file": str(r["file"])} for r in self.rows()]
        return {
            "model": str(self.model), "method": self.method, "target": self.target,
            "per_channel": self.per_channel, "recovery": self.recovery,
            "calibration_images": self.calibration_images,
            "artifacts": {k: str(v) for k, v in (
                ("table", self.table), ("stats", self.stats), ("int8_model", self.int8_model),
                ("fp16_model", self.fp16_model), ("int8_report", self.int8_html), ("fp16_report", self.fp16_html),
                ("tensorrt_cache", self.tensorrt_cache)) if v is not None},
            "seconds": self.seconds, "summary": rows,
            "int8": self.int8_report.to_dict(), "fp16": self.fp16_report.to_dict(),
        }


def run_pipeline(
    model: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] = "fcnquant-demo-out",
    data: DataConfig | str | os.PathLike[str] | None = None,
    quant: QuantConfig | None = None,
    run: RunConfig | Executor | None = None,
    *,
    eval_split: str = "val",
    eval_images: int | None = None,
    gallery: int | None = None,
    recover: bool = False,
) -> PipelineResult:
    """Returns the PipelineResult of calibrating, quantizing (int8 + fp16) and comparing ``model``.

    ``model`` defaults to the shipped demo fcn8s. ``data``: the calibration images (a
    :class:`~fcnquant.data.DataConfig`; default split ``train``, 50 images; its root defaults to
    ``fcnquant.data.resolve_data(None, model)``: the built-in synthetic VOC for a demo model, else a VOC found on
    the machine, else the synthetic set with a warning). The comparisons run on ``eval_split`` of the same root
    (held-out images), all of it unless ``eval_images`` is given. ``quant``: method, target, weight
    granularity (default kl, ort-cpu, per channel). ``gallery``: images shown in each HTML report's gallery of the
    most changed images (default ``fcnquant.compare.GALLERY_IMAGES``, 0 for none). Files go to ``out_dir`` (created): ``<stem>.calib.json``, ``<stem>.stats.npz``,
    ``<stem>.int8.onnx`` (+ ``.cache`` for tensorrt), ``<stem>.fp16.onnx``, ``<stem>.int8.html``,
    ``<stem>.fp16.html`` and ``<stem>.summary.json``. ``recover=True`` runs the recovery passes that help on the target (``fcnquant.workflows.int8``); with equalization the
    equalized float model (``<stem>.int8.equalized.onnx``) is the reference of the int8 comparison's per-layer
    drift (its logits equal the original's within 1e-4).
    """
    from fcnquant._io import atomic_write_text
    from fcnquant.compare import GALLERY_IMAGES, CompareOptions, compare_models
    from fcnquant.data import resolve_data
    from fcnquant.quantize import convert_fp16
    from fcnquant.recover.plan import resolve_plan
    from fcnquant.workflows.int8 import Outputs, calibrate

    if model is None:
        from fcnquant.demo_models import demo_model_path

        model = demo_model_path()
    model = Path(model)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FcnquantError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    paths = {k: out / f"{stem}.{suffix}" for k, suffix in (
        ("table", "calib.json"), ("stats", "stats.npz"), ("int8", "int8.onnx"), ("fp16", "fp16.onnx"),
        ("int8_html", "int8.html"), ("fp16_html", "fp16.html"), ("json", "summary.json"))}
    seconds: dict[str, float] = {}
    data = DataConfig.of(data, split="train", num_images=50)
    quant, run = quant or QuantConfig(), RunConfig.of(run)
    progress = run.resolved().progress
    if not isinstance(data.root, Dataset):  # resolved once, so a warning is printed once
        data = data.with_(root=resolve_data(data.root, model, progress=progress).root)
    gallery = GALLERY_IMAGES if gallery is None else gallery

    def step(name: str):
        log.info("%s ...", name)
        seconds[name] = time.perf_counter()

    def done(name: str):
        seconds[name] = round(time.perf_counter() - seconds[name], 2)

    step("calibrate + quantize")
    flow = calibrate(model, data, quant, run, resolve_plan(quant.target, quant.per_channel, recover), outputs=Outputs(model=paths["int8"], table=paths["table"], stats=paths["stats"]))
    stats, q, reference = flow.stats, flow.quantize, flow.float_model
    done("calibrate + quantize")
    step("fp16")
    convert_fp16(model, paths["fp16"])
    done("fp16")

    step("compare int8")
    eval_data = DataConfig(data.root, eval_split, data.ann_dir, data.preset, data.size, data.mean, data.std,
                           num_images=eval_images)
    options = CompareOptions(gallery=gallery)
    int8_report = compare_models(reference, paths["int8"], eval_data, run, options, table=paths["table"],
                                 stats=paths["stats"])
    int8_report.to_html(paths["int8_html"])
    done("compare int8")
    step("compare fp16")
    fp16_report = compare_models(model, paths["fp16"], eval_data, run, options)
    fp16_report.to_html(paths["fp16_html"])
    done("compare fp16")

    result = PipelineResult(
        model=model, out_dir=out, method=quant.method, target=str(quant.target), calibration_images=len(stats.image_ids),
        table=paths["table"], stats=paths["stats"], int8_model=paths["int8"], fp16_model=paths["fp16"],
        int8_report=int8_report, fp16_report=fp16_report, int8_html=paths["int8_html"],
        fp16_html=paths["fp16_html"], json=paths["json"], tensorrt_cache=getattr(q, "tensorrt_cache", None),
        seconds=seconds, per_channel=quant.per_channel, recovery=flow.recovery if flow.plan.any else {},
    )
    import json

    atomic_write_text(paths["json"], json.dumps(result.to_dict(), indent=2, default=str))
    return result
