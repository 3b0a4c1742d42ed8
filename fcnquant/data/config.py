"""What travels together about the images: where they are, which ones, and how they are preprocessed.

A :class:`DataConfig` is resolved once, at the edge (the CLI builds it from ``--data --split --ann-dir --preset
--size --mean --std --ids --num-images``; Python callers build it or pass a path), and handed down unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from fcnquant.data.discover import resolve_data
from fcnquant.data.presets import Preset, preset_for_session
from fcnquant.data.subset import check_seed, select_calibration_ids, take_ids
from fcnquant.data.voc import Dataset, open_dataset


@dataclass(frozen=True)
class DataConfig:
    """The images a pass runs on and their preprocessing.

    ``root``: a VOC root or image folder, an open :class:`Dataset`, or None for the default data of the model
    (:func:`fcnquant.data.resolve_data`: the built-in synthetic VOC for a shipped demo model, else a VOC found on
    the machine, else the synthetic set with a warning). ``split`` and ``ann_dir`` as in
    :func:`fcnquant.data.open_dataset`. ``preset`` (name or :class:`Preset`; None: the model's metadata or
    ``awesome``) with ``size``/``mean``/``std`` overrides; its size follows a fixed model input. ``ids`` restricts
    the images; ``num_images`` cuts them (evaluation: the first N; calibration: a seeded selection of N, class
    ``balanced`` on request).
    """

    root: str | os.PathLike[str] | Dataset | None = None
    split: str | None = "val"
    ann_dir: str | None = None
    preset: str | Preset | None = None
    size: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    ids: tuple[str, ...] | None = None
    num_images: int | None = None
    seed: int = 0
    balanced: bool = False

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(float(x) for x in v))
        if self.size is not None and not isinstance(self.size, (int, tuple)):
            object.__setattr__(self, "size", tuple(int(x) for x in self.size))
        if self.ids is not None and not isinstance(self.ids, tuple):
            object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        check_seed(self.seed)

    @classmethod
    def of(cls, data: "DataConfig | str | os.PathLike[str] | Dataset | None", **defaults) -> "DataConfig":
        """Returns ``data`` as a DataConfig: itself, or a root (path or Dataset) with ``defaults``."""
        if isinstance(data, DataConfig):
            return data
        return cls(root=data, **defaults)

    def with_(self, **changes) -> "DataConfig":
        """Returns a copy with ``changes``."""
        return replace(self, **changes)

    def open(self, model=None, *, progress: bool = True) -> Dataset:
        """Returns the dataset: ``root`` opened, or the default data for ``model``."""
        if isinstance(self.root, Dataset):
            return self.root
        return open_dataset(resolve_data(self.root, model, progress=progress).root, self.split, self.ann_dir)

    def take(self, dataset: Dataset) -> list[str]:
        """Returns the ids to evaluate on, in order: ``ids`` (checked) or the dataset's, cut to ``num_images``."""
        return take_ids(dataset, self.ids, self.num_images)

    def choose(self, dataset: Dataset, *, progress: bool = True, default_images: int | None = None) -> list[str]:
        """Returns the ids to calibrate on: ``ids`` when given (checked), else a seeded selection of
        ``num_images`` (or ``default_images``; class ``balanced`` on request)."""
        if self.ids is not None:
            return take_ids(dataset, self.ids)
        n = self.num_images if self.num_images is not None else default_images
        return select_calibration_ids(dataset, n, seed=self.seed, balanced=self.balanced, progress=progress)

    def preset_for(self, session) -> Preset:
        """Returns the preset to feed the onnxruntime ``session`` (see :func:`preset_for_session`)."""
        return preset_for_session(session, self.preset, size=self.size, mean=self.mean, std=self.std)

