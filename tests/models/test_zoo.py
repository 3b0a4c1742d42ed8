"""Model zoo: architecture facts from the upstream projects, argument checks, seeded random init."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from fcnquant.errors import ModelError  # noqa: E402
from fcnquant.models import MODEL_NAMES, build_model, count_parameters, init_random_weights  # noqa: E402

TINY = 1 / 16
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # conv indices in torchvision's VGG16 features


def _awesome_keys(kind: str) -> list[str]:
    """The state-dict keys of awesome-semantic-segmentation-pytorch's FCN (written from its module layout)."""
    def convs(prefix, indices, offset=0):
        return [f"{prefix}.{i - offset}.{p}" for i in indices for p in ("weight", "bias")]

    bn = [f"head.block.1.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    head = ["head.block.0.weight", *bn, "head.block.4.weight", "head.block.4.bias"]
    keys = convs("pretrained", VGG_CONVS)
    if kind == "fcn16s":
        keys += convs("pool4", [i for i in VGG_CONVS if i < 24]) + convs("pool5", [i for i in VGG_CONVS if i >= 24], 24)
        keys += head + ["score_pool4.weight", "score_pool4.bias"]
    elif kind == "fcn8s":
        keys += convs("pool3", [i for i in VGG_CONVS if i < 17])
        keys += convs("pool4", [i for i in VGG_CONVS if 17 <= i < 24], 17)
        keys += convs("pool5", [i for i in VGG_CONVS if i >= 24], 24)
        keys += head + ["score_pool3.weight", "score_pool3.bias", "score_pool4.weight", "score_pool4.bias"]
    else:
        keys += head
    return keys


# ---------------------------------------------------------------- architecture


@pytest.mark.parametrize("name,expected", [
    ("fcn32s", 15_307_477), ("fcn16s", 15_318_250), ("fcn8s", 15_323_647), ("fcn_r50_d8", 47_134_069),
])
def test_unique_parameter_counts_at_full_width(name, expected):
    model = build_model(name)
    assert count_parameters(model) == expected
    # counted by identity: shared VGG weights appear once even though the state dict lists them twice
    unique = {id(p): p.numel() for m in model.modules() for p in m.parameters(recurse=False)}
    assert sum(unique.values()) == expected


@pytest.mark.parametrize("name,count", [("fcn32s", 34), ("fcn16s", 62), ("fcn8s", 64)])
def test_vgg_state_dict_keys_match_awesome(name, count):
    keys = list(build_model(name, width=TINY).state_dict())
    expected = _awesome_keys(name)
    assert len(keys) == len(expected) == count
    assert set(keys) == set(expected)


def test_vgg_shapes_at_full_width():
    sd = build_model("fcn8s").state_dict()
    assert sd["pretrained.0.weight"].shape == (64, 3, 3, 3)
    assert sd["pretrained.28.weight"].shape == (512, 512, 3, 3)
    assert sd["head.block.0.weight"].shape == (128, 512, 3, 3)
    assert sd["head.block.1.running_var"].shape == (128,)
    assert sd["head.block.4.weight"].shape == (21, 128, 1, 1)
    assert sd["score_pool3.weight"].shape == (21, 256, 1, 1)
    assert sd["score_pool4.weight"].shape == (21, 512, 1, 1)


def test_vgg_pool_views_share_the_backbone_modules():
    m16, m8 = build_model("fcn16s", width=TINY), build_model("fcn8s", width=TINY)
    assert m16.pool4[0] is m16.pretrained[0] and m16.pool5[0] is m16.pretrained[24]
    assert m8.pool3[16] is m8.pretrained[16] and m8.pool4[0] is m8.pretrained[17] and m8.pool5[4] is m8.pretrained[28]


def test_resnet_keys_and_shapes_match_mmseg():
    model = build_model("fcn_r50_d8")
    sd = model.state_dict()
    # stem: 3 convs + 3 BN (5 entries each); 16 bottlenecks x (3 convs + 3 BN); 4 downsamples (conv + BN);
    # head: 3 ConvModules (conv + BN) + conv_seg (weight, bias)
    assert len(sd) == 3 * 6 + 16 * 18 + 4 * 6 + 3 * 6 + 2
    expected_shapes = {
        "backbone.stem.0.weight": (32, 3, 3, 3), "backbone.stem.3.weight": (32, 32, 3, 3),
        "backbone.stem.6.weight": (64, 32, 3, 3), "backbone.stem.7.running_mean": (64,),
        "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1), "backbone.layer1.0.downsample.1.weight": (256,),
        "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1), "backbone.layer4.2.bn3.num_batches_tracked": (),
        "decode_head.convs.0.conv.weight": (512, 2048, 3, 3), "decode_head.convs.1.conv.weight": (512, 512, 3, 3),
        "decode_head.convs.1.bn.running_var": (512,), "decode_head.conv_cat.conv.weight": (512, 2560, 3, 3),
        "decode_head.conv_seg.weight": (21, 512, 1, 1), "decode_head.conv_seg.bias": (21,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert "decode_head.convs.0.conv.bias" not in sd and "backbone.layer1.0.conv1.bias" not in sd
    blocks = [len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5)]
    assert blocks == [3, 4, 6, 3]
    r101 = build_model("fcn_r101_d8", width=TINY).backbone
    assert [len(getattr(r101, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]


def test_resnet_strides_and_contracted_dilations():
    bb = build_model("fcn_r50_d8", width=TINY).backbone
    assert bb.stem[0].stride == (2, 2) and bb.maxpool.stride == 2
    assert bb.layer2[0].conv2.stride == (2, 2) and bb.layer2[0].conv1.stride == (1, 1)  # style 'pytorch'
    assert [b.conv2.dilation[0] for b in bb.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in bb.layer4] == [2, 4, 4]
    assert all(b.conv2.padding == b.conv2.dilation for b in [*bb.layer3, *bb.layer4])
    assert bb.layer3[0].conv2.stride == (1, 1) and bb.layer4[0].downsample[0].stride == (1, 1)
    assert tuple(bb(torch.zeros(1, 3, 64, 48)).shape[2:]) == (8, 6)  # output stride 8


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_returns_logits_at_input_size(name):
    model = init_random_weights(build_model(name, num_classes=5, width=TINY), seed=0)
    with torch.no_grad():
        y = model(torch.randn(2, 3, 40, 72))
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 5, 40, 72)


def test_vgg_upsampling_is_align_corners_true():
    # FCN32s is head(pool5) upsampled once: check against an explicit align_corners=True interpolation
    model = init_random_weights(build_model("fcn32s", width=TINY), seed=0)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        coarse = model.head(model.pretrained(x))
        expected = torch.nn.functional.interpolate(coarse, (64, 96), mode="bilinear", align_corners=True)
        assert torch.equal(model(x), expected)
    assert coarse.shape[2:] == (2, 3)


def test_resnet_upsampling_is_align_corners_false():
    model = init_random_weights(build_model("fcn_r50_d8", width=TINY), seed=0)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        coarse = model.decode_head(model.backbone(x))
        assert torch.equal(model(x), torch.nn.functional.interpolate(coarse, (64, 48), mode="bilinear",
                                                                     align_corners=False))


def test_width_scales_channels_and_keeps_topology():
    full, tiny = build_model("fcn8s").state_dict(), build_model("fcn8s", width=0.125).state_dict()
    assert list(full) == list(tiny)
    assert tiny["pretrained.0.weight"].shape == (8, 3, 3, 3) and tiny["head.block.0.weight"].shape == (16, 64, 3, 3)
    r = build_model("fcn_r50_d8", width=0.125).state_dict()
    assert list(r) == list(build_model("fcn_r50_d8").state_dict())
    assert r["backbone.stem.0.weight"].shape == (4, 3, 3, 3)
    assert r["decode_head.conv_cat.conv.weight"].shape == (64, 320, 3, 3)


def test_bad_names_and_arguments():
    with pytest.raises(ModelError, match="unknown model 'fcn4s'.*fcn8s"):
        build_model("fcn4s")
    with pytest.raises(ModelError, match="num_classes"):
        build_model("fcn8s", num_classes=0)
    with pytest.raises(ModelError, match="width"):
        build_model("fcn8s", width=0)


# ---------------------------------------------------------------- random init


@pytest.mark.parametrize("name", ["fcn8s", "fcn_r101_d8"])
def test_random_init_is_seeded_and_well_scaled(name):
    a = init_random_weights(build_model(name, width=TINY), seed=3)
    b = init_random_weights(build_model(name, width=TINY), seed=3)
    c = init_random_weights(build_model(name, width=TINY), seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training
    bn = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in bn)
    with torch.no_grad():
        y = a(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(y).all()
    assert 0.05 < y.std().item() < 100  # neither dead nor exploding
    assert (y.argmax(1).flatten().bincount(minlength=21) > 0).sum() > 1  # more than one predicted class
