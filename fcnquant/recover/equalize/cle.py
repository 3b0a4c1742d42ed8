"""Cross-layer equalization numerics (Nagel et al. 2019, "Data-Free Quantization"): pure numpy, no onnx.

For a producer layer W1 (output channel i) followed by ops that commute with a positive per-channel scale
(ReLU(s x) = s ReLU(x), MaxPool, ...) and consumer layers W2 (input channel i),

    W1[i] / s_i,  b1[i] / s_i,  W2[:, i] * s_i

leaves the network's function unchanged for any s_i > 0. With r1_i = max|W1[i, ...]| and r2_i = max|W2[:, i, ...]|
(the max over *every* consumer when the tensor feeds several), ``s_i = sqrt(r1_i / r2_i)`` makes both per-channel
ranges sqrt(r1_i r2_i), which maximises the product of the channels' precisions under per-tensor quantization.

Weights are described by a :class:`Layout`: the first two axes of a Conv weight are (out, in / group) and of a
ConvTranspose weight (in, out / group). A channel on axis 0 ("row") owns the slice ``w[k]``; a channel j on axis 1
("column") of a grouped weight owns ``w[g*A/G:(g+1)*A/G, j % (B/G)]`` with g = j // (B/G): the rows of its group
only. Grouped and depthwise weights are therefore scaled exactly, not skipped.

A *pair* is one channel space: its producers (one Conv, or several whose outputs are summed by residual Adds;
r1_i is then the max over them) and its consumers (each with the offset of the channels among the consumer's
input channels, e.g. behind a Concat; r2_i is the max over them). Pairs sharing a weight form a *chain*;
:func:`equalize_chains` sweeps every chain's pairs in order until the largest |log s| of a sweep falls below a
tolerance. Everything is computed in float64 from the original weights and the accumulated scales, so no
rounding builds up over the sweeps.

High-bias absorption: if the producer's pre-activation y_i >= c_i >= 0 on the data, ReLU(y_i) = ReLU(y_i - c_i) + c_i,
so c moves from b1 into the consumer's bias: ``b1 -= c``, ``b2 += M @ c`` with M[o, i] = the sum of W2[o, i, ...]
over the kernel (exact for consumers without padding; :func:`absorb_high_bias`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

#: |log s| below which a sweep counts as having changed nothing
DEFAULT_TOL = 1e-6
DEFAULT_MAX_SWEEPS = 1000


@dataclass(frozen=True)
class Layout:
    """Which axis of a weight holds a layer's output channels, and its group count.

    ``transposed=False`` (Conv): shape (out, in / group, *kernel); ``True`` (ConvTranspose): (in, out / group, *kernel).
    """

    transposed: bool = False
    group: int = 1

    def out_axis(self) -> int:
        """Returns the axis (0 or 1) of the output channels."""
        return 1 if self.transposed else 0

    def in_axis(self) -> int:
        """Returns the axis (0 or 1) of the input channels."""
        return 0 if self.transposed else 1


def channel_count(w: np.ndarray, axis: int, group: int) -> int:
    """Returns the number of channels along ``axis`` (0: rows; 1: columns, times the group count)."""
    return int(w.shape[0]) if axis == 0 else int(w.shape[1]) * group


def _grouped(w: np.ndarray, group: int) -> np.ndarray:
    """Returns ``w`` viewed as (group, A / group, B / group, -1)."""
    a, b = w.shape[0], w.shape[1]
    if group < 1 or a % group:
        raise ValueError(f"weight of shape {tuple(w.shape)} cannot have {group} groups (axis 0 not divisible)")
    return w.reshape(group, a // group, b, -1)


def channel_absmax(w: np.ndarray, axis: int, group: int = 1) -> np.ndarray:
    """Returns max |w| over each channel's slice along ``axis`` (see the module docstring for grouped weights)."""
    a = np.abs(w)
    if axis == 0:
        return a.reshape(a.shape[0], -1).max(axis=1)
    return _grouped(a, group).max(axis=(1, 3)).reshape(-1)


