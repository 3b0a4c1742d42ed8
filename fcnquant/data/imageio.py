"""Reading images as RGB uint8 and segmentation masks as class indices, whatever their PIL mode."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fcnquant.data.palette import IGNORE_INDEX, NUM_CLASSES, rgb_mask_to_index
from fcnquant.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


#: environment variable: the most pixels an image may have (0: no limit); unset, PIL's own limit applies
MAX_PIXELS_ENV = "FCNQUANT_MAX_IMAGE_PIXELS"
#: EXIF tag of the orientation a viewer applies (1: as stored)
EXIF_ORIENTATION = 0x0112


def _pixel_limit(Image) -> int | None:
    """Applies $FCNQUANT_MAX_IMAGE_PIXELS to PIL (when set) and returns the limit PIL refuses images above."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is not None:
        try:
            limit = int(raw.strip().replace("_", ""))
        except ValueError:
            limit = -1
        if limit < 0:
            raise DataError(f"${MAX_PIXELS_ENV} must be a whole number of pixels (0: no limit), got {raw!r}")
        # PIL refuses images above twice its MAX_IMAGE_PIXELS (and warns above it)
        Image.MAX_IMAGE_PIXELS = limit / 2 if limit > 0 else None
    return None if Image.MAX_IMAGE_PIXELS is None else int(2 * Image.MAX_IMAGE_PIXELS)


def _open_checked(path: Path):
    """Returns ``Image.open(path)`` (header read); DataError for a missing or unreadable file and for an image
    larger than the pixel limit (a guard against decompression bombs), naming how to lift it."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = _pixel_limit(Image)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large, but under the limit: read it
            return Image.open(path)
    except FileNotFoundError as exc:
        raise DataError(f"file not found: {path}") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {path} has more pixels than the limit of {limit:,} (a guard against decompression "
                        f"bombs); to read it, set {MAX_PIXELS_ENV} to a larger number of pixels (0: no limit)") \
            from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc


def _open(path: Path):
    """Returns the decoded image at ``path``, turned as its EXIF orientation says (as viewers show it)."""
    img = _open_checked(path)
    try:
        img.load()
        if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
            from PIL import ImageOps  # only for turned images: it imports PIL's EXIF tag tables

            img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return img


def _to_uint8_gray(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scales a high-bit-depth single-channel array to 0..255."""
    if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535 and arr.max() > 255):
        return (arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)  # 16-bit: 65535 -> 255
    if mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
        arr = arr * 255.0
    return np.clip(np.nan_to_num(arr.astype(np.float64)) + 0.5, 0, 255).astype(np.uint8)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the image at ``path`` as an HxWx3 uint8 RGB array.

    Conversions: grayscale, palette, CMYK, YCbCr and LAB go through PIL's ``convert("RGB")``; an alpha channel
    is dropped; 16-bit grayscale (``I;16``, or ``I`` holding 0..65535) is scaled by 1/257; float images in 0..1 are
    scaled by 255. An EXIF orientation (phone photos) is applied, as image viewers and annotation tools show the
    image. Unreadable or missing files, and images above the pixel limit (``$FCNQUANT_MAX_IMAGE_PIXELS``, else
    PIL's), raise DataError.
    """
    p = Path(path)
    img = _open(p)
    mode = img.mode
    if mode in ("I", "F") or mode.startswith("I;16"):
        gray = _to_uint8_gray(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise DataError(f"cannot convert image {p} (mode {mode}) to RGB: {exc}") from exc
    return np.asarray(img, dtype=np.uint8).copy()


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the mask at ``path`` as HxW uint8 class indices (255 = ignore), checking the values.

    A palette (``P``) or grayscale (``L``) PNG holds the class indices as pixel values (VOC's format). An RGB(A)
    mask is decoded by mapping each colour through the VOC palette. An EXIF orientation, rare in a mask, is applied
    as for the images. Values other than 0..20 and 255 raise
    DataError naming the file and the offending values.
    """
    p = Path(path)
    img = _open(p)
    if img.mode in ("P", "L"):
        arr = np.asarray(img, dtype=np.uint8)
    elif img.mode in ("RGB", "RGBA"):
        arr = rgb_mask_to_index(np.asarray(img.convert("RGB")), source=str(p))
    elif img.mode == "I" or img.mode.startswith("I;16"):
        raw = np.asarray(img)
        _check_values(raw, p)
        arr = raw.astype(np.uint8)
    else:
        raise DataError(f"mask {p} has PIL mode {img.mode}; expected a palette (P), grayscale (L) or RGB PNG")
    _check_values(arr, p)
    return np.ascontiguousarray(arr)


def _check_values(arr: np.ndarray, path: Path) -> None:
    values = np.unique(arr)
    bad = values[((values < 0) | (values >= NUM_CLASSES)) & (values != IGNORE_INDEX)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10].tolist()) + (f" and {bad.size - 10} more" if bad.size > 10 else "")
        raise DataError(
            f"mask {path} has values outside 0..{NUM_CLASSES - 1} and {IGNORE_INDEX}: {shown}"
        )


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Returns (H, W) of an image file as viewers show it (EXIF orientation applied), reading only its header."""
    with _open_checked(Path(path)) as img:
        w, h = img.size
        if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # a quarter turn or a transpose
            w, h = h, w
    return h, w
