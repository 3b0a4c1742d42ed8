"""A 2-D Conv / ConvTranspose as a matrix product over input patches, and the patches' second moments (numpy only).

For a ``Conv`` with ``group`` g, output channel ``o`` of group ``k`` at output position ``p`` is
``y[o, p] = w_o . x_k(p) + b[o]``, where ``x_k(p)`` is the patch of group k's input channels under the kernel at
``p`` (flattened as ``[Cin/g, kh, kw]``, the layout of ``W[o]``) and ``w_o = W[o].ravel()``. Every attribute
is honoured: ``pads`` (asymmetric too), ``auto_pad`` (``SAME_UPPER``, ``SAME_LOWER``, ``VALID``), ``strides``,
``dilations``, ``group``.

A ``ConvTranspose`` (weight ``[Cin, Cout/g, kh, kw]``) is the Conv of its input with ``stride - 1`` zeros
inserted between pixels, padded by ``dilation * (k - 1) - pad`` (plus ``output_padding`` at the end; negative
amounts crop), with the kernel flipped and the in/out axes swapped: its rows are
``W[k * Cin/g + i, o, kh - 1 - u, kw - 1 - v]``. Explicit pads only (``auto_pad`` / ``output_shape`` are refused).

:class:`GramStats` accumulates ``E[x_f x_f^T]``, ``E[x_f x_q^T]``, ``E[x_q x_q^T]`` over every output position
of every image, for the float input ``x_f`` and the quantized model's input ``x_q`` of the same layer (float32
products of one chunk, summed in float64), ``rows_per_chunk`` output rows at a time (memory: ``D^2`` per statistic
plus one chunk of patches).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from fcnquant.errors import ModelError


@dataclass(frozen=True)
class ConvSpec:
    """The attributes of a 2-D Conv or ConvTranspose node that decide its patches."""

    op: str  # "Conv" or "ConvTranspose"
    weight_shape: tuple[int, int, int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (ONNX order x1_b, x2_b, x1_e, x2_e)
    auto_pad: str = "NOTSET"
    group: int = 1
    output_padding: tuple[int, int] = (0, 0)

    @property
    def kernel(self) -> tuple[int, int]:
        return self.weight_shape[2], self.weight_shape[3]

    @property
    def out_channels(self) -> int:
        return self.weight_shape[0] if self.op == "Conv" else self.weight_shape[1] * self.group

    @property
    def in_channels(self) -> int:
        return self.weight_shape[1] * self.group if self.op == "Conv" else self.weight_shape[0]

    @property
    def patch_size(self) -> int:
        """Returns D, the number of inputs of one output channel (``Cin/g * kh * kw``)."""
        return self.in_channels // self.group * self.kernel[0] * self.kernel[1]

    @property
    def channel_axis(self) -> int:
        """Returns the weight's output-channel axis (0 for Conv, 1 for ConvTranspose)."""
        return 0 if self.op == "Conv" else 1


def spec_from_attributes(op: str, weight_shape, attrs: dict) -> ConvSpec:
    """Returns the ConvSpec of a node's ``attrs`` ({name: value}); raises ModelError for what it cannot honour."""
    if op not in ("Conv", "ConvTranspose"):
        raise ModelError(f"not a Conv/ConvTranspose: {op}")
    if len(weight_shape) != 4:
        raise ModelError(f"only 2-D convolutions are supported (weight of rank {len(weight_shape)})")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if op == "ConvTranspose" and (auto_pad != "NOTSET" or "output_shape" in attrs):
        raise ModelError("ConvTranspose with auto_pad or output_shape is not supported; give explicit pads")
    kernel = tuple(attrs.get("kernel_shape", weight_shape[2:]))
    if kernel != tuple(weight_shape[2:]):
        raise ModelError(f"kernel_shape {list(kernel)} does not match the weight {list(weight_shape)}")
    return ConvSpec(
        op=op, weight_shape=tuple(int(d) for d in weight_shape),
        strides=tuple(attrs.get("strides", (1, 1))), dilations=tuple(attrs.get("dilations", (1, 1))),
        pads=tuple(attrs.get("pads", (0, 0, 0, 0))), auto_pad=auto_pad, group=int(attrs.get("group", 1)),
        output_padding=tuple(attrs.get("output_padding", (0, 0))),
    )


