"""VOC reader: root forms, plain image folders, every bad-input case, and mmsegmentation's voc12aug layout."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from fcnquant.cli import main
from fcnquant.data import DataConfig, open_dataset, read_mask, voc_palette
from fcnquant.errors import DataError
from fcnquant.evaluate import evaluate
from fcnquant.execute import RunConfig


def save_mask(path, values):
    im = Image.frombytes("P", (values.shape[1], values.shape[0]), np.ascontiguousarray(values, np.uint8).tobytes())
    im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


def make_voc(base, ids=("a", "b", "c"), split="val", hw=(6, 8), masks=True):
    """Writes a tiny VOC2012 folder at ``base`` and returns the images and masks written."""
    rng = np.random.default_rng(0)
    for sub in ("JPEGImages", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if masks:
        (base / "SegmentationClass").mkdir(exist_ok=True)
    images, labels = {}, {}
    for i in ids:
        img = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
        Image.fromarray(img).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
        images[i] = np.asarray(Image.open(base / "JPEGImages" / f"{i}.jpg").convert("RGB"))
        if masks:
            lab = rng.integers(0, 21, hw).astype(np.uint8)
            lab[0, 0] = 255
            save_mask(base / "SegmentationClass" / f"{i}.png", lab)
            labels[i] = lab
    (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return images, labels


@pytest.mark.parametrize("form", ["voc2012", "vocdevkit", "parent"])
def test_root_forms(tmp_path, form):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    images, labels = make_voc(voc)
    root = {"voc2012": voc, "vocdevkit": tmp_path / "VOCdevkit", "parent": tmp_path}[form]
    ds = open_dataset(root, "val")
    assert ds.root == voc
    assert ds.ids == ["a", "b", "c"] and ds.has_labels and len(ds) == 3
    for i in ds.ids:
        image, mask = ds.load_pair(i)
        assert image.dtype == np.uint8 and image.shape == (6, 8, 3)
        np.testing.assert_array_equal(image, images[i])
        np.testing.assert_array_equal(mask, labels[i])


def test_split_file_extra_columns_and_duplicates(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("b 1\n\na -1\nb\n")
    assert open_dataset(tmp_path, "val").ids == ["b", "a"]


def test_split_none_lists_every_image_without_labels(tmp_path):
    make_voc(tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "JPEGImages" / "extra.png")
    ds = open_dataset(tmp_path, None)
    assert ds.ids == ["a", "b", "c", "extra"] and not ds.has_labels


def test_no_segmentation_folder_means_unlabelled(tmp_path):
    make_voc(tmp_path, masks=False)
    ds = open_dataset(tmp_path, "val")
    assert not ds.has_labels
    with pytest.raises(DataError, match="no segmentation masks"):
        ds.load_mask("a")


def test_plain_image_folder(tmp_path):
    for name in ("x.jpg", "y.png", "z.png", "z.bmp"):
        Image.fromarray(np.full((5, 7, 3), 9, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path, "train")
    assert not ds.has_labels
    assert ds.ids == ["x", "y", "z.bmp", "z.png"]
    assert ds.load_image("y").shape == (5, 7, 3)
    assert (ds.load_image("z.bmp") == 9).all()


def test_missing_split_file(tmp_path):
    make_voc(tmp_path, split="train")
    with pytest.raises(DataError, match=r"val\.txt.*available splits: train"):
        open_dataset(tmp_path, "val")


def test_id_without_image(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nghost\n")
    with pytest.raises(DataError, match=r"have no image.*ghost"):
        open_dataset(tmp_path, "val")


def test_id_without_mask(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DataError, match=r"have no mask.*\bb\b"):
        open_dataset(tmp_path, "val")


def test_size_mismatch(tmp_path):
    make_voc(tmp_path)
    save_mask(tmp_path / "SegmentationClass" / "b.png", np.zeros((6, 7), np.uint8))
    ds = open_dataset(tmp_path, "val")
    ds.load_pair("a")
    with pytest.raises(DataError, match=r"size mismatch for 'b'.*8x6.*7x6"):
        ds.load_pair("b")


def test_mask_values_out_of_range(tmp_path):
    make_voc(tmp_path)
    bad = np.zeros((6, 8), np.uint8)
    bad[1, 1], bad[2, 2], bad[3, 3] = 21, 100, 255
    save_mask(tmp_path / "SegmentationClass" / "c.png", bad)
    ds = open_dataset(tmp_path, "val")
    with pytest.raises(DataError, match=r"c\.png.*21, 100$"):
        ds.load_mask("c")


def test_unreadable_image_and_mask(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"definitely not a jpeg")
    (tmp_path / "SegmentationClass" / "b.png").write_bytes(b"\x89PNG broken")
    ds = open_dataset(tmp_path, "val")
    with pytest.raises(DataError, match=r"cannot read image .*a\.jpg"):
        ds.load_image("a")
    with pytest.raises(DataError, match=r"cannot read image .*b\.png"):
        ds.load_mask("b")


def test_missing_root_empty_folder_and_unknown_id(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a VOC dataset"):
        open_dataset(tmp_path / "empty")
    make_voc(tmp_path / "voc")
    ds = open_dataset(tmp_path / "voc")
    with pytest.raises(DataError, match="'zzz' is not in dataset"):
        ds.load_image("zzz")
    with pytest.raises(DataError, match="zzz"):
        ds.check_ids(["a", "zzz"])


# --- mmsegmentation's voc12aug layout: SegmentationClassAug/ plain 8-bit index masks, aug.txt, --ann-dir -------
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
    quiet = RunConfig(progress=False)
    ref = evaluate(model, DataConfig(voc, "val"), quiet)
    got = evaluate(model, DataConfig(aug.parent, "aug"), quiet)
    assert 0 < ref.miou < 100 and got.miou == ref.miou and got.miou_awesome == ref.miou_awesome
    np.testing.assert_array_equal(got.confusion, ref.confusion)
    explicit = evaluate(model, DataConfig(aug, "aug", "SegmentationClassAug"), quiet)
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


def test_cli_ann_dir(layouts, capsys):
    voc, aug, ids, model = layouts
    assert main(["eval", str(model), "--data", str(aug), "--split", "aug", "--ann-dir", "SegmentationClassAug",
                 "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out
    assert main(["eval", str(model), "--data", str(aug), "--split", "aug", "--ann-dir", "Missing",
                 "--no-progress"]) == 2
    assert "annotation folder not found" in capsys.readouterr().err
