"""The mean input of every kernel tap of a 2-D Conv or ConvTranspose, and the mean output shift of a weight error
(numpy only).

**Conv.** At output position ``(oh, ow)``, kernel tap ``(kh, kw)`` reads the input value at row
``oh * sh + kh * dh - pt`` and column ``ow * sw + kw * dw - pl`` (zero in the padding). With ``M[i, kh, kw]`` the
mean, over images and output positions, of the value tap ``(kh, kw)`` reads in input channel ``i``, the mean output
of a convolution with weights ``D`` and no bias is exactly ``sum_{i, kh, kw} D[c, i, kh, kw] * M[i, kh, kw]``
(border positions included: a tap reading padding adds zero). For ``group = g`` output channel ``c`` of group
``c // (Cout / g)`` reads input channels ``[g_c * Cin / g, (g_c + 1) * Cin / g)`` only.

**ConvTranspose.** Input position ``(h, w)`` and tap ``(kh, kw)`` write output ``(h * sh + kh * dh - pt,
w * sw + kw * dw - pl)``, kept when it lies inside the output ``(OH, OW)`` (the pads crop it). The mean output of
``D`` (Cin, Cout / g, KH, KW) over the output positions is ``sum_{i, kh, kw} D[i, c, kh, kw] * M[i, kh, kw]`` with
``M[i, kh, kw]`` = (the sum of ``x[i]`` over the input positions whose tap ``(kh, kw)`` output is kept) / (``OH *
OW``) per image.

**How the sums are taken.** The rows one tap reads form an arithmetic progression (step ``sh``; 1 for
ConvTranspose) cut to the input, and so do its columns. Per tap column ``kw``, ``A[i, h, kw]`` sums ``x`` over
the images and the tap's columns: the sum of the whole residue class of columns (mod ``sw``) minus the few
columns at its ends the tap does not reach. Then ``S[i, kh, kw] = sum over the tap's rows of A[i, h, kw]``. One
read of ``x`` per layer (instead of one strided read per tap), in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fcnquant.recover.ordered_sum import OrderedMean


@dataclass(frozen=True)
class TapGeometry:
    """A 2-D Conv's or ConvTranspose's kernel, pads (top, left, bottom, right), strides, dilations, and for a
    ConvTranspose its output padding. ``auto_pad`` (Conv only): ``"SAME_UPPER"``, ``"SAME_LOWER"`` or
    ``"VALID"`` set the pads from the input size, as ONNX does; ``"NOTSET"`` uses ``pads``."""

    kernel: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    transposed: bool = False
    output_padding: tuple[int, int] = (0, 0)
    auto_pad: str = "NOTSET"

    def axis(self, size: int, axis: int) -> tuple[list[np.ndarray], int]:
        """Returns (per tap along ``axis`` (0: rows, 1: columns), the input indices it reaches; the output size)
        for an input of ``size`` along that axis."""
        k, s, d = self.kernel[axis], self.strides[axis], self.dilations[axis]
        begin, end = self.pads[axis], self.pads[axis + 2]
        extent = d * (k - 1) + 1
        if self.transposed:
            out = s * (size - 1) + self.output_padding[axis] + extent - begin - end
            pos = np.arange(size)
            return [pos[(pos * s + t * d - begin >= 0) & (pos * s + t * d - begin < out)] for t in range(k)], out
        if self.auto_pad == "VALID":
            begin = end = 0
        elif self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((-(-size // s) - 1) * s + extent - size, 0)
            begin = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            end = total - begin
        out = (size + begin + end - extent) // s + 1
        taps = []
        for t in range(k):
            idx = np.arange(out) * s + t * d - begin
            taps.append(idx[(idx >= 0) & (idx < size)])
        return taps, out


def _column_sums(x: np.ndarray, taps: list[np.ndarray]) -> np.ndarray:
    """Returns ``A`` (C, H, len(taps)): per tap, the sum over images and the tap's columns of ``x`` (N, C, H, W).
    Each tap's columns are an arithmetic progression (one residue class, cut at its ends)."""
    n, c, h, w = x.shape
    out = np.zeros((c, h, len(taps)), dtype=np.float64)
    full_sums: dict[tuple[int, int], np.ndarray] = {}
    for j, cols in enumerate(taps):
        if cols.size == 0:
            continue
        step = int(cols[1] - cols[0]) if cols.size > 1 else w
        first = int(cols[0]) % step
        whole = np.arange(first, w, step)
        missing = np.setdiff1d(whole, cols, assume_unique=True)
        if missing.size >= cols.size:  # a tap reaching few columns: sum them directly
            out[:, :, j] = x[:, :, :, cols].sum(axis=(0, 3), dtype=np.float64)
            continue
        key = (first, step)
        if key not in full_sums:
            full_sums[key] = x[:, :, :, first::step].sum(axis=(0, 3), dtype=np.float64)
        s = full_sums[key]
        if missing.size:
            s = s - x[:, :, :, missing].sum(axis=(0, 3), dtype=np.float64)
        out[:, :, j] = s
    return out


def tap_sums(x: np.ndarray, geometry: TapGeometry) -> tuple[np.ndarray, int]:
    """Returns (``S`` (C, KH, KW): per input channel and tap, the sum over the images of ``x`` (N, C, H, W) of
    the values the tap reads (Conv) or whose output is kept (ConvTranspose); the number of output positions over
    the images, ``N * OH * OW``)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) tensor, got shape {x.shape}")
    rows, oh = geometry.axis(x.shape[2], 0)
    cols, ow = geometry.axis(x.shape[3], 1)
    a = _column_sums(x, cols)
    s = np.empty((x.shape[1], len(rows), len(cols)), dtype=np.float64)
    for kh, r in enumerate(rows):
        s[:, kh, :] = a[:, r, :].sum(axis=1)
    return s, x.shape[0] * oh * ow


class TapMeans(OrderedMean):
    """Running ``M`` (C, KH, KW) of a layer's input (module docstring), float64; ``record``: a shard after the
    first records its batch sums so the merge is bit for bit (:mod:`fcnquant.recover.ordered_sum`)."""

    def __init__(self, geometry: TapGeometry, *, record: bool = False) -> None:
        super().__init__(record=record)
        self.geometry = geometry

    def update(self, x: np.ndarray) -> None:
        """Adds the taps of every image of ``x`` (N, C, H, W)."""
        self.add(*tap_sums(x, self.geometry))


def tap_shift_means(delta_w: np.ndarray, means: np.ndarray, group: int = 1, transposed: bool = False) -> np.ndarray:
    """Returns the mean output shift per output channel of weights ``delta_w`` (Conv: (Cout, Cin / g, KH, KW);
    ConvTranspose: (Cin, Cout / g, KH, KW)) over inputs whose tap means are ``means`` (Cin, KH, KW)."""
    d = np.asarray(delta_w, np.float64)
    m = np.asarray(means, np.float64)
    g = int(group)
    cin, kh, kw = m.shape
    mg = m.reshape(g, cin // g, kh, kw)
    if transposed:
        return np.einsum("giokl,gikl->go", d.reshape(g, cin // g, d.shape[1], kh, kw), mg).reshape(-1)
    return np.einsum("goikl,gikl->go", d.reshape(g, d.shape[0] // g, cin // g, kh, kw), mg).reshape(-1)


def new_tap_means(geometry: TapGeometry, record: bool) -> TapMeans:
    """Returns an empty TapMeans (``functools.partial(new_tap_means, geometry)`` is a picklable factory)."""
    return TapMeans(geometry, record=record)
