"""torchvision's fcn_resnet50/101 in the zoo: key layout and sizes from torchvision's source, strict loading, export."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fcnquant.errors import ModelError  # noqa: E402
from fcnquant.models import build_model, count_parameters, export_onnx, load_checkpoint  # noqa: E402

TINY = 1 / 16
# torchvision/models/resnet.py: resnet50 = Bottleneck x [3, 4, 6, 3], resnet101 = [3, 4, 23, 3]
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
# torchvision's published num_params (FCN_ResNet50_Weights / FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1 meta);
# those checkpoints include the aux classifier
UPSTREAM_PARAMS = {50: 35_322_218, 101: 54_314_346}


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _head(prefix: str, cin: int, classes: int) -> dict[str, tuple[int, ...]]:
    """torchvision's FCNHead(cin, classes): 0 Conv3x3 cin -> cin // 4 (no bias), 1 BN, 2 ReLU, 3 Dropout, 4 Conv1x1."""
    inter = cin // 4
    return {f"{prefix}.0.weight": (inter, cin, 3, 3), **_bn(f"{prefix}.1", inter),
            f"{prefix}.4.weight": (classes, inter, 1, 1), f"{prefix}.4.bias": (classes,)}


def torchvision_keys(depth: int, aux: bool, classes: int = 21) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of torchvision's fcn_resnet<depth>, written out from its source.

    ResNet (``IntermediateLayerGetter`` keeps conv1 ... layer4, not avgpool/fc), Bottleneck conv1 1x1, conv2 3x3,
    conv3 1x1 (x4), a ``downsample`` (conv1x1 + BN) on each stage's first block, then ``classifier`` =
    FCNHead(2048) and ``aux_classifier`` = FCNHead(1024).
    """
    keys = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    inplanes = 64
    for stage, blocks in enumerate(BLOCKS[depth]):
        planes = 64 * 2**stage
        for b in range(blocks):
            p = f"backbone.layer{stage + 1}.{b}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys.update(_bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(_bn(f"{p}.bn2", planes))
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            keys.update(_bn(f"{p}.bn3", planes * 4))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    keys.update(_head("classifier", 2048, classes))
    if aux:
        keys.update(_head("aux_classifier", 1024, classes))
    return keys


def _checkpoint(keys: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A state dict of seeded random tensors with exactly ``keys`` (as torchvision would save it)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(5)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(shape, generator=g) * 0.1
    return out


def _scaled_keys(model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [50, 101])
def test_full_width_keys_shapes_and_parameter_counts_match_torchvision(depth):
    name = f"fcn_resnet{depth}"
    with_aux = build_model(name, aux=True)
    assert _scaled_keys(with_aux) == torchvision_keys(depth, aux=True)
    assert list(with_aux.state_dict()) == list(torchvision_keys(depth, aux=True))  # same order as well
    assert count_parameters(with_aux) == UPSTREAM_PARAMS[depth]
    # the aux head FCNHead(1024, 21): 1024*256*9 conv + 2*256 BN + 256*21 + 21 conv
    aux_params = 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
    plain = build_model(name)
    assert _scaled_keys(plain) == torchvision_keys(depth, aux=False)
    assert count_parameters(plain) == UPSTREAM_PARAMS[depth] - aux_params
    if depth == 50:
        # resnet50's 320 state-dict keys less fc.weight/fc.bias, plus 8 per FCNHead
        assert len(torchvision_keys(50, aux=False)) == 318 + 8 and count_parameters(plain) == 32_957_013


def test_strides_dilations_and_stem():
    bb = build_model("fcn_resnet50", width=TINY).backbone
    assert bb.conv1.kernel_size == (7, 7) and bb.conv1.stride == (2, 2) and bb.conv1.padding == (3, 3)
    assert bb.conv1.bias is None and not hasattr(bb, "fc") and not hasattr(bb, "avgpool")
    # replace_stride_with_dilation=[False, True, True]: first block keeps the previous dilation
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer2[0].downsample[0].stride == (2, 2)
    assert bb.layer3[0].conv2.stride == (1, 1) and bb.layer3[0].downsample[0].stride == (1, 1)
    assert [b.conv2.dilation[0] for b in bb.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in bb.layer4] == [2, 4, 4]
    assert all(b.conv2.padding == b.conv2.dilation for layer in (bb.layer3, bb.layer4) for b in layer)
    with torch.no_grad():
        assert tuple(bb.eval()(torch.zeros(1, 3, 64, 96)).shape[2:]) == (8, 12)  # output stride 8


def test_forward_is_the_classifier_upsampled_bilinear_half_pixel():
    import torch.nn.functional as F

    model = build_model("fcn_resnet50", width=TINY).eval()
    x = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        coarse = model.classifier(model.backbone(x))
        want = F.interpolate(coarse, (70, 90), mode="bilinear", align_corners=False)
        got = model(x)
    assert tuple(got.shape) == (1, 21, 70, 90)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_torchvision_checkpoint_loads_strictly_and_drops_aux(tmp_path, caplog):
    state = _checkpoint(torchvision_keys(50, aux=True))
    path = tmp_path / "fcn_resnet50_coco.pth"
    torch.save(state, path)
    with caplog.at_level("INFO"):
        model = load_checkpoint(build_model("fcn_resnet50"), path)
    assert "dropped 8 training-only checkpoint keys" in caplog.text
    own = model.state_dict()
    for k in ("backbone.conv1.weight", "backbone.layer4.2.bn3.running_var", "classifier.4.bias"):
        assert torch.equal(own[k], state[k])
    assert not any(k.startswith("aux_classifier.") for k in own)


def test_mismatches_are_named():
    full = _checkpoint(torchvision_keys(50, aux=False))
    model = build_model("fcn_resnet50")
    missing = {k: v for k, v in full.items() if k != "classifier.4.bias"}
    with pytest.raises(ModelError, match=r"missing keys 'classifier\.4\.bias'"):
        load_checkpoint(model, missing)
    extra = {**full, "backbone.fc.weight": torch.zeros(1000, 2048)}
    with pytest.raises(ModelError, match=r"unexpected keys 'backbone\.fc\.weight'"):
        load_checkpoint(model, extra)
    wrong = {**full, "classifier.4.weight": torch.zeros(19, 512, 1, 1)}
    with pytest.raises(ModelError, match=r"wrong shape for 'classifier\.4\.weight' \(checkpoint \(19, 512, 1, 1\)"):
        load_checkpoint(model, wrong)


def test_reduced_width_checkpoint_exports_and_onnxruntime_matches_torch(tmp_path):
    import onnx

    from fcnquant.runtime import make_session

    src = build_model("fcn_resnet50", width=TINY, aux=True)
    ckpt = _checkpoint(_scaled_keys(src), seed=3)
    path = tmp_path / "tiny.pth"
    torch.save({"model": ckpt}, path)  # torchvision's reference scripts save {'model': ..., 'optimizer': ...}
    out = export_onnx("fcn_resnet50", tmp_path / "tiny.onnx", checkpoint=path, size=96, width=TINY)

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["fcnquant.model"] == "fcn_resnet50" and meta["fcnquant.preset"] == "awesome"
    assert meta["fcnquant.weights"].startswith("checkpoint sha256:")
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    assert not {n.op_type for n in proto.graph.node} & {"BatchNormalization", "Dropout"}
    resize = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resize) == 1
    mode = {a.name: a.s.decode() for a in resize[0].attribute if a.type == onnx.AttributeProto.STRING}
    assert mode["coordinate_transformation_mode"] == "half_pixel" and mode["mode"] == "linear"

    model = load_checkpoint(build_model("fcn_resnet50", width=TINY), path).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = make_session(out).run(None, {"input": x})[0]
    assert got.shape == (1, 21, 96, 96)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.abs(want).max() > 0.1  # the comparison is not between two near-zero tensors


def test_aux_only_for_torchvision_models():
    with pytest.raises(ModelError, match="torchvision"):
        build_model("fcn_r50_d8", aux=True)
