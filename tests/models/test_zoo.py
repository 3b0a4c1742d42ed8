"""Model zoo: architecture facts from the upstream projects, checkpoint compatibility, strict loading, random init."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fcnquant.errors import ModelError  # noqa: E402
from fcnquant.models import (  # noqa: E402
    MODEL_NAMES, build_model, count_parameters, init_random_weights, load_checkpoint, read_state_dict,
)

TINY = 1 / 16
VGG_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # conv indices in torchvision's VGG16 features


def _randomize(model, seed=1):
    """Fills every parameter and BN buffer with seeded random values (so loads are checked value by value)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g))
    return model


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


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_awesome_checkpoint_loads_strictly(name, tmp_path):
    src = _randomize(build_model(name, width=TINY))
    state = src.state_dict()
    state.update({"auxlayer.block.0.weight": torch.zeros(2, 2, 3, 3)})  # upstream's optional aux head: dropped
    path = tmp_path / f"{name}.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel prefixes
    dst = load_checkpoint(build_model(name, width=TINY), path)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_old_awesome_features_prefix_is_renamed(tmp_path):
    src = _randomize(build_model("fcn32s", width=TINY))
    state = {k.replace("pretrained.", "features.", 1): v for k, v in src.state_dict().items()}
    dst = load_checkpoint(build_model("fcn32s", width=TINY), state)
    assert torch.equal(dst.pretrained[28].weight, src.pretrained[28].weight)


def test_mmseg_checkpoint_with_meta_and_aux_head_loads(tmp_path):
    src = _randomize(build_model("fcn_r50_d8", width=TINY))
    state = dict(src.state_dict())
    aux = {"auxiliary_head.convs.0.conv.weight": torch.randn(16, 64, 3, 3),
           "auxiliary_head.convs.0.bn.weight": torch.randn(16),
           "auxiliary_head.conv_seg.weight": torch.randn(21, 16, 1, 1), "auxiliary_head.conv_seg.bias": torch.randn(21)}
    meta = {"CLASSES": ("background", "aeroplane"), "PALETTE": [[0, 0, 0], [128, 0, 0]], "iter": 20000,
            "mmseg_version": "0.5.0+b2724da", "seed": np.int64(0), "hist": np.arange(4.0)}
    path = tmp_path / "fcn_r50_d8.pth"
    torch.save({"meta": meta, "state_dict": {**state, **aux}}, path)
    dst = load_checkpoint(build_model("fcn_r50_d8", width=TINY), path)
    for key, value in state.items():
        assert torch.equal(dst.state_dict()[key], value), key
    assert set(read_state_dict(path)) == set(state) | set(aux)


def test_missing_num_batches_tracked_is_tolerated():
    src = _randomize(build_model("fcn_r50_d8", width=TINY))
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    dst = load_checkpoint(build_model("fcn_r50_d8", width=TINY), state)
    assert torch.equal(dst.decode_head.conv_cat.bn.running_var, src.decode_head.conv_cat.bn.running_var)


@pytest.mark.parametrize("name,key", [("fcn8s", "pool4.2.weight"), ("fcn_r50_d8", "backbone.layer3.4.conv2.weight")])
def test_wrong_shape_is_refused_naming_the_key(name, key, tmp_path):
    state = dict(build_model(name, width=TINY).state_dict())
    state[key] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    with pytest.raises(ModelError) as err:
        load_checkpoint(build_model(name, width=TINY), path)
    assert f"'{key}'" in str(err.value) and "wrong shape" in str(err.value)


def test_missing_and_unexpected_keys_are_named():
    state = dict(build_model("fcn16s", width=TINY).state_dict())
    del state["score_pool4.bias"]
    state["score_pool3.weight"] = torch.zeros(21, 16, 1, 1)
    with pytest.raises(ModelError, match=r"missing keys 'score_pool4.bias'.*unexpected keys 'score_pool3.weight'"):
        load_checkpoint(build_model("fcn16s", width=TINY), state)


def test_wrong_class_count_names_the_classifier():
    state = build_model("fcn8s", num_classes=21, width=TINY).state_dict()
    expected = r"'head.block.4.weight' \(checkpoint \(21, 8, 1, 1\), model \(10, 8, 1, 1\)\)"
    with pytest.raises(ModelError, match=expected):
        load_checkpoint(build_model("fcn8s", num_classes=10, width=TINY), state)


def test_disagreeing_duplicate_keys_are_refused():
    state = dict(build_model("fcn8s", width=TINY).state_dict())
    state["pool3.0.weight"] = state["pool3.0.weight"] + 1  # same module as pretrained.0 in the model
    with pytest.raises(ModelError, match="pool3.0.weight.*pretrained.0.weight|pretrained.0.weight.*pool3.0.weight"):
        load_checkpoint(build_model("fcn8s", width=TINY), state)


class _NotWeights:
    pass


def test_unsafe_pickles_and_bad_files_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": build_model("fcn32s", width=TINY).state_dict(), "hook": _NotWeights()}, unsafe)
    with pytest.raises(ModelError, match="_NotWeights"):
        read_state_dict(unsafe)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pth"):
        read_state_dict(junk)
    with pytest.raises(ModelError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(ModelError, match="not a tensor"):
        load_checkpoint(build_model("fcn32s", width=TINY), {"pretrained.0.weight": [1, 2]})


def test_backbone_weights_from_a_local_file(tmp_path):
    vgg = _randomize(build_model("fcn8s", width=TINY)).pretrained
    path = tmp_path / "vgg16.pth"  # torchvision layout: features.* plus a classifier that is ignored
    torch.save({**{f"features.{k}": v for k, v in vgg.state_dict().items()}, "classifier.0.weight": torch.zeros(2, 2)},
               path)
    model = build_model("fcn8s", width=TINY, pretrained_backbone=path)
    assert torch.equal(model.pool4[2].weight, vgg[19].weight)
    res = _randomize(build_model("fcn_r50_d8", width=TINY)).backbone
    path = tmp_path / "r50_v1c.pth"  # open-mmlab layout: {'state_dict': {stem.*, layer*.*, fc.*}}
    torch.save({"state_dict": {**res.state_dict(), "fc.weight": torch.zeros(1000, 128)}}, path)
    model = build_model("fcn_r50_d8", width=TINY, pretrained_backbone=path)
    assert torch.equal(model.backbone.layer3[5].conv2.weight, res.layer3[5].conv2.weight)
