"""The typed result of ``fcnquant.tune.tune``: what was chosen, every evaluation, the verdict; JSON, text, HTML."""
from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from fcnquant._io import atomic_write_text
from fcnquant.tune.confidence import DropInterval
from fcnquant.tune.images import ImageSets
from fcnquant.tune.ranking import Ranking
from fcnquant.tune.search import Evaluation

FORMAT_VERSION = 1


def resolution_note(interval: DropInterval | None, images: int, budget: float) -> str | None:
    """Returns the "cannot resolve" sentence when the interval's half-width exceeds ``budget``, else None.

    The half-width shrinks as one over the square root of the image count, so ``images * (half / budget)**2``
    images would bring it down to the budget."""
    if interval is None or not (math.isfinite(interval.lo) and math.isfinite(interval.hi)) or budget <= 0:
        return None
    half = (interval.hi - interval.lo) / 2
    if half <= budget:
        return None
    need = math.ceil(images * (half / budget) ** 2)
    return (f"the {images} tuning images cannot resolve a budget of {budget:g} mIoU points: the drop's "
            f"{interval.level:.0%} interval is +-{half:.3f} wide; about {need} tuning images would resolve it")


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


@dataclass(frozen=True)
class FloatLayer:
    """One layer the tuner left in float: its nodes, rank, and the measured gain of keeping it float."""

    name: str
    op_type: str
    nodes: tuple[str, ...]
    rank: int  # 1-based position in the ranking
    score: float  # the ranking's score
    gain: float | None  # drop with it back in int8 minus drop with it float (tuning set, points); None: unmeasured

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return {"name": self.name, "op_type": self.op_type, "nodes": list(self.nodes), "rank": self.rank,
                "score": _num(self.score), "gain": _num(self.gain)}


