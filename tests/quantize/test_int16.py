"""int16 activations (QuantConfig.int16_tensors): opset-21 QDQ emission, onnxruntime's output against a numpy
int16 fake-quant reference, and int16 against int8 error on a demo model tensor."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from fcnquant.errors import CalibrationError
from fcnquant.quantize import QuantConfig, quantize_model
from tests.quantize.helpers import dq_params, images, initializer, make_table, node, run, save_model, tiny_convnet
from tests.quantize.test_qdq import bias_fq, conv2d, fake_quant, weight_fq

SHAPE = (1, 2, 6, 6)


def int16_scale(lo: float, hi: float, pow2: bool) -> float:
    """Symmetric int16 by hand: amax / 32767, the power of two at or above it on a power-of-two target."""
    scale = max(abs(lo), abs(hi)) / 32767.0
    return float(2.0 ** np.ceil(np.log2(scale))) if pow2 else float(np.float32(scale))


def reference(model, table, x: np.ndarray, target: str) -> np.ndarray:
    """tiny_convnet with x quantized as the target's 8-bit type and r1 as int16: quantize -> dequantize, then the
    float op (per-channel int8 weights, int32 biases at input x weight scale)."""
    e = table.tensors
    xq = fake_quant(x, e["x"].scale, e["x"].zero_point, *((0, 255) if target == "ort-cpu" else (-128, 127)))
    w1, s1 = weight_fq(initializer(model, "w1"))
    w2, s2 = weight_fq(initializer(model, "w2"))
    r1 = np.maximum(conv2d(xq, w1, bias_fq(initializer(model, "b1"), e["x"].scale, s1), 1), 0)
    s16 = int16_scale(e["r1"].lo, e["r1"].hi, target == "npu-pow2")
    r1q = fake_quant(r1, s16, 0, -32768, 32767)
    return conv2d(r1q, w2, bias_fq(initializer(model, "b2"), s16, s2), 0).astype(np.float32)


@pytest.mark.parametrize("target", ["ort-cpu", "tensorrt"])
def test_int16_qdq_in_onnxruntime_equals_numpy_reference(tmp_path, target):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    xs = images(SHAPE, n=4)
    table = make_table(src, xs, target)
    out = tmp_path / "net.int16.onnx"
    quantize_model(src, table, out, QuantConfig(target=target, int16_tensors=("r1",)))
    q = onnx.load(str(out))
    assert [(o.domain, o.version) for o in q.opset_import if o.domain in ("", "ai.onnx")] == [("", 21)]
    onnx.checker.check_model(q)
    scale, zp, _, _ = dq_params(q, node(q, "conv2").input[0])
    assert zp.dtype == np.int16 and int(zp) == 0
    assert float(scale) == pytest.approx(int16_scale(table.tensors["r1"].lo, table.tensors["r1"].hi, False),
                                         rel=1e-6)
    _, x_zp, _, _ = dq_params(q, node(q, "conv1").input[0])
    assert x_zp.dtype == (np.uint8 if target == "ort-cpu" else np.int8)  # the rest stays 8-bit
    model = onnx.load(str(src))
    w2 = initializer(model, "w2")
    for x in xs[:2] + images(SHAPE, n=2, seed=7):
        want = reference(model, table, x, target)
        # one int16 step of r1 through conv2 bounds what summation order can move
        step = float(scale) * float(np.abs(w2).sum(axis=(1, 2, 3)).max())
        for level in ("none", "all"):
            got = run(out, x, optimization=level)
            assert np.abs(got - want).max() <= step + 1e-5, level


def test_int16_on_a_pow2_target_has_power_of_two_scales_and_no_float_conv(tmp_path):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    table = make_table(src, images(SHAPE), "npu-pow2")
    out = tmp_path / "net.int16.onnx"
    res = quantize_model(src, table, out, QuantConfig(target="npu-pow2", int16_tensors=("r1",)))
    q = onnx.load(str(out))
    scale, zp, _, _ = dq_params(q, node(q, "conv2").input[0])
    assert zp.dtype == np.int16 and float(scale) == int16_scale(table.tensors["r1"].lo, table.tensors["r1"].hi, True)
    assert res.float_nodes == ()
    made_by = {o: n.op_type for n in q.graph.node for o in n.output}
    for conv in ("conv1", "conv2"):
        assert all(made_by.get(i) == "DequantizeLinear" for i in node(q, conv).input[:2])


def test_without_int16_the_model_keeps_its_opset(tmp_path):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    table = make_table(src, images(SHAPE), "tensorrt")
    quantize_model(src, table, tmp_path / "a.onnx", QuantConfig(target="tensorrt"))
    assert [o.version for o in onnx.load(str(tmp_path / "a.onnx")).opset_import if o.domain == ""] == [17]


def test_an_unknown_int16_tensor_is_refused(tmp_path):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    table = make_table(src, images(SHAPE), "tensorrt")
    with pytest.raises(CalibrationError, match="nope"):
        quantize_model(src, table, tmp_path / "a.onnx", QuantConfig(target="tensorrt", int16_tensors=("nope",)))
    assert not (tmp_path / "a.onnx").exists()


def test_int16_beats_int8_on_a_demo_model_tensor(tmp_path):
    """fcn8s at npu-pow2: the rounding error of the first Relu output (its DequantizeLinear output against the
    QuantizeLinear input, in the same quantized model) at int16 is far below its error at int8, and so is the
    tensor's error against the float model."""
    from fcnquant.calibrate import build_table, collect_stats
    from fcnquant.data import DataConfig
    from fcnquant.demo_models import demo_model_path
    from fcnquant.execute import RunConfig
    from fcnquant.quantize.name_map import read_tensor_map
    from fcnquant.runtime import make_session, with_outputs

    model = demo_model_path("fcn8s")
    xs = images((1, 3, 160, 160), n=2, seed=3)
    fm = onnx.load(str(model))
    first_relu = next(n for n in fm.graph.node if n.op_type == "Relu").output[0]
    stats = collect_stats(model, DataConfig(None, num_images=4), RunConfig(progress=False))
    table = build_table(stats, "minmax", "npu-pow2")
    rounding, total = {}, {}
    sf = make_session(with_outputs(fm, [first_relu]).SerializeToString())
    for tag, int16 in (("int8", ()), ("int16", (first_relu,))):
        out = tmp_path / f"{tag}.onnx"
        quantize_model(model, table, out, QuantConfig(target="npu-pow2", per_channel=False, int16_tensors=int16))
        q = onnx.load(str(out))
        dq = read_tensor_map(q)[first_relu]  # the value the next layer reads
        made_by = {o: n for n in q.graph.node for o in n.output}
        assert made_by[dq].op_type == "DequantizeLinear" and made_by[made_by[dq].input[0]].op_type == "QuantizeLinear"
        before = made_by[made_by[dq].input[0]].input[0]
        sq = make_session(with_outputs(q, [dq, before]).SerializeToString())
        names = [o.name for o in sq.get_outputs()]
        rounding[tag] = total[tag] = 0.0
        for x in xs:
            got = dict(zip(names, sq.run(None, {sq.get_inputs()[0].name: x})))
            want = sf.run([first_relu], {sf.get_inputs()[0].name: x})[0]
            rounding[tag] += float(np.mean((got[dq] - got[before]) ** 2))
            total[tag] += float(np.mean((got[dq] - want) ** 2))
    assert rounding["int16"] < rounding["int8"] / 1000  # steps 256 times finer: mean squared error 65536 times
    assert total["int16"] < total["int8"]
