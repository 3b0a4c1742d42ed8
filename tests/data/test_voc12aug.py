"""mmsegmentation's voc12aug layout: SegmentationClassAug/ plain 8-bit index masks, aug.txt, --ann-dir."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fcnquant.cli import main
from fcnquant.data import open_dataset, read_mask
from fcnquant.errors import DataError
from fcnquant.evaluate import evaluate

HW = 32


def _model(path):
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((21, 3, 1, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.linspace(2.0, -2.0, 21).astype(np.float32), "b")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, HW, HW])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 21, HW, HW])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, synthetic_voc):
    """The same tiny synthetic set twice: VOC2012 palette masks (val.txt) and voc12aug L-mode masks (aug.txt)."""
    base = tmp_path_factory.mktemp("aug")
    voc = synthetic_voc(train=0, val=6, size=48, seed=7) / "VOC2012"
    aug = base / "data" / "VOCdevkit" / "VOC2012"  # mmsegmentation's data_root
    (aug / "ImageSets" / "Segmentation").mkdir(parents=True)
    shutil.copytree(voc / "JPEGImages", aug / "JPEGImages")
    (aug / "SegmentationClassAug").mkdir()
    ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in ids:
        index = np.asarray(Image.open(voc / "SegmentationClass" / f"{i}.png"))  # palette indices = classes
        Image.fromarray(index.astype(np.uint8), mode="L").save(aug / "SegmentationClassAug" / f"{i}.png")
    (aug / "ImageSets/Segmentation/aug.txt").write_text("".join(f"{i}\n" for i in ids))
    return voc, aug, ids, _model(base / "m.onnx")


def test_aug_masks_are_plain_8bit_and_read_like_palette_masks(layouts):
    voc, aug, ids, _ = layouts
    img = Image.open(aug / "SegmentationClassAug" / f"{ids[0]}.png")
    assert img.mode == "L" and Image.open(voc / "SegmentationClass" / f"{ids[0]}.png").mode == "P"
    for i in ids:
        a = read_mask(aug / "SegmentationClassAug" / f"{i}.png")
        np.testing.assert_array_equal(a, read_mask(voc / "SegmentationClass" / f"{i}.png"))
    assert 255 in np.unique(a) and len(np.unique(a)) > 2


def test_voc12aug_layout_evaluates_to_the_palette_layouts_miou(layouts):
    voc, aug, ids, model = layouts
    ds = open_dataset(aug.parent.parent, "aug")  # data/ -> data/VOCdevkit/VOC2012 is found
    assert ds.ids == ids and all(p.parent.name == "SegmentationClassAug" for p in ds.masks.values())
    ref = evaluate(model, data=voc, split="val", progress=False)
    got = evaluate(model, data=aug.parent, split="aug", progress=False)
    assert 0 < ref.miou < 100 and got.miou == ref.miou and got.miou_awesome == ref.miou_awesome
    np.testing.assert_array_equal(got.confusion, ref.confusion)
    explicit = evaluate(model, data=aug, split="aug", progress=False, ann_dir="SegmentationClassAug")
    assert explicit.miou == ref.miou


def test_ids_missing_from_segmentationclass_fall_back_to_aug(layouts, tmp_path):
    voc, aug, ids, _ = layouts
    mixed = tmp_path / "VOC2012"
    shutil.copytree(aug, mixed)
    (mixed / "SegmentationClass").mkdir()
    for i in ids[:2]:  # VOC's own masks for two ids (as for train.txt), SBD's for the rest
        shutil.copy(voc / "SegmentationClass" / f"{i}.png", mixed / "SegmentationClass" / f"{i}.png")
    ds = open_dataset(mixed, "aug")
    assert [ds.masks[i].parent.name for i in ids] == ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 4
    only = open_dataset(mixed, "aug", ann_dir="SegmentationClassAug")
    assert {p.parent.name for p in only.masks.values()} == {"SegmentationClassAug"}
    with pytest.raises(DataError, match=r"4 id\(s\) of .*aug.txt have no mask .*SegmentationClass/<id>.png"):
        open_dataset(mixed, "aug", ann_dir="SegmentationClass")
    with pytest.raises(DataError, match="annotation folder not found: .*Nope"):
        open_dataset(mixed, "aug", ann_dir="Nope")


def test_plain_index_masks_are_validated_like_palette_masks(tmp_path):
    bad = np.zeros((4, 4), np.uint8)
    bad[0, 0] = 30
    Image.fromarray(bad, mode="L").save(tmp_path / "l.png")
    pal = Image.fromarray(bad, mode="P")
    pal.putpalette([0] * 768)
    pal.save(tmp_path / "p.png")
    for name in ("l.png", "p.png"):
        with pytest.raises(DataError, match=rf"{name} has values outside 0..20 and 255: 30"):
            read_mask(tmp_path / name)


def test_cli_ann_dir(layouts, capsys):
    voc, aug, ids, model = layouts
    assert main(["eval", str(model), "--data", str(aug), "--split", "aug", "--ann-dir", "SegmentationClassAug",
                 "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["eval", str(model), "--data", str(aug), "--split", "aug", "--ann-dir", "Missing",
                 "--no-progress"]) == 2
    assert "annotation folder not found" in capsys.readouterr().err
