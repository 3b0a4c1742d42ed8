"""The trained demo models shipped with fcnquant (small FCNs trained on the built-in synthetic VOC).

- ``fcn8s``, ``fcn16s``: VGG16 FCNs (awesome layout) at width 0.1875, preset ``awesome``, 1x3x160x160 input;
- ``fcn32s``: the same at 1x3x320x320 (a common deployment input size; at 160 its stride-32 output is only 5x5);
- ``fcn_r50_d8``: ResNetV1c-50-D8 FCN (mmseg layout) at width 0.125, preset ``mmseg`` (fixed), 1x3x160x160.

The ONNX files live in ``fcnquant/assets/demo/``; ``demo_models.json`` beside them records, per model, the file
and its sha256, the preprocessing preset, input size, width multiplier, parameter count, the fp32 scores on the
built-in synthetic val split (``fcnquant.data.builtin_dataset()``, the split ``fcnquant eval MODEL`` uses by
default) and on a val split generated with another seed, and how the model was trained
(``python -m fcnquant.models.train ...``). Every model carries its preset in the ONNX metadata
(``fcnquant.preset``), so ``fcnquant eval``, ``calibrate`` and ``compare`` need no preprocessing flags.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from fcnquant.errors import ModelError

DEMO_DIR = Path(__file__).resolve().parent / "assets" / "demo"
MANIFEST = DEMO_DIR / "demo_models.json"
#: shipped demo model names, in the order the docs list them
DEMO_MODELS: tuple[str, ...] = ("fcn8s", "fcn16s", "fcn32s", "fcn_r50_d8")
DEFAULT_DEMO_MODEL = "fcn8s"


@dataclass(frozen=True)
class DemoModel:
    """One shipped model as recorded in ``demo_models.json`` (scores in percent, mmseg mIoU semantics)."""

    name: str
    file: str
    sha256: str
    preset: str
    input_size: tuple[int, int]
    width: float
    params: int
    miou: float
    miou_awesome: float
    pixel_acc: float
    record: dict  # the model's full JSON entry (training command and time, other-seed scores, ...)

    @property
    def path(self) -> Path:
        """Returns the ONNX file's path."""
        return DEMO_DIR / self.file


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict:
    """Returns the parsed ``demo_models.json``; ModelError if it is missing or unreadable."""
    try:
        return json.loads(MANIFEST.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"demo model manifest not found: {MANIFEST} (is fcnquant installed with its assets?)") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read demo model manifest {MANIFEST}: {exc}") from exc


def demo_model_info(name: str = DEFAULT_DEMO_MODEL) -> DemoModel:
    """Returns the recorded facts of demo model ``name`` (one of ``DEMO_MODELS``)."""
    if name not in DEMO_MODELS:
        raise ModelError(f"unknown demo model '{name}'; choose one of {', '.join(DEMO_MODELS)}")
    entry = load_manifest().get("models", {}).get(name)
    if entry is None:
        raise ModelError(f"demo model '{name}' is not listed in {MANIFEST}")
    fp32 = entry["fp32"]
    return DemoModel(
        name=name, file=entry["file"], sha256=entry["sha256"], preset=entry["preset"],
        input_size=tuple(entry["input_size"]), width=float(entry["width"]), params=int(entry["params"]),
        miou=float(fp32["miou"]), miou_awesome=float(fp32["miou_awesome"]), pixel_acc=float(fp32["pixel_acc"]),
        record=entry,
    )


def demo_model_path(name: str = DEFAULT_DEMO_MODEL) -> Path:
    """Returns the path of the shipped ONNX file of demo model ``name``; ModelError if it is missing."""
    path = demo_model_info(name).path
    if not path.is_file():
        raise ModelError(f"demo model file missing: {path} (is fcnquant installed with its assets?)")
    return path


def recorded_miou(name: str = DEFAULT_DEMO_MODEL) -> float:
    """Returns the fp32 mIoU (mmseg semantics, percent) recorded for ``name`` on the built-in synthetic val split."""
    return demo_model_info(name).miou


# A demo model and the int8/fp16 models made from it are a few MB; anything larger is not one (saves hashing it).
_DEMO_MAX_BYTES = 64 << 20


@functools.lru_cache(maxsize=1)
def _demo_fingerprints() -> tuple[frozenset[str], frozenset[str]]:
    """Returns (sha256 of every shipped demo file, their ``fcnquant.weights`` metadata values)."""
    import onnx

    shas, weights = set(), set()
    for name in DEMO_MODELS:
        info = demo_model_info(name)
        shas.add(info.sha256)
        if info.path.is_file():
            meta = {p.key: p.value for p in onnx.load(str(info.path), load_external_data=False).metadata_props}
            if meta.get("fcnquant.weights"):
                weights.add(meta["fcnquant.weights"])
    return frozenset(shas), frozenset(weights)


def is_demo_model(model) -> bool:
    """Returns whether ``model`` (ONNX path, bytes or onnxruntime session) is a shipped demo model or made from one.

    True when its sha256 is a demo file's (``demo_models.json``), or its metadata names a demo file as its float
    model (``fcnquant.model_sha256``, written by ``fcnquant quantize``) or carries a demo model's
    ``fcnquant.weights`` record (kept by ``fcnquant fp16``).
    """
    import hashlib

    shas, weights = _demo_fingerprints()
    if hasattr(model, "get_modelmeta"):  # an onnxruntime session: its metadata only
        meta = dict(model.get_modelmeta().custom_metadata_map)
    else:
        import onnx

        if isinstance(model, (bytes, bytearray)):
            blob = bytes(model)
        else:
            path = Path(model)
            if not path.is_file() or path.stat().st_size > _DEMO_MAX_BYTES:
                return False
            blob = path.read_bytes()
        if hashlib.sha256(blob).hexdigest() in shas:
            return True
        meta = {p.key: p.value for p in onnx.load_from_string(blob).metadata_props}
    return meta.get("fcnquant.model_sha256") in shas or meta.get("fcnquant.weights") in weights
