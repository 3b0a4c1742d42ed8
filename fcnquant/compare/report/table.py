"""The compare report as terminal text: final metrics, then the layers with the worst SNR."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from fcnquant.recover.plan import format_recovery

if TYPE_CHECKING:
    from fcnquant.compare.report.compare_report import CompareReport


def fmt(v: float | None, spec: str = ".2f") -> str:
    """Returns ``v`` formatted with ``spec``; "inf"/"-inf" for infinities and "-" for NaN/None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]


def format_table(report: CompareReport, top: int | None = 10, by: str = "accumulated") -> str:
    """Returns the terminal summary of ``report`` (see ``CompareReport.format_table``)."""
    f = report.final
    lines = [f"float:     {report.float_model}", f"quantized: {report.quant_model}",
             f"images: {report.images} from {report.data}" + (f" ({report.split})" if report.split else "")
             + f"; pairing: {report.pairing}; {len(report.layers)} quantized activations",
             f"final metrics on all {report.images} images; per-layer drift on {report.drift_count} of them"
             + (" (spread evenly over the list)" if report.drift_count < report.images else "")]
    if report.recovery:
        lines.append(f"recovery applied to the int8 model: {format_recovery(report.recovery)}")
    if f.labelled:
        lines.append(f"mIoU float {fmt(f.miou_float)}  quantized {fmt(f.miou_quant)}  mIoU change "
                     f"{fmt(f.miou_change, '+.2f')} (quantized - float)"
                     f"  (awesome convention: {fmt(f.miou_awesome_float)} -> {fmt(f.miou_awesome_quant)})")
        deltas = [(d, c) for c, d in zip(f.class_names, f.iou_delta) if not math.isnan(d) and d < 0]
        if deltas:
            worst = sorted(deltas)[:3]
            lines.append("largest class IoU losses: " + ", ".join(f"{c} {d:+.2f}" for d, c in worst))
    else:
        lines.append("no labels: mIoU not computed")
    lines.append(f"pixels with a changed class: {fmt(100 * f.changed_share, '.3f')}% overall, "
                 f"{fmt(100 * f.boundary_changed_share, '.3f')}% within {f.boundary_radius} px of boundaries, "
                 f"{fmt(100 * f.interior_changed_share, '.3f')}% elsewhere")
    rows = report.worst(top, by=by)
    if rows:
        w = min(48, max(12, max(len(r.float_name) for r in rows)))
        lines.append("")
        lines.append(f"worst {len(rows)} of {len(report.layers)} layers by {by} SNR:")
        head = (f"{'#':>3} {'tensor':<{w}} {'op':<8} {'depth':>5} {'SNR dB':>8} {'iso dB':>8} {'cosine':>10}"
                f" {'rel L2':>8} {'max|err|':>9} {'MSE':>9}")
        lines.append(head)
        lines.append("-" * len(head))
        for k, r in enumerate(rows, 1):
            a, i = r.accumulated, r.isolated
            lines.append(
                f"{k:>3} {_short(r.float_name, w):<{w}} {r.op_type[:8]:<8} {r.order:>5} {fmt(a.snr_db):>8}"
                f" {fmt(i.snr_db if i else None):>8} {fmt(a.cosine, '.8f'):>10} {fmt(a.rel_l2, '.4f'):>8}"
                f" {fmt(a.max_abs, '.3g'):>9} {fmt(a.mse, '.3g'):>9}"
                + (f"  ({a.nonfinite} non-finite)" if a.nonfinite else "")
            )
        if report.isolated:
            lines.append("SNR dB: whole quantized model (accumulated); iso dB: that layer's quantization alone")
    missing = len(report.unpaired_float) + len(report.unpaired_quant)
    if missing:
        lines.append(f"unpaired: {len(report.unpaired_float)} float, {len(report.unpaired_quant)} quantized tensors"
                     + (f" (e.g. {_short((report.unpaired_float or report.unpaired_quant)[0], 60)})"))
    if report.emulation is not None:
        from fcnquant.emulate.measure import format_emulation

        lines += ["", format_emulation(report.emulation, top)]
    lines.extend(report.notes)
    return "\n".join(lines)
