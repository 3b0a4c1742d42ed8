"""Calibration statistics: per-tensor exact min/max + bit-pattern histogram, their ``.npz`` file and exact merge.

File format (``np.load(..., allow_pickle=False)``; no object arrays):

* ``meta``: uint8 array holding UTF-8 JSON: ``format`` ("fcnquant-stats"), ``format_version``, ``tool_version``,
  ``model_name``, ``model_sha256``, ``preset`` (dict), ``image_ids`` (list), ``shard`` ("i/n" or null),
  ``mantissa_bits``, ``skip_nonfinite``, ``tensors`` (names, in order; array keys use the position, so any
  tensor name is safe).
* per tensor ``k``: ``t{k}.range`` float64 [min, max]; ``t{k}.count`` int64 [count, nonfinite];
  ``t{k}.index`` uint32 non-zero bin indices (increasing); ``t{k}.hist`` int64 their counts.

Statistics are exact, so merging the files of disjoint image sets gives bit-identical statistics to one run over
all the images (the histogram guarantee of :class:`~fcnquant.observers.HistogramObserver`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from fcnquant import __version__
from fcnquant._io import atomic_path, model_digests
from fcnquant.errors import CalibrationError, ModelError
from fcnquant.observers import DEFAULT_MANTISSA_BITS, HistogramObserver, MinMaxObserver
from fcnquant.observers.fused import new_histogram, update_stats

log = logging.getLogger(__name__)

FORMAT = "fcnquant-stats"
FORMAT_VERSION = 1


@dataclass
class TensorStats:
    """The statistics of one tensor: exact min/max/count and the exact bit-pattern histogram."""

    minmax: MinMaxObserver
    hist: HistogramObserver

    @classmethod
    def new(cls, mantissa_bits: int = DEFAULT_MANTISSA_BITS, *, skip_nonfinite: bool = False,
            compiled: bool | None = None) -> TensorStats:
        """Returns empty statistics; ``compiled``: observe through the compiled kernel (see
        :func:`~fcnquant.observers.fused.new_histogram`; the statistics are the same either way)."""
        return cls(MinMaxObserver(skip_nonfinite=skip_nonfinite),
                   new_histogram(mantissa_bits, skip_nonfinite=skip_nonfinite, compiled=compiled))

    def update(self, x: np.ndarray) -> None:
        """Adds a batch of values. Raises NonFiniteError (nothing changed) on NaN/Inf unless skipping them."""
        update_stats(self.hist, self.minmax, x)  # one pass (compiled kernel) or numpy; raises before any change

    def merge(self, other: TensorStats) -> None:
        """Folds ``other`` in (exact)."""
        self.hist.merge(other.hist)
        self.minmax.merge(other.minmax)

    @property
    def min(self) -> float:
        return self.minmax.min

    @property
    def max(self) -> float:
        return self.minmax.max

    @property
    def amax(self) -> float:
        """``max(|min|, |max|)`` (0 when nothing was observed)."""
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    @property
    def count(self) -> int:
        return self.minmax.count

    @property
    def nonfinite(self) -> int:
        return self.hist.nonfinite

    def linear(self, num_bins: int = 2048, *, side: str = "both", upper: float | None = None):
        """Returns ``(counts, edges)``: a ``num_bins`` histogram of ``|x|`` on ``[0, upper]`` (default: max |x| of the
        side), bit-pattern bins clipped to the exact min/max (see :meth:`HistogramObserver.to_linear`)."""
        if upper is None:
            upper = self.amax if side == "both" else max(self.max, 0.0) if side == "pos" else max(-self.min, 0.0)
        return self.hist.to_linear(num_bins, upper, absolute=True, vmin=self.min, vmax=self.max, side=side)

    def validate(self, name: str = "tensor") -> None:
        """Raises CalibrationError if the min/max and the histogram disagree (different data or corruption)."""
        h, mm = self.hist, self.minmax
        if h.total != mm.count or h.nonfinite != mm.nonfinite:
            raise CalibrationError(
                f"{name}: histogram holds {h.total} values ({h.nonfinite} non-finite), min/max {mm.count} "
                f"({mm.nonfinite}): statistics are inconsistent")
        if mm.count:
            ends = np.array([mm.min, mm.max], dtype=np.float32)
            if np.float64(ends[0]) != mm.min or np.float64(ends[1]) != mm.max:
                raise CalibrationError(f"{name}: min/max {mm.min}, {mm.max} are not float32 values")
            bins = (ends.view(np.uint32) >> h.shift).astype(np.intp)
            neg_zero = np.array([-0.0], np.float32).view(np.uint32) >> h.shift
            found = h.count_at(bins) + np.where(ends == 0, h.count_at(neg_zero)[0], 0)  # a zero may be +0.0 or -0.0
            if not found.all():
                raise CalibrationError(f"{name}: min/max {mm.min}, {mm.max} are not in the histogram")

    def state(self) -> dict[str, np.ndarray]:
        """Returns the state as plain arrays (the ``t{k}.*`` arrays of the file, without the prefix)."""
        mm, h = self.minmax.state(), self.hist.state()
        return {"range": mm["range"], "count": mm["count"], "index": h["index"], "hist": h["count"]}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], mantissa_bits: int, *, skip_nonfinite: bool = False,
                   name: str = "tensor") -> TensorStats:
        """Returns statistics restored from :meth:`state`; raises CalibrationError naming ``name`` if malformed."""
        try:
            mm = MinMaxObserver.from_state({"range": state["range"], "count": state["count"]},
                                           skip_nonfinite=skip_nonfinite)
            h = HistogramObserver.from_state(
                {"mantissa_bits": np.array([mantissa_bits]), "index": state["index"], "count": state["hist"],
                 "nonfinite": np.asarray(state["count"]).reshape(-1)[1:2]},
                skip_nonfinite=skip_nonfinite)
        except (CalibrationError, KeyError) as exc:
            raise CalibrationError(f"{name}: {exc}") from exc
        ts = cls(mm, h)
        ts.validate(name)
        return ts


def _plain(obj: Any) -> Any:
    """JSON-normal form (tuples -> lists, dataclasses -> dicts) so saved and in-memory metadata compare equal."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj))


