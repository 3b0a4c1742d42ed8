"""Synthetic PASCAL VOC: random scenes of the 20 VOC object classes written in the exact VOC2012 layout.

A scene is a textured background (five styles: gradient, sky/ground, indoor wall/floor, clutter of background
shapes, coloured noise) with 1-4 objects drawn back to front, so later objects occlude earlier ones. Each class
has its own outline, parts, colours and texture (``fcnquant.data.synth_shapes``), varied per object by scale,
aspect, rotation, flip, colour jitter, texture period/phase and directional shading. The whole image then gets a
lighting gradient, sometimes a Gaussian blur, pixel noise and JPEG compression (quality 90). Masks carry a 3-5 px
void (255) band on every object outline, like VOC's.

Image ``i`` of split ``s`` depends only on ``(seed, s, i)`` (a numpy Generator seeded with them), so sets with
the same seed share their first images and generation is deterministic.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from fcnquant._io import new_folder
from fcnquant.data.discover import BUILTIN_PARAMS
from fcnquant.data.palette import IGNORE_INDEX, NUM_CLASSES, voc_palette
from fcnquant.data.synth_shapes import STYLES, Look
from fcnquant.errors import DataError

log = logging.getLogger(__name__)

SYNTH_VERSION = 1
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 1, "val": 2}


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Returns a size x size float32 field in 0..1 interpolated from a (cells+1)^2 random grid."""
    from PIL import Image

    g = rng.random((cells + 1, cells + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _value_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Returns smooth random values in 0..1 at points (x, y) given in lattice units."""
    x0, y0 = np.floor(x.min()) if x.size else 0.0, np.floor(y.min()) if y.size else 0.0
    gx, gy = x - x0, y - y0
    w = int(gx.max()) + 2 if x.size else 2
    h = int(gy.max()) + 2 if y.size else 2
    g = rng.random((h, w), dtype=np.float32)
    ix, iy = gx.astype(np.int64), gy.astype(np.int64)
    fx, fy = gx - ix, gy - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    top = g[iy, ix] * (1 - fx) + g[iy, ix + 1] * fx
    bot = g[iy + 1, ix] * (1 - fx) + g[iy + 1, ix + 1] * fx
    return top * (1 - fy) + bot * fy


def _muted(rng: np.random.Generator, lo: float = 40, hi: float = 210, sat: float = 0.45) -> np.ndarray:
    """Returns a random RGB colour pulled towards grey by 1 - sat."""
    c = rng.uniform(lo, hi, 3)
    return c.mean() + (c - c.mean()) * sat


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    style = int(rng.integers(5))
    a = rng.uniform(0, 2 * np.pi)
    ramp = ((xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a)) / size + 0.5
    if style == 0:  # gradient + soft blotches
        c1, c2 = _muted(rng), _muted(rng)
        img = c1 + (c2 - c1) * ramp[..., None]
        img += (_smooth_noise(rng, size, int(rng.integers(2, 6)))[..., None] - 0.5) * rng.uniform(20, 60, 3)
    elif style == 1:  # sky / ground
        horizon = size * rng.uniform(0.25, 0.75) + (xx - size / 2) * rng.uniform(-0.3, 0.3)
        sky = np.array([rng.uniform(120, 200), rng.uniform(150, 210), rng.uniform(190, 250)])
        sky = sky + (255 - sky) * rng.uniform(0, 0.6)
        ground = _muted(rng, 50, 170, 0.6)
        t = np.clip(yy / size, 0, 1)[..., None]
        fine = _smooth_noise(rng, size, int(rng.integers(10, 30)))[..., None] - 0.5
        img = np.where((yy < horizon)[..., None], sky * (1.1 - 0.3 * t), ground * (0.8 + 0.4 * t) + fine * 60)
    elif style == 2:  # indoor: wall + floor, wallpaper stripes or tiles
        floor_y = size * rng.uniform(0.5, 0.85)
        wall, floor = _muted(rng, 120, 230, 0.35), _muted(rng, 60, 180, 0.5)
        period = rng.uniform(6, 20)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * xx / period)[..., None]
        tiles = ((np.floor(xx / period) + np.floor(yy / period * 2)) % 2)[..., None]
        img = np.where((yy < floor_y)[..., None], wall * (1 - rng.uniform(0, 0.15) * stripes),
                       floor * (1 - rng.uniform(0.05, 0.25) * tiles))
    elif style == 3:  # clutter: background shapes that are no class
        from PIL import Image, ImageDraw

        c1, c2 = _muted(rng), _muted(rng)
        base = np.clip(c1 + (c2 - c1) * ramp[..., None], 0, 255).astype(np.uint8)
        canvas = Image.fromarray(base)
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(-0.2, 1.0, 2) * size
            w, h = rng.uniform(0.08, 0.45, 2) * size
            fill = tuple(int(v) for v in np.clip(_muted(rng, 30, 230, 0.6), 0, 255))
            if rng.random() < 0.5:
                draw.rectangle((x0, y0, x0 + w, y0 + h), fill=fill)
            else:
                draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
        img = np.asarray(canvas, dtype=np.float32)
        img = img + (_smooth_noise(rng, size, 8)[..., None] - 0.5) * 30
    else:  # coloured multi-scale noise (foliage, gravel)
        c1, c2 = _muted(rng, 30, 200, 0.6), _muted(rng, 30, 200, 0.6)
        t = 0.6 * _smooth_noise(rng, size, int(rng.integers(3, 7))) + 0.4 * _smooth_noise(rng, size, int(
            rng.integers(16, 40)))
        img = c1 + (c2 - c1) * t[..., None]
    return np.asarray(img, dtype=np.float32)


def _texture(rng: np.random.Generator, look: Look, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Returns per-pixel RGB (n, 3) for a part with ``look`` at object coordinates (u, v)."""
    base = np.asarray(look.colors[int(rng.integers(len(look.colors)))], np.float32) + rng.normal(0, look.jitter, 3)
    second = (np.asarray(look.second, np.float32) + rng.normal(0, 8, 3)) if look.absolute else base * np.asarray(
        look.second, np.float32)
    contrast = rng.uniform(*look.contrast)
    period = rng.uniform(*look.period)
    ang = look.angle if look.angle is not None else rng.uniform(0, np.pi)
    ang += rng.normal(0, 0.1)
    phase = rng.uniform(0, 2 * np.pi)
    a = u * np.cos(ang) + v * np.sin(ang)
    b = -u * np.sin(ang) + v * np.cos(ang)
    kind = look.texture
    if kind == "flat":
        t = np.zeros_like(u)
    elif kind == "stripes":
        t = np.clip(0.5 + np.sin(2 * np.pi * a / period + phase), 0, 1)
    elif kind == "checks":
        t = (np.sin(2 * np.pi * a / period + phase) * np.sin(2 * np.pi * b / period) > 0).astype(np.float32)
    elif kind == "dots":
        t = (np.sin(2 * np.pi * a / period + phase) * np.sin(2 * np.pi * b / period) > 0.45).astype(np.float32)
    elif kind == "noise":
        t = _value_noise(rng, a / period, b / period)
    elif kind == "patches":
        t = (_value_noise(rng, a / period, b / period) > 0.55).astype(np.float32)
    elif kind == "grain":
        warp = _value_noise(rng, a / 0.4, b / 0.4)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (a + 0.25 * warp) / period + phase)
    else:  # pragma: no cover - the style table only uses the kinds above
        raise ValueError(kind)
    t = (contrast * t)[:, None].astype(np.float32)
    return base * (1 - t) + second * t


def _draw_object(rng: np.random.Generator, cls: int, size: int, n_objects: int):
    """Returns (y0, x0, part map, rgb) for one object, or None when it falls outside the image."""
    from PIL import Image, ImageDraw

    style = STYLES[cls]
    r = size * rng.uniform(0.26, 0.5) * rng.uniform(*style.scale) / (1 + 0.12 * (n_objects - 1))
    cx, cy = rng.uniform(0.12, 0.88, 2) * size
    theta = np.deg2rad(rng.uniform(-style.rotation, style.rotation))
    aspect = rng.uniform(*style.aspect)
    sx, sy = r * np.sqrt(aspect) * (1 if rng.random() < 0.5 else -1), r / np.sqrt(aspect)
    c, s = np.cos(theta), np.sin(theta)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for part, pts in style.shape(rng):
        x, y = pts[:, 0] * sx, pts[:, 1] * sy
        xy = np.stack([cx + c * x - s * y, cy + s * x + c * y], 1)
        draw.polygon(xy.ravel().tolist(), fill=part)
    bbox = canvas.getbbox()
    if bbox is None:
        return None
    x0, y0, x1, y1 = bbox
    parts = np.asarray(canvas, dtype=np.uint8)[y0:y1, x0:x1]
    yy, xx = _grid(size)
    dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
    uu, vv = (c * dx + s * dy) / sx, (-s * dx + c * dy) / sy
    rgb = np.zeros(parts.shape + (3,), np.float32)
    for part in np.unique(parts):
        if part == 0:
            continue
        sel = parts == part
        rgb[sel] = _texture(rng, style.parts[int(part)], uu[sel], vv[sel])
    phi = rng.uniform(0, 2 * np.pi)
    shade = 1 + rng.uniform(0.05, 0.3) * (uu * np.cos(phi) + vv * np.sin(phi))
    rgb *= shade[..., None]
    return y0, x0, parts, rgb


def _void_band(label: np.ndarray, width: int) -> np.ndarray:
    """Returns a bool mask of pixels within a ``width``-px band around every change of label value."""
    edge = np.zeros(label.shape, bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    lo, hi = (width - 1) // 2 + (width - 1) % 2, (width - 1) // 2  # band covers offsets -lo..hi
    out = edge.copy()
    for axis in (0, 1):
        acc = out.copy()
        for k in range(1, max(lo, hi) + 1):
            if k <= hi:  # shift towards +axis
                sl_dst = [slice(None)] * 2
                sl_src = [slice(None)] * 2
                sl_dst[axis], sl_src[axis] = slice(k, None), slice(None, -k)
                acc[tuple(sl_dst)] |= out[tuple(sl_src)]
            if k <= lo:
                sl_dst = [slice(None)] * 2
                sl_src = [slice(None)] * 2
                sl_dst[axis], sl_src[axis] = slice(None, -k), slice(k, None)
                acc[tuple(sl_dst)] |= out[tuple(sl_src)]
        out = acc
    return out


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (size x size x 3 uint8 RGB image, size x size uint8 label with 255 void borders) for one scene."""
    from PIL import Image, ImageFilter

    img = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    n_objects = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
    for _ in range(n_objects):
        cls = int(rng.integers(1, NUM_CLASSES))
        drawn = _draw_object(rng, cls, size, n_objects)
        if drawn is None:
            continue
        y0, x0, parts, rgb = drawn
        sel = parts > 0
        h, w = parts.shape
        img[y0:y0 + h, x0:x0 + w][sel] = rgb[sel]
        label[y0:y0 + h, x0:x0 + w][sel] = cls
    yy, xx = _grid(size)
    a = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0.8, 1.15) * (1 + rng.uniform(0, 0.5) * (
        (xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a)) / size)
    img = np.clip(img * light[..., None], 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1))))
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * np.float32(rng.uniform(1.5, 7))
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    label[_void_band(label, int(rng.integers(3, 6)))] = IGNORE_INDEX
    return img, label


def _scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


def _save_mask(label: np.ndarray, path: Path, palette: list[int]) -> None:
    from PIL import Image

    im = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    im.putpalette(palette)
    im.save(path, format="PNG")


def write_synthetic_voc(
    out: str | os.PathLike[str],
    train: int = BUILTIN_PARAMS["train"],
    val: int = BUILTIN_PARAMS["val"],
    size: int = BUILTIN_PARAMS["size"],
    seed: int = BUILTIN_PARAMS["seed"],
    *,
    progress: bool = True,
) -> Path:
    """Returns ``out``, a VOCdevkit-style root in which ``VOC2012/`` now holds a synthetic VOC dataset.

    Writes ``VOC2012/JPEGImages/<id>.jpg`` (size x size, quality 90), ``VOC2012/SegmentationClass/<id>.png``
    (palette PNG, VOC palette, 255 void borders), ``VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt`` and
    ``VOC2012/synth.json`` (parameters and per-split class pixel counts). Ids are ``train_000000``,
    ``val_000000``, ... The folder appears atomically; an existing ``out/VOC2012`` is an error, and so is another
    run into ``out`` that finishes first. A failed or interrupted run leaves no folder behind.
    """
    if train < 0 or val < 0 or train + val == 0:
        raise DataError(f"need a positive number of images, got train={train} val={val}")
    if size < 16:
        raise DataError(f"image size must be at least 16, got {size}")
    from fcnquant.data.subset import check_seed

    check_seed(seed)
    root = Path(out)
    final = root / "VOC2012"
    if final.exists():
        raise DataError(f"{final} already exists; remove it or choose another output folder")
    with new_folder(root):  # removed again if the run fails or is interrupted before any dataset is in it
        _write_voc(root, final, train, val, size, seed, progress)
    log.debug("wrote synthetic VOC (%d train, %d val, %dx%d) to %s", train, val, size, size, final)
    return root


def _write_voc(root: Path, final: Path, train: int, val: int, size: int, seed: int, progress: bool) -> None:
    """Renders the dataset into a hidden folder in ``root`` and renames it to ``final`` when complete."""
    from PIL import Image
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix=".VOC2012.", dir=root))
    try:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        palette = voc_palette().ravel().tolist()
        counts: dict[str, list[int]] = {}
        lists: dict[str, list[str]] = {}
        bar = tqdm(total=train + val, desc="synthetic VOC", unit="img", disable=not progress)
        for split, n in (("train", train), ("val", val)):
            hist = np.zeros(256, np.int64)
            lists[split] = []
            for i in range(n):
                image_id = f"{split}_{i:06d}"
                img, label = render_scene(_scene_rng(seed, split, i), size)
                Image.fromarray(img).save(tmp / "JPEGImages" / f"{image_id}.jpg", format="JPEG", quality=90)
                _save_mask(label, tmp / "SegmentationClass" / f"{image_id}.png", palette)
                hist += np.bincount(label.ravel(), minlength=256)
                lists[split].append(image_id)
                bar.update(1)
            counts[split] = [int(v) for v in hist[:NUM_CLASSES]] + [int(hist[IGNORE_INDEX])]
        bar.close()
        seg = tmp / "ImageSets" / "Segmentation"
        for split in SPLITS:
            (seg / f"{split}.txt").write_text("".join(f"{i}\n" for i in lists[split]))
        (seg / "trainval.txt").write_text("".join(f"{i}\n" for s in SPLITS for i in lists[s]))
        meta = {"generator": "fcnquant.data.synth", "version": SYNTH_VERSION, "train": train, "val": val,
                "size": size, "seed": seed, "pixel_counts": counts,
                "pixel_counts_note": "21 class counts then the void (255) count"}
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if final.exists():  # another run into the same folder finished first
                raise DataError(f"{final} was written by another run meanwhile; remove it or choose another "
                                "output folder") from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def cache_dir() -> Path:
    """Returns fcnquant's cache folder: $FCNQUANT_CACHE, else ~/.cache/fcnquant."""
    env = os.environ.get("FCNQUANT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fcnquant"


def builtin_dataset(
    *,
    train: int = BUILTIN_PARAMS["train"],
    val: int = BUILTIN_PARAMS["val"],
    size: int = BUILTIN_PARAMS["size"],
    seed: int = BUILTIN_PARAMS["seed"],
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> Path:
    """Returns the root of the built-in synthetic VOC, generating it into the cache folder on first use.

    The folder is ``<cache>/synth-voc-v<version>-<hash of the parameters>``; it is generated into a temporary
    folder and renamed into place, so a concurrent or interrupted run never leaves a partial dataset.
    """
    params = {"version": SYNTH_VERSION, "train": train, "val": val, "size": size, "seed": seed}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    base = Path(cache) if cache is not None else cache_dir()
    target = base / f"synth-voc-v{SYNTH_VERSION}-{digest}"
    if (target / "VOC2012" / "synth.json").is_file():
        return target
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".synth-voc-", dir=base))
    except OSError as exc:
        raise DataError(f"cannot create the dataset cache in {base}: {exc.strerror or exc}") from exc
    try:
        log.info("generating the built-in synthetic VOC into %s (first use)", target)
        write_synthetic_voc(tmp, train=train, val=val, size=size, seed=seed, progress=progress)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "VOC2012" / "synth.json").is_file():  # not a concurrent winner: a real failure
                raise
        log.info("built-in synthetic VOC ready: %d train, %d val images (%dx%d) in %s", train, val, size, size,
                 target / "VOC2012")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
