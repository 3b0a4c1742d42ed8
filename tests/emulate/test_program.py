"""Parsing QDQ graphs into integer programs: what is an integer step, what is refused."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.emulate import build_program
from fcnquant.errors import ModelError


def test_demo_program_has_one_step_per_quantize(pow2_fcn8s):
    import onnx

    model = onnx.load(str(pow2_fcn8s))
    prog = build_program(model)
    quantizes = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert len(prog.layers()) == quantizes - 1  # the input's QuantizeLinear is the host's
    assert prog.steps[-1].out is None and prog.steps[-1].op == "Resize"  # float logits
    assert prog.outputs == [model.graph.output[0].name]
    relu = [s for s in prog.steps if s.relu]
    assert relu and all(s.op == "Conv" for s in relu)
    for s in prog.steps:
        if s.op == "Conv":
            assert s.bias.dtype == np.int64 and s.weight.max() <= 127 and s.weight.min() >= -128


def test_float_compute_is_refused_naming_the_node(pow2_fcn8s):
    """A Conv fed a float tensor (a layer kept in float) is not integer arithmetic."""
    import onnx

    model = onnx.load(str(pow2_fcn8s))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][1]
    made_by = {o: n for n in model.graph.node for o in n.output}
    dq = made_by[conv.input[0]]
    conv.input[0] = made_by[dq.input[0]].input[0]  # skip the Q/DQ pair: float input
    with pytest.raises(ModelError, match=conv.name):
        build_program(model)
