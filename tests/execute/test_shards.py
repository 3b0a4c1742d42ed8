"""Shard plans and shard results (fcnquant.execute.shards); no Ray needed."""
from __future__ import annotations

import pytest

from fcnquant.data import Dataset
from fcnquant.execute import Shard, ShardResults, plan_shards, shard_dataset
from fcnquant.errors import DataError, FcnquantError


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


def test_shard_dataset_has_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = Dataset(root=tmp_path.__class__("rel"), split="val", ids=["a", "b"],
                 images={"a": tmp_path.__class__("rel/a.jpg"), "b": tmp_path.__class__("rel/b.jpg")})
    sub = shard_dataset(ds, ["b"])
    assert sub.ids == ["b"] and list(sub.images) == ["b"] and sub.images["b"] == tmp_path / "rel" / "b.jpg"
    with pytest.raises(DataError):
        shard_dataset(ds, ["zz"])

