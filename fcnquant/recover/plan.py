"""Which recovery passes run: the user's switches, and what ``recover=True`` turns on for a target.

``recover=True`` turns on every pass measured to help on the target (BENCHMARKS.md, "Accuracy recovery"):

* power-of-two scales by expected error (``pow2_rounding="error"``) on power-of-two targets (``npu-pow2``);
* cross-layer equalization when weights have one scale per tensor (per-channel scales already give each output
  channel its own range, where equalization only moves rounding error between layers);
* bias correction, always: each layer's own weight rounding (``"weights"``), in the fast form
  (``bias_correction_form="fast"``, default): the shift ``(W_q - W) E[x]`` of every layer at once from the float
  model's mean input under each kernel tap, gathered in the calibration pass itself, so ``--recover`` costs no
  pass over the images beyond calibration. ``"sequential"`` is the reference: layer by layer on the int8 model's
  own (already corrected) inputs, one pass over the images per level of the Conv dependency graph (14 on fcn8s,
  54 on fcn_r50_d8). On the demo models the two agree within 0.02 mIoU on 1000 held-out images
  (``bench/bench_recover.py --bias-forms``; ``fcnquant.recover.bias_correction.correction``).

Two more passes exist but are opt-in, because on the demo models they improved the int8 outputs without a
measurable mIoU gain (1000 held-out images) at 3-4x the calibration time (BENCHMARKS.md):

* ``scale_search=True``: each activation's power-of-two scale re-chosen (of its two neighbours) by the int8
  model's output error (``fcnquant.recover.scale_search``);
* ``bias_correction_error="auto"``: both bias-correction variants, the layer's own weight rounding and the whole
  accumulated mean error, the one whose int8 outputs are closer to the float model's on the calibration images
  kept (``fcnquant.workflows.int8``). On the tuning split (seed 2) "accumulated" raised fcn_r50_d8's output SNR by 0.8 dB
  and lowered fcn16s' / fcn32s' by 3.5 / 9 dB: neither is right for every model.

AdaRound costs a minute or more of optimisation per model, so it runs only when asked for (``adaround=True``),
also with ``recover=True``. An explicit ``True``/``False`` for a pass always wins over what ``recover`` would choose.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

RECOVERY_METADATA_KEY = "fcnquant.recovery"

#: how bias correction runs: from one pass over the calibration images, or layer by layer (the reference)
BIAS_CORRECTION_FORMS = ("fast", "sequential")


@dataclass(frozen=True)
class RecoveryPlan:
    """The recovery passes to run, in the order the flow applies them."""

    equalize: bool = False
    adaround: bool = False
    bias_correction: bool = False
    pow2_rounding: str = "up"
    scale_search: bool = False
    bias_correction_error: str = "weights"
    bias_correction_form: str = "fast"

    @property
    def any(self) -> bool:
        """True when at least one pass changes the model."""
        return (self.equalize or self.adaround or self.bias_correction or self.pow2_rounding != "up"
                or self.scale_search)

    def names(self) -> list[str]:
        """Returns the passes that run, by their CLI names."""
        out = []
        if self.equalize:
            out.append("equalize")
        if self.pow2_rounding == "error":
            out.append("pow2-by-error")
        if self.adaround:
            out.append("adaround")
        if self.scale_search:
            out.append("pow2-by-output")
        if self.bias_correction:
            out.append("bias-correction")
        return out

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict."""
        return asdict(self)


def resolve_plan(
    target: str,
    per_channel: bool = True,
    recover: bool = False,
    *,
    equalize: bool | None = None,
    bias_correction: bool | None = None,
    adaround: bool | None = None,
    pow2_rounding: str | None = None,
    scale_search: bool | None = None,
    bias_correction_error: str | None = None,
    emits: bool = True,
    bias_correction_form: str | None = None,
) -> RecoveryPlan:
    """Returns the RecoveryPlan for ``target``: explicit switches (not None) as given, the rest from ``recover``.

    ``emits=False`` (no int8 model is written): only the table's power-of-two rounding applies; an explicit
    switch of a pass that makes a new model is an error. ``bias_correction_form``: ``"fast"`` (default) or
    ``"sequential"``; the fast form cancels the weight rounding only, so ``bias_correction_error="accumulated"``
    runs the sequential form (and with ``"auto"`` its accumulated candidate does).
    """
    from fcnquant.calibrate.qparams import get_target
    from fcnquant.errors import FcnquantError

    if bias_correction_form is not None and bias_correction_form not in BIAS_CORRECTION_FORMS:
        raise FcnquantError(f"unknown bias-correction form {bias_correction_form!r}; choose from "
                            f"{', '.join(BIAS_CORRECTION_FORMS)}")
    if bias_correction_form == "fast" and bias_correction_error == "accumulated":
        raise FcnquantError("the fast bias correction cancels the weight rounding only: the accumulated error "
                            "needs the sequential form")
    form = bias_correction_form or ("sequential" if bias_correction_error == "accumulated" else "fast")
    pow2 = get_target(target).pow2
    if pow2_rounding is None:
        pow2_rounding = "error" if recover and pow2 else "up"
    if not emits:
        if equalize or adaround or bias_correction or scale_search:
            raise FcnquantError("equalization, AdaRound, the scale search and bias correction make a new model: "
                                "give `out` to emit the int8 model (or run `fcnquant equalize` first and "
                                "calibrate its output)")
        return RecoveryPlan(pow2_rounding=pow2_rounding)
    return RecoveryPlan(
        equalize=bool(recover and not per_channel) if equalize is None else bool(equalize),
        adaround=bool(adaround),
        bias_correction=bool(recover) if bias_correction is None else bool(bias_correction),
        pow2_rounding=pow2_rounding,
        scale_search=bool(scale_search),
        bias_correction_error="weights" if bias_correction_error is None else bias_correction_error,
        bias_correction_form=form,
    )


def read_recovery(model) -> dict:
    """Returns the recovery record stored in an emitted model's metadata ({} when none)."""
    for prop in model.metadata_props:
        if prop.key == RECOVERY_METADATA_KEY:
            return json.loads(prop.value)
    return {}


def format_recovery(recovery: dict) -> str:
    """Returns one line naming the recovery passes that ran and their main figures."""
    parts = []
    for name in recovery.get("passes", []):
        if name == "bias-correction" and "bias_correction" in recovery:
            bc = recovery["bias_correction"]
            if bc.get("schedule") == "fast":
                parts.append(f"bias correction ({bc.get('layers', 0)} layers, fast: {bc.get('passes', 0)} passes "
                             "besides calibration)")
            else:
                parts.append(f"bias correction ({bc.get('layers', 0)} layers, {bc.get('passes', 0)} passes)")
        elif name == "equalize" and "equalize" in recovery:
            eq = recovery["equalize"]
            n = eq.get("pairs")
            parts.append(f"equalization ({len(n) if isinstance(n, list) else n} pairs)" if n is not None
                         else "equalization")
        elif name == "pow2-by-error":
            parts.append("power-of-two scales by error")
        elif name == "pow2-by-output" and "scale_search" in recovery:
            ss = recovery["scale_search"]
            snr = ss.get("output_snr_db", {})
            parts.append(f"power-of-two scales by output error ({ss.get('changed', 0)} of {ss.get('groups', 0)} "
                         f"changed, output SNR {snr.get('before', 0):.1f} -> {snr.get('after', 0):.1f} dB)")
        else:
            parts.append(name)
    return ", ".join(parts) if parts else "none"
