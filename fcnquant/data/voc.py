"""Opening a PASCAL VOC style segmentation dataset, or a plain folder of images, as a ``Dataset``.

Accepted roots (the first that matches wins):

1. a folder holding ``JPEGImages/`` (and usually ``SegmentationClass/`` and ``ImageSets/Segmentation/<split>.txt``),
   e.g. ``VOCdevkit/VOC2012``;
2. a folder whose ``VOC2012/`` subfolder is such a folder (``VOCdevkit``);
3. a folder whose ``VOCdevkit/VOC2012/`` is such a folder;
4. otherwise a plain folder of image files (no labels, ``split`` ignored): a calibration source.

With ``split=None`` a VOC root yields every image in ``JPEGImages/`` without labels.

Masks (``<id>.png``) come from ``SegmentationClass/`` (VOC2012: palette PNGs) or, for ids it does not hold,
``SegmentationClassAug/`` (mmsegmentation's "voc12aug": VOC2012 + SBD as plain 8-bit class-index PNGs, listed in
``ImageSets/Segmentation/aug.txt``; ``tools/dataset_converters/voc_aug.py`` writes it). ``ann_dir`` names one
annotation folder instead (relative to the VOC root, or absolute). Palette and plain 8-bit index masks are read
and checked alike (``fcnquant.data.imageio.read_mask``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fcnquant.data.imageio import IMAGE_EXTENSIONS, read_mask, read_rgb
from fcnquant.errors import DataError

log = logging.getLogger(__name__)

_EXT_PREFERENCE = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
#: annotation folders looked up in order, per id, when no ``ann_dir`` is given
ANN_DIRS = ("SegmentationClass", "SegmentationClassAug")


@dataclass
class Dataset:
    """A list of image ids with their image files and, when ``has_labels``, their VOC masks.

    ``load_image(id)`` returns HxWx3 uint8 RGB; ``load_mask(id)`` HxW uint8 class indices with 255 = ignore;
    ``load_pair(id)`` both, checking that their sizes agree.
    """

    root: Path
    split: str | None
    ids: list[str]
    images: dict[str, Path] = field(repr=False)
    masks: dict[str, Path] | None = field(default=None, repr=False)

    @property
    def has_labels(self) -> bool:
        """Whether every id has a segmentation mask."""
        return self.masks is not None

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        """Returns the image file of ``image_id``."""
        try:
            return self.images[image_id]
        except KeyError:
            raise DataError(f"image id '{image_id}' is not in dataset {self.describe()}") from None

    def mask_path(self, image_id: str) -> Path:
        """Returns the mask file of ``image_id``; DataError when the dataset has no labels."""
        if self.masks is None:
            raise DataError(f"dataset {self.describe()} has no segmentation masks")
        try:
            return self.masks[image_id]
        except KeyError:
            raise DataError(f"image id '{image_id}' is not in dataset {self.describe()}") from None

    def load_image(self, image_id: str) -> np.ndarray:
        """Returns the image of ``image_id`` as HxWx3 uint8 RGB."""
        return read_rgb(self.image_path(image_id))

    def load_mask(self, image_id: str) -> np.ndarray:
        """Returns the mask of ``image_id`` as HxW uint8 class indices, 255 = ignore."""
        return read_mask(self.mask_path(image_id))

    def load_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Returns (image, mask or None), raising DataError when the mask and image sizes differ."""
        image = self.load_image(image_id)
        if self.masks is None:
            return image, None
        mask = self.load_mask(image_id)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"size mismatch for '{image_id}': image {self.image_path(image_id)} is "
                f"{image.shape[1]}x{image.shape[0]} (WxH) but mask {self.mask_path(image_id)} is "
                f"{mask.shape[1]}x{mask.shape[0]}"
            )
        return image, mask

    def check_ids(self, ids: list[str]) -> None:
        """Raises DataError naming the ids that are not part of this dataset."""
        missing = [i for i in ids if i not in self.images]
        if missing:
            raise DataError(f"{len(missing)} id(s) not in dataset {self.describe()}: {_show(missing)}")

    def describe(self) -> str:
        """Returns a short human description: root, split, size."""
        split = f" split '{self.split}'" if self.split else ""
        return f"{self.root}{split} ({len(self.ids)} images{'' if self.has_labels else ', no labels'})"


def _show(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _list_images(folder: Path) -> dict[str, Path]:
    """Maps file stem -> path for the image files directly in ``folder`` (a .jpg wins over other extensions)."""
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}") from exc
    for entry in entries:
        ext = os.path.splitext(entry.name)[1].lower()
        if ext not in _EXT_PREFERENCE or not entry.is_file():
            continue
        stem = os.path.splitext(entry.name)[0]
        old = found.get(stem)
        if old is None or _EXT_PREFERENCE[ext] < _EXT_PREFERENCE[old.suffix.lower()]:
            found[stem] = Path(entry.path)
    return found