def _same_pads(size: int, k: int, stride: int, dil: int, upper: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (k - 1) * dil + 1 - size)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def _conv_input(x: np.ndarray, spec: ConvSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """Returns (the padded input of the equivalent stride-s Conv, its strides)."""
    kh, kw = spec.kernel
    dh, dw = spec.dilations
    if spec.op == "ConvTranspose":
        sh, sw = spec.strides
        n, c, h, w = x.shape
        z = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), dtype=x.dtype)
        z[:, :, ::sh, ::sw] = x
        t, l, b, r = spec.pads
        oh, ow = spec.output_padding
        pads = (dh * (kh - 1) - t, dw * (kw - 1) - l, dh * (kh - 1) - b + oh, dw * (kw - 1) - r + ow)
        return _pad(z, pads), (1, 1)
    if spec.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        upper = spec.auto_pad == "SAME_UPPER"
        t, b = _same_pads(x.shape[2], kh, spec.strides[0], dh, upper)
        l, r = _same_pads(x.shape[3], kw, spec.strides[1], dw, upper)
        pads = (t, l, b, r)
    elif spec.auto_pad == "VALID":
        pads = (0, 0, 0, 0)
    else:
        pads = spec.pads
    return _pad(x, pads), spec.strides


def _pad(x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """Zero-pads (positive) or crops (negative) H and W by (top, left, bottom, right)."""
    t, l, b, r = pads
    x = x[:, :, max(-t, 0): x.shape[2] - max(-b, 0), max(-l, 0): x.shape[3] - max(-r, 0)]
    if max(t, l, b, r) > 0:
        x = np.pad(x, ((0, 0), (0, 0), (max(t, 0), max(b, 0)), (max(l, 0), max(r, 0))))
    return x


def _windows(xp: np.ndarray, spec: ConvSpec, strides: tuple[int, int]) -> np.ndarray:
    """Returns the view [N, Ho, Wo, Cin, kh, kw] of every kernel window of the padded input."""
    kh, kw = spec.kernel
    dh, dw = spec.dilations
    sh, sw = strides
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if xp.shape[2] < span_h or xp.shape[3] < span_w:
        raise ModelError(f"input {list(xp.shape)} is smaller than the kernel span {(span_h, span_w)}")
    win = sliding_window_view(xp, (span_h, span_w), axis=(2, 3))  # [N, C, H', W', span_h, span_w]
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    return win.transpose(0, 2, 3, 1, 4, 5)


def patches(x: np.ndarray, spec: ConvSpec, rows: slice | None = None) -> np.ndarray:
    """Returns the patches [G, P, D] of input ``x`` [N, Cin, H, W] (P = N x output positions, row-major), or of the
    output rows ``rows`` only."""
    if x.ndim != 4 or x.shape[1] != spec.in_channels:
        raise ModelError(f"input of shape {list(x.shape)} does not fit a layer with {spec.in_channels} input channels")
    xp, strides = _conv_input(x, spec)
    win = _windows(xp, spec, strides)
    if rows is not None:
        win = win[:, rows]
    n, ho, wo, c, kh, kw = win.shape
    g = spec.group
    win = win.reshape(n * ho * wo, g, c // g * kh * kw)
    return np.ascontiguousarray(win.transpose(1, 0, 2))


def output_hw(x_shape: tuple[int, ...], spec: ConvSpec) -> tuple[int, int]:
    """Returns the output (H, W) of the layer for an input of shape ``x_shape``."""
    xp, strides = _conv_input(np.zeros((1, 1) + tuple(x_shape[2:]), np.float32), spec)
    win = _windows(xp, spec, strides)
    return win.shape[1], win.shape[2]


def weight_rows(w: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Returns the weight as rows [G, Cout/g, D] matching :func:`patches` (y = rows . patch)."""
    g = spec.group
    kh, kw = spec.kernel
    if spec.op == "Conv":
        return w.reshape(g, w.shape[0] // g, -1)
    cin, cpg = w.shape[0], w.shape[1]
    flipped = w[:, :, ::-1, ::-1].reshape(g, cin // g, cpg, kh, kw)  # [G, Cin/g, Cout/g, kh, kw]
    return np.ascontiguousarray(flipped.transpose(0, 2, 1, 3, 4)).reshape(g, cpg, -1)


def rows_to_weight(rows: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Returns the ONNX weight (``spec.weight_shape``) of rows made by :func:`weight_rows` (its inverse)."""
    g = spec.group
    kh, kw = spec.kernel
    if spec.op == "Conv":
        return rows.reshape(spec.weight_shape)
    cin, cpg = spec.weight_shape[0], spec.weight_shape[1]
    w = rows.reshape(g, cpg, cin // g, kh, kw).transpose(0, 2, 1, 3, 4).reshape(cin, cpg, kh, kw)
    return np.ascontiguousarray(w[:, :, ::-1, ::-1])


def row_scales(scales: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """Returns the weight scales (one per tensor, or per channel along ``spec.channel_axis``) as [G, Cout/g, 1]."""
    g = spec.group
    cpg = spec.out_channels // g
    scales = np.asarray(scales, dtype=np.float64)
    if scales.size == 1:
        return np.full((g, cpg, 1), float(scales.reshape(-1)[0]))
    if spec.op == "Conv":
        return scales.reshape(g, cpg, 1)
    return np.broadcast_to(scales.reshape(1, cpg, 1), (g, cpg, 1)).copy()


class GramStats:
    """Accumulates the patch moments ``E[x_f x_f^T]``, ``E[x_f x_q^T]``, ``E[x_q x_q^T]`` of one layer ([G, D, D])."""

    def __init__(self, spec: ConvSpec, rows_per_chunk: int | None = None, max_patches: int = 1 << 16,
                 same_inputs: bool = False) -> None:
        """``same_inputs``: the quantized input will always be the float one, so the three moments are one
        array (a third of the memory); ``rows_per_chunk`` (default: ``max_patches`` patches a chunk) bounds the
        patches held at once."""
        self.spec = spec
        g, d = spec.group, spec.patch_size
        self.ff = np.zeros((g, d, d))
        self.same_inputs = same_inputs
        self.fq = self.ff if same_inputs else np.zeros((g, d, d))
        self.qq = self.ff if same_inputs else np.zeros((g, d, d))
        self.count = 0
        self.rows_per_chunk = rows_per_chunk
        self.max_patches = max_patches

    def update(self, x_float: np.ndarray, x_quant: np.ndarray) -> None:
        """Adds every output position of the batch (float input and quantized input of the same images)."""
        if x_float.shape != x_quant.shape:
            raise ModelError(f"float input {list(x_float.shape)} and quantized input {list(x_quant.shape)} differ")
        ho, wo = output_hw(x_float.shape, self.spec)
        rows = self.rows_per_chunk or max(1, self.max_patches // max(1, x_float.shape[0] * wo))
        for r0 in range(0, ho, rows):
            sl = slice(r0, min(ho, r0 + rows))
            pf = patches(x_float.astype(np.float32, copy=False), self.spec, sl)
            if self.same_inputs:
                if x_quant is not x_float and not np.array_equal(x_quant, x_float):
                    raise ModelError("GramStats(same_inputs=True) was given a quantized input unlike the float one")
                self.ff += np.matmul(pf.transpose(0, 2, 1), pf)  # ff, fq and qq are one array
            elif x_quant is x_float:  # one product serves all three moments
                ff = np.matmul(pf.transpose(0, 2, 1), pf)
                self.ff += ff
                self.fq += ff
                self.qq += ff
            else:
                pq = patches(x_quant.astype(np.float32, copy=False), self.spec, sl)
                self.ff += np.matmul(pf.transpose(0, 2, 1), pf)
                self.fq += np.matmul(pf.transpose(0, 2, 1), pq)
                self.qq += np.matmul(pq.transpose(0, 2, 1), pq)
            self.count += pf.shape[1]

    def merge(self, other: "GramStats") -> None:
        """Adds the moments ``other`` accumulated on other images (new arrays: a shard's may be read-only).

        The float64 sums of two shards added equal one pass over all the images up to the rounding of float64
        additions (the products are added in another order).
        """
        self.ff = self.ff + other.ff
        if self.same_inputs:
            self.fq = self.qq = self.ff
        else:
            self.fq = self.fq + other.fq
            self.qq = self.qq + other.qq
        self.count += other.count

    def quadratic(self, w_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Returns (A, B, c) of the reconstruction loss of the float weight rows ``w_rows`` [G, C, D]
        (``fcnquant.recover.adaround.layer_rounding``): A = E[x_q x_q^T], B = W E[x_f x_q^T],
        c = tr(W E[x_f x_f^T] W^T)."""
        if self.count == 0:
            raise ModelError("no calibration positions were accumulated for this layer")
        n = float(self.count)
        w = np.asarray(w_rows, dtype=np.float64)
        a = self.qq / n
        b = np.matmul(w, self.fq / n)
        c = float(np.sum(np.matmul(w, self.ff / n) * w))
        return a, b, c
