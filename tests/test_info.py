"""fcnquant.info: unique parameters and MACs against hand counts, precision of float/fp16/int8 models, and the
full-size zoo models against the published figures and an independent count from the torch modules."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fcnquant.cli import main
from fcnquant.info import count_params, model_info


def _init(name: str, shape: tuple) -> onnx.TensorProto:
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def _model(nodes, inits, in_shape, out_shape, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def two_conv() -> onnx.ModelProto:
    """x 1x3x32x32 -> Conv 3x3 3->8 stride 2 pad 1 (+bias) -> Relu -> Conv 1x1 8->4 grouped 2 (no bias): 1x4x16x16."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1, 1], group=2)]
    return _model(nodes, [_init("w1", (8, 3, 3, 3)), _init("b1", (8,)), _init("w2", (4, 4, 1, 1))],
                  [1, 3, 32, 32], [1, 4, 16, 16])


def test_two_conv_model_matches_a_hand_count(tmp_path):
    path = tmp_path / "two.onnx"
    onnx.save(two_conv(), str(path))
    info = model_info(path)
    assert info.params == 8 * 3 * 3 * 3 + 8 + 4 * 4
    # conv1: 8x16x16 outputs x 3x3x3 each; conv2: 4x16x16 outputs x (8/2 channels) x 1x1
    assert info.macs == 8 * 16 * 16 * 27 + 4 * 16 * 16 * 4
    assert info.flops == 2 * info.macs and info.macs_by_op == {"Conv": info.macs}
    assert info.nodes_by_op == {"Conv": 2, "Relu": 1}
    assert info.precision == "float32" and info.opset == 17 and info.file_bytes == path.stat().st_size
    assert info.shape_text == "1x3x32x32" and info.outputs[0].shape == (1, 4, 16, 16)
    # at another size the counts scale with the output area; parameters do not change
    big = model_info(path, 64)
    assert big.macs == 4 * info.macs and big.params == info.params and big.shape_text == "1x3x64x64"
    assert model_info(path, (32, 64)).macs == 2 * info.macs


def test_an_initializer_read_by_two_nodes_counts_once():
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1]),
             helper.make_node("Conv", ["h", "w"], ["y"], kernel_shape=[1, 1])]
    model = _model(nodes, [_init("w", (5, 5, 1, 1))], [1, 5, 8, 8], [1, 5, 8, 8])
    assert count_params(model)[0] == 25
    assert model_info(model).macs == 2 * 5 * 64 * 5


def test_conv_transpose_counts_per_input_pixel_and_gemm_matmul_by_the_reduced_dim():
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[4, 4], strides=[2, 2],
                              pads=[1, 1, 1, 1])]
    model = _model(nodes, [_init("w", (6, 3, 4, 4))], [1, 6, 10, 10], [1, 3, 20, 20])
    assert model_info(model).macs == 6 * 10 * 10 * 3 * 16
    gemm = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1), helper.make_node("MatMul", ["h", "m"], ["y"])]
    model = _model(gemm, [_init("w", (7, 5)), _init("b", (7,)), _init("m", (7, 2))], [3, 5], [3, 2])
    info = model_info(model)
    assert info.macs_by_op == {"Gemm": 3 * 7 * 5, "MatMul": 3 * 2 * 7} and info.params == 35 + 7 + 14


def test_symbolic_batch_counts_as_one_and_resize_arguments_are_not_parameters():
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[1, 1]),
             helper.make_node("Resize", ["h", "", "s"], ["y"], mode="linear")]
    s = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    model = _model(nodes, [_init("w", (2, 3, 1, 1)), s], ["N", 3, 4, 4], ["N", 2, 8, 8])
    info = model_info(model)
    assert info.params == 6 and info.macs == 2 * 16 * 3 and info.inputs[0].shape == ("N", 3, 4, 4)
    assert info.shape_text == "1x3x4x4" and info.nodes_by_op["Resize"] == 1


def test_int8_and_fp16_models_report_their_precision_and_the_float_parameter_count(demo_int8, tmp_path):
    from fcnquant.demo_models import demo_model_path
    from fcnquant.quantize import convert_fp16

    fp32 = model_info(demo_model_path("fcn8s"))
    q = model_info(demo_int8.model)
    assert q.precision == "int8 QDQ" and q.target == "ort-cpu" and q.per_channel is True
    assert q.table_sha256 and len(q.table_sha256) == 64
    assert q.quantized_weights == fp32.nodes_by_op["Conv"] and q.quantized_activations > 0
    assert q.params == fp32.params and q.macs == fp32.macs  # each weight once: its int8 initializer
    f16 = model_info(convert_fp16(demo_model_path("fcn8s"), tmp_path / "m.fp16.onnx").path)
    assert f16.precision == "fp16" and f16.params == fp32.params and f16.macs == fp32.macs
    assert fp32.precision == "float32"


def test_cli_info_text_and_json(tmp_path, capsys):
    path = tmp_path / "two.onnx"
    onnx.save(two_conv(), str(path))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "params:    240" in out and "FLOPs = 2 x MACs" in out and "1x3x32x32" in out
    assert main(["info", str(path), "--json", "--size", "64"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["macs"] == 4 * (8 * 16 * 16 * 27 + 4 * 16 * 16 * 4) and d["flops"] == 2 * d["macs"]
    assert d["counted_input"] == [1, 3, 64, 64] and d["convention"]
    assert main(["info", str(tmp_path / "missing.onnx")]) == 2


# --- the full-size zoo: exported once per module (a few seconds to a minute each on CPU) -----------------------


def _folded_count(module) -> int:
    """Parameters of a torch module counted independently of ONNX: each module once, BatchNorm folded into the
    preceding convolution (every conv then has one bias of its output channels, its BN adds nothing)."""
    from torch import nn

    total, bn_channels, biasless = 0, 0, 0
    for m in module.modules():  # modules() visits a module registered twice once
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            out = m.out_channels if not isinstance(m, nn.Linear) else m.out_features
            total += m.weight.numel() + out
            biasless += out if m.bias is None else 0
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn_channels += m.num_features
        else:
            total += sum(p.numel() for p in m.parameters(recurse=False))
    assert bn_channels == biasless  # every BN follows a bias-free conv, so folding gives it that bias
    return total


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    pytest.importorskip("torch")
    from fcnquant.models.export import export_onnx

    d = tmp_path_factory.mktemp("zoo")
    made = {}

    def get(name: str, size: int):
        if name not in made:
            made[name] = model_info(export_onnx(name, d / f"{name}.onnx", size=size))
        return made[name]

    return get


@pytest.mark.parametrize("name,params_m,gmacs", [("fcn8s", 15.32, 31.39), ("fcn16s", 15.32, 31.38),
                                                 ("fcn32s", 15.31, 31.38)])
def test_vgg_fcns_at_320_count_the_shared_backbone_once(zoo, name, params_m, gmacs):
    info = zoo(name, 320)
    assert info.params / 1e6 == pytest.approx(params_m, abs=0.01)
    assert info.macs / 1e9 == pytest.approx(gmacs, rel=0.005)
    assert info.shape_text == "1x3x320x320"


@pytest.mark.parametrize("name", ["fcn_r50_d8", "fcn_r101_d8"])
def test_mmseg_fcns_at_512_match_an_independent_count_of_the_torch_module(zoo, name):
    from fcnquant.models import build_model

    info = zoo(name, 512)
    assert info.params == _folded_count(build_model(name))
    assert info.shape_text == "1x3x512x512" and info.macs > 0 and not info.uncounted