def scale_channels(w: np.ndarray, s: np.ndarray, axis: int, group: int = 1, offset: int = 0) -> np.ndarray:
    """Returns a copy of ``w`` with channels ``offset .. offset+len(s)-1`` along ``axis`` multiplied by ``s``."""
    n = channel_count(w, axis, group)
    if offset < 0 or offset + len(s) > n:
        raise ValueError(f"channels {offset}..{offset + len(s) - 1} out of range for {n} channels")
    full = np.ones(n, dtype=np.float64)
    full[offset:offset + len(s)] = s
    if axis == 0:
        return w * full.reshape((n,) + (1,) * (w.ndim - 1))
    g = _grouped(w, group)
    out = g * full.reshape(group, 1, w.shape[1], 1)
    return out.reshape(w.shape)


def kernel_sum_matrix(w: np.ndarray, group: int = 1) -> np.ndarray:
    """Returns M (out, in) of a Conv weight: M[o, i] = sum of w[o, i, ...] over the kernel, 0 across groups.

    ``M @ c`` is what a constant input c (per input channel, no padding) adds to each output channel.
    """
    g = _grouped(w, group).sum(axis=3)  # (G, out/G, in/G)
    cout, cin_g = w.shape[0], w.shape[1]
    m = np.zeros((cout, cin_g * group), dtype=np.float64)
    rows = cout // group
    for k in range(group):
        m[k * rows:(k + 1) * rows, k * cin_g:(k + 1) * cin_g] = g[k]
    return m


def equalization_scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Returns s = sqrt(r1 / r2) per channel; 1 where either range is 0 (a dead channel has nothing to balance).

    Raises ValueError on negative or non-finite ranges.
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    if r1.shape != r2.shape:
        raise ValueError(f"range shapes differ: {r1.shape} vs {r2.shape}")
    if not (np.isfinite(r1).all() and np.isfinite(r2).all()) or (r1 < 0).any() or (r2 < 0).any():
        raise ValueError("weight ranges must be finite and non-negative")
    s = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    return s


@dataclass(frozen=True)
class Consumer:
    """A consumer weight of a pair: its key, layout, and where the producer's channels start among its inputs."""

    weight: str
    layout: Layout = Layout()
    offset: int = 0


@dataclass(frozen=True)
class Producer:
    """A producer weight of a pair, its bias key (None: no bias) and layout."""

    weight: str
    bias: str | None = None
    layout: Layout = Layout()


@dataclass(frozen=True)
class Pair:
    """Producers whose output channels share one channel space (one producer, or several joined by residual Adds)
    feeding ``consumers``' input channels; every producer's channel i is divided by s_i, every consumer's
    multiplied. r1_i is the max over the producers, r2_i over the consumers."""

    name: str
    producers: tuple[Producer, ...]
    consumers: tuple[Consumer, ...]


@dataclass(frozen=True)
class PairScales:
    """The accumulated scale of one pair (producer output channels are divided by it, consumer inputs multiplied)."""

    name: str
    scales: np.ndarray = field(repr=False)
    dead_channels: int  # channels left at scale 1 because one side's range is 0


@dataclass(frozen=True)
class ChainResult:
    """One chain (pairs linked through shared weights): its pairs' scales, sweeps run, and whether it converged."""

    pairs: tuple[PairScales, ...]
    sweeps: int
    converged: bool
    last_max_log_scale: float


