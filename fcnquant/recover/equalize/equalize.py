"""Cross-layer equalization of a float ONNX model: find the scalable pairs, equalize them, absorb high biases, record.

Steps (numerics in :mod:`fcnquant.recover.equalize.cle`, graph rules in
:mod:`fcnquant.recover.equalize.scalable`, image passes in ``bounds`` and ``check``):

1. :func:`~fcnquant.recover.equalize.scalable.find_pairs` lists every Conv whose output channels can be rescaled
   with all its consumers compensating, and every Conv that cannot, with the reason.
2. :func:`~fcnquant.recover.equalize.cle.equalize_chains` equalizes the pairs chain by chain until the scales
   converge; the new weights and biases replace the initializers in place (same names, same dtype).
3. With ``EqualizeOptions(absorb=True)``, one inference pass over calibration images (on the executor given)
   measures each eligible producer's per-channel pre-activation minimum (on the equalized model), and
   c = max(0, bound) moves from its bias into the consumers' biases
   (:func:`~fcnquant.recover.equalize.cle.absorb_high_bias`). Missing biases are created (zeros + the shift).
4. The model keeps every ``metadata_props`` entry and gains ``fcnquant.equalized`` (a JSON summary); with ``out`` it
   is checked and written atomically.

Equalization alone is exact in real arithmetic (float32 rounding only). Absorption is exact on inputs whose
pre-activations stay above the measured bound (the bound images, by construction); on other inputs a channel
that dips below its bound changes the output, which is why it is a switch (and off by default in the CLI).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fcnquant import __version__
from fcnquant.data import DataConfig, Dataset
from fcnquant.errors import FcnquantError, ModelError
from fcnquant.execute import Executor, RunConfig
from fcnquant.graph import require_float
from fcnquant.quantize.name_map import set_metadata
from fcnquant.recover.equalize import cle
from fcnquant.recover.equalize.bounds import absorb_data, channel_stats, choose_images
from fcnquant.recover.equalize.check import first_images_rel_diff, random_rel_diff
from fcnquant.recover.equalize.scalable import ScalablePair, Skip, find_pairs, nodes_by_name

log = logging.getLogger(__name__)

METADATA_KEY = "fcnquant.equalized"
FORMAT_VERSION = 1
BOUND_RULES = ("min", "3sigma")


@dataclass(frozen=True)
class PairRecord:
    """One equalized producer: its consumers, chain, the chain's sweep count and the scales applied."""

    producer: str
    consumers: tuple[str, ...]
    chain: int
    sweeps: int
    channels: int
    scale_min: float
    scale_max: float
    dead_channels: int
    precision_before: float = 1.0
    precision_after: float = 1.0
    absorbed_channels: int = 0
    absorbed_max: float = 0.0
    absorb_note: str | None = None
    producers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Returns the record as plain JSON types."""
        return {
            "producer": self.producer, "producers": list(self.producers), "consumers": list(self.consumers),
            "chain": self.chain, "sweeps": self.sweeps,
            "channels": self.channels, "scale_min": self.scale_min, "scale_max": self.scale_max,
            "dead_channels": self.dead_channels, "precision_before": self.precision_before,
            "precision_after": self.precision_after, "absorbed_channels": self.absorbed_channels,
            "absorbed_max": self.absorbed_max, "absorb_note": self.absorb_note,
        }


@dataclass(frozen=True)
class WeightRange:
    """A weight's spread over output channels before and after: max|W| / min_i max|W_i| and mean precision."""

    node: str
    weight: str
    ratio_before: float
    ratio_after: float
    precision_before: float
    precision_after: float

    def to_dict(self) -> dict[str, Any]:
        """Returns the record as plain JSON types."""
        return {"node": self.node, "weight": self.weight, "ratio_before": self.ratio_before,
                "ratio_after": self.ratio_after, "precision_before": self.precision_before,
                "precision_after": self.precision_after}


@dataclass(frozen=True)
class EqualizeResult:
    """The equalized model and what was done to it."""

    model: Any = field(repr=False)
    pairs: tuple[PairRecord, ...]
    chains: tuple[dict[str, Any], ...]
    skipped: tuple[Skip, ...]
    weights: tuple[WeightRange, ...]
    absorb: dict[str, Any] | None
    max_rel_diff: float | None
    path: Path | None = None

    def median_precision(self) -> tuple[float, float]:
        """Returns the median over pairs of the pair precision (before, after); see :func:`cle.pair_precision`."""
        if not self.pairs:
            return 1.0, 1.0
        return (float(np.median([p.precision_before for p in self.pairs])),
                float(np.median([p.precision_after for p in self.pairs])))

    def to_dict(self) -> dict[str, Any]:
        """Returns the result (without the model) as plain JSON types."""
        before, after = self.median_precision()
        return {
            "format_version": FORMAT_VERSION,
            "fcnquant_version": __version__,
            "pairs": [p.to_dict() for p in self.pairs],
            "chains": list(self.chains),
            "skipped": [s.to_dict() for s in self.skipped],
            "weights": [w.to_dict() for w in self.weights],
            "median_precision": {"before": before, "after": after},
            "absorb": self.absorb,
            "max_rel_diff": self.max_rel_diff,
            "path": str(self.path) if self.path else None,
        }


