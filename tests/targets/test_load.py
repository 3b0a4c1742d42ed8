"""Target files: every key parsed and validated, the built-ins, the lookup by name or path."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace

import pytest

from fcnquant.calibrate.qparams import TARGETS as OLD_PATH_TARGETS
from fcnquant.calibrate.qparams import Target as OldPathTarget
from fcnquant.calibrate.qparams import get_target as old_path_get_target
from fcnquant.errors import CalibrationError
from fcnquant.targets import KEYS, TARGETS, Target, TargetError, builtin_path, get_target, load_target

#: a complete, valid target file's keys (a made-up chip)
GOOD = {
    "name": "my-npu", "description": "a test chip", "activation_dtype": "int8", "symmetric": True, "pow2": True,
    "weight_dtype": "int8", "weight_symmetric": True, "weight_granularity": "per-tensor", "rounding": "floor",
    "accumulator_bits": 24, "integer_ops": ["Conv", "Add", "MaxPool"], "add_concat": "shift", "max_shift": 4,
    "fallbacks": ["int16", "fp16"], "tensorrt_cache": False,
}


def toml_text(doc: dict) -> str:
    """Writes ``doc`` as TOML (strings, booleans, integers and lists of strings)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)  # JSON strings, integers and string lists are TOML too
    return "".join(f"{k} = {value(v)}\n" for k, v in doc.items())


def write(tmp_path, doc: dict, name: str = "chip.toml"):
    path = tmp_path / name
    path.write_text(toml_text(doc), encoding="utf-8")
    return path


def test_every_key_is_read(tmp_path):
    path = write(tmp_path, GOOD)
    t = load_target(path)
    assert t == Target(name="my-npu", description="a test chip", activation_dtype="int8", symmetric=True, pow2=True,
                       weight_dtype="int8", weight_symmetric=True, weight_granularity="per-tensor", rounding="floor",
                       accumulator_bits=24, integer_ops=("Conv", "Add", "MaxPool"), add_concat="shift", max_shift=4,
                       fallbacks=("int16", "fp16"), tensorrt_cache=False, source=str(path),
                       sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert set(GOOD) == set(KEYS)  # the file above uses every key
    assert not t.per_channel_weights and t.per_tensor_weights


def test_optional_keys_default(tmp_path):
    doc = {k: v for k, v in GOOD.items() if k not in ("description", "tensorrt_cache")}
    doc["add_concat"] = "shared"
    del doc["max_shift"]
    t = load_target(write(tmp_path, doc))
    assert (t.description, t.tensorrt_cache, t.max_shift) == ("", False, 0)


BAD_VALUES = [
    ("name", "", "name"), ("name", "a b", "name"), ("description", 3, "description"),
    ("activation_dtype", "int4", "activation_dtype"), ("symmetric", "yes", "symmetric"), ("pow2", 1, "pow2"),
    ("weight_dtype", "float", "weight_dtype"), ("weight_symmetric", 0, "weight_symmetric"),
    ("weight_granularity", "per-group", "weight_granularity"), ("rounding", "stochastic", "rounding"),
    ("accumulator_bits", 8, "accumulator_bits"), ("accumulator_bits", True, "accumulator_bits"),
    ("integer_ops", "Conv", "integer_ops"), ("integer_ops", ["conv"], "integer_ops"),
    ("integer_ops", ["Conv", "Conv"], "integer_ops"), ("add_concat", "free", "add_concat"),
    ("max_shift", -1, "max_shift"), ("max_shift", 40, "max_shift"), ("fallbacks", ["bf16"], "fallbacks"),
    ("fallbacks", "float", "fallbacks"), ("tensorrt_cache", "no", "tensorrt_cache"),
]


@pytest.mark.parametrize("key,bad,named", BAD_VALUES)
def test_a_bad_value_names_the_file_and_the_key(tmp_path, key, bad, named):
    path = write(tmp_path, {**GOOD, key: bad})
    with pytest.raises(TargetError) as err:
        load_target(path)
    msg = str(err.value)
    assert str(path) in msg and f"'{named}'" in msg and "\n" not in msg


@pytest.mark.parametrize("key", [k for k, (_, required) in KEYS.items() if required])
def test_a_missing_key_is_named(tmp_path, key):
    path = write(tmp_path, {k: v for k, v in GOOD.items() if k != key})
    with pytest.raises(TargetError, match=f"missing key '{key}'"):
        load_target(path)


@pytest.mark.parametrize("changes,named", [
    ({"activation_dtype": "uint8", "symmetric": True, "pow2": False}, "symmetric"),
    ({"symmetric": False, "activation_dtype": "uint8"}, "pow2"),
    ({"weight_dtype": "uint8"}, "weight_symmetric"),
])
def test_contradicting_keys(tmp_path, changes, named):
    with pytest.raises(TargetError, match=f"key '{named}'"):
        load_target(write(tmp_path, {**GOOD, **changes}))


def test_shift_needs_max_shift(tmp_path):
    with pytest.raises(TargetError, match="missing key 'max_shift'"):
        load_target(write(tmp_path, {k: v for k, v in GOOD.items() if k != "max_shift"}))


def test_unknown_key_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(TargetError, match="unknown key 'pow_2'"):
        load_target(write(tmp_path, {**GOOD, "pow_2": True}))
    bad = tmp_path / "broken.toml"
    bad.write_text("name = 'x\n", encoding="utf-8")
    with pytest.raises(TargetError, match="broken.toml: not valid TOML"):
        load_target(bad)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TargetError, match="not a UTF-8"):
        load_target(binary)
    with pytest.raises(TargetError, match="target file not found"):
        load_target(tmp_path / "none.toml")