def chains(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """Returns the pairs grouped into chains (connected through a weight used in two pairs), in input order."""
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, p in enumerate(pairs):
        for key in [q.weight for q in p.producers] + [c.weight for c in p.consumers]:
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    groups: dict[int, list[Pair]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(find(i), []).append(p)
    return sorted(groups.values(), key=lambda g: pairs.index(g[0]))


class _Scaled:
    """Original weights, reduced to max |w| over the kernel, plus accumulated scales per output / input channel.

    Ranges are computed from the reduced (rows, columns / group) matrices, 1/k of the weight's size for a k-tap
    kernel; the full weights are scaled once at the end (:meth:`current`).
    """

    def __init__(self, weights: Mapping[str, np.ndarray], layouts: dict[str, Layout]) -> None:
        self.orig = {k: np.asarray(weights[k], dtype=np.float64) for k in layouts}
        self.layouts = layouts
        self.amax = {k: np.abs(w).reshape(w.shape[0], w.shape[1], -1).max(axis=2) for k, w in self.orig.items()}
        self.out_div = {k: np.ones(channel_count(w, layouts[k].out_axis(), layouts[k].group))
                        for k, w in self.orig.items()}
        self.in_mul = {k: np.ones(channel_count(w, layouts[k].in_axis(), layouts[k].group))
                       for k, w in self.orig.items()}

    def _factors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns (row factors, column factors) of a weight: its current value is orig * row[r] * col[c]."""
        if self.layouts[key].transposed:
            return self.in_mul[key], 1.0 / self.out_div[key]
        return 1.0 / self.out_div[key], self.in_mul[key]

    def ranges(self, key: str, axis: int) -> np.ndarray:
        """Returns the current max |w| per channel along ``axis`` of weight ``key``."""
        a = self.amax[key]
        group = self.layouts[key].group
        rows, cols = self._factors(key)
        if group == 1:
            scaled = a * rows[:, None] * cols[None, :]
        else:
            scaled = a * rows[:, None] * cols.reshape(group, a.shape[1])[np.arange(a.shape[0]) // (a.shape[0] // group)]
        if axis == 0:
            return scaled.max(axis=1)
        return scaled.reshape(group, a.shape[0] // group, a.shape[1]).max(axis=1).reshape(-1)

    def current(self, key: str) -> np.ndarray:
        """Returns the weight with every accumulated scale applied (float64)."""
        lay = self.layouts[key]
        rows, cols = self._factors(key)
        w = scale_channels(self.orig[key], rows, 0, lay.group)
        return scale_channels(w, cols, 1, lay.group)


def _layouts(pairs: Sequence[Pair]) -> dict[str, Layout]:
    layouts: dict[str, Layout] = {}
    for p in pairs:
        for key, lay in [(q.weight, q.layout) for q in p.producers] + [(c.weight, c.layout) for c in p.consumers]:
            if layouts.setdefault(key, lay) != lay:
                raise ValueError(f"weight '{key}' is used with two layouts: {layouts[key]} and {lay}")
    return layouts


def equalize_chains(
    weights: Mapping[str, np.ndarray],
    pairs: Sequence[Pair],
    *,
    tol: float = DEFAULT_TOL,
    max_sweeps: int = DEFAULT_MAX_SWEEPS,
) -> tuple[dict[str, np.ndarray], list[ChainResult]]:
    """Returns (new arrays by key, one ChainResult per chain) after equalizing every pair of ``pairs``.

    ``weights`` maps keys to arrays (weights and biases); the returned dict holds every weight and producer bias
    the pairs touch (float32 when the input was float32). Each chain is swept in the given pair order until the
    largest |log s| of a sweep is below ``tol`` or ``max_sweeps`` sweeps have run. The function of the network
    is unchanged up to float rounding.
    """
    layouts = _layouts(pairs)
    for p in pairs:
        _check_pair(weights, p, layouts)
    state = _Scaled(weights, layouts)
    results: list[ChainResult] = []
    total: dict[str, np.ndarray] = {}
    for chain in chains(pairs):
        cum = {p.name: np.ones(_out_channels(weights, p)) for p in chain}
        dead = {p.name: 0 for p in chain}
        sweeps, worst, converged = 0, np.inf, False
        while sweeps < max_sweeps:
            sweeps += 1
            worst = 0.0
            for p in chain:
                s, n_dead = _pair_scales(state, p)
                dead[p.name] = n_dead
                _apply(state, p, s)
                cum[p.name] *= s
                worst = max(worst, float(np.abs(np.log(s)).max(initial=0.0)))
            if worst < tol:
                converged = True
                break
        results.append(ChainResult(
            pairs=tuple(PairScales(p.name, cum[p.name], dead[p.name]) for p in chain),
            sweeps=sweeps, converged=converged, last_max_log_scale=worst,
        ))
        total.update(cum)
    out: dict[str, np.ndarray] = {}
    for key in layouts:
        out[key] = state.current(key).astype(np.asarray(weights[key]).dtype)
    for p in pairs:
        for q in p.producers:
            if q.bias is not None:
                b = np.asarray(weights[q.bias])
                out[q.bias] = (b.astype(np.float64) / total[p.name]).astype(b.dtype)
    return out, results


def _out_channels(weights: Mapping[str, np.ndarray], p: Pair) -> int:
    q = p.producers[0]
    return channel_count(np.asarray(weights[q.weight]), q.layout.out_axis(), q.layout.group)


def _check_pair(weights: Mapping[str, np.ndarray], p: Pair, layouts: dict[str, Layout]) -> None:
    if not p.producers:
        raise ValueError(f"pair '{p.name}' has no producers")
    n = _out_channels(weights, p)
    for q in p.producers:
        m = channel_count(np.asarray(weights[q.weight]), q.layout.out_axis(), q.layout.group)
        if m != n:
            raise ValueError(f"pair '{p.name}': producers have {n} and {m} output channels")
        if q.bias is not None and np.asarray(weights[q.bias]).shape != (n,):
            raise ValueError(f"pair '{p.name}': bias shape {np.asarray(weights[q.bias]).shape} != ({n},)")
    if not p.consumers:
        raise ValueError(f"pair '{p.name}' has no consumers")
    for c in p.consumers:
        w = np.asarray(weights[c.weight])
        m = channel_count(w, c.layout.in_axis(), c.layout.group)
        if c.offset < 0 or c.offset + n > m:
            raise ValueError(f"pair '{p.name}': consumer '{c.weight}' has {m} input channels, "
                             f"cannot take {n} at offset {c.offset}")
    for key in [q.weight for q in p.producers] + [c.weight for c in p.consumers]:
        if not np.isfinite(np.asarray(weights[key])).all():
            raise ValueError(f"weight '{key}' has NaN/Inf values")


def _pair_scales(state: _Scaled, p: Pair) -> tuple[np.ndarray, int]:
    r1 = np.max([state.ranges(q.weight, q.layout.out_axis()) for q in p.producers], axis=0)
    n = len(r1)
    r2 = np.zeros(n)
    for c in p.consumers:
        r = state.ranges(c.weight, c.layout.in_axis())[c.offset:c.offset + n]
        r2 = np.maximum(r2, r)
    dead = int(((r1 == 0) | (r2 == 0)).sum())
    return equalization_scales(r1, r2), dead


def _apply(state: _Scaled, p: Pair, s: np.ndarray) -> None:
    for q in p.producers:
        state.out_div[q.weight] = state.out_div[q.weight] * s
    for c in p.consumers:
        seg = state.in_mul[c.weight][c.offset:c.offset + len(s)]
        state.in_mul[c.weight][c.offset:c.offset + len(s)] = seg * s


def apply_scales(weights: Mapping[str, np.ndarray], pair: Pair, s: np.ndarray) -> dict[str, np.ndarray]:
    """Returns the pair's weights and producer biases after dividing its channels by ``s`` at the producers and
    multiplying them by ``s`` at the consumers (one step of equalization with given scales)."""
    s = np.asarray(s, dtype=np.float64)
    out: dict[str, np.ndarray] = {}

    def cur(key: str) -> np.ndarray:
        return out[key] if key in out else np.asarray(weights[key], dtype=np.float64)

    for q in pair.producers:
        out[q.weight] = scale_channels(cur(q.weight), 1.0 / s, q.layout.out_axis(), q.layout.group)
        if q.bias is not None:
            out[q.bias] = cur(q.bias) / s
    for c in pair.consumers:
        out[c.weight] = scale_channels(cur(c.weight), s, c.layout.in_axis(), c.layout.group, c.offset)
    return {k: v.astype(np.asarray(weights[k]).dtype) for k, v in out.items()}


def absorb_high_bias(
    b1: np.ndarray,
    lower: np.ndarray,
    consumers: Sequence[tuple[np.ndarray, np.ndarray, int, int]],
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Returns (new b1, new consumer biases, c) after moving c = max(0, lower) from b1 into the consumers' biases.

    ``lower`` is a per-channel lower bound of the producer's pre-activation (on the current, equalized scale);
    ``consumers`` lists (Conv weight, its bias, group, offset of the producer's channels among its inputs).
    ``b2 += M[:, offset:offset+n] @ c`` with M from :func:`kernel_sum_matrix`: exact where the consumer has no
    padding and the pre-activation really stays >= c.
    """
    lower = np.asarray(lower, dtype=np.float64)
    if lower.shape != np.shape(b1):
        raise ValueError(f"lower bound shape {lower.shape} != bias shape {np.shape(b1)}")
    c = np.where(np.isfinite(lower), np.maximum(lower, 0.0), 0.0)
    new_b1 = (np.asarray(b1, dtype=np.float64) - c).astype(np.asarray(b1).dtype)
    new_b2 = []
    for w2, b2, group, offset in consumers:
        m = kernel_sum_matrix(np.asarray(w2, dtype=np.float64), group)[:, offset:offset + len(c)]
        if m.shape[1] != len(c):
            raise ValueError(f"consumer has {m.shape[1] + offset} input channels, cannot take {len(c)} at {offset}")
        new_b2.append((np.asarray(b2, dtype=np.float64) + m @ c).astype(np.asarray(b2).dtype))
    return new_b1, new_b2, c


def pair_precision(
    producers: Sequence[tuple[np.ndarray, Layout]],
    consumers: Sequence[tuple[np.ndarray, Layout, int]],
) -> float:
    """Returns mean_i p1_i * p2_i, the paper's objective for one pair under per-tensor weight quantization.

    p1_i = r1_i / max|W1| (producer output channel i), p2_i = r2_i / max|W2| (the channel's input slice of a
    consumer), each the mean over the producers (weight, layout) / consumers (weight, layout, offset).
    1 is the best possible.
    """
    p1 = 0.0
    for w1, layout in producers:
        r1 = channel_absmax(np.asarray(w1, dtype=np.float64), layout.out_axis(), layout.group)
        p1 = p1 + (r1 / r1.max() if r1.max() > 0 else np.ones_like(r1))
    p1 = p1 / len(producers)
    p2 = np.zeros_like(p1)
    for w2, lay, offset in consumers:
        w2 = np.asarray(w2, dtype=np.float64)
        top = np.abs(w2).max()
        r2 = channel_absmax(w2, lay.in_axis(), lay.group)[offset:offset + len(p1)]
        p2 += r2 / top if top > 0 else 1.0
    return float((p1 * p2 / max(len(consumers), 1)).mean())


def mean_channel_precision(w: np.ndarray, axis: int = 0, group: int = 1) -> float:
    """Returns the mean over channels along ``axis`` of max|w[channel]| / max|w| (the paper's precision p_i).

    Under one per-tensor scale a channel with precision p uses about p of the int8 grid; 1 is the best possible.
    Returns 1.0 for an all-zero weight.
    """
    r = channel_absmax(np.asarray(w, dtype=np.float64), axis, group)
    return float(r.mean() / r.max()) if r.max() > 0 else 1.0


def weight_range_ratio(w: np.ndarray, axis: int = 0, group: int = 1) -> float:
    """Returns max |w| over the tensor divided by the smallest non-zero per-channel max |w| along ``axis``.

    1 means every channel uses the full per-tensor range; large values mean some channels get few int8 levels
    under one per-tensor scale. Returns 1.0 for an all-zero weight.
    """
    r = channel_absmax(np.asarray(w, dtype=np.float64), axis, group)
    nz = r[r > 0]
    return float(r.max() / nz.min()) if nz.size else 1.0
