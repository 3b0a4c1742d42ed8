"""Self-contained HTML rendering of a CompareReport: inline CSS and SVG plots, no scripts, no external resources.

Plots: SNR of every quantized activation along the network depth (accumulated and isolated), per-class IoU
deltas, a gallery of the images with the most changed pixels (inline base64 PNGs, ``fcnquant.compare.gallery``)
and value histograms of the worst layers with the calibration's clipping range. Hovering a point or bar
shows its exact values through SVG ``<title>`` tooltips (no JavaScript).
"""
from __future__ import annotations

import html
import math
from typing import Sequence

from fcnquant.compare.drift.metrics import LayerDrift
from fcnquant.compare.gallery import BROKEN, FIXED, OTHER, GalleryImage
from fcnquant.compare.histograms import ActivationHistogram
from fcnquant.compare.report.compare_report import CompareReport
from fcnquant.compare.report.table import fmt
from fcnquant.recover.plan import format_recovery

_ACC = "#d1495b"  # accumulated drift
_ISO = "#2e86ab"  # isolated drift
_GOOD = "#3a9d5d"
_BAD = "#d1495b"
_GRID = "#e3e3e3"
_INK = "#333"

_CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px} .meta code{font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px}
.card .v{font-size:22px;font-weight:600} .card .l{color:#666;font-size:12px}
.bad{color:#b3261e} .good{color:#2a7a46}
figure{background:#fff;border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:8px}
figcaption{color:#555;font-size:12px;padding:4px 6px}
table{border-collapse:collapse;background:#fff;font-size:12.5px;width:100%}
th,td{border:1px solid #e2e2e2;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#f0f2f5} td.name{text-align:left;white-space:normal;word-break:break-all;font-family:monospace}
td.op{text-align:left}
details{margin:8px 0} summary{cursor:pointer;color:#244f7a}
.hists{display:flex;flex-wrap:wrap;gap:8px}
.notes li{color:#7a4b00}
.gitem{background:#fff;border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:8px}
.gcap{font-size:13px;margin:0 0 6px} .gcap code{font-size:12.5px}
.grow{display:flex;gap:6px} figure.panel{margin:0;padding:0;border:0;flex:1 1 0;min-width:0}
.panel img,.panel .none{width:100%;height:auto;display:block;border:1px solid #ccc;background:#eee}
.panel img.labels{image-rendering:pixelated} .panel .none{aspect-ratio:4/3;color:#888;font-size:12px;
display:flex;align-items:center;justify-content:center}
.panel figcaption{text-align:center;padding:2px 0 0}
.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:11.5px;color:#444;margin-top:6px}
.sw{display:inline-block;width:11px;height:11px;border:1px solid #888;vertical-align:-1px;margin-right:4px}
svg text{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif}
"""


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Returns round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks, t = [], first
    while t <= hi + 1e-9 * step:
        ticks.append(round(t, 10))
        t += step
    return ticks


class _Plot:
    """A minimal SVG canvas with a linear data-to-pixel mapping."""

    def __init__(self, width: int, height: int, left: int = 56, right: int = 16, top: int = 16, bottom: int = 40):
        self.w, self.h = width, height
        self.x0, self.x1 = left, width - right
        self.y0, self.y1 = height - bottom, top  # pixel y of the data minimum / maximum
        self.parts: list[str] = []
        self.xr = (0.0, 1.0)
        self.yr = (0.0, 1.0)

    def ranges(self, xr: tuple[float, float], yr: tuple[float, float]) -> None:
        self.xr = xr if xr[1] > xr[0] else (xr[0] - 0.5, xr[0] + 0.5)
        self.yr = yr if yr[1] > yr[0] else (yr[0] - 1, yr[0] + 1)

    def px(self, x: float) -> float:
        return self.x0 + (x - self.xr[0]) / (self.xr[1] - self.xr[0]) * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        return self.y0 + (y - self.yr[0]) / (self.yr[1] - self.yr[0]) * (self.y1 - self.y0)

    def add(self, s: str) -> None:
        self.parts.append(s)

    def y_axis(self, ticks: Sequence[float], label: str, fmt_tick=lambda v: f"{v:g}") -> None:
        for t in ticks:
            y = self.py(t)
            self.add(f'<line x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{_GRID}"/>')
            self.add(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="{_INK}">'
                     f'{_e(fmt_tick(t))}</text>')
        cy = (self.y0 + self.y1) / 2
        self.add(f'<text x="14" y="{cy:.1f}" font-size="12" text-anchor="middle" fill="{_INK}" '
                 f'transform="rotate(-90 14 {cy:.1f})">{_e(label)}</text>')

    def frame(self) -> None:
        self.add(f'<rect x="{self.x0}" y="{self.y1}" width="{self.x1 - self.x0}" height="{self.y0 - self.y1}" '
                 f'fill="none" stroke="#bbb"/>')

    def svg(self, title: str) -> str:
        return (f'<svg width="{self.w}" height="{self.h}" '
                f'viewBox="0 0 {self.w} {self.h}" role="img" aria-label="{_e(title)}">'
                + "".join(self.parts) + "</svg>")


def snr_plot(layers: Sequence[LayerDrift], width: int = 1040, height: int = 340) -> str:
    """Returns an SVG line plot of accumulated and isolated SNR (dB) against the layers' topological order."""
    p = _Plot(width, height, top=30, bottom=48)
    if not layers:
        return p.svg("no layers")
    values = [v for layer in layers for v in (layer.accumulated.snr_db,
                                              layer.isolated.snr_db if layer.isolated else math.nan)
              if math.isfinite(v)]
    lo = min(values) if values else 0.0
    hi = max(values) if values else 1.0
    pad = max(1.0, 0.06 * (hi - lo))
    cap = hi + pad  # infinite SNR (bit-identical tensors) is drawn at the top edge
    p.ranges((-0.5, len(layers) - 0.5), (lo - pad, cap))
    p.y_axis(_nice_ticks(p.yr[0], hi), "SNR (dB), higher is better")
    step = max(1, math.ceil(len(layers) / 40))
    for k in range(len(layers)):
        if k % step == 0:
            x = p.px(k)
            p.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{p.y0}" y2="{p.y0 + 4}" stroke="#999"/>')
            p.add(f'<text x="{x:.1f}" y="{p.y0 + 16}" font-size="10" text-anchor="middle" fill="{_INK}">{k}</text>')
    p.add(f'<text x="{(p.x0 + p.x1) / 2:.1f}" y="{height - 8}" font-size="12" text-anchor="middle" fill="{_INK}">'
          f'quantized activations in topological order (input → logits)</text>')
    p.frame()

    def series(getter, color: str, dash: str, name: str) -> None:
        pts = []
        for k, layer in enumerate(layers):
            m = getter(layer)
            if m is None or math.isnan(m.snr_db):
                continue
            v = min(m.snr_db, cap) if m.snr_db != -math.inf else p.yr[0]
            pts.append((k, v, layer, m))
        if not pts:
            return
        path = " ".join(f"{p.px(k):.1f},{p.py(v):.1f}" for k, v, _, _ in pts)
        p.add(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8" stroke-dasharray="{dash}"/>')
        for k, v, layer, m in pts:
            tip = (f"#{k} {layer.float_name} ({layer.op_type})\n{name} SNR {fmt(m.snr_db)} dB, cosine "
                   f"{fmt(m.cosine, '.8f')}, rel L2 {fmt(m.rel_l2, '.4f')}, max|err| {fmt(m.max_abs, '.4g')}")
            p.add(f'<circle cx="{p.px(k):.1f}" cy="{p.py(v):.1f}" r="3.2" fill="{color}"><title>{_e(tip)}</title>'
                  f'</circle>')

    series(lambda layer: layer.accumulated, _ACC, "", "accumulated")
    series(lambda layer: layer.isolated, _ISO, "5,3", "isolated")
    ly = 14  # legend row above the plot area
    p.add(f'<line x1="{p.x0}" x2="{p.x0 + 26}" y1="{ly}" y2="{ly}" stroke="{_ACC}" stroke-width="2"/>')
    p.add(f'<text x="{p.x0 + 32}" y="{ly + 4}" font-size="11">accumulated (whole quantized model)</text>')
    p.add(f'<line x1="{p.x0 + 250}" x2="{p.x0 + 276}" y1="{ly}" y2="{ly}" stroke="{_ISO}" stroke-width="2" '
          f'stroke-dasharray="5,3"/>')
    p.add(f'<text x="{p.x0 + 282}" y="{ly + 4}" font-size="11">isolated (that layer alone, fed float inputs)</text>')
    return p.svg("SNR along the network depth")


def iou_delta_plot(names: Sequence[str], deltas: Sequence[float], width: int = 1040) -> str:
    """Returns an SVG horizontal bar chart of per-class IoU(quantized) - IoU(float) in points."""
    row = 18
    p = _Plot(width, 40 + row * len(names), left=120, right=70, top=10, bottom=30)
    finite = [d for d in deltas if math.isfinite(d)]
    span = max([abs(d) for d in finite] + [0.05])
    p.ranges((-span * 1.05, span * 1.05), (0, 1))
    for t in _nice_ticks(-span, span, 8):
        x = p.px(t)
        p.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{p.y1}" y2="{p.y0}" stroke="{_GRID}"/>')
        p.add(f'<text x="{x:.1f}" y="{p.y0 + 14}" font-size="10" text-anchor="middle">{t:g}</text>')
    zero = p.px(0)
    for k, (name, d) in enumerate(zip(names, deltas)):
        y = p.y1 + 4 + k * row
        p.add(f'<text x="{p.x0 - 8}" y="{y + 12}" font-size="11" text-anchor="end">{_e(name)}</text>')
        if not math.isfinite(d):
            p.add(f'<text x="{zero + 4:.1f}" y="{y + 12}" font-size="10" fill="#999">no pixels</text>')
            continue
        x = p.px(d)
        color = _BAD if d < 0 else _GOOD
        p.add(f'<rect x="{min(x, zero):.1f}" y="{y + 2}" width="{max(abs(x - zero), 0.8):.1f}" height="{row - 5}" '
              f'fill="{color}"><title>{_e(name)}: {d:+.3f} IoU points</title></rect>')
        tx = max(x, zero) + 4 if d >= 0 else min(x, zero) - 4
        anchor = "start" if d >= 0 else "end"
        p.add(f'<text x="{tx:.1f}" y="{y + 12}" font-size="10" text-anchor="{anchor}">{d:+.2f}</text>')
    p.add(f'<line x1="{zero:.1f}" x2="{zero:.1f}" y1="{p.y1}" y2="{p.y0}" stroke="#666"/>')
    p.add(f'<text x="{(p.x0 + p.x1) / 2:.1f}" y="{p.h - 4}" font-size="11" text-anchor="middle">'
          f'IoU(quantized) − IoU(float), points</text>')
    return p.svg("per-class IoU deltas")


def histogram_plot(h: ActivationHistogram, width: int = 340, height: int = 220) -> str:
    """Returns an SVG histogram (log counts) of one activation with its clipping range and observed extremes."""
    p = _Plot(width, height, left=44, right=10, top=26, bottom=36)
    edges, counts = list(h.edges), list(h.counts)
    top = max(counts) if counts else 1
    logc = [math.log10(1 + c) for c in counts]
    p.ranges((edges[0], edges[-1]), (0, max(math.log10(1 + top), 1.0)))
    p.y_axis([t for t in range(0, int(p.yr[1]) + 1)], "count", lambda v: f"1e{int(v)}")
    for t in _nice_ticks(edges[0], edges[-1], 4):
        x = p.px(t)
        p.add(f'<text x="{x:.1f}" y="{p.y0 + 13}" font-size="10" text-anchor="middle">{t:.3g}</text>')
    for k, lc in enumerate(logc):
        if counts[k] == 0:
            continue
        x, x2 = p.px(edges[k]), p.px(edges[k + 1])
        p.add(f'<rect x="{x:.2f}" y="{p.py(lc):.1f}" width="{max(x2 - x, 0.6):.2f}" height="{p.y0 - p.py(lc):.1f}" '
              f'fill="#7d8fa8"><title>[{edges[k]:.4g}, {edges[k + 1]:.4g}): {counts[k]}</title></rect>')

    def vline(v: float | None, color: str, dash: str, label: str) -> None:
        if v is None or not math.isfinite(v) or not edges[0] <= v <= edges[-1]:
            return
        x = p.px(v)
        p.add(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{p.y1}" y2="{p.y0}" stroke="{color}" stroke-width="1.6" '
              f'stroke-dasharray="{dash}"><title>{_e(label)} {v:.5g}</title></line>')

    vline(h.min, "#888", "2,2", "observed min")
    vline(h.max, "#888", "2,2", "observed max")
    vline(h.lo, _BAD, "", "clip low")
    vline(h.hi, _BAD, "", "clip high")
    p.frame()
    name = h.tensor if len(h.tensor) <= 46 else "…" + h.tensor[-45:]
    p.add(f'<text x="{p.x0}" y="14" font-size="11" font-weight="600">{_e(name)}<title>{_e(h.tensor)}</title></text>')
    clip = (f"clip [{h.lo:.4g}, {h.hi:.4g}]" if h.lo is not None and h.hi is not None else "no clipping range")
    p.add(f'<text x="{p.x1}" y="{p.h - 6}" font-size="10" text-anchor="end" fill="{_BAD}">{_e(clip)}</text>')
    return p.svg(f"histogram of {h.tensor}")


def _rgb(c) -> str:
    return f"rgb({int(c[0])},{int(c[1])},{int(c[2])})"


def _swatch(color, label: str) -> str:
    return f"<span><span class='sw' style='background:{_rgb(color)}'></span>{_e(label)}</span>"


def gallery_section(items: Sequence[GalleryImage], class_names: Sequence[str], total: int) -> str:
    """Returns the HTML of the gallery: per image its five panels (inline PNGs), a caption and a class legend."""
    from fcnquant.data.palette import voc_palette

    pal = voc_palette()
    rows = []
    for g in items:
        acc = ""
        if g.acc_float is not None and g.acc_quant is not None:
            acc = f"; pixel accuracy float {g.acc_float:.2f}% → quantized {g.acc_quant:.2f}%"
        cap = (f"<div class='gcap'><b><code>{_e(g.image_id)}</code></b>: {g.changed:,} changed pixels "
               f"({100 * g.changed_share:.2f}% of {g.pixels:,}){_e(acc)}</div>")
        panels = []
        for title, data in g.panels:
            cls = " class='labels'" if title in ("ground truth", "float", "quantized") else ""
            body = (f"<img{cls} src='data:image/png;base64,{data}' alt='{_e(title)} of {_e(g.image_id)}'>" if data
                    else "<div class='none'>no labels</div>")
            panels.append(f"<figure class='panel'>{body}<figcaption>{_e(title)}</figcaption></figure>")
        names = [class_names[c] if c < len(class_names) else f"class {c}" for c in g.classes]
        legend = "".join(_swatch(pal[c], n) for c, n in zip(g.classes, names))
        if g.panels and g.panels[1][1]:
            legend += _swatch(pal[255], "void (ignored)")
        rows.append(f"<div class='gitem'>{cap}<div class='grow'>{''.join(panels)}</div>"
                    f"<div class='legend'>{legend}</div></div>")
    key = (_swatch(BROKEN, "float right, quantized wrong") + _swatch(FIXED, "quantized right, float wrong")
           + _swatch(OTHER, "both wrong / void / unlabelled"))
    return (f"<h2>The {len(items)} images with the most changed pixels</h2>"
            f"<p class='gcap'>Of {total} images: input (as the model sees it), ground truth and both predictions in "
            f"the VOC palette, and the pixels whose predicted class changed.</p>{''.join(rows)}"
            f"<div class='legend'>changed pixels: {key}</div>")


def _layer_rows(layers: Sequence[LayerDrift], rank: bool) -> str:
    rows = []
    for k, r in enumerate(layers, 1):
        a, i = r.accumulated, r.isolated
        clip = f"[{r.clip[0]:.4g}, {r.clip[1]:.4g}]" if r.clip else "-"
        first = f"<td>{k}</td>" if rank else ""
        rows.append(
            f"<tr>{first}<td>{r.order}</td><td class='name'>{_e(r.float_name)}</td><td class='op'>{_e(r.op_type)}</td>"
            f"<td>{fmt(a.snr_db)}</td><td>{fmt(i.snr_db if i else None)}</td><td>{fmt(a.cosine, '.8f')}</td>"
            f"<td>{fmt(a.rel_l2, '.4f')}</td><td>{fmt(a.max_abs, '.4g')}</td><td>{fmt(a.mse, '.4g')}</td>"
            f"<td>{fmt(i.cosine if i else None, '.8f')}</td><td>{clip}</td></tr>")
    head = ("<tr>" + ("<th>#</th>" if rank else "") + "<th>depth</th><th>tensor</th><th>op</th><th>SNR dB</th>"
            "<th>iso SNR dB</th><th>cosine</th><th>rel L2</th><th>max|err|</th><th>MSE</th><th>iso cosine</th>"
            "<th>clip range</th></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _signed(v: float) -> str:
    return "±0.00" if math.isfinite(v) and abs(v) < 0.005 else fmt(v, "+.2f")


def _card(value: str, label: str, cls: str = "") -> str:
    return f'<div class="card"><div class="v {cls}">{_e(value)}</div><div class="l">{_e(label)}</div></div>'


def _names_list(title: str, names: Sequence[str]) -> str:
    if not names:
        return ""
    items = "".join(f"<li><code>{_e(n)}</code></li>" for n in names)
    return f"<details><summary>{_e(title)} ({len(names)})</summary><ul>{items}</ul></details>"


def emulation_section(d: dict) -> str:
    """Returns the HTML section of an ``EmulationReport.to_dict()``: both mIoUs, the class disagreement and the
    largest difference in LSBs of each integer tensor."""
    a = d["arithmetic"]
    rows = "".join(
        f"<tr><td>{k}</td><td><code>{_e(x['name'])}</code></td><td>{_e(x['op'])}</td><td>{x['max_lsb']}</td>"
        f"<td>{100.0 * x['differing'] / max(x['values'], 1):.4f}</td></tr>" for k, x in enumerate(d["layers"], 1))
    cards = (_card(fmt(d["miou_emulated"]), "mIoU emulated") + _card(fmt(d["miou_simulated"]), "mIoU onnxruntime")
             + _card(f"{fmt(d['class_disagreement_percent'], '.3f')}%", "pixels whose class differs"))
    return (f"<h2>Emulated integer arithmetic ({_e(a['target'])})</h2>"
            f"<p class='meta'>rounding {_e(a['rounding'])}, {a['accumulator_bits']}-bit accumulator, bilinear "
            f"coefficients with {a['resize_bits']} fraction bits; {d['images']} images, compared with onnxruntime's "
            f"QDQ simulation of the same model</p><div class='cards'>{cards}</div>"
            "<details><summary>largest difference per integer tensor (emulator − onnxruntime, LSBs)</summary>"
            "<table><tr><th>#</th><th>layer</th><th>op</th><th>max LSB</th><th>% values differing</th></tr>"
            f"{rows}</table></details>")


def render_html(report: CompareReport, top: int = 10) -> str:
    """Returns the report as one self-contained HTML document."""
    f = report.final
    cards = []
    if f.labelled:
        drop_cls = "bad" if f.miou_change < 0 else "good"
        cards += [_card(fmt(f.miou_float), "mIoU float"), _card(fmt(f.miou_quant), "mIoU quantized"),
                  _card(_signed(f.miou_change), "mIoU change (points, quantized - float)", drop_cls)]
    cards += [_card(f"{fmt(100 * f.changed_share, '.3f')}%", "pixels with a changed class"),
              _card(f"{fmt(100 * f.boundary_changed_share, '.3f')}%",
                    f"… within {f.boundary_radius} px of boundaries"),
              _card(f"{fmt(100 * f.interior_changed_share, '.3f')}%", "… elsewhere")]
    worst = report.worst(top)
    if worst:
        cards.append(_card(fmt(worst[0].accumulated.snr_db) + " dB", f"worst SNR: {worst[0].float_name[-40:]}", "bad"))

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>fcnquant compare: {_e(report.quant_model)}</title><style>{_CSS}</style></head><body><main>",
        "<h1>Quantization drift report</h1>",
        (f"<p class='meta'>int8 model: {_e(report.int8_description)}</p>" if report.int8_description else ""),
        f"<div class='meta'>float <code>{_e(report.float_model)}</code> (sha256 {_e(report.float_sha256[:12])}…) vs "
        f"quantized <code>{_e(report.quant_model)}</code> (sha256 {_e(report.quant_sha256[:12])}…)<br>"
        f"{report.images} images from <code>{_e(report.data)}</code>"
        + (f" split {_e(report.split)}" if report.split else "")
        + f", preset {_e(report.preset.get('name', ''))}; tensors paired by {_e(report.pairing)}; "
        f"{len(report.layers)} quantized activations; {report.seconds:.1f} s<br>"
        f"final metrics on all {report.images} images; per-layer drift on {report.drift_count} of them"
        + (" (a deterministic subsample spread over the list)" if report.drift_count < report.images else "")
        + (f"<br>recovery applied to the int8 model: {_e(format_recovery(report.recovery))}" if report.recovery
           else "") + "</div>",
        f"<div class='cards'>{''.join(cards)}</div>",
    ]
    if report.notes:
        parts.append("<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in report.notes) + "</ul>")
    parts += [
        "<h2>SNR along the network depth</h2>",
        f"<figure>{snr_plot(report.layers)}<figcaption>Signal-to-noise ratio 10·log10(Σref²/Σ(q−ref)²) of each "
        f"quantized activation over the {report.drift_count} drift images. Accumulated: the whole quantized "
        "model; isolated: that layer's own quantization, fed the float model's inputs. A layer with low isolated "
        "SNR causes drift; one whose accumulated SNR is far below its isolated SNR inherits it. Hover a point for "
        "details.</figcaption></figure>",
    ]
    if f.labelled:
        parts += ["<h2>Per-class IoU change</h2>",
                  f"<figure>{iou_delta_plot(f.class_names, f.iou_delta)}<figcaption>mIoU float {fmt(f.miou_float)}, "
                  f"quantized {fmt(f.miou_quant)} (mmseg convention; awesome convention "
                  f"{fmt(f.miou_awesome_float)} → {fmt(f.miou_awesome_quant)}).</figcaption></figure>"]
    if report.gallery and any(g.panels for g in report.gallery):
        parts.append(gallery_section(report.gallery, f.class_names, report.images))
    parts += [f"<h2>Worst {len(worst)} layers (lowest accumulated SNR)</h2>", _layer_rows(worst, rank=True)]
    if report.emulation is not None:
        parts.append(emulation_section(report.emulation))
    if report.histograms:
        src = "calibration statistics" if report.histograms[0].source == "stats" else "values seen during compare"
        parts += ["<h2>Activation histograms of the worst layers</h2>",
                  "<figure><div class='hists'>" + "".join(histogram_plot(h) for h in report.histograms)
                  + f"</div><figcaption>Float activations ({_e(src)}), log counts. Red: the calibration's clipping "
                  "range; grey dashed: observed min/max.</figcaption></figure>"]
    parts += ["<h2>All quantized activations</h2>",
              f"<details><summary>table of {len(report.layers)} layers in topological order</summary>"
              f"{_layer_rows(report.layers, rank=False)}</details>"]
    lists = (_names_list("float activations without a counterpart", report.unpaired_float)
             + _names_list("quantized-model activations without a counterpart", report.unpaired_quant)
             + _names_list("paired but not quantized", report.unquantized))
    if lists:
        parts += ["<h2>Pairing</h2>", lists]
    parts.append("</main></body></html>\n")
    return "".join(parts)
