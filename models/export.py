"""ONNX export of zoo models (or any segmentation ``nn.Module``) as clean inference graphs.

The exported graph has opset 17, one input ``input`` (N, 3, H, W) float32 and one output ``output``
(N, classes, H, W) logits. It is produced by PyTorch's TorchScript-based exporter (``dynamo=False``) in eval mode with
constant folding, which folds BatchNorm into the preceding convolutions, drops Dropout and keeps module-path tensor
names (``/pretrained/pretrained.0/Conv_output_0``). The ``Shape -> Slice -> Concat`` chains it emits for each
``Resize`` target size are then folded into constants wherever the shapes are static (all of them unless
``dynamic_batch``). The result is checked: ``onnx.checker`` (full check), no BatchNormalization or Dropout node.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import onnx
import torch
from torch import nn

from fcnquant._io import file_sha256
from fcnquant.runtime import written_model
from fcnquant.errors import ModelError

from .checkpoint import load_checkpoint
from .zoo import build_model, get_spec, init_random_weights

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"
MIN_SIZE = 32  # five 2x2 poolings in VGG16
_FORBIDDEN_OPS = ("BatchNormalization", "Dropout")
_FOLDABLE_OPS = {"Shape", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Cast", "Constant", "Reshape",
                 "Mul", "Div", "Add", "Sub", "Floor", "Ceil"}
_MAX_FOLDED_ELEMENTS = 64  # only shape arithmetic is folded, never weights


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        hw = (size, size)
    else:
        hw = tuple(int(s) for s in size)
        if len(hw) != 2:
            raise ModelError(f"size must be an int or (height, width), got {size!r}")
    if min(hw) < MIN_SIZE:
        raise ModelError(f"input size {hw[0]}x{hw[1]} is too small; each side must be at least {MIN_SIZE} pixels")
    return hw  # type: ignore[return-value]


class _FirstOutput(nn.Module):
    """Adapts a model returning a tuple/list (awesome) or dict (torchvision ``'out'``) to a single tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, Mapping):
            return out["out"]
        if isinstance(out, (tuple, list)):
            return out[0]
        return out


