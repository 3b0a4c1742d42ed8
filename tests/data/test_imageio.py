"""Image and mask files (fcnquant.data.imageio): every image mode read as RGB uint8, index masks validated."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcnquant.data import read_mask, read_rgb
from fcnquant.errors import DataError


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


def _exif_jpeg(path, stored: np.ndarray, orientation: int) -> np.ndarray:
    """Writes ``stored`` as a JPEG tagged with an EXIF orientation; returns its decoded pixels as stored."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as img:  # PIL alone does not turn the image
        return np.asarray(img.convert("RGB"))


@pytest.mark.parametrize("orientation, turn", [
    (6, lambda a: np.rot90(a, k=-1)),  # shown turned a quarter clockwise (a phone held upright)
    (8, lambda a: np.rot90(a, k=1)),
    (3, lambda a: np.rot90(a, k=2)),
    (2, lambda a: a[:, ::-1]),  # mirrored left to right
])
def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path, orientation, turn):
    from fcnquant.data.imageio import image_size

    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    raw = _exif_jpeg(tmp_path / "a.jpg", stored, orientation)
    expected = turn(raw)
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.jpg"), expected)
    assert image_size(tmp_path / "a.jpg") == expected.shape[:2]


def test_an_exif_rotated_photo_matches_its_mask(tmp_path):
    """A phone photo stored sideways with its mask drawn as the photo is shown: the sizes agree."""
    stored = np.zeros((24, 40, 3), np.uint8)
    _exif_jpeg(tmp_path / "a.jpg", stored, 6)
    Image.fromarray(np.zeros((40, 24), np.uint8)).save(tmp_path / "a.png")  # PNG masks carry no EXIF
    assert read_rgb(tmp_path / "a.jpg").shape[:2] == read_mask(tmp_path / "a.png").shape == (40, 24)


def _png_header(path, width: int, height: int) -> None:
    """Writes a PNG whose header announces width x height 8-bit gray pixels (the pixel data is cut short)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_names_the_file_and_the_override(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the variable sets it: restored after
    monkeypatch.delenv("FCNQUANT_MAX_IMAGE_PIXELS", raising=False)
    big = tmp_path / "big.png"
    _png_header(big, 14000, 14000)  # 196 M pixels: above PIL's 2 x 89,478,485
    for read in (read_rgb, read_mask):
        with pytest.raises(DataError) as info:
            read(big)
        msg = str(info.value)
        assert str(big) in msg and "FCNQUANT_MAX_IMAGE_PIXELS" in msg and "\n" not in msg
    monkeypatch.setenv("FCNQUANT_MAX_IMAGE_PIXELS", "0")  # no limit: the header passes, the cut data does not
    with pytest.raises(DataError, match="cannot read image"):
        read_rgb(big)


def test_the_pixel_limit_is_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")  # 256 pixels
    monkeypatch.setenv("FCNQUANT_MAX_IMAGE_PIXELS", "255")
    with pytest.raises(DataError, match="more pixels than the limit of 255"):
        read_rgb(tmp_path / "a.png")
    monkeypatch.setenv("FCNQUANT_MAX_IMAGE_PIXELS", "256")
    assert read_rgb(tmp_path / "a.png").shape == (16, 16, 3)
    monkeypatch.setenv("FCNQUANT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="must be a whole number of pixels"):
        read_rgb(tmp_path / "a.png")
