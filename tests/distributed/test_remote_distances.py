"""fcnquant tune on a real local Ray instance: the same evaluations, ranking and chosen layers as one process."""
from __future__ import annotations

import json

import onnx
import pytest

pytest.importorskip("ray")

from fcnquant.cli import main  # noqa: E402
from fcnquant.distributed import RayExecutor  # noqa: E402
from fcnquant.execute import LocalExecutor, RunConfig  # noqa: E402
from fcnquant.tune import TuneOptions, tune  # noqa: E402
from tests.tune.helpers import FAST, PER_TENSOR, PLANTED  # noqa: E402

pytestmark = pytest.mark.usefixtures("local_ray")


def _same(a, b) -> None:
    assert [f.name for f in a.float_layers] == [f.name for f in b.float_layers] == [PLANTED]
    assert [(e.step, e.float_layers, e.drop) for e in a.evaluations] == \
        [(e.step, e.float_layers, e.drop) for e in b.evaluations]  # every drop exactly equal
    assert a.ranking.order == b.ranking.order and a.ranking.scores == b.ranking.scores
    assert (a.tune_drop, a.report_drop, a.miou_float_tune) == (b.tune_drop, b.report_drop, b.miou_float_tune)


@pytest.mark.parametrize("rank", ["sensitivity", "isolated"])
def test_tune_on_ray_equals_one_process(tune_voc, planted_fcn8s, tmp_path, rank):
    # one onnxruntime thread on both sides: float kernels may round differently with another thread count
    options = TuneOptions(1.0, rank=rank, **FAST)
    one = tune(planted_fcn8s, tmp_path / "one.onnx", options, tune_voc, LocalExecutor(1, progress=False), PER_TENSOR)
    with RayExecutor("local", shards=2, threads=1, progress=False) as ray_executor:
        many = tune(planted_fcn8s, tmp_path / "ray.onnx", options, tune_voc, RunConfig(ray_executor), PER_TENSOR)
    _same(one, many)
    a, b = onnx.load(str(tmp_path / "one.onnx")), onnx.load(str(tmp_path / "ray.onnx"))
    meta_a, meta_b = ({p.key: p.value for p in m.metadata_props} for m in (a, b))
    for meta in (meta_a, meta_b):
        del meta["fcnquant.table_sha256"]  # the table records when it was created
    assert meta_a == meta_b
    a.ClearField("metadata_props"), b.ClearField("metadata_props")
    assert a.SerializeToString() == b.SerializeToString()  # the same weights and scales, byte for byte


def test_cli_tune_on_ray(tune_voc, planted_fcn8s, tmp_path, capsys):
    args = ["tune", str(planted_fcn8s), "--max-drop", "1", "--data", str(tune_voc), "--per-tensor", "--num-calib", "8",
            "--num-tune", "16", "--rank-images", "4", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a.onnx"), "--json", str(tmp_path / "a.json")]) == 0
    assert main(args + ["--out", str(tmp_path / "b.onnx"), "--json", str(tmp_path / "b.json"), "--ray",
                        "--shards", "2"]) == 0
    a, b = (json.loads((tmp_path / f"{t}.json").read_text()) for t in "ab")
    assert a["float_layers"] == b["float_layers"] == [PLANTED] and a["tune_drop"] == b["tune_drop"]
    assert main(args + ["--out", str(tmp_path / "c.onnx"), "--shards", "2"]) == 2
    assert "--shards sets the number of shards of a --ray run" in capsys.readouterr().err
