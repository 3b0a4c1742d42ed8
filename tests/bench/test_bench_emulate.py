"""bench/bench_emulate.py: its per-op rounding knob against the emulator's own roundings, and its tables."""
from __future__ import annotations

from dataclasses import replace

import numpy as np


def _runs(bench_emulate, model):
    import onnx

    from fcnquant.emulate import arithmetic_of, build_program, run_program

    prog = build_program(onnx.load(str(model)))
    x = np.random.default_rng(3).normal(size=(2, 3, 160, 160)).astype(np.float32)
    up = arithmetic_of("npu-pow2")
    even = replace(up, rounding="half_even")
    return prog, x, up, even, run_program


def test_half_up_in_every_group_is_half_up_and_in_none_half_even(bench_emulate, pow2_fcn8s):
    prog, x, up, even, run_program = _runs(bench_emulate, pow2_fcn8s)
    ref_up, ref_even = run_program(prog, x, up), run_program(prog, x, even)
    with bench_emulate.half_up_in(tuple(bench_emulate.OP_GROUPS)):
        every = run_program(prog, x, even)
    with bench_emulate.half_up_in(()):
        none = run_program(prog, x, up)
    assert any(not np.array_equal(ref_up.values[k], ref_even.values[k]) for k in ref_up.values)
    for k in ref_up.values:
        assert np.array_equal(every.values[k], ref_up.values[k]), k
        assert np.array_equal(none.values[k], ref_even.values[k]), k
    with bench_emulate.half_up_in(("align",)):  # only Add / Concat outputs round half up: the first Conv is half even
        align = run_program(prog, x, up)
    first = prog.steps[0]
    assert first.op == "Conv" and np.array_equal(align.values[first.output], ref_even.values[first.output])


def test_sections_split_full_rows_from_variants_and_sign_the_differences(bench_emulate):
    row = {"model": "fcn8s", "rounding": "half_up", "variant": "", "images": 1000, "miou_float": 67.5,
           "miou_emulated": 67.25, "miou_onnxruntime": 67.0, "miou_gap": 0.25, "class_agreement_percent": 99.5,
           "max_lsb": 3, "seconds": 10.0, "load_start": 1.0, "load_end": 2.0}
    small = {**row, "images": 200, "variant": "half_up in conv", "miou_emulated": 66.0, "miou_gap": -1.0}
    main, other = bench_emulate.sections({"accuracy": [small, row]})
    assert main["rows"] == [["fcn8s", "half_up", 1000, 67.25, 67.0, "+0.250", 67.5, "-0.25", "-0.50", 99.5, 3, 10.0,
                             "1.0 / 2.0"]]
    assert other["rows"] == [["fcn8s", "half_up in conv", 200, 66.0, 67.0, "-1.000", 67.5, "-1.50", "-0.50", 99.5]]
