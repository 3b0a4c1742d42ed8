"""CalibrationStats: npz round trip without pickle, exact shard merge, refusals, bad files."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from fcnquant.calibrate.stats import CalibrationStats, merge_stats
from fcnquant.errors import CalibrationError, FcnquantError
from fcnquant.observers import NonFiniteError

SHA = "ab" * 32
NAMES = ["conv1/relu:0", "add.out", "logits"]  # names with characters unsafe as file names


def _batches(seed=0, n_images=6):
    rng = np.random.default_rng(seed)
    for k in range(n_images):
        yield f"img{k:03d}", {
            NAMES[0]: np.maximum(rng.standard_normal((1, 4, 8, 8)), 0).astype(np.float32) * (k + 1),
            NAMES[1]: rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
            NAMES[2]: rng.laplace(size=(1, 3, 8, 8)).astype(np.float32),
        }


def _collect(items, shard=None, **kw):
    items = list(items)
    st = CalibrationStats.new(NAMES, model_sha256=SHA, preset={"name": "awesome", "size": (8, 8)},
                              image_ids=[i for i, _ in items], model_name="m.onnx", shard=shard, **kw)
    for _, tensors in items:
        for name, x in tensors.items():
            st.tensors[name].update(x)
    return st


def _same(a: CalibrationStats, b: CalibrationStats):
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        sa, sb = a.tensors[name].state(), b.tensors[name].state()
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key])
            assert sa[key].dtype == sb[key].dtype


def test_npz_round_trip(tmp_path):
    st = _collect(_batches())
    path = st.save(tmp_path / "s.npz")
    with np.load(path, allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    back = CalibrationStats.load(path)
    _same(st, back)
    assert back.meta() == st.meta()
    assert back.preset == {"name": "awesome", "size": [8, 8]}
    assert back.tensors[NAMES[1]].min == float(min(x[NAMES[1]].min() for _, x in _batches()))
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary left


def test_shard_merge_equals_single_run_bit_for_bit(tmp_path):
    items = list(_batches(1, n_images=7))
    single = _collect(items)
    shards = [_collect(items[0:3], "1/3"), _collect(items[3:4], "2/3"), _collect(items[4:], "3/3")]
    paths = [s.save(tmp_path / f"s{k}.npz") for k, s in enumerate(shards)]
    merged = merge_stats([CalibrationStats.load(p) for p in reversed(paths)])
    _same(merged, single)
    assert merged.image_ids == single.image_ids  # shards re-ordered by index
    assert merged.shard is None
    partial = CalibrationStats.merge([shards[2], shards[0]])
    assert partial.shard == "1,3/3"


def test_merge_refusals():
    items = list(_batches(2))
    a = _collect(items[:3])
    b = _collect(items[3:])
    b.model_sha256 = "cd" * 32
    with pytest.raises(CalibrationError, match="different model"):
        merge_stats([a, b])
    with pytest.raises(CalibrationError, match="mantissa"):
        merge_stats([a, _collect(items[3:], mantissa_bits=8)])
    with pytest.raises(CalibrationError, match="img002"):
        merge_stats([a, _collect(items[2:])])
    other = _collect(items[3:])
    other.preset = {"name": "mmseg"}
    with pytest.raises(CalibrationError, match="preset"):
        merge_stats([a, other])
    fewer = _collect(items[3:])
    del fewer.tensors[NAMES[2]]
    with pytest.raises(CalibrationError, match="different tensors"):
        merge_stats([a, fewer])
    with pytest.raises(CalibrationError, match="nothing"):
        merge_stats([])


def test_nonfinite_skip_is_recorded(tmp_path):
    st = CalibrationStats.new(["t"], model_sha256=SHA, skip_nonfinite=True)
    st.tensors["t"].update(np.array([1.0, np.nan, 2.0, np.inf], np.float32))
    back = CalibrationStats.load(st.save(tmp_path / "s.npz"))
    assert back.tensors["t"].nonfinite == 2 and back.tensors["t"].count == 2 and back.skip_nonfinite
    strict = CalibrationStats.new(["t"], model_sha256=SHA)
    with pytest.raises(NonFiniteError):
        strict.tensors["t"].update(np.array([np.nan], np.float32))
    assert strict.tensors["t"].count == 0 and strict.tensors["t"].hist.total == 0


def test_negative_zero_minimum_round_trips(tmp_path):
    st = CalibrationStats.new(["t"], model_sha256=SHA)
    st.tensors["t"].update(np.array([-0.0, 3.0], np.float32))  # min reported as +0.0, histogram holds -0.0
    back = CalibrationStats.load(st.save(tmp_path / "s.npz"))
    assert back.tensors["t"].min == 0.0 and back.tensors["t"].max == 3.0


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(CalibrationError, match="not found"):
        CalibrationStats.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="not a readable"):
        CalibrationStats.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationError, match="not a readable"):
        CalibrationStats.load(tmp_path / "obj.npz")
    # tamper: min outside the histogram's data
    st = _collect(_batches(3))
    path = st.save(tmp_path / "s.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["t1.range"] = np.array([-1000.0, arrays["t1.range"][1]])
    np.savez(tmp_path / "tampered.npz", **arrays)
    with pytest.raises(CalibrationError, match="add.out"):
        CalibrationStats.load(tmp_path / "tampered.npz")
    meta = json.loads(arrays["meta"].tobytes())
    meta["format_version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "newer.npz", **arrays)
    with pytest.raises(CalibrationError, match="newer"):
        CalibrationStats.load(tmp_path / "newer.npz")
    with zipfile.ZipFile(tmp_path / "nometa.npz", "w") as z:
        z.writestr("x.npy", b"")
    with pytest.raises(CalibrationError):
        CalibrationStats.load(tmp_path / "nometa.npz")


def test_save_into_missing_folder_leaves_nothing(tmp_path):
    with pytest.raises(FcnquantError, match="does not exist"):
        _collect(_batches()).save(tmp_path / "nope" / "s.npz")
    assert list(tmp_path.iterdir()) == []
