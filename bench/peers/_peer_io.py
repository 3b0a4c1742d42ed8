"""Input/output shared by the peer runner scripts in bench/peers/ (no fcnquant import: they run in peer venvs).

Every runner is called as ``python RUNNER.py MODEL CALIB.npy OUT.onnx [options]``; it loads the float model and
the preprocessed calibration images (float32, N x 3 x H x W, ``np.load(allow_pickle=False)``), writes the
quantized QDQ model to OUT.onnx and a JSON beside it (``OUT.json`` unless ``--json``) with its wall time, and
prints that JSON as its last stdout line. The JSON is written on failure too (``ok: false`` and the error), so
the driver can report what went wrong.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np

FORMAT_VERSION = 1


def base_parser(description: str) -> argparse.ArgumentParser:
    """Returns an argument parser with the three positional arguments every runner takes, plus ``--json``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("model", help="float ONNX model")
    p.add_argument("calib", help="calibration inputs: .npy, float32 N x 3 x H x W, already preprocessed")
    p.add_argument("out", help="where to write the quantized QDQ ONNX model")
    p.add_argument("--json", help="where to write the run record (default: OUT with suffix .json)")
    return p


def load_calibration(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the calibration array of ``path`` (float32, 4-D, channels 3); ValueError when it is not that."""
    x = np.load(path, allow_pickle=False)
    if x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 1:
        raise ValueError(f"{path}: expected float32 N x 3 x H x W, got {x.dtype} {x.shape}")
    return x


def save_model(model, out: str | os.PathLike[str]) -> None:
    """Writes ONNX ``model`` (a ModelProto) to ``out`` atomically (temporary file in the same folder, then rename)."""
    import onnx

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def copy_metadata(src, dst) -> None:
    """Copies ``src``'s metadata_props (fcnquant's preset among them) onto ``dst`` where it lacks the key."""
    have = {p.key for p in dst.metadata_props}
    for prop in src.metadata_props:
        if prop.key not in have:
            dst.metadata_props.add(key=prop.key, value=prop.value)


def count_qdq(model) -> dict:
    """Returns the number of QuantizeLinear and DequantizeLinear nodes of ``model``'s main graph."""
    ops = [n.op_type for n in model.graph.node]
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}


def run(tool: str, setting: dict, args: argparse.Namespace, quantize: Callable[[str, np.ndarray, str], dict]) -> int:
    """Returns the exit status after running ``quantize(model, calib, out)`` and writing its JSON record.

    ``quantize`` returns extra fields for the record (versions, node counts, ...); the record's ``seconds`` is
    the wall time of that call, which includes loading the model but not the interpreter's start or imports.
    """
    record: dict = {"format_version": FORMAT_VERSION, "tool": tool, "setting": setting, "model": args.model,
                    "calib": args.calib, "out": args.out, "python": platform.python_version()}
    json_path = Path(args.json) if args.json else Path(args.out).with_suffix(".json")
    status = 0
    try:
        calib = load_calibration(args.calib)
        record["calib_images"] = int(calib.shape[0])
        t0 = time.perf_counter()
        extra = quantize(args.model, calib, args.out)
        record["seconds"] = time.perf_counter() - t0
        record.update(extra or {})
        record["ok"] = True
    except Exception as exc:  # the record says what failed; the driver reports it and goes on
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
        status = 1
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "traceback"}))
    sys.stdout.flush()
    return status