def _parse_shard(shard: str | None) -> tuple[list[int], int] | None:
    if shard is None:
        return None
    try:
        idx, n = shard.split("/")
        return [int(i) for i in idx.split(",")], int(n)
    except ValueError:
        raise CalibrationError(f"bad shard {shard!r}; expected 'i/n'") from None


@dataclass
class CalibrationStats:
    """Statistics of every observed tensor of one model over a set of images, plus what produced them."""

    tensors: dict[str, TensorStats]
    model_sha256: str
    image_ids: list[str] = field(default_factory=list)
    preset: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    shard: str | None = None
    mantissa_bits: int = DEFAULT_MANTISSA_BITS
    skip_nonfinite: bool = False
    tool_version: str = __version__

    def __post_init__(self) -> None:
        self.preset = _plain(self.preset or {})
        self.image_ids = [str(i) for i in self.image_ids]

    def __reduce__(self):
        # pickled (e.g. a shard's result sent back by a worker) as the sparse arrays, not 2^19-bin histograms
        from fcnquant.calibrate.stats_wire import stats_from_wire, stats_to_wire

        return stats_from_wire, (stats_to_wire(self),)

    @classmethod
    def new(
        cls,
        names: Iterable[str],
        *,
        model_sha256: str,
        preset: Any = None,
        image_ids: Sequence[str] = (),
        model_name: str = "",
        shard: str | None = None,
        mantissa_bits: int = DEFAULT_MANTISSA_BITS,
        skip_nonfinite: bool = False,
        compiled: bool | None = None,
    ) -> CalibrationStats:
        """Returns empty statistics for the tensors ``names`` (a Preset dataclass or dict is accepted);
        ``compiled`` as in :meth:`TensorStats.new`."""
        tensors = {n: TensorStats.new(mantissa_bits, skip_nonfinite=skip_nonfinite, compiled=compiled) for n in names}
        return cls(tensors, model_sha256, list(image_ids), _plain(preset or {}), model_name, shard,
                   mantissa_bits, skip_nonfinite)

    def meta(self) -> dict[str, Any]:
        """Returns the JSON metadata stored in the file."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tool_version": self.tool_version,
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "preset": self.preset,
            "image_ids": self.image_ids,
            "shard": self.shard,
            "mantissa_bits": self.mantissa_bits,
            "skip_nonfinite": self.skip_nonfinite,
            "tensors": list(self.tensors),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Writes the statistics to ``path`` (``.npz``) atomically and returns the path."""
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(self.meta()).encode("utf-8"), dtype=np.uint8)}
        for k, ts in enumerate(self.tensors.values()):
            for key, arr in ts.state().items():
                arrays[f"t{k}.{key}"] = arr
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
        log.debug("wrote statistics of %d tensors to %s", len(self.tensors), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationStats:
        """Returns the statistics in ``path``; raises CalibrationError naming the file if it is unusable."""
        p = Path(path)
        if not p.is_file():
            raise CalibrationError(f"statistics file not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled arrays), OSError
            raise CalibrationError(f"{p} is not a readable fcnquant statistics file: {exc}") from exc
        try:
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
            if meta.get("format") != FORMAT:
                raise ValueError("not an fcnquant statistics file")
            if int(meta["format_version"]) > FORMAT_VERSION:
                raise ValueError(f"format_version {meta['format_version']} is newer than this fcnquant supports "
                                 f"({FORMAT_VERSION}); upgrade fcnquant")
            names = [str(n) for n in meta["tensors"]]
            m = int(meta["mantissa_bits"])
            skip = bool(meta["skip_nonfinite"])
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{p}: bad metadata: {exc}") from exc
        tensors = {}
        for k, name in enumerate(names):
            state = {key: arrays.get(f"t{k}.{key}") for key in ("range", "count", "index", "hist")}
            if any(v is None for v in state.values()):
                raise CalibrationError(f"{p}: arrays of tensor {name!r} are missing")
            tensors[name] = TensorStats.from_state(state, m, skip_nonfinite=skip, name=f"{p}: tensor {name!r}")
        return cls(tensors, str(meta["model_sha256"]), list(meta.get("image_ids", [])), meta.get("preset") or {},
                   str(meta.get("model_name", "")), meta.get("shard"), m, skip, str(meta.get("tool_version", "")))

    @classmethod
    def merge(cls, parts: Sequence[CalibrationStats]) -> CalibrationStats:
        """Returns the exact combination of statistics collected on disjoint image sets (see :func:`merge_stats`)."""
        return merge_stats(parts)


def merge_stats(parts: Sequence[CalibrationStats]) -> CalibrationStats:
    """Returns the exact merge of statistics from disjoint image sets of the same model and preprocessing.

    Histograms add, min/max combine, so the result equals one collection over all the images bit for bit.
    Refuses (CalibrationError) different model sha256, preset, mantissa bits or tensor lists, and image ids that
    appear in more than one part. When every part is a shard ``i/n`` of the same ``n``, parts are ordered by
    ``i`` (so contiguous shards give the single run's image order) and the merged shard is ``None`` once all
    ``n`` are present (else e.g. ``"1,3/4"``).
    """
    parts = list(parts)
    if not parts:
        raise CalibrationError("nothing to merge")
    first = parts[0]
    for k, p in enumerate(parts[1:], start=2):
        if p.model_sha256 != first.model_sha256:
            raise CalibrationError(f"part {k} is for a different model (sha256 {p.model_sha256[:12]} vs "
                                   f"{first.model_sha256[:12]})")
        if p.mantissa_bits != first.mantissa_bits:
            raise CalibrationError(f"part {k} has {p.mantissa_bits} histogram mantissa bits, part 1 has "
                                   f"{first.mantissa_bits}")
        if p.preset != first.preset:
            raise CalibrationError(f"part {k} used a different preprocessing preset: {p.preset} vs {first.preset}")
        if list(p.tensors) != list(first.tensors):
            diff = sorted(set(p.tensors) ^ set(first.tensors))
            raise CalibrationError(f"part {k} observed different tensors"
                                   + (f" ({', '.join(diff[:5])})" if diff else " (different order)"))
    seen: dict[str, int] = {}
    for k, p in enumerate(parts, start=1):
        for i in p.image_ids:
            if i in seen:
                raise CalibrationError(f"image {i!r} appears in part {seen[i]} and part {k}: statistics overlap")
            seen[i] = k
    shards = [_parse_shard(p.shard) for p in parts]
    merged_shard = None
    if all(s is not None for s in shards) and len({s[1] for s in shards}) == 1:
        order = sorted(range(len(parts)), key=lambda j: shards[j][0])
        parts = [parts[j] for j in order]
        n = shards[0][1]
        idx = sorted(i for s in shards for i in s[0])
        if idx not in (list(range(1, n + 1)), list(range(n))):  # accept 1-based and 0-based shard numbers
            merged_shard = f"{','.join(map(str, idx))}/{n}"
    out = CalibrationStats.new(first.tensors, model_sha256=first.model_sha256, preset=first.preset,
                               image_ids=[i for p in parts for i in p.image_ids], model_name=first.model_name,
                               shard=merged_shard, mantissa_bits=first.mantissa_bits,
                               skip_nonfinite=any(p.skip_nonfinite for p in parts))
    for name, ts in out.tensors.items():
        for p in parts:
            ts.merge(p.tensors[name])
    return out


def load_stats(path: str | os.PathLike[str], model: str | os.PathLike[str] | None = None) -> CalibrationStats:
    """Returns the statistics saved at ``path``; with ``model``, checks they were collected on that model file."""
    stats = CalibrationStats.load(path)
    if model is not None:
        if not Path(model).is_file():
            raise ModelError(f"model file not found: {model}")
        digests = model_digests(model)
        if stats.model_sha256 not in digests:
            raise CalibrationError(
                f"{path} was collected on a different model (sha256 {stats.model_sha256[:12]}) than {model} "
                f"(sha256 {digests[0][:12]})")
    if stats.shard is not None:
        log.warning("%s holds shard %s only; merge all shards with `fcnquant merge-stats` first", path, stats.shard)
    return stats