def test_builtins_are_the_documented_schemes():
    """The three shipped files declare what the targets always were (qparams' module doc, the contract)."""
    ort, trt, npu = TARGETS["ort-cpu"], TARGETS["tensorrt"], TARGETS["npu-pow2"]
    assert (ort.activation_dtype, ort.symmetric, ort.pow2, ort.qmin, ort.qmax) == ("uint8", False, False, 0, 255)
    assert (trt.activation_dtype, trt.symmetric, trt.pow2, trt.qmin, trt.qmax) == ("int8", True, False, -127, 127)
    assert (npu.activation_dtype, npu.symmetric, npu.pow2, npu.qmin, npu.qmax) == ("int8", True, True, -127, 127)
    for t in (ort, trt, npu):
        assert (t.weight_dtype, t.weight_symmetric, t.per_channel_weights, t.accumulator_bits) == ("int8", True,
                                                                                                   True, 32)
        assert t.source == f"builtin:{t.name}" and t.builtin
        assert t.sha256 == hashlib.sha256(builtin_path(t.name).read_bytes()).hexdigest()
    assert (npu.rounding, npu.add_concat, npu.max_shift, npu.fallbacks) == ("half_up", "shift", 8, ("int16",))
    assert npu.per_tensor_weights
    for t in (ort, trt):
        assert (t.rounding, t.fallbacks) == ("half_even", ("int16", "fp16", "float"))
    assert [t.tensorrt_cache for t in (ort, trt, npu)] == [False, True, False]
    for t in (trt, npu):
        assert {"Conv", "Add", "Concat", "MaxPool", "Resize"} <= set(t.integer_ops)
    assert (ort.steps(True), ort.steps(False), trt.steps(True)) == (255, 127, 127)


def test_old_import_paths_and_lookup(tmp_path):
    assert OldPathTarget is Target and OLD_PATH_TARGETS is TARGETS and old_path_get_target is get_target
    assert get_target("npu-pow2") is TARGETS["npu-pow2"]
    copy = shutil.copy(builtin_path("npu-pow2"), tmp_path / "copy.toml")
    from_file = get_target(str(copy))
    assert replace(from_file, source="builtin:npu-pow2") == TARGETS["npu-pow2"]
    assert not from_file.builtin and from_file.source == str(copy)
    assert get_target(from_file) is from_file
    with pytest.raises(CalibrationError, match="unknown target 'npu'"):
        get_target("npu")


def test_int16_activations_range(tmp_path):
    t = load_target(write(tmp_path, {**GOOD, "activation_dtype": "int16"}))
    assert (t.qmin, t.qmax, t.steps(False)) == (-32767, 32767, 32767)