@dataclass(frozen=True)
class EqualizeOptions:
    """``absorb`` turns on high-bias absorption, with per-channel lower bounds (``bound``: ``"min"`` the observed
    minimum, ``"3sigma"`` mean - 3 std); ``absorb_padded`` also absorbs into consumers that zero-pad (not exact at
    the borders). ``tol`` / ``max_sweeps``: when a chain's iteration stops (:func:`cle.equalize_chains`).
    ``verify`` runs the original and the result on two random inputs (the first bound images when absorbing) and
    reports max |diff| / max |logits|."""

    absorb: bool = False
    bound: str = "min"
    absorb_padded: bool = False
    tol: float = cle.DEFAULT_TOL
    max_sweeps: int = cle.DEFAULT_MAX_SWEEPS
    verify: bool = True

    def __post_init__(self) -> None:
        if self.bound not in BOUND_RULES:
            raise FcnquantError(f"unknown bound rule '{self.bound}'; choose one of {', '.join(BOUND_RULES)}")
        if self.tol <= 0 or self.max_sweeps < 1:
            raise FcnquantError("tol must be positive and max_sweeps at least 1")


def equalize(
    model,
    out: str | os.PathLike[str] | None = None,
    data: DataConfig | Dataset | str | os.PathLike[str] | None = None,
    run: RunConfig | Executor | None = None,
    options: EqualizeOptions | None = None,
) -> EqualizeResult:
    """Returns the EqualizeResult of cross-layer equalization of ``model`` (a path or an ``onnx.ModelProto``).

    ``options``: :class:`EqualizeOptions`. ``data``: the images absorption measures its bounds on (a
    :class:`~fcnquant.data.DataConfig`: its ``ids``, else ``num_images`` seeded ids; default 50 images of the
    train split of the dataset :func:`fcnquant.data.resolve_data` finds, as on every command; a root alone: its
    train split, 50 images); only read with ``options.absorb``. ``run``: the executor those image passes run on. With ``out`` the model is written there
    atomically; the input file is never modified.
    """
    import onnx

    from fcnquant._io import load_onnx

    options = options or EqualizeOptions()
    if isinstance(model, (str, os.PathLike)):
        source = load_onnx(model)
    elif isinstance(model, onnx.ModelProto):
        source = model
    else:
        raise ModelError(f"expected a model path or onnx.ModelProto, got {type(model).__name__}")
    require_float(source, str(model) if isinstance(model, (str, os.PathLike)) else "the model", "equalize")
    work = onnx.ModelProto()
    work.CopyFrom(source)
    pairs, records, chain_dicts, skipped, weights = _equalize_pairs(work, options)
    absorb_info, rel = None, None
    if options.absorb:
        executor = RunConfig.of(run).resolved()
        cfg = absorb_data(data)
        dataset, chosen = choose_images(cfg, _data_key(model, source), progress=executor.progress)
        absorb_info, records = _absorb(work, pairs, records, options, executor, dataset, chosen, cfg)
        if options.verify:
            rel = first_images_rel_diff(executor, source, work, dataset, chosen[:2], cfg)
    elif options.verify:
        rel = random_rel_diff(source, work, providers=RunConfig.of(run).resolved().providers)
    result = EqualizeResult(model=work, pairs=tuple(records), chains=tuple(chain_dicts), skipped=tuple(skipped),
                            weights=tuple(weights), absorb=absorb_info, max_rel_diff=rel)
    set_metadata(work, {METADATA_KEY: json.dumps(_summary(result), sort_keys=True)})
    if out is not None:
        path = _write(work, out)
        result = replace(result, path=path)
    return result


def _equalize_pairs(work, options: EqualizeOptions):
    """Equalizes the scalable pairs of ``work`` in place; returns (pairs, records, chains, skipped, weight ranges)."""
    from onnx import numpy_helper

    found, skipped = find_pairs(work)
    inits = {t.name: t for t in work.graph.initializer}
    used = {x for p in found for q in p.producers for x in (q.weight, q.bias) if x} | {
        c.weight for p in found for c in p.consumers}
    arrays = {name: numpy_helper.to_array(inits[name]) for name in used}
    pairs, skipped = _drop_nonfinite(found, arrays, skipped)
    for s in skipped:
        log.info("not equalized: %s: %s", s.node, s.reason)
    specs = [_spec(p) for p in pairs]
    new, chain_results = cle.equalize_chains(arrays, specs, tol=options.tol, max_sweeps=options.max_sweeps)
    for name, arr in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    records, chain_dicts = _records(pairs, chain_results, arrays, {**arrays, **new})
    for c in chain_dicts:
        if not c["converged"]:
            log.warning("chain %s did not converge in %d sweeps (last max |log s| %.2e)", " -> ".join(c["pairs"]),
                        c["sweeps"], c["last_max_log_scale"])
    weights = _weight_ranges(pairs, arrays, new)
    log.info("equalized %d pair(s) in %d chain(s); skipped %d Conv(s)", len(pairs), len(chain_dicts), len(skipped))
    return pairs, records, chain_dicts, skipped, weights


