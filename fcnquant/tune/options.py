"""What a tuning run aims for and how it searches (:class:`TuneOptions`); checked when built."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fcnquant.errors import FcnquantError
from fcnquant.tune.builder import FALLBACKS
from fcnquant.tune.images import ImageChoice
from fcnquant.tune.ranking import RANKINGS

OBJECTIVES = ("labelled", "agreement")


@dataclass(frozen=True)
class TuneOptions:
    """The tune-specific knobs.

    ``max_drop``: the budget, mIoU points (float - int8) on the tuning images. ``fallback``: what the layers kept
    out of int8 run in (``float``, ``fp16`` islands or ``int16`` activations; None: ``float`` where the target
    allows it, else the target's first fallback). ``objective``: what the search holds to the budget:
    ``labelled`` (the labelled mIoU drop) or ``agreement`` (the percentage of pixels whose class differs from the
    float model's, above that of the candidate with every layer in the fallback; no labels, far less noise:
    ``fcnquant.tune.tuner``); None: ``agreement`` with the int16 fallback, else ``labelled``. ``confidence`` (e.g. 0.9): hold that one-sided bootstrap
    upper bound of each candidate's drop to the budget instead of the point estimate (``fcnquant.tune.confidence``).
    ``rank``: ``sensitivity`` or ``isolated`` (``fcnquant.tune.ranking``), on the first ``rank_images`` tuning
    images. ``max_evaluations``: stop the search after that many. ``report_isolated=False`` skips the report's
    isolated-drift pass (faster; the drop is the same). ``images``: the calibration, tuning and reporting images.
    """

    max_drop: float
    fallback: str | None = None
    objective: str | None = None
    confidence: float | None = None
    rank: str = "sensitivity"
    rank_images: int = 16
    max_evaluations: int | None = None
    report_isolated: bool = True
    images: ImageChoice = field(default_factory=ImageChoice)

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drop):
            raise FcnquantError(f"the mIoU budget must be a finite number, got {self.max_drop}")
        if self.fallback is not None and self.fallback not in FALLBACKS:
            raise FcnquantError(f"unknown fallback '{self.fallback}' (choose from {', '.join(FALLBACKS)})")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise FcnquantError(f"unknown objective '{self.objective}' (choose from {', '.join(OBJECTIVES)})")
        if self.rank not in RANKINGS:
            raise FcnquantError(f"unknown ranking '{self.rank}' (choose from {', '.join(RANKINGS)})")
        if self.rank_images < 1:
            raise FcnquantError(f"rank_images must be at least 1, got {self.rank_images}")
        if self.confidence is not None and not 0.5 <= self.confidence < 1.0:
            raise FcnquantError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.max_evaluations is not None and self.max_evaluations < 1:
            raise FcnquantError(f"max_evaluations must be at least 1, got {self.max_evaluations}")

    def resolved_objective(self, fallback: str) -> str:
        """Returns the objective the search holds to the budget with ``fallback``."""
        if self.objective is not None:
            return self.objective
        return "agreement" if fallback == "int16" else "labelled"

    def with_(self, **changes) -> "TuneOptions":
        """Returns a copy with ``changes``."""
        return replace(self, **changes)
