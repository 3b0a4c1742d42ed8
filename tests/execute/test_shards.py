"""Shard plans (fcnquant.execute.shards) and the exact sparse merge of statistics (fcnquant.calibrate.stats_wire);
numpy only, no Ray needed."""
from __future__ import annotations

import numpy as np
import pytest

from fcnquant.calibrate.stats import CalibrationStats, merge_stats
from fcnquant.calibrate.stats_wire import merge_wire, stats_from_wire, stats_to_wire
from fcnquant.data import Dataset
from fcnquant.execute import Shard, ShardResults, plan_shards, shard_dataset
from fcnquant.errors import CalibrationError, DataError, FcnquantError


def test_plans_are_the_shard_slices_and_concatenate_back():
    ids = [f"im{i}" for i in range(10)]
    plans = plan_shards(ids, 4)
    assert [p.label for p in plans] == ["1/4", "2/4", "3/4", "4/4"]
    assert [list(p.ids) for p in plans] == [Shard(k, 4).select(ids) for k in range(1, 5)]
    assert [len(p.ids) for p in plans] == [2, 3, 2, 3]  # floor((k*10)/4) boundaries: 0, 2, 5, 7, 10
    assert [i for p in plans for i in p.ids] == ids
    assert [len(p.ids) for p in plan_shards(ids[:3], 8)] == [1, 1, 1]  # never an empty shard
    with pytest.raises(FcnquantError):
        plan_shards(ids, 0)


def test_each_shard_is_taken_once_and_none_missing():
    r: ShardResults[str] = ShardResults(3)
    r.add(2, "b")
    r.add(1, "a")
    with pytest.raises(FcnquantError, match="shard\\(s\\) 3 of 3"):
        r.ordered()
    r.add(3, "c")
    with pytest.raises(FcnquantError, match="twice"):
        r.add(2, "b again")
    assert r.ordered() == ["a", "b", "c"]


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


def test_shard_dataset_has_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = Dataset(root=tmp_path.__class__("rel"), split="val", ids=["a", "b"],
                 images={"a": tmp_path.__class__("rel/a.jpg"), "b": tmp_path.__class__("rel/b.jpg")})
    sub = shard_dataset(ds, ["b"])
    assert sub.ids == ["b"] and list(sub.images) == ["b"] and sub.images["b"] == tmp_path / "rel" / "b.jpg"
    with pytest.raises(DataError):
        shard_dataset(ds, ["zz"])


def test_cli_refuses_ray_with_a_single_shard(tmp_path, capsys):
    from fcnquant.cli import main
    from fcnquant.demo_models import demo_model_path

    model = str(demo_model_path("fcn8s"))
    stats = str(tmp_path / "s.npz")
    assert main(["calibrate", model, "--ray", "--shard", "1/2", "--save-stats", stats]) == 2
    assert main(["calibrate", model, "--ray", "--from-stats", stats]) == 2
    assert main(["calibrate", model, "--shards", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("--ray runs every shard of the collection on the cluster") == 2
    assert "--shards sets the number of shards of a --ray run: add --ray" in err
    assert list(tmp_path.iterdir()) == []