def _drop_nonfinite(pairs: list[ScalablePair], arrays: dict[str, np.ndarray], skipped: list[Skip]):
    keep: list[ScalablePair] = []
    skipped = list(skipped)
    for p in pairs:
        keys = [x for q in p.producers for x in (q.weight, q.bias) if x] + [c.weight for c in p.consumers]
        bad = [k for k in keys if not np.isfinite(arrays[k]).all()]
        if bad:
            skipped.append(Skip(p.producer, f"weight '{bad[0]}' has NaN/Inf values"))
        else:
            keep.append(p)
    return keep, skipped


def _spec(p: ScalablePair) -> cle.Pair:
    return cle.Pair(
        name=p.producer,
        producers=tuple(cle.Producer(q.weight, q.bias, cle.Layout(q.transposed, q.group)) for q in p.producers),
        consumers=tuple(cle.Consumer(c.weight, cle.Layout(c.transposed, c.group), c.offset) for c in p.consumers),
    )


def _precision(p: ScalablePair, arrays: dict[str, np.ndarray]) -> float:
    return cle.pair_precision([(arrays[q.weight], cle.Layout(q.transposed, q.group)) for q in p.producers],
                              [(arrays[c.weight], cle.Layout(c.transposed, c.group), c.offset) for c in p.consumers])


def _records(pairs: list[ScalablePair], chain_results: list[cle.ChainResult], before: dict, after: dict):
    by_name = {p.producer: p for p in pairs}
    records: list[PairRecord] = []
    chain_dicts: list[dict[str, Any]] = []
    for k, ch in enumerate(chain_results):
        chain_dicts.append({"pairs": [ps.name for ps in ch.pairs], "sweeps": ch.sweeps, "converged": ch.converged,
                            "last_max_log_scale": ch.last_max_log_scale})
        for ps in ch.pairs:
            p = by_name[ps.name]
            records.append(PairRecord(
                producer=p.producer, producers=tuple(q.node for q in p.producers),
                consumers=tuple(c.node for c in p.consumers), chain=k, sweeps=ch.sweeps,
                channels=p.channels, scale_min=float(ps.scales.min()), scale_max=float(ps.scales.max()),
                dead_channels=ps.dead_channels, precision_before=_precision(p, before),
                precision_after=_precision(p, after), absorb_note=p.absorb_blocker,
            ))
    order = {p.producer: i for i, p in enumerate(pairs)}
    records.sort(key=lambda r: order[r.producer])
    return records, chain_dicts


def _weight_ranges(pairs: list[ScalablePair], before: dict[str, np.ndarray], after: dict[str, np.ndarray]):
    seen: dict[str, tuple[str, bool, int]] = {}
    for p in pairs:
        for q in p.producers:
            seen.setdefault(q.weight, (q.node, q.transposed, q.group))
        for c in p.consumers:
            seen.setdefault(c.weight, (c.node, c.transposed, c.group))
    out = []
    for w, (node, transposed, group) in seen.items():
        axis = 1 if transposed else 0
        g = group if transposed else 1  # a Conv's output channels are rows: no group split on axis 0
        out.append(WeightRange(
            node=node, weight=w,
            ratio_before=cle.weight_range_ratio(before[w], axis, g),
            ratio_after=cle.weight_range_ratio(after[w], axis, g),
            precision_before=cle.mean_channel_precision(before[w], axis, g),
            precision_after=cle.mean_channel_precision(after[w], axis, g),
        ))
    return out


