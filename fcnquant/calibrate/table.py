"""The calibration table: a versioned JSON artifact with each tensor's range, scale and zero point."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fcnquant import __version__
from fcnquant._io import atomic_write_text
from fcnquant.calibrate.methods import compute_range, resolve_params
from fcnquant.calibrate.pow2 import POW2_ROUNDING, choose_pow2_scale
from fcnquant.calibrate.qparams import MIN_SCALE, get_target, qparams
from fcnquant.calibrate.stats import CalibrationStats
from fcnquant.calibrate.tensorrt import DEFAULT_HEADER, write_tensorrt_cache
from fcnquant.errors import CalibrationError
from fcnquant.targets import Target, parse_target, target_to_dict

log = logging.getLogger(__name__)

FORMAT = "fcnquant-calibration-table"
FORMAT_VERSION = 1
POW2_BINS = 4096  # |x| histogram resolution for choosing power-of-two scales by expected error


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's observed extremes, chosen clipping range and quantization parameters for the table's target."""

    min: float
    max: float
    lo: float
    hi: float
    scale: float
    zero_point: int


@dataclass
class CalibrationTable:
    """Everything needed to quantize a model's activations, and how it was obtained.

    JSON layout: ``format``, ``format_version``, ``tool_version``, ``created`` (ISO 8601 UTC), ``model`` (file
    name), ``model_sha256``, ``preset``, ``image_ids``, ``method``, ``params`` (all method parameters, defaults
    included), ``target`` (its name), ``tensors`` ``{name: {min, max, lo, hi, scale, zero_point}}``. A table for
    a target file also holds ``target_file``: ``{source, sha256, spec}`` with ``spec`` the file's keys, so it
    loads back with the same target without the file (``target_spec``).
    """

    model_sha256: str
    method: str
    target: str
    tensors: dict[str, TensorEntry]
    params: dict[str, Any] = field(default_factory=dict)
    preset: dict[str, Any] = field(default_factory=dict)
    image_ids: list[str] = field(default_factory=list)
    model: str = ""
    created: str = ""
    tool_version: str = __version__
    format_version: int = FORMAT_VERSION
    pow2_rounding: str = "up"  # power-of-two targets: scales rounded up, or chosen by expected error
    target_spec: Target | None = None  # the target, when it came from a file rather than a built-in name

    @property
    def resolved_target(self) -> Target:
        """The table's target: ``target_spec`` for a target file, else the built-in named ``target``."""
        return self.target_spec if self.target_spec is not None else get_target(self.target)

    def to_dict(self) -> dict[str, Any]:
        """Returns the JSON-ready dict."""
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "created": self.created,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "preset": self.preset,
            "image_ids": self.image_ids,
            "method": self.method,
            "params": self.params,
            "target": self.target,
            "pow2_rounding": self.pow2_rounding,
            **({"target_file": _target_record(self.target_spec)} if self.target_spec is not None else {}),
            "tensors": {name: asdict(e) for name, e in self.tensors.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "calibration table") -> CalibrationTable:
        """Returns the table described by ``d`` (validated); raises CalibrationError naming ``source``."""
        try:
            if d.get("format") != FORMAT:
                raise ValueError("not an fcnquant calibration table")
            version = int(d["format_version"])
            if version > FORMAT_VERSION:
                raise ValueError(f"format_version {version} is newer than this fcnquant supports "
                                 f"({FORMAT_VERSION}); upgrade fcnquant")
            tensors = {}
            for name, e in dict(d["tensors"]).items():
                try:
                    zp = e["zero_point"]
                    if not isinstance(zp, int) or isinstance(zp, bool):
                        raise ValueError(f"zero_point must be an integer, got {zp!r}")
                    tensors[str(name)] = TensorEntry(float(e["min"]), float(e["max"]), float(e["lo"]),
                                                     float(e["hi"]), float(e["scale"]), zp)
                except (KeyError, TypeError, ValueError) as exc:
                    raise ValueError(f"tensor {name!r}: {exc}") from exc
            table = cls(str(d["model_sha256"]), str(d["method"]), str(d["target"]), tensors,
                        dict(d.get("params") or {}), dict(d.get("preset") or {}), list(d.get("image_ids") or []),
                        str(d.get("model", "")), str(d.get("created", "")), str(d.get("tool_version", "")), version,
                        str(d.get("pow2_rounding", "up")), _read_target_record(d.get("target_file"), source))
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: {exc}") from exc
        table.validate(source)
        return table

    def validate(self, source: str = "calibration table") -> None:
        """Raises CalibrationError naming the first bad tensor (NaN/Inf values, zero or negative scale, zero point
        outside the target's range, lo > hi)."""
        target = self.resolved_target
        if not self.tensors:
            raise CalibrationError(f"{source}: the table has no tensors")
        for name, e in self.tensors.items():
            vals = (e.min, e.max, e.lo, e.hi, e.scale)
            if not all(math.isfinite(v) for v in vals):
                raise CalibrationError(f"{source}: tensor {name!r} has a non-finite value: {e}")
            if not e.scale > 0:
                raise CalibrationError(f"{source}: tensor {name!r} has scale {e.scale}; it must be positive")
            if e.lo > e.hi or e.min > e.max:
                raise CalibrationError(f"{source}: tensor {name!r} has a reversed range: {e}")
            if not target.qmin <= e.zero_point <= target.qmax:
                raise CalibrationError(f"{source}: tensor {name!r} zero point {e.zero_point} is outside "
                                       f"[{target.qmin}, {target.qmax}] of target {target.name}")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Validates and writes the table as JSON to ``path`` atomically; returns the path."""
        self.validate(str(path))
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationTable:
        """Returns the table in the JSON file ``path``; raises CalibrationError if missing, malformed or invalid."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"calibration table not found: {p}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{p} is not a readable calibration table: {exc}") from exc
        if not isinstance(d, dict):
            raise CalibrationError(f"{p} is not a calibration table (a JSON object is expected)")
        return cls.from_dict(d, str(p))

    def write_tensorrt_cache(self, path: str | os.PathLike[str], header: str = DEFAULT_HEADER) -> Path:
        """Writes this table as a TensorRT calibration cache (see :mod:`fcnquant.calibrate.tensorrt`)."""
        return write_tensorrt_cache(self, path, header)