def find_voc_root(root: str | os.PathLike[str]) -> Path | None:
    """Returns the folder holding ``JPEGImages/`` for any of the accepted VOC root forms, or None."""
    base = Path(root)
    for cand in (base, base / "VOC2012", base / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    return None


def _read_split(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors write is not part of an id
    except UnicodeDecodeError as exc:
        raise DataError(f"split file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                        f"{exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read split file {path}: {exc.strerror or exc}") from exc
    ids: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] not in seen:  # ImageSets lines may carry extra columns
            seen.add(parts[0])
            ids.append(parts[0])
    if not ids:
        raise DataError(f"split file {path} lists no image ids")
    return ids


def open_dataset(root: str | os.PathLike[str], split: str | None = "val", ann_dir: str | None = None) -> Dataset:
    """Returns the ``Dataset`` at ``root``: a VOC layout (three root forms) or a plain folder of images.

    ``ann_dir``: the annotation folder (default: ``SegmentationClass/``, then ``SegmentationClassAug/`` for ids
    the first lacks). Raises DataError for a missing root, split file or ``ann_dir``, split ids without an image or
    mask, or an empty folder.
    """
    base = Path(root)
    if not base.exists():
        raise DataError(f"dataset folder not found: {base}")
    if not base.is_dir():
        raise DataError(f"dataset path is not a folder: {base}")
    voc = find_voc_root(base)
    if voc is None:
        return _open_image_folder(base, split)
    images = _list_images(voc / "JPEGImages")
    if split is None:
        ids = sorted(images)
        if not ids:
            raise DataError(f"no images in {voc / 'JPEGImages'}")
        return Dataset(root=voc, split=None, ids=ids, images=images)
    split_dir = voc / "ImageSets" / "Segmentation"
    split_file = split_dir / f"{split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
        hint = f"; available splits: {', '.join(have)}" if have else f"; {split_dir} has no split files"
        raise DataError(f"split file not found: {split_file}{hint}")
    ids = _read_split(split_file)
    no_image = [i for i in ids if i not in images]
    if no_image:
        raise DataError(
            f"{len(no_image)} id(s) of {split_file} have no image in {voc / 'JPEGImages'}: {_show(no_image)}"
        )
    if ann_dir is not None:
        mask_dirs = [voc / ann_dir]
        if not mask_dirs[0].is_dir():
            raise DataError(f"annotation folder not found: {mask_dirs[0]}")
    else:
        mask_dirs = [voc / name for name in ANN_DIRS if (voc / name).is_dir()]
    if not mask_dirs:
        log.info("%s has no %s/ folder; using the images without labels", voc, "/ or ".join(ANN_DIRS))
        return Dataset(root=voc, split=split, ids=ids, images={i: images[i] for i in ids})
    names = [{e.name for e in os.scandir(d)} for d in mask_dirs]
    masks: dict[str, Path] = {}
    no_mask = []
    for i in ids:
        found = next((d for d, have in zip(mask_dirs, names) if f"{i}.png" in have), None)
        if found is None:
            no_mask.append(i)
        else:
            masks[i] = found / f"{i}.png"
    if no_mask:
        where = " or ".join(f"{d}/<id>.png" for d in mask_dirs)
        raise DataError(f"{len(no_mask)} id(s) of {split_file} have no mask {where}: {_show(no_mask)}")
    used = sorted({p.parent.name for p in masks.values()})
    if used != ["SegmentationClass"]:
        log.info("masks of %s split '%s' from %s/", voc, split, "/ and ".join(used))
    return Dataset(root=voc, split=split, ids=ids, images={i: images[i] for i in ids}, masks=masks)


def _open_image_folder(folder: Path, split: str | None) -> Dataset:
    found: dict[str, Path] = {}
    stems: dict[str, int] = {}
    files = []
    for entry in os.scandir(folder):
        if entry.is_file() and os.path.splitext(entry.name)[1].lower() in _EXT_PREFERENCE:
            files.append(entry.name)
            stem = os.path.splitext(entry.name)[0]
            stems[stem] = stems.get(stem, 0) + 1
    for name in files:  # the stem is the id unless two files share it, then the file name is
        stem = os.path.splitext(name)[0]
        found[stem if stems[stem] == 1 else name] = folder / name
    if not found:
        raise DataError(
            f"{folder} is neither a VOC dataset (no JPEGImages/ in it, in VOC2012/ or VOCdevkit/VOC2012/) "
            f"nor a folder of images ({', '.join(IMAGE_EXTENSIONS)})"
        )
    if split:
        log.debug("%s is a plain image folder; split '%s' ignored", folder, split)
    return Dataset(root=folder, split=None, ids=sorted(found), images=found)