def _absorb(work, pairs: list[ScalablePair], records: list[PairRecord], options: EqualizeOptions,
            executor: Executor, dataset, chosen: list[str], data: DataConfig):
    """Moves each eligible producer's always-positive part into its consumers' biases (in place); returns
    (the absorption summary, the records)."""
    eligible = [p for p in pairs if p.absorb_blocker is None or (options.absorb_padded and p.padded_only)]
    info: dict[str, Any] = {"bound": options.bound, "images": len(chosen), "split": data.split,
                            "absorb_padded": options.absorb_padded, "pairs": 0, "channels": 0}
    if not eligible:
        log.info("high-bias absorption: no pair qualifies")
        return info, records
    stats = channel_stats(executor, work, {p.output: p.channels for p in eligible}, dataset, chosen, data)
    inits = {t.name: t for t in work.graph.initializer}
    nodes = nodes_by_name(work)
    taken = {t.name for t in work.graph.initializer}
    taken |= {x for n in work.graph.node for x in list(n.input) + list(n.output)}
    by_name = {r.producer: r for r in records}
    for p in eligible:
        st = stats[p.output]
        c = _absorb_pair(work, p, st.lower_bound(options.bound), inits, nodes, taken)
        if c is None:
            by_name[p.producer] = replace(by_name[p.producer], absorb_note="no channel has a positive lower bound")
            continue
        note = None if p.absorb_blocker is None else f"absorbed despite: {p.absorb_blocker}"
        by_name[p.producer] = replace(by_name[p.producer], absorbed_channels=int((c > 0).sum()),
                                      absorbed_max=float(c.max()), absorb_note=note)
        info["pairs"] += 1
        info["channels"] += int((c > 0).sum())
        info.setdefault("activation_max", {})[p.producer] = {"before": float(st.maximum.max()),
                                                             "after": float((st.maximum - c).max())}
    log.info("high-bias absorption: %d channel(s) in %d pair(s)", info["channels"], info["pairs"])
    return info, [by_name[r.producer] for r in records]


def _absorb_pair(work, p: ScalablePair, lower: np.ndarray, inits: dict, nodes: dict, taken: set[str]):
    """Moves ``max(0, lower)`` of producer ``p`` into its consumers' biases; returns the constants moved (None
    when no channel has a positive bound)."""
    from onnx import numpy_helper

    c = np.where(np.isfinite(lower), np.maximum(lower, 0.0), 0.0)
    if not (c > 0).any():
        return None
    b1 = _bias(work, inits, nodes[p.producer], p.channels, taken)
    new_b1, _, c = cle.absorb_high_bias(numpy_helper.to_array(b1), lower, [])
    b1.CopyFrom(numpy_helper.from_array(new_b1, b1.name))
    for site in p.consumers:
        w2 = numpy_helper.to_array(inits[site.weight])
        b2 = _bias(work, inits, nodes[site.node], int(w2.shape[0]), taken)
        _, (new_b2,), _ = cle.absorb_high_bias(np.zeros_like(new_b1), lower,
                                               [(w2, numpy_helper.to_array(b2), site.group, site.offset)])
        b2.CopyFrom(numpy_helper.from_array(new_b2, b2.name))
    return c


def _bias(model, inits: dict, node, channels: int, taken: set[str]):
    """Returns the node's bias initializer, creating a zero one (and the node input) when it has none."""
    from onnx import numpy_helper

    if len(node.input) > 2 and node.input[2]:
        return inits[node.input[2]]
    w = inits[node.input[1]]
    name, k = f"{w.name}.bias", 1
    while name in taken:
        name, k = f"{w.name}.bias_{k}", k + 1
    taken.add(name)
    dtype = numpy_helper.to_array(w).dtype
    t = model.graph.initializer.add()
    t.CopyFrom(numpy_helper.from_array(np.zeros(channels, dtype=dtype), name))
    while len(node.input) < 2:
        node.input.append("")
    if len(node.input) == 2:
        node.input.append(name)
    else:
        node.input[2] = name
    inits[name] = t
    return t


def _summary(result: EqualizeResult) -> dict[str, Any]:
    before, after = result.median_precision()
    return {
        "format_version": FORMAT_VERSION,
        "fcnquant_version": __version__,
        "pairs": [{"producer": p.producer, "consumers": list(p.consumers), "sweeps": p.sweeps,
                   "absorbed_channels": p.absorbed_channels} for p in result.pairs],
        "chains": [{"pairs": len(c["pairs"]), "sweeps": c["sweeps"], "converged": c["converged"]}
                   for c in result.chains],
        "skipped": [s.to_dict() for s in result.skipped],
        "median_precision": {"before": round(before, 4), "after": round(after, 4)},
        "absorb": None if result.absorb is None else {k: v for k, v in result.absorb.items() if k != "activation_max"},
        "max_rel_diff": result.max_rel_diff,
    }


def _write(model, out: str | os.PathLike[str]) -> Path:
    import onnx

    from fcnquant.runtime import written_model

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the equalized model does not pass the ONNX checker: {exc}") from exc
    path = Path(out)
    with written_model(path) as tmp:
        onnx.save(model, str(tmp))
    log.info("wrote %s", path)
    return path


def _data_key(model, source):
    """Returns what tells :func:`fcnquant.data.resolve_data` whether the model is a shipped demo model: its path
    (read only when small), else the serialized model."""
    return model if isinstance(model, (str, os.PathLike)) else source.SerializeToString()
