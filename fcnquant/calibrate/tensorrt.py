"""TensorRT calibration cache (text) export and reader.

Format: the first line is ``TRT-<version>-<algorithm>`` (default ``TRT-8601-EntropyCalibration2``, the header of
the entropy calibrator trtexec and most tools use); then one line per tensor, ``<name>: <hex>``, where ``<hex>`` is
the IEEE-754 float32 scale ``amax / 127`` written big-endian as 8 lowercase hex digits (``%08x`` of its bits).
The scale is the symmetric int8 one computed from the table's range, ``qparams(lo, hi, "tensorrt")``, which is
exactly the table's own scale when the table was built for the ``tensorrt`` target.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from fcnquant._io import atomic_write_text
from fcnquant.calibrate.qparams import qparams
from fcnquant.errors import CalibrationError

if TYPE_CHECKING:
    from fcnquant.calibrate.table import CalibrationTable

DEFAULT_HEADER = "TRT-8601-EntropyCalibration2"


def scale_hex(scale: float) -> str:
    """Returns the 8-digit big-endian hex of ``scale`` as float32."""
    return struct.pack(">f", scale).hex()


def tensorrt_cache_text(table: CalibrationTable, header: str = DEFAULT_HEADER) -> str:
    """Returns the calibration cache text for every tensor of ``table``."""
    if not header.startswith("TRT-") or "\n" in header:
        raise CalibrationError(f"bad TensorRT cache header {header!r}; expected e.g. {DEFAULT_HEADER}")
    lines = [header]
    for name, e in table.tensors.items():
        if "\n" in name or "\r" in name:
            raise CalibrationError(f"tensor name {name!r} cannot be written to a TensorRT cache (line break)")
        scale, _ = qparams(e.lo, e.hi, "tensorrt")
        lines.append(f"{name}: {scale_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_tensorrt_cache(
    table: CalibrationTable, path: str | os.PathLike[str], header: str = DEFAULT_HEADER
) -> Path:
    """Writes the TensorRT calibration cache of ``table`` to ``path`` atomically and returns the path."""
    atomic_write_text(path, tensorrt_cache_text(table, header))
    return Path(path)


def read_tensorrt_cache(path: str | os.PathLike[str]) -> tuple[str, dict[str, float]]:
    """Returns ``(header, {tensor name: scale})`` read from a TensorRT calibration cache text file."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read TensorRT cache {p}: {exc}") from exc
    if not lines or not lines[0].startswith("TRT-"):
        raise CalibrationError(f"{p} is not a TensorRT calibration cache (no 'TRT-...' header)")
    scales: dict[str, float] = {}
    for num, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, hexval = line.rpartition(": ")
        try:
            if not sep or len(hexval) != 8:
                raise ValueError
            (scales[name],) = struct.unpack(">f", bytes.fromhex(hexval))
        except ValueError:
            raise CalibrationError(f"{p}:{num}: expected '<name>: <8 hex digits>', got {line!r}") from None
    return lines[0], scales
