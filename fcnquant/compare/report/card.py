"""The model-zoo table of a model card, as Markdown: one row per model and precision with its code source,
backbone, FLOPs, parameters, mIoU and input shape, from compare results the user already has.

Inputs are the JSON files fcnquant writes: a compare report (``fcnquant compare --json``: a float row and a
quantized row) or a demo summary (``<stem>.summary.json``: fp32, fp16 and int8 rows). FLOPs, parameters and shapes
are read from the model files the JSON names (``fcnquant.info``: FLOPs = 2 x MACs of Conv/ConvTranspose/Gemm/MatMul
at the model's input size); a file that is no longer there leaves those cells "-".
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from fcnquant.errors import FcnquantError

#: code source per preprocessing preset / zoo family (a model's ``fcnquant.source`` metadata wins)
SOURCES = {"awesome": "[awesome](https://github.com/Tramac/awesome-semantic-segmentation-pytorch)",
           "mmseg": "[mmsegmentation](https://github.com/open-mmlab/mmsegmentation/tree/main/configs/fcn)"}
#: backbone per zoo model name (a model's ``fcnquant.backbone`` metadata wins)
BACKBONES = {"fcn8s": "vgg16", "fcn16s": "vgg16", "fcn32s": "vgg16", "fcn_r50_d8": "resnet50",
             "fcn_r101_d8": "resnet101", "fcn_resnet50": "resnet50", "fcn_resnet101": "resnet101"}
FOOTNOTE = ("FLOPs(G) = 2 x multiply-accumulates of the Conv/ConvTranspose/Gemm/MatMul layers at the listed input "
            "shape, counted from the ONNX graph; Params(M) = unique parameters of the ONNX model (shared weights "
            "once, BatchNorm folded into the convolutions); see docs/info.md.")


@dataclass(frozen=True)
class CardRow:
    """One line of the card's table; ``None`` prints as "-"."""

    method: str
    source: str
    backbone: str
    flops_g: float | None
    params_m: float | None
    miou: float | None
    shape: str


def card_rows(files: list[str | os.PathLike[str]], *, backbone: str | None = None,
              source: str | None = None, size: int | tuple[int, int] | None = None) -> list[CardRow]:
    """Returns the card rows of compare reports and demo summaries (JSON paths), one per model and precision.

    A float model named by several files gets one row. ``backbone``/``source`` replace what the model metadata
    says; ``size`` counts FLOPs at that input size instead of the model's. Raises FcnquantError for a file that is
    neither kind of JSON.
    """
    entries: list[tuple[str, str, float | None]] = []  # (model path, precision label or "", mIoU)
    for f in files:
        try:
            d = json.loads(Path(f).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FcnquantError(f"cannot read {f}: {exc}") from exc
        base = Path(f).parent
        if isinstance(d, dict) and "summary" in d:
            for r in d["summary"]:
                label = "" if r["model"] == "fp32" else r["model"]
                entries.append((_resolve(r["file"], base), label, r.get("miou")))
        elif isinstance(d, dict) and "float_model" in d and "final" in d:
            entries.append((_resolve(d["float_model"], base), "", d["final"].get("miou_float")))
            entries.append((_resolve(d["quant_model"], base), None, d["final"].get("miou_quant")))
        else:
            raise FcnquantError(f"{f} is neither a compare report nor a demo summary")
    rows, seen, family = [], set(), "-"
    for path, label, miou in entries:
        key = (path, label)
        if key in seen:
            continue
        seen.add(key)
        info = _info(path, size)
        meta = info.metadata if info else {}
        if label == "":
            family = meta.get("fcnquant.model") or _stem(path)
        name = f"{family} {label or _precision_label(info)}".strip() if label != "" else family
        rows.append(CardRow(
            method=name, source=source or meta.get("fcnquant.source") or SOURCES.get(meta.get("fcnquant.preset"), "-"),
            backbone=backbone or meta.get("fcnquant.backbone") or BACKBONES.get(meta.get("fcnquant.model"), "-"),
            flops_g=info.flops / 1e9 if info else None, params_m=info.params / 1e6 if info else None,
            miou=None if miou is None or (isinstance(miou, float) and math.isnan(miou)) else float(miou),
            shape=info.shape_text if info else "-"))
    return rows


def format_card(rows: list[CardRow]) -> str:
    """Returns the rows as the card's Markdown table, with the counting convention as a footnote."""
    def num(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = ["| Methods | Code Source | Backbone | FLOPs(G) | Params(M) | MIoU | Shapes |",
             "| :-- | :--: | :--: | --: | --: | --: | :--: |"]
    for r in rows:
        lines.append(f"| {r.method} | {r.source} | {r.backbone} | {num(r.flops_g, '.3f')} | "
                     f"{num(r.params_m, '.3f')} | {num(r.miou, '.3f')} | {r.shape} |")
    return "\n".join(lines + ["", FOOTNOTE])


def card_table(files: list[str | os.PathLike[str]], *, backbone: str | None = None, source: str | None = None,
               size: int | tuple[int, int] | None = None) -> str:
    """Returns ``format_card(card_rows(files, ...))``: the Markdown table for compare reports / demo summaries."""
    return format_card(card_rows(files, backbone=backbone, source=source, size=size))


def _info(path: str, size):
    from fcnquant.info import model_info

    return model_info(path, size) if Path(path).is_file() else None


def _precision_label(info) -> str:
    if info is None:
        return "quantized"
    if info.precision == "int8 QDQ":
        return "int8" + (f" ({info.target})" if info.target else "")
    return info.precision


def _resolve(path: str, base: Path) -> str:
    """Returns ``path`` as written when it exists, else relative to the JSON file's folder."""
    p = Path(path)
    return str(p if p.is_absolute() or p.exists() else base / p)


def _stem(path: str) -> str:
    name = Path(path).name
    return name[:-5] if name.endswith(".onnx") else name
