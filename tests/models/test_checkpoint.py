"""Checkpoints: awesome's and mmseg's files load strictly, mismatches are named, unsafe pickles are refused."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fcnquant.errors import ModelError  # noqa: E402
from fcnquant.models import build_model, load_checkpoint, read_state_dict  # noqa: E402

TINY = 1 / 16


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
