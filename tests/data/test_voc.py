"""VOC reader: root forms, plain image folders, image mode conversions and every bad-input case."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnquant.data import open_dataset, read_rgb, voc_palette
from fcnquant.errors import DataError


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


def test_image_modes_converted_to_rgb_uint8(tmp_path):
    gray = np.array([[0, 50], [200, 255]], np.uint8)
    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "l.png"), np.repeat(gray[..., None], 3, 2))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0  # fully transparent: colour kept
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = read_rgb(tmp_path / "rgba.png")
    assert out.shape == (2, 2, 3) and (out == [10, 20, 30]).all()

    Image.fromarray(gray).convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "la.png")[..., 1], gray)

    pal = Image.frombytes("P", (2, 1), bytes([0, 1]))
    pal.putpalette([0, 0, 0, 128, 0, 0])
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "p.png"), [[[0, 0, 0], [128, 0, 0]]])

    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    cmyk.save(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(read_rgb(tmp_path / "cmyk.tif"), [[[255, 255, 255], [0, 255, 255]]])

    sixteen = np.array([[0, 257 * 100], [65535, 257 * 3]], np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "i16.png")
    out = read_rgb(tmp_path / "i16.png")
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [255, 3]])

    flt = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    Image.fromarray(flt).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(read_rgb(tmp_path / "f.tif")[..., 2], [[0, 128], [255, 64]])


def test_cmyk_jpeg_and_grayscale_jpeg(tmp_path):
    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    Image.new("L", (4, 3), 77).save(tmp_path / "g.jpg")
    c, g = read_rgb(tmp_path / "c.jpg"), read_rgb(tmp_path / "g.jpg")
    assert c.shape == (3, 4, 3) and abs(int(c.min()) - 255) <= 2
    assert g.shape == (3, 4, 3) and np.abs(g.astype(int) - 77).max() <= 2


def test_16_bit_rgb_png(tmp_path):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixels = np.array([[[0, 257 * 100, 65535], [257 * 3, 0, 65535]]], np.uint16)  # 1x2, 16 bits per channel
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0)  # width, height, depth 16, colour type 2 (RGB)
    (tmp_path / "rgb48.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    out = read_rgb(tmp_path / "rgb48.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[0, 100, 255], [3, 0, 255]]])
