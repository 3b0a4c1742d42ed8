"""ONNX export: graph contract (opset, names, folded BN, no dropout), onnxruntime parity, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fcnquant.errors import ModelError  # noqa: E402
from fcnquant.models import MODEL_NAMES, build_model, export_module, export_onnx, init_random_weights  # noqa: E402
from tests.helpers import dims  # noqa: E402

TINY = 1 / 16
HW = (48, 64)
RESIZE_MODE = {"fcn32s": "align_corners", "fcn16s": "align_corners", "fcn8s": "align_corners",
               "fcn_r50_d8": "half_pixel", "fcn_r101_d8": "half_pixel",
               "fcn_resnet50": "half_pixel", "fcn_resnet101": "half_pixel"}  # torchvision: align_corners=False


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_export_contract_and_onnxruntime_parity(name, tmp_path):
    model = init_random_weights(build_model(name, width=TINY), seed=2)
    out = export_module(model, tmp_path / f"{name}.onnx", HW)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(proto.graph.input[0]) == [1, 3, *HW] and dims(proto.graph.output[0]) == [1, 21, *HW]
    ops = [n.op_type for n in proto.graph.node]
    # BN folded, dropout gone, Resize sizes folded to constants: only the network's own ops remain
    assert set(ops) <= {"Conv", "Relu", "MaxPool", "Add", "Concat", "Resize"}
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert ops.count("Conv") == n_convs
    modes = {a.s.decode() for n in proto.graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "coordinate_transformation_mode"}
    assert modes == {RESIZE_MODE[name]}
    x = torch.randn(1, 3, *HW, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    got = _ort(out).run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 21, *HW)
    assert np.abs(got - ref).max() <= 1e-4


def test_dynamic_batch(tmp_path):
    model = init_random_weights(build_model("fcn8s", width=TINY), seed=1)
    out = export_module(model, tmp_path / "dyn.onnx", 32, dynamic_batch=True)
    proto = onnx.load(str(out))
    assert dims(proto.graph.input[0]) == ["N", 3, 32, 32] and dims(proto.graph.output[0]) == ["N", 21, 32, 32]
    sess = _ort(out)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == (3, 21, 32, 32) and np.abs(got - ref).max() <= 1e-4
    assert sess.run(None, {"input": x[:1].numpy()})[0].shape == (1, 21, 32, 32)


def test_export_onnx_is_seeded_and_records_metadata(tmp_path, caplog):
    a = export_onnx("fcn16s", tmp_path / "a.onnx", size=32, width=TINY, seed=7)
    b = export_onnx("fcn16s", tmp_path / "b.onnx", size=32, width=TINY, seed=7)
    c = export_onnx("fcn16s", tmp_path / "c.onnx", size=32, width=TINY, seed=8)
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    assert "meaningless" in caplog.text
    meta = {p.key: p.value for p in onnx.load(str(a)).metadata_props}
    assert meta["fcnquant.model"] == "fcn16s" and meta["fcnquant.preset"] == "awesome"
    assert meta["fcnquant.weights"] == "random seed=7"
    # the exported graph computes what the seeded torch model computes
    model = init_random_weights(build_model("fcn16s", width=TINY), seed=7)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(_ort(a).run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4


def test_export_onnx_rectangular_size_and_classes(tmp_path):
    out = export_onnx("fcn_r50_d8", tmp_path / "r.onnx", size=(40, 56), num_classes=3, width=TINY)
    assert _ort(out).run(None, {"input": np.zeros((1, 3, 40, 56), np.float32)})[0].shape == (1, 3, 40, 56)


def test_mmseg_checkpoint_exports_and_matches(tmp_path):
    src = init_random_weights(build_model("fcn_r50_d8", width=TINY), seed=11)
    ckpt = tmp_path / "fcn_r50.pth"
    aux = {"auxiliary_head.conv_seg.weight": torch.randn(21, 16, 1, 1), "auxiliary_head.conv_seg.bias": torch.randn(21)}
    torch.save({"state_dict": {**src.state_dict(), **aux}, "meta": {"iter": 20000}}, ckpt)
    out = export_onnx("fcn_r50_d8", tmp_path / "r50.onnx", checkpoint=ckpt, size=48, width=TINY)
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = src(x).numpy()
    assert np.abs(_ort(out).run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4
    assert onnx.load(str(out)).metadata_props[-1].value.startswith("checkpoint sha256:")


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_awesome_checkpoint_exports_and_matches(name, tmp_path):
    src = init_random_weights(build_model(name, width=TINY), seed=12)
    ckpt = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), ckpt)
    out = export_onnx(name, tmp_path / f"{name}.onnx", checkpoint=ckpt, size=32, width=TINY)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = src(x).numpy()
    assert np.abs(_ort(out).run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4


def test_corrupted_checkpoint_fails_and_writes_nothing(tmp_path):
    state = dict(build_model("fcn_r50_d8", width=TINY).state_dict())
    state["decode_head.conv_seg.weight"] = torch.zeros(21, 7, 1, 1)
    ckpt = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "meta": {}}, ckpt)
    with pytest.raises(ModelError, match="'decode_head.conv_seg.weight'"):
        export_onnx("fcn_r50_d8", tmp_path / "bad.onnx", checkpoint=ckpt, size=32, width=TINY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]


class _TupleModel(torch.nn.Module):
    """Returns awesome's ``(out,)`` tuple and keeps Dropout/BN modules, like a model straight from training."""

    def __init__(self):
        super().__init__()
        self.net = init_random_weights(build_model("fcn32s", num_classes=4, width=TINY), seed=0)

    def forward(self, x):
        return (self.net(x), self.net(x) * 0)


def test_export_module_unwraps_tuples_and_restores_training_mode(tmp_path):
    model = _TupleModel().train()
    model.net.head.eval()  # e.g. a frozen part: stays in eval afterwards
    before = {name: m.training for name, m in model.named_modules()}
    out = export_module(model, tmp_path / "t.onnx", (32, 48), metadata={"origin": "test"})
    assert {name: m.training for name, m in model.named_modules()} == before
    assert model.training and not model.net.head.block[1].training
    proto = onnx.load(str(out))
    assert [o.name for o in proto.graph.output] == ["output"] and dims(proto.graph.output[0]) == [1, 4, 32, 48]
    assert {p.key: p.value for p in proto.metadata_props} == {"origin": "test"}
    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        ref = model(x)[0].numpy()
    assert np.abs(_ort(out).run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4


def test_bad_sizes_and_outputs(tmp_path):
    with pytest.raises(ModelError, match="too small"):
        export_onnx("fcn8s", tmp_path / "s.onnx", size=16, width=TINY)
    with pytest.raises(ModelError, match="logits"):
        export_module(torch.nn.Conv2d(3, 2, 3, stride=2), tmp_path / "c.onnx", 32)
    assert list(tmp_path.iterdir()) == []
