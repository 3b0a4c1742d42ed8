"""Scale methods: pure functions from one tensor's statistics to its clipping range, and their registry.

Every method maps a :class:`~fcnquant.calibrate.stats.TensorStats` (exact min/max + bit-pattern histogram) to a
range ``(lo, hi)``. The keys of :data:`METHODS` are the CLI's ``--method`` values.

Signed tensors: ``kl``, ``percentile`` and ``mse`` choose a threshold ``T`` on the distribution of ``|x|`` (both
signs pooled, as a symmetric int8 grid sees them) and return the observed range clipped to ``[-T, T]``:

    lo = max(min, -T),  hi = min(max, T)

so a non-negative tensor (ReLU output, ``min = 0``) gets ``lo = min = 0`` and only its top is clipped, and the
range never extends beyond what was observed. With ``asymmetric=True`` (``kl``, ``percentile``) each side gets
its own threshold computed from its own values only (``T+`` from ``x >= 0``, ``T-`` from the magnitudes of
``x < 0``): ``lo = max(min, -T-)``, ``hi = min(max, T+)``. Making the range contain 0 and representable is the
target's job (:func:`fcnquant.calibrate.qparams.qparams`). A tensor whose values are all 0 gets ``(min, max)``.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

from fcnquant.calibrate.kl import kl_threshold_index
from fcnquant.calibrate.mse import mse_threshold_index
from fcnquant.calibrate.qparams import Target, get_target
from fcnquant.errors import CalibrationError

if TYPE_CHECKING:
    from fcnquant.calibrate.stats import TensorStats

RangeMethod = Callable[..., "tuple[float, float]"]


def _check(stats: TensorStats) -> None:
    if stats.count == 0:
        raise CalibrationError("no finite values were observed for this tensor")


def _clip(stats: TensorStats, t_neg: float, t_pos: float) -> tuple[float, float]:
    return max(stats.min, -t_neg), min(stats.max, t_pos)


def _side_amax(stats: TensorStats, side: str) -> float:
    """Largest magnitude on one side: 'pos' = values >= 0 (sign bit clear), 'neg' = values < 0."""
    if side == "pos":
        return max(stats.max, 0.0)
    return max(-stats.min, 0.0)


def minmax_range(stats: TensorStats) -> tuple[float, float]:
    """Returns ``(min, max)``: the exact observed extremes, no clipping."""
    _check(stats)
    return stats.min, stats.max


def _threshold(stats: TensorStats, side: str, num_bins: int, pick: Callable[[Any, float], int]) -> float:
    """Threshold from a linear |x| histogram of ``num_bins`` bins on [0, amax] of one side (or both)."""
    amax = stats.amax if side == "both" else _side_amax(stats, side)
    if amax == 0.0:  # nothing (or only zeros) on this side
        return 0.0
    counts, edges = stats.linear(num_bins, side=side, upper=amax)
    return float(edges[pick(counts, edges[1] - edges[0])])


def kl_range(
    stats: TensorStats,
    *,
    num_bins: int = 2048,
    num_quantized_bins: int = 128,
    eps: float = 1e-4,
    asymmetric: bool = False,
    zero_bin: str = "neighbour",
) -> tuple[float, float]:
    """Returns the range clipped at the TensorRT entropy (KL-divergence) threshold of ``|x|``.

    ``T = i* * max|x| / num_bins`` where ``i*`` minimises ``KL(P_i || Q_i)`` over ``i = num_quantized_bins ..
    num_bins`` on a ``num_bins``-bin histogram of ``|x|`` (definition of ``P``, ``Q`` and the smoothing in
    :mod:`fcnquant.calibrate.kl`). Range ``(max(min, -T), min(max, T))``.

    ``zero_bin``: a ReLU output has a spike of exact zeros in bin 0 (half or more of its values). Merged with its
    neighbours into quantization level 0 and spread uniformly, that spike alone makes ``KL`` grow with the merge
    width, so the plain search clips far too hard (a ReLU'd Gaussian: ``T = 0.37 max``; with ``"neighbour"``:
    ``T = 0.94 max``). ``"neighbour"`` (default) replaces the count of bin 0 by that of bin 1 before the search,
    as NVIDIA's pytorch-quantization entropy calibrator does (``bins[0] = bins[1]``); the zeros are exactly
    representable whatever the threshold, so they carry no information about it. ``"keep"`` runs the plain
    TensorRT search on the histogram as observed.
    """
    _check(stats)
    if num_bins < num_quantized_bins:
        raise CalibrationError(f"kl: num_bins ({num_bins}) must be >= num_quantized_bins ({num_quantized_bins})")

    if zero_bin not in ("neighbour", "keep"):
        raise CalibrationError(f"kl: zero_bin must be 'neighbour' or 'keep', got {zero_bin!r}")

    def pick(counts, _w):
        if zero_bin == "neighbour" and counts.size > 1:
            counts = counts.copy()
            counts[0] = counts[1]
        return kl_threshold_index(counts, num_quantized_bins, eps)

    if asymmetric:
        return _clip(stats, _threshold(stats, "neg", num_bins, pick), _threshold(stats, "pos", num_bins, pick))
    t = _threshold(stats, "both", num_bins, pick)
    return _clip(stats, t, t) if stats.amax > 0 else (stats.min, stats.max)


def percentile_range(stats: TensorStats, *, percentile: float = 99.99, asymmetric: bool = False) -> tuple[float, float]:
    """Returns the range clipped at the given percentile of ``|x|``.

    ``T`` = the smallest ``t`` with ``F(t) >= percentile/100 * count``, ``F`` the cumulative count of ``|x|`` on the
    fine bit-pattern bins (uniform inside each bin), i.e. within one bin width (at most ``2**-M`` relative) of the exact
    order statistic ``sorted(|x|)[ceil(p * count) - 1]``. Range ``(max(min, -T), min(max, T))``.
    """
    _check(stats)
    if not 0.0 < percentile <= 100.0:
        raise CalibrationError(f"percentile must be in (0, 100], got {percentile}")
    q = percentile / 100.0
    if asymmetric:
        t = {side: stats.hist.quantile(q, vmin=stats.min, vmax=stats.max, side=side)
             if _side_amax(stats, side) > 0 else 0.0 for side in ("neg", "pos")}
        return _clip(stats, t["neg"], t["pos"])
    t = stats.hist.quantile(q, vmin=stats.min, vmax=stats.max)
    return _clip(stats, t, t)


def mse_range(
    stats: TensorStats,
    *,
    num_bins: int = 2048,
    steps: int | None = None,
    target: str | Target | None = None,
) -> tuple[float, float]:
    """Returns the range clipped at the threshold minimising the expected squared quantization error of ``|x|``.

    ``T = i* * max|x| / num_bins`` minimising ``E_i`` (clipping error of the tail + exact rounding error of the
    in-range values on a grid of ``steps`` steps up to ``T``; formula in :mod:`fcnquant.calibrate.mse`).
    ``steps`` defaults to the target's grid: 255 for a non-negative tensor on a uint8 asymmetric target
    (``ort-cpu``), else 127 (int8 symmetric; also when no target is given). Range ``(max(min, -T), min(max, T))``.
    """
    _check(stats)
    if steps is None:
        steps = get_target(target).steps(nonnegative=stats.min >= 0) if target is not None else 127
    t = _threshold(stats, "both", num_bins, lambda counts, w: mse_threshold_index(counts, w, int(steps)))
    return _clip(stats, t, t) if stats.amax > 0 else (stats.min, stats.max)


METHODS: dict[str, RangeMethod] = {
    "minmax": minmax_range,
    "kl": kl_range,
    "percentile": percentile_range,
    "mse": mse_range,
}


def _get(method: str) -> RangeMethod:
    try:
        return METHODS[method]
    except KeyError:
        raise CalibrationError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}") from None


def method_defaults(method: str) -> dict[str, Any]:
    """Returns the method's parameters and their default values (``target`` excluded)."""
    sig = inspect.signature(_get(method))
    return {n: p.default for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and n != "target"}


