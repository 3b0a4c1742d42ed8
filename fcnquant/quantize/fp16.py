"""fp16 conversion through onnxruntime's maintained converter, with an explicit report of clamped weights.

``onnxruntime.transformers.float16.convert_float_to_float16`` (shipped inside onnxruntime; the frozen
``onnxconverter-common`` package is its origin) turns weights and ops to float16 and inserts Casts around
blocked ops. It silently saturates values beyond the float16 range; fcnquant clamps such initializers itself
first (to +-65504, the largest finite float16) so it can name them in a warning and in the result.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from fcnquant._io import load_onnx
from fcnquant.errors import ModelError
from fcnquant.graph import require_float, sort_topologically
from fcnquant.runtime import written_model

log = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass(frozen=True)
class Fp16Result:
    """What ``convert_fp16`` wrote."""

    path: Path
    keep_io_fp32: bool
    blocked_ops: tuple[str, ...]
    clamped: dict[str, float]  # initializer -> its largest |value| before clamping
    size_bytes: int
    source_size_bytes: int

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["blocked_ops"] = list(self.blocked_ops)
        return d


def clamp_to_fp16_range(model) -> dict[str, float]:
    """Clamps float32 initializers and Constant tensors beyond +-65504 in place; returns {name: max |value| before}."""
    from onnx import TensorProto, numpy_helper

    clamped: dict[str, float] = {}

    def fix(tensor, label: str) -> None:
        if tensor.data_type != TensorProto.FLOAT:
            return
        arr = numpy_helper.to_array(tensor)
        finite = np.isfinite(arr)
        over = finite & (np.abs(arr) > FP16_MAX)
        if over.any():
            clamped[label] = float(np.abs(arr[over]).max())
            tensor.CopyFrom(numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float32), tensor.name))

    for init in model.graph.initializer:
        fix(init, init.name)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    fix(attr.t, node.output[0])
    return clamped


def convert_fp16(
    model_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    keep_io_fp32: bool = False,
    block_ops: Iterable[str] = (),
) -> Fp16Result:
    """Returns the Fp16Result of writing the float16 version of ``model_path`` to ``out``.

    ``keep_io_fp32`` keeps the graph inputs and outputs float32 (Casts are inserted inside); ``block_ops`` are op
    types left in float32 in addition to the converter's default block list. ModelError for an already quantized
    model, or a converted model onnxruntime refuses (nothing is written then).
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model_path = Path(model_path)
    model = load_onnx(model_path)
    require_float(model, str(model_path), "fp16")
    blocked = tuple(dict.fromkeys(block_ops))
    present = {n.op_type for n in model.graph.node}
    absent = [op for op in blocked if op not in present]
    if absent:
        log.warning("--block-op %s: no such op in %s (it has %s)", absent, model_path, sorted(present))

    clamped = clamp_to_fp16_range(model)
    if clamped:
        listed = ", ".join(f"{k} (max |x| {v:.4g})" for k, v in sorted(clamped.items()))
        log.warning("clamped %d tensor(s) beyond the float16 range to +-%g: %s", len(clamped), FP16_MAX, listed)
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=keep_io_fp32,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(blocked)),
        )
    except Exception as exc:  # the converter raises assorted errors on graphs it cannot type
        raise ModelError(f"float16 conversion of {model_path} failed: {exc}") from exc

    import onnx

    sort_topologically(converted.graph)  # the converter appends its Casts at the end of the node list
    out = Path(out)
    with written_model(out) as tmp:
        onnx.save_model(converted, str(tmp))
    log.info("wrote %s (%d bytes, %.2fx of fp32)", out, out.stat().st_size, out.stat().st_size / model_path.stat().st_size)
    return Fp16Result(
        path=out, keep_io_fp32=keep_io_fp32, blocked_ops=blocked, clamped=clamped,
        size_bytes=out.stat().st_size, source_size_bytes=model_path.stat().st_size,
    )