def export_module(
    model: nn.Module,
    out: str | os.PathLike[str],
    size: int | Sequence[int],
    *,
    dynamic_batch: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Returns the path of the ONNX file written for a segmentation ``nn.Module`` (e.g. one just trained).

    The model is exported in eval mode (every submodule's training flag is restored afterwards) for a (1, 3, H, W) input; with
    ``dynamic_batch`` the batch dimension is named ``N``. A forward returning a tuple/list or a dict with ``'out'``
    is reduced to that first/``'out'`` tensor. ``metadata`` is stored in the model's ``metadata_props``. The file is
    written atomically.
    """
    h, w = _hw(size)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        # a cheap dry run at a small size finds the output structure and class count before the real trace
        ph, pw = min(h, 64), min(w, 64)
        with torch.no_grad():
            y = model(torch.zeros(1, 3, ph, pw))
            wrapped = model
            if not isinstance(y, torch.Tensor):
                wrapped = _FirstOutput(model)
                y = wrapped(torch.zeros(1, 3, ph, pw))
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or tuple(y.shape[2:]) != (ph, pw):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ModelError(f"the model must return [N, C, H, W] logits at the input size; for a {ph}x{pw} input "
                             f"it returned {shape}")
        proto = _trace_to_onnx(wrapped, torch.zeros(1, 3, h, w), dynamic_batch)
    finally:
        for m, mode in modes.items():
            m.training = mode
    proto = _fold_static_shapes(proto)
    _set_output_shape(proto, int(y.shape[1]), h, w, dynamic_batch)
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=str(key), value=str(value))
    _validate(proto)
    target = Path(out)
    with written_model(target) as tmp:
        onnx.save(proto, str(tmp))
    log.debug("wrote %s (%.1f MB)", target, target.stat().st_size / 1e6)
    return target


def export_onnx(
    name: str,
    out: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    size: int | Sequence[int] | None = None,
    num_classes: int = 21,
    width: float = 1.0,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> Path:
    """Returns the path of the ONNX file written for zoo model ``name``, with checkpoint or seeded random weights.

    ``size`` is the input side (int) or (height, width); ``None`` takes the model's default (320 for the VGG FCNs,
    512 for the mmseg ResNets, 520 for torchvision's). Without ``checkpoint`` the weights come from ``init_random_weights(seed)``: the graph
    is deterministic for a seed but its predictions are meaningless (a warning is logged).
    """
    spec = get_spec(name)
    hw = _hw(spec.default_size if size is None else size)
    model = build_model(name, num_classes=num_classes, width=width)
    meta = {"fcnquant.model": name, "fcnquant.preset": spec.preset, "fcnquant.num_classes": str(num_classes),
            "fcnquant.width": repr(width)}
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
        meta["fcnquant.weights"] = f"checkpoint sha256:{file_sha256(checkpoint)}"
    else:
        init_random_weights(model, seed)
        meta["fcnquant.weights"] = f"random seed={seed}"
        log.warning("%s: no checkpoint given, exporting seeded random weights (seed %d); "
                    "its predictions and accuracy are meaningless", name, seed)
    return export_module(model, out, hw, dynamic_batch=dynamic_batch, metadata=meta)


def _trace_to_onnx(model: nn.Module, x: torch.Tensor, dynamic_batch: bool):
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        try:
            torch.onnx.export(
                model, (x,), buf, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL, export_params=True,
            )
        except Exception as exc:
            raise ModelError(f"ONNX export of {type(model).__name__} failed: {exc}") from exc
    return onnx.load_from_string(buf.getvalue())


def _static_shapes(proto) -> dict[str, list[int]]:
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(proto)
    shapes = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]
    return shapes


def _fold_static_shapes(proto):
    """Returns ``proto`` with shape arithmetic on statically known shapes replaced by initializers.

    Rules, applied until nothing changes: (1) a ``Shape`` of a tensor whose shape is fully static (by ONNX shape
    inference) becomes a constant (``start``/``end`` honoured); (2) a node of a small shape-arithmetic op (Slice,
    Concat, Gather, Unsqueeze, Cast, ...) whose inputs are all constant is evaluated (``onnx.reference``) when its
    inputs and result have at most 64 elements; (3) ``Constant`` nodes become initializers; (4) folded values still
    consumed become initializers and the folded nodes are removed; (5) initializers nothing reads are dropped.
    """
    while _fold_once(proto):
        pass
    g = proto.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for init in [i for i in g.initializer if i.name not in used]:
        g.initializer.remove(init)
    return proto


def _fold_once(proto) -> bool:
    import numpy as np
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    g = proto.graph
    shapes = _static_shapes(proto)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    folded: dict[str, np.ndarray] = {}
    kept = []
    for node in g.node:
        value = None
        if node.op_type == "Shape" and node.input[0] in shapes:
            attrs = {a.name: a.i for a in node.attribute}
            dims = shapes[node.input[0]]
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            value = [np.array(dims[start:end], dtype=np.int64)]
        elif node.op_type in _FOLDABLE_OPS and all(not i or i in consts for i in node.input):
            feeds = {i: consts[i] for i in node.input if i}
            if node.op_type == "Constant" or all(v.size <= _MAX_FOLDED_ELEMENTS for v in feeds.values()):
                result = [np.asarray(r) for r in ReferenceEvaluator(node).run(None, feeds)]
                if node.op_type == "Constant" or all(r.size <= _MAX_FOLDED_ELEMENTS for r in result):
                    value = result
        if value is None:
            kept.append(node)
            continue
        for name, v in zip(node.output, value):
            consts[name] = folded[name] = v
    if not folded:
        return False
    used = {i for n in kept for i in n.input} | {o.name for o in g.output}
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items() if name in used)
    produced = {o for n in kept for o in n.output}
    for vi in [vi for vi in g.value_info if vi.name not in produced]:
        g.value_info.remove(vi)
    return True


def _set_output_shape(proto, channels: int, h: int, w: int, dynamic_batch: bool) -> None:
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for value in ("N" if dynamic_batch else 1, channels, h, w):
        d = dims.add()
        if isinstance(value, str):
            d.dim_param = value
        else:
            d.dim_value = value


def _validate(proto) -> None:
    bad = sorted({n.op_type for n in proto.graph.node if n.op_type in _FORBIDDEN_OPS})
    if bad:
        raise ModelError(f"exported graph still contains {', '.join(bad)} nodes; export needs an eval-mode model")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ModelError(f"exported graph fails onnx.checker: {exc}") from exc