def _target_record(target: Target) -> dict[str, Any]:
    return {"source": target.source, "sha256": target.sha256, "spec": target_to_dict(target)}


def _read_target_record(record: Any, source: str) -> Target | None:
    """Returns the Target stored in a table's ``target_file`` entry (None when the table has none)."""
    if record is None:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        raise ValueError("target_file must be an object with the target's keys under 'spec'")
    from dataclasses import replace

    spec = parse_target(record["spec"], f"{source}: target_file", str(record.get("sha256", "")))
    return replace(spec, source=str(record.get("source", "")))


def build_table(
    stats: CalibrationStats,
    method: str = "kl",
    target: str | Target = "ort-cpu",
    *,
    created: str | None = None,
    pow2_rounding: str = "up",
    **params: Any,
) -> CalibrationTable:
    """Returns the calibration table of every tensor in ``stats`` by ``method`` (with ``params``) for ``target``.

    ``pow2_rounding`` (power-of-two targets): ``"up"`` rounds each scale up to a power of two (never clips past the
    method's threshold); ``"error"`` picks the neighbouring power of two with the smaller expected squared error of
    the tensor's histogram (``fcnquant.calibrate.pow2``).

    Deterministic: the same statistics, method, parameters and target give the same tensors, whether the
    statistics come from one run, merged shards or a saved file. ``created`` defaults to the current UTC time.
    """
    t = get_target(target)
    if pow2_rounding not in POW2_ROUNDING:
        raise CalibrationError(f"pow2_rounding must be one of {', '.join(POW2_ROUNDING)}, got {pow2_rounding!r}")
    full = resolve_params(method, **params)
    tensors: dict[str, TensorEntry] = {}
    for name, ts in stats.tensors.items():
        try:
            lo, hi = compute_range(method, ts, target=t, **params)
            scale, zp = qparams(lo, hi, t)
            if t.pow2 and pow2_rounding == "error" and ts.amax > 0:
                counts, edges = ts.linear(POW2_BINS)
                raw = max(max(abs(lo), abs(hi)) / t.qmax, MIN_SCALE)
                scale = max(choose_pow2_scale(counts, edges, raw, t.qmax), MIN_SCALE)
        except CalibrationError as exc:
            raise CalibrationError(f"tensor {name!r}: {exc}") from exc
        tensors[name] = TensorEntry(ts.min, ts.max, lo, hi, scale, zp)
    if created is None:
        created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    table = CalibrationTable(stats.model_sha256, method, t.name, tensors, full, dict(stats.preset),
                             list(stats.image_ids), stats.model_name, created,
                             pow2_rounding=pow2_rounding if t.pow2 else "up",
                             target_spec=None if t.builtin else t)
    table.validate()
    log.debug("built %s table (%s) for %d tensors", method, t.name, len(tensors))
    return table


__all__ = ["CalibrationTable", "TensorEntry", "build_table", "write_tensorrt_cache"]
