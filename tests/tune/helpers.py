"""The tuner tests' planted model and settings, shared by tests/tune and the Ray runs in tests/distributed."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from fcnquant.demo_models import demo_model_path
from fcnquant.quantize import QuantConfig
from fcnquant.tune import ImageChoice

PLANTED = "/pool5/pretrained.24/Conv"
CONSUMER = "/pool5/pretrained.26/Conv"
FAST = dict(rank_images=4, report_isolated=False, images=ImageChoice(num_calib=8, num_tune=16))
PER_TENSOR = QuantConfig(target="ort-cpu", per_channel=False)
TUNE_VOC = dict(train=32, val=6, size=64, seed=5)  # the synthetic set of the tune_voc fixture


def plant(path):
    """Writes the demo fcn8s with one extra, always-dead output channel in PLANTED: weights -50 and bias -1 on a
    ReLU input (>= 0), so its pre-activation is <= -1 and its ReLU output 0; CONSUMER reads it with zero weights.

    The float model computes exactly what the demo model does, but per-tensor weight scales of PLANTED are set by
    the -50 weights (scale >= 50/127), which rounds the layer's real weights (|w| << 0.2) to zero.
    """
    model = onnx.load(str(demo_model_path("fcn8s")))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    w_name, b_name = nodes[PLANTED].input[1], nodes[PLANTED].input[2]
    w = numpy_helper.to_array(inits[w_name])
    b = numpy_helper.to_array(inits[b_name])
    assert np.abs(w).max() < 1.0
    w2 = np.concatenate([w, np.full((1,) + w.shape[1:], -50.0, w.dtype)])
    b2 = np.concatenate([b, np.array([-1.0], b.dtype)])
    c_name = nodes[CONSUMER].input[1]
    c = numpy_helper.to_array(inits[c_name])
    c2 = np.concatenate([c, np.zeros((c.shape[0], 1) + c.shape[2:], c.dtype)], axis=1)
    for name, arr in ((w_name, w2), (b_name, b2), (c_name, c2)):
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def float_compute_ops(model: onnx.ModelProto) -> list[str]:
    """Returns the Conv/Add/Concat/MaxPool/Resize nodes whose data inputs do not all come from a
    DequantizeLinear, the final logits aside (nodes on a path to a graph output that no DequantizeLinear cuts)."""
    graph = model.graph
    made_by = {o: n for n in graph.node for o in n.output}
    tail, stack = set(), [o.name for o in graph.output]
    while stack:
        n = made_by.get(stack.pop())
        if n is None or n.op_type == "DequantizeLinear" or n.name in tail:
            continue
        tail.add(n.name)
        stack.extend(i for i in n.input if i)
    data_inputs = {"Conv": 2, "Add": 2, "Concat": None, "MaxPool": 1, "Resize": 1}
    return [n.name for n in graph.node if n.op_type in data_inputs and n.name not in tail and any(
        made_by.get(i) is None or made_by[i].op_type != "DequantizeLinear"
        for i in list(n.input)[:data_inputs[n.op_type]] if i)]
