"""The sparse wire form of calibration statistics (fcnquant.calibrate.stats_wire): round trip, and a merge of
shards equal to one run; numpy only, no Ray needed."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.calibrate.stats import CalibrationStats, merge_stats
from fcnquant.calibrate.stats_wire import merge_wire, stats_from_wire, stats_to_wire
from fcnquant.errors import CalibrationError


def _stats(values, ids, sha="ab" * 32, skip=False):
    s = CalibrationStats.new(["x", "y"], model_sha256=sha, image_ids=ids, preset={"name": "awesome"},
                             skip_nonfinite=skip)
    for v in values:
        s.tensors["x"].update(v)
        s.tensors["y"].update(-2 * v)
    return s


def _assert_same(a: CalibrationStats, b: CalibrationStats) -> None:
    for name in a.tensors:
        sa, sb = a.tensors[name].state(), b.tensors[name].state()
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key])
            assert sa[key].dtype == sb[key].dtype


def test_wire_round_trip():
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 3)).astype(np.float32)
    s = _stats([x], ["a"])
    back = stats_from_wire(stats_to_wire(s))
    assert back.meta() == s.meta()
    _assert_same(s, back)


@pytest.mark.parametrize("skip", [False, True])
def test_sparse_merge_equals_one_run_and_merge_stats(skip):
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, 5, 5)).astype(np.float32) * (k + 1) for k in range(5)]
    batches[1][0, 0, 0, 0] = 0.0
    batches[3][0, 0, 0, 1] = -0.0  # both zeros, in different shards
    if skip:
        batches[2][0, 1, 1, 1] = np.nan
    ids = [f"im{k}" for k in range(5)]
    whole = _stats(batches, ids, skip=skip)
    parts = [_stats(batches[:2], ids[:2], skip=skip), _stats(batches[2:3], ids[2:3], skip=skip),
             _stats(batches[3:], ids[3:], skip=skip)]
    merged = merge_wire([stats_to_wire(p) for p in parts], "m.onnx")
    assert merged.image_ids == ids and merged.model_name == "m.onnx" and merged.shard is None
    _assert_same(whole, merged)
    _assert_same(merge_stats(parts), merged)
    # and against the values themselves: exact min/max and counts
    flat = np.concatenate([b.ravel() for b in batches])
    finite = flat[np.isfinite(flat)]
    assert merged.tensors["x"].min == float(finite.min()) and merged.tensors["x"].max == float(finite.max())
    assert merged.tensors["x"].count == finite.size and merged.tensors["x"].nonfinite == flat.size - finite.size


def test_sparse_merge_refuses_overlap_and_other_models():
    x = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(CalibrationError, match="more than one shard"):
        merge_wire([stats_to_wire(_stats([x], ["a"])), stats_to_wire(_stats([x], ["a"]))], "m")
    with pytest.raises(CalibrationError, match="model_sha256"):
        merge_wire([stats_to_wire(_stats([x], ["a"])), stats_to_wire(_stats([x], ["b"], sha="cd" * 32))], "m")


def test_stats_pickle_as_their_sparse_arrays():
    import pickle

    x = np.linspace(-3, 5, 1000, dtype=np.float32).reshape(1, 1, 10, 100)
    st = _stats([x], ["a"])
    back = pickle.loads(pickle.dumps(st))
    assert back.meta() == st.meta()
    for key, value in st.tensors["x"].state().items():
        np.testing.assert_array_equal(back.tensors["x"].state()[key], value)
    assert len(pickle.dumps(st)) < 100_000  # not the dense 2^19-bin histogram