def resolve_params(method: str, **params: Any) -> dict[str, Any]:
    """Returns the method's full parameter dict: defaults overridden by ``params``, values coerced to the type of
    the default (so CLI strings like ``"99.9"`` or ``"true"`` work). Unknown names raise CalibrationError."""
    defaults = method_defaults(method)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "none"
        raise CalibrationError(f"method {method!r} has no parameter {', '.join(unknown)} (valid: {valid})")
    out = dict(defaults)
    for name, value in params.items():
        out[name] = _coerce(method, name, value, defaults[name])
    return out


def _coerce(method: str, name: str, value: Any, default: Any) -> Any:
    kind = int if default is None else type(default)  # the only None default (mse.steps) is an int
    if value is None and default is None:
        return None
    if kind is str:
        return str(value)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return text in ("1", "true", "yes")
        if kind is int:
            f = float(value)
            if not f.is_integer():
                raise ValueError(value)
            return int(f)
        return float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"{method}: parameter {name} must be {kind.__name__}, got {value!r}") from None


def compute_range(
    method: str, stats: TensorStats, *, target: str | Target | None = None, **params: Any
) -> tuple[float, float]:
    """Returns ``(lo, hi)``, the clipping range of one tensor by ``method`` with ``params``.

    ``target`` is forwarded to methods whose result depends on the quantization grid (``mse``).
    """
    fn = _get(method)
    kwargs = resolve_params(method, **params)
    if "target" in inspect.signature(fn).parameters:
        kwargs["target"] = target
    lo, hi = fn(stats, **kwargs)
    return float(lo), float(hi)
