"""The recovery plan per target (fcnquant.recover.plan): which passes run by default and which are opt-in."""
from __future__ import annotations

from fcnquant.recover.plan import resolve_plan


def test_plan_per_target():
    assert resolve_plan("npu-pow2", per_channel=False, recover=True).names() == \
        ["equalize", "pow2-by-error", "bias-correction"]  # scale search and auto bias correction are opt-in
    assert resolve_plan("npu-pow2", per_channel=False, recover=True, scale_search=True).names() == \
        ["equalize", "pow2-by-error", "pow2-by-output", "bias-correction"]
    assert resolve_plan("ort-cpu", per_channel=True, recover=True).names() == ["bias-correction"]
    assert resolve_plan("tensorrt", per_channel=False, recover=True).names() == ["equalize", "bias-correction"]
    assert resolve_plan("npu-pow2", recover=True, bias_correction=False, scale_search=False).names() == \
        ["pow2-by-error"]
    assert resolve_plan("tensorrt", recover=False, adaround=True).names() == ["adaround"]
    assert not resolve_plan("ort-cpu").any
