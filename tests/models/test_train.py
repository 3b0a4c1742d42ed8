"""The training script that made the demo models (fcnquant.models.train): export, determinism, BN folding,
augmentation, bad settings and initialisation from a checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from fcnquant.data import get_preset  # noqa: E402
from fcnquant.errors import ModelError  # noqa: E402
from fcnquant.evaluate import evaluate  # noqa: E402
from fcnquant.execute import RunConfig  # noqa: E402
from fcnquant.runtime import make_session  # noqa: E402

QUIET = RunConfig(progress=False)


@pytest.fixture(scope="module")
def tiny_voc(synthetic_voc):
    return synthetic_voc(train=4, val=2, size=48, seed=5)


def test_train_one_epoch_exports_a_model_matching_its_checkpoint(tiny_voc, tmp_path):
    from fcnquant.models import build_model, load_checkpoint
    from fcnquant.models.train import main

    out, ckpt, js = tmp_path / "m.onnx", tmp_path / "m.pth", tmp_path / "r.json"
    rc = main(["fcn8s", "--data", str(tiny_voc), "--width", "0.0625", "--size", "64", "--epochs", "1",
               "--batch-size", "2", "--out", str(out), "--checkpoint-out", str(ckpt), "--json", str(js),
               "--threads", "1", "--no-progress"])
    assert rc == 0
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert not {n.op_type for n in model.graph.node} & {"BatchNormalization", "Dropout"}
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fcnquant.preset"] == "awesome" and meta["fcnquant.model"] == "fcn8s"
    report = json.loads(js.read_text())["result"]
    assert report["steps"] == 2 and report["train_images"] == 4 and report["val_images"] == 2
    # the checkpoint loads strictly into the plain zoo model (train-time BN folded away) and matches the ONNX
    net = load_checkpoint(build_model("fcn8s", width=0.0625), ckpt).eval()
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = make_session(out).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the recorded score is the exported model's own score on val
    assert report["miou"] == pytest.approx(evaluate(out, tiny_voc, QUIET).miou, abs=1e-9)


def test_train_is_deterministic_for_a_seed(tiny_voc, tmp_path):
    from fcnquant.models.train import TrainConfig, train

    config = TrainConfig("fcn_r50_d8", width=0.0625, size=48, epochs=1, batch_size=2, threads=1, seed=3)
    a = train(config, tiny_voc, tmp_path / "a.onnx", progress=False)
    b = train(config, tiny_voc, tmp_path / "b.onnx", progress=False)
    assert a.final_loss == b.final_loss
    ia = {t.name: t.raw_data for t in onnx.load(str(tmp_path / "a.onnx")).graph.initializer}
    ib = {t.name: t.raw_data for t in onnx.load(str(tmp_path / "b.onnx")).graph.initializer}
    assert ia == ib
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}
    assert meta["fcnquant.preset"] == "mmseg"


def test_fold_train_bn_is_exact_in_eval_mode():
    from fcnquant.models import build_model
    from fcnquant.models.train import attach_train_bn, fold_train_bn

    torch.manual_seed(0)
    net = build_model("fcn16s", width=0.0625)
    wrappers = attach_train_bn(net)
    assert len(wrappers) == 13  # every VGG16 conv, wrapped once although pool4/pool5 share them
    with torch.no_grad():
        for w in wrappers:  # non-trivial statistics and affine parameters
            w.bn.running_mean.uniform_(-1, 1)
            w.bn.running_var.uniform_(0.5, 2)
            w.bn.weight.uniform_(0.5, 1.5)
            w.bn.bias.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = net(x)
        fold_train_bn(net, wrappers)
        after = net(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.pretrained)
    assert net.pool4[0] is net.pretrained[0]  # the shared views point at the restored convs
    assert set(net.state_dict()) == set(build_model("fcn16s", width=0.0625).state_dict())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_augment_keeps_image_and_mask_aligned():
    """Each class is painted in its own colour; after scale/crop/pad/flip every labelled pixel keeps its colour."""
    from fcnquant.models.train import augment

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (21, 3)).astype(np.uint8)
    mask = np.zeros((60, 90), np.uint8)
    mask[10:40, 5:30], mask[20:55, 50:85] = 3, 17
    image = colours[mask]
    preset = get_preset("awesome", size=48)
    for _ in range(20):
        x, m = augment(image, mask, preset, crop=40, scale_range=(0.5, 1.5), flip=True, rng=rng)
        assert x.shape == (3, 40, 40) and x.dtype == np.float32 and m.shape == (40, 40)
        assert set(np.unique(m)) <= {0, 3, 17, 255}
        rgb = np.round((x.transpose(1, 2, 0) * np.array(preset.std) + np.array(preset.mean)) / preset.pixel_scale)
        for c in (3, 17):
            inner = m == c
            # bilinear resizing blends colours only near class edges: compare pixels away from them
            core = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
            if core.any():
                assert np.abs(rgb[core] - colours[c]).max() <= 2
        padded = m == 255
        if padded.any():  # padding is the mean colour, i.e. zero after normalisation
            assert np.abs(x[:, padded]).max() < 0.02


def test_train_rejects_bad_settings(tiny_voc, tmp_path):
    from fcnquant.errors import DataError, FcnquantError
    from fcnquant.models.train import TrainConfig, main, train

    with pytest.raises(FcnquantError, match="optimizer"):
        TrainConfig("fcn8s", optimizer="adam")
    with pytest.raises(FcnquantError, match="scale range"):
        TrainConfig("fcn8s", scale_range=(1.5, 0.5))
    with pytest.raises(ModelError, match="unknown model"):
        TrainConfig("fcn9s")
    with pytest.raises(DataError):
        train(TrainConfig("fcn32s", width=0.0625, size=48, epochs=1), tmp_path / "nowhere", tmp_path / "m.onnx",
              progress=False)
    assert not (tmp_path / "m.onnx").exists()
    assert main(["fcn32s", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m.onnx"),
                 "--no-progress"]) == 2


def test_init_from_copies_backbone_and_head_by_canonical_name(tmp_path):
    """fcn16s/fcn32s from an fcn8s checkpoint: the shared VGG, head and score_pool4 are copied, nothing else.

    awesome's alias names differ between models ('pool4.0' is conv4_1 in fcn8s but conv1_1 in fcn16s), so a
    copy by alias name would put fcn8s weights on the wrong layers.
    """
    from fcnquant.models import build_model
    from fcnquant.models.train import init_from_checkpoint

    torch.manual_seed(1)
    src = build_model("fcn8s", width=0.0625)
    torch.save(src.state_dict(), tmp_path / "fcn8s.pth")
    for name in ("fcn16s", "fcn32s"):
        torch.manual_seed(2)
        dst = build_model(name, width=0.0625)
        fresh_head = None if name == "fcn32s" else dst.score_pool4.weight.detach().clone()
        copied = init_from_checkpoint(dst, tmp_path / "fcn8s.pth")
        assert all(k.startswith(("pretrained.", "head.", "score_pool4.")) for k in copied)
        for a, b in zip(dst.pretrained.parameters(), src.pretrained.parameters()):
            assert torch.equal(a, b)
        for a, b in zip(dst.head.state_dict().values(), src.head.state_dict().values()):
            assert torch.equal(a, b)
        if fresh_head is not None:
            assert torch.equal(dst.score_pool4.weight, src.score_pool4.weight)
            assert not torch.equal(dst.score_pool4.weight, fresh_head)
            assert dst.pool4[0] is dst.pretrained[0]
    with pytest.raises(Exception, match="shares no tensor"):
        init_from_checkpoint(build_model("fcn_r50_d8", width=0.0625), tmp_path / "fcn8s.pth")