@dataclass(frozen=True)
class TuneResult:
    """Everything ``tune`` did and wrote (paths are None for artifacts not asked for)."""

    model: str
    out: str  # the model written: --out, or its over-budget name when the budget was not met
    over_budget: bool
    max_drop: float
    target: str
    method: str
    per_channel: bool
    fallback: str
    recover: bool
    layers: int  # quantized layers the search could move to float (L)
    float_layers: tuple[FloatLayer, ...]
    tune_drop: float
    report_drop: float | None
    miou_float_tune: float
    miou_float_report: float | None
    miou_quant_report: float | None
    evaluations: tuple[Evaluation, ...]
    complete: bool
    ranking: Ranking | None
    images: ImageSets
    report_html: str | None
    json_path: str | None
    seconds: dict[str, float]
    tune_interval: DropInterval | None = None  # the chosen model's tuning drop: paired bootstrap interval
    confidence: float | None = None  # the search held this one-sided upper bound of the drop to the budget
    objective: str = "labelled"  # what the search held to the budget: "labelled" or "agreement"

    @property
    def resolution(self) -> str | None:
        """Returns the sentence saying the tuning set cannot resolve the budget (the drop's interval is wider than
        it) and about how many images would, or None when it can."""
        return resolution_note(self.tune_interval, len(self.images.tuning.ids), self.max_drop)

    @property
    def evaluation_limit(self) -> int:
        """Returns ceil(log2 L) + 3, the evaluation count the tuner aims to stay within."""
        return math.ceil(math.log2(self.layers)) + 3 if self.layers > 1 else 3

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict; ``evaluations`` is the count, ``evaluation_log`` lists them."""
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model, "out": self.out, "over_budget": self.over_budget, "max_drop": self.max_drop,
            "target": self.target, "method": self.method, "per_channel": self.per_channel,
            "fallback": self.fallback, "recover": self.recover, "layers": self.layers,
            "evaluations": len(self.evaluations), "complete": self.complete,
            "float_layers": [f.name for f in self.float_layers],
            "float_layer_details": [f.to_dict() for f in self.float_layers],
            "tune_drop": _num(self.tune_drop), "report_drop": _num(self.report_drop),
            "tune_interval": self.tune_interval.to_dict() if self.tune_interval is not None else None,
            "confidence": self.confidence, "objective": self.objective, "resolution": self.resolution,
            "miou_float_tune": _num(self.miou_float_tune), "miou_float_report": _num(self.miou_float_report),
            "miou_quant_report": _num(self.miou_quant_report),
            "evaluation_log": [{**e.to_dict(), "drop": _num(e.drop)} for e in self.evaluations],
            "ranking": self.ranking.to_dict() if self.ranking is not None else None,
            "images": self.images.to_dict(), "report_html": self.report_html, "seconds": self.seconds,
        }

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Writes ``to_dict()`` to ``path`` as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    def format_table(self) -> str:
        """Returns the evaluations, the float layers with their gains and the verdict, as text."""
        drop = "drop" if self.confidence is None else f"drop ({self.confidence:.0%} upper bound)"
        if self.objective == "agreement":
            drop = "changed %"  # pixels whose class differs from the float model's, above every layer in fallback
        lines = [f"{'eval':>4}  {'step':<9}{'float':>6}  {drop:>8}  {'s':>6}  float layers"]
        for e in self.evaluations:
            names = ", ".join(e.float_layers) if len(e.float_layers) <= 3 else \
                f"{', '.join(e.float_layers[:3])}, ... ({len(e.float_layers)})"
            lines.append(f"{e.index:4d}  {e.step:<9}{len(e.float_layers):6d}  {e.drop:+8.3f}  {e.seconds:6.1f}  "
                         f"{names or '-'}{'' if e.meets else '  (over)'}")
        lines.append("")
        if self.float_layers:
            lines.append(f"{'rank':>4}  {'gain':>8}  {'op':<10} float layer")
            for f in self.float_layers:
                gain = "-" if f.gain is None else f"{f.gain:+.3f}"
                lines.append(f"{f.rank:4d}  {gain:>8}  {f.op_type:<10} {f.name}")
        else:
            lines.append("no layer left in float")
        lines.append("")
        images = self.images
        lines.append(f"images: {len(images.calibration.ids)} calibration ({images.calibration.split}), "
                     f"{len(images.tuning.ids)} tuning ({images.tuning.split}), {len(images.reporting.ids)} "
                     f"reporting ({images.reporting.split})")
        report = "-" if self.report_drop is None else f"{self.report_drop:.3f}"
        lines.append(f"mIoU drop: tuning {self.tune_drop:.3f}{self._interval_text()} (budget {self.max_drop:g}), "
                     f"reporting {report}; "
                     f"{len(self.evaluations)} evaluations for {self.layers} layers "
                     f"({len(self.float_layers)} in {self.fallback})")
        if self.resolution:
            lines.append(self.resolution)
        return "\n".join(lines)

    def _interval_text(self) -> str:
        i = self.tune_interval
        if i is None or not math.isfinite(i.lo):
            return ""
        bound = f", {self.confidence:.0%} upper bound held to the budget" if self.confidence is not None else ""
        return f" [{i.level:.0%} interval {i.lo:+.3f} .. {i.hi:+.3f}, {len(self.images.tuning.ids)} images{bound}]"

    def html_section(self) -> str:
        """Returns an HTML section (for the compare report) with the verdict, float layers and evaluations."""
        e = html.escape
        verdict = "over budget" if self.over_budget else "within budget"
        rows = "".join(
            f"<tr><td>{f.rank}</td><td>{e(f.name)}</td><td>{e(f.op_type)}</td>"
            f"<td>{'-' if f.gain is None else f'{f.gain:+.3f}'}</td></tr>" for f in self.float_layers)
        evals = "".join(
            f"<tr><td>{x.index}</td><td>{e(x.step)}</td><td>{len(x.float_layers)}</td><td>{x.drop:+.3f}</td>"
            f"<td>{x.seconds:.1f}</td><td>{e(', '.join(x.float_layers)) or '-'}</td></tr>" for x in self.evaluations)
        report = "-" if self.report_drop is None else f"{self.report_drop:.3f}"
        im = self.images
        return (
            "<section><h2>fcnquant tune</h2>"
            f"<p><b>{verdict}</b>: tuning-set drop {self.tune_drop:.3f}{e(self._interval_text())} (budget "
            f"{self.max_drop:g}), reporting-set "
            f"drop {report}; {len(self.evaluations)} evaluations, {len(self.float_layers)} of {self.layers} layers "
            f"in float ({e(self.fallback)}). Images: {len(im.calibration.ids)} calibration "
            f"({e(str(im.calibration.split))}), {len(im.tuning.ids)} tuning ({e(str(im.tuning.split))}), "
            f"{len(im.reporting.ids)} reporting ({e(str(im.reporting.split))}), disjoint.</p>"
            "<h3>Float layers</h3><table><tr><th>rank</th><th>layer</th><th>op</th><th>gain (points)</th></tr>"
            f"{rows or '<tr><td colspan=4>none</td></tr>'}</table>"
            "<h3>Evaluations</h3><table><tr><th>#</th><th>step</th><th>float</th><th>drop</th><th>s</th>"
            f"<th>float layers</th></tr>{evals}</table></section>"
        )
