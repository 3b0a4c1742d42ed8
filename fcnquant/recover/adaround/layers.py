"""The graph side of AdaRound: the layers to round, the int8 model their quantized inputs come from, and the
tensors of that model standing for each layer's input."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from fcnquant.errors import ModelError
from fcnquant.recover.adaround.conv_patches import ConvSpec, spec_from_attributes

log = logging.getLogger(__name__)


@dataclass
class Layer:
    """One Conv / ConvTranspose to round: its node, patch geometry, weight (name, values, scales, axis), the float
    model's input tensor and the int8 model's tensor standing for it, and the chosen integers."""

    node: object
    spec: ConvSpec
    weight: str
    w: np.ndarray
    scales: np.ndarray
    axis: int | None
    x_float: str = ""
    x_quant: str = ""
    w_int: np.ndarray | None = None


def find_layers(model, scales: Mapping, excluded: set[str]) -> tuple[list[Layer], list[tuple[str, str]]]:
    """Returns (the layers to round in graph order, [(node, why skipped)])."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    layers, skipped = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        why = None
        w_name = node.input[1] if len(node.input) > 1 else ""
        if node.name in excluded:
            why = "excluded"
        elif w_name not in inits:
            why = "its weight is not an initializer"
        elif readers.get(w_name, 0) > 1:
            why = f"its weight '{w_name}' is shared with another node"
        elif w_name not in scales:
            why = f"no weight scale for '{w_name}'"
        spec = None
        if why is None:
            w = numpy_helper.to_array(inits[w_name])
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            try:
                spec = spec_from_attributes(node.op_type, w.shape, attrs)
            except ModelError as exc:
                why = str(exc)
        if why is not None:
            log.warning("adaround: skipping %s '%s': %s", node.op_type, node.name, why)
            skipped.append((node.name, why))
            continue
        s, axis = scales[w_name]
        layers.append(Layer(node, spec, w_name, w.astype(np.float32), np.asarray(s, np.float64), axis))
    return layers, skipped


def nearest_int8(model, table, tmp: Path, target: str, per_channel: bool, scales: Mapping, excluded: set[str]):
    """Returns the int8 QDQ ModelProto of ``model`` with round-to-nearest weights (the inputs' source)."""
    from fcnquant._io import load_onnx
    from fcnquant.quantize import QuantConfig, quantize_model

    src = tmp / "float.onnx"
    save_model(model, src)
    # the same model the caller checked the table against, serialized again here
    quantize_model(src, table, tmp / "int8.onnx",
                   QuantConfig(target=target, per_channel=per_channel, exclude_nodes=tuple(excluded)),
                   weight_scales=scales, verify_table=False, check=False)
    return load_onnx(tmp / "int8.onnx")


def pair_inputs(layers: list[Layer], model, qmodel) -> None:
    """Sets each layer's float input name and the int8 model's tensor standing for it."""
    from fcnquant.quantize.name_map import read_tensor_map

    if qmodel is None:
        for layer in layers:
            layer.x_float = layer.x_quant = layer.node.input[0]
        return
    tmap = read_tensor_map(qmodel)
    produced = {o for n in qmodel.graph.node for o in n.output} | {i.name for i in qmodel.graph.input}
    for layer in layers:
        layer.x_float = layer.node.input[0]
        q = tmap.get(layer.x_float, layer.x_float)
        if q not in produced:
            raise ModelError(f"the int8 model has no tensor for the input '{layer.x_float}' of '{layer.node.name}'")
        if q == layer.x_float:
            log.info("adaround: '%s' reads a float input in the int8 model", layer.node.name)
        layer.x_quant = q


def set_int8_weight(qmodel, layer: Layer) -> None:
    """Writes the layer's AdaRound integers into the int8 model (its weight's DequantizeLinear input)."""
    from onnx import numpy_helper

    made_by = {o: n for n in qmodel.graph.node for o in n.output}
    node = next((n for n in qmodel.graph.node if n.name == layer.node.name), None)
    dq = made_by.get(node.input[1]) if node is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        log.warning("adaround: cannot find the int8 weight of '%s'; later layers see its nearest weights",
                    layer.node.name)
        return
    inits = {t.name: t for t in qmodel.graph.initializer}
    old = inits[dq.input[0]]
    if tuple(old.dims) != layer.w_int.shape:
        raise ModelError(f"int8 weight of '{layer.node.name}' has shape {list(old.dims)}, "
                         f"expected {list(layer.w_int.shape)}")
    old.CopyFrom(numpy_helper.from_array(layer.w_int, old.name))


def save_model(model, path: Path) -> None:
    import onnx

    onnx.save_model(model, str(path))
