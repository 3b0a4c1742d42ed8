"""RayExecutor on a real local Ray instance: calibrate, eval, compare and tune equal single-process runs; errors
and Ctrl-C."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

ray = pytest.importorskip("ray")

from fcnquant.calibrate.collect import collect_stats  # noqa: E402
from fcnquant.calibrate.stats import CalibrationStats  # noqa: E402
from fcnquant.cli import main  # noqa: E402
from fcnquant.data import DataConfig, builtin_dataset, open_dataset, write_synthetic_voc  # noqa: E402
from fcnquant.demo_models import demo_model_path  # noqa: E402
from fcnquant.distributed import RayExecutor  # noqa: E402
from fcnquant.distributed.ray_backend import PROGRESS_ACTOR_PREFIX  # noqa: E402
from fcnquant.errors import DataError  # noqa: E402
from fcnquant.evaluate import evaluate  # noqa: E402
from fcnquant.execute import LocalExecutor, RunConfig  # noqa: E402
from fcnquant.tune import TuneOptions, tune  # noqa: E402
from fcnquant.workflows import calibrate as flow  # noqa: E402
from tests.tune.helpers import FAST, PER_TENSOR, PLANTED  # noqa: E402

MODEL = str(demo_model_path("fcn8s"))
QUIET = RunConfig(progress=False)

pytestmark = pytest.mark.usefixtures("local_ray")


def assert_same_stats(a: CalibrationStats, b: CalibrationStats) -> None:
    assert a.meta() == b.meta()
    for name in a.tensors:
        sa, sb = a.tensors[name].state(), b.tensors[name].state()
        for key in sa:
            assert sa[key].dtype == sb[key].dtype and np.array_equal(sa[key], sb[key]), (name, key)


def table_json(path) -> dict:
    d = json.loads(Path(path).read_text())
    d.pop("created")
    return d


def test_calibrate_api_on_ray_equals_one_process():
    data = DataConfig(split="train", num_images=12)
    local = flow(MODEL, data, run=QUIET)
    on_ray = flow(MODEL, data, run=RayExecutor(shards=3, progress=False))
    (local_table, local_stats), (ray_table, ray_stats) = (local.table, local.stats), (on_ray.table, on_ray.stats)
    assert_same_stats(local_stats, ray_stats)
    a, b = local_table.to_dict(), ray_table.to_dict()
    a.pop("created"), b.pop("created")
    assert a == b


def test_cli_calibrate_and_eval_on_ray_equal_one_process(tmp_path, capsys):
    for tag, extra in (("one", []), ("ray", ["--ray", "--shards", "2"])):
        assert main(["calibrate", MODEL, "--num-images", "8", "--no-progress", "--out-table",
                     str(tmp_path / f"{tag}.json"), "--save-stats", str(tmp_path / f"{tag}.npz")] + extra) == 0
        assert main(["eval", MODEL, "--num-images", "10", "--no-progress", "--json",
                     str(tmp_path / f"{tag}.eval.json")] + extra) == 0
    assert table_json(tmp_path / "one.json") == table_json(tmp_path / "ray.json")
    assert_same_stats(CalibrationStats.load(tmp_path / "one.npz"), CalibrationStats.load(tmp_path / "ray.npz"))
    one, on_ray = (json.loads((tmp_path / f"{t}.eval.json").read_text()) for t in ("one", "ray"))
    assert one["confusion"] == on_ray["confusion"] and one["miou"] == on_ray["miou"] and on_ray["images"] == 10
    # the mIoU from the summed matrix, recomputed by hand (mmseg: classes with an empty union skipped)
    cm = np.array(on_ray["confusion"])
    inter, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
    assert on_ray["miou"] == pytest.approx(100 * np.mean(inter[union > 0] / union[union > 0]), abs=1e-4)
    assert main(["eval", MODEL, "--shards", "2"]) == 2  # --shards needs --ray
    assert "--shards sets the number of shards of a --ray run" in capsys.readouterr().err


def test_eval_api_on_ray_equals_one_process():
    val = open_dataset(builtin_dataset(), "val")
    one = evaluate(MODEL, DataConfig(val, num_images=9), QUIET)
    many = evaluate(MODEL, DataConfig(val, num_images=9), RayExecutor(shards=4, progress=False))
    np.testing.assert_array_equal(one.confusion, many.confusion)
    assert (one.miou, one.pixel_acc, list(one.per_class_iou)) == (many.miou, many.pixel_acc, list(many.per_class_iou))
    np.testing.assert_array_equal(list(one.per_class_iou.values()), list(many.per_class_iou.values()))  # NaN = NaN


def test_a_file_a_worker_cannot_read_names_node_and_path(tmp_path):
    root = write_synthetic_voc(tmp_path / "voc", train=6, val=0, size=64, progress=False)
    ds = open_dataset(root, "train")
    gone = ds.images[ds.ids[4]]
    gone.unlink()  # the driver listed it; no worker can read it
    with pytest.raises(DataError) as err:
        collect_stats(MODEL, ds, RayExecutor(shards=2, progress=False))
    msg = str(err.value)
    assert str(gone) in msg and "shard 2/2" in msg
    assert f"node {ray.util.get_node_ip_address()}" in msg


def _interrupt_once_running(stop: threading.Event) -> None:
    """Interrupts the main thread (as Ctrl-C does) once a shard reported progress."""
    import _thread

    while not stop.is_set():
        for name in ray.util.list_named_actors():
            if name.startswith(PROGRESS_ACTOR_PREFIX):
                try:
                    done = ray.get(ray.get_actor(name).snapshot.remote())[0]
                except Exception:
                    continue
                if done >= 1:
                    _thread.interrupt_main()
                    return
        time.sleep(0.02)


def test_ctrl_c_cancels_the_shards_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "calib.json"
    from fcnquant.distributed.ray_backend import progress_actor

    progress_actor()  # the connection's actor, reset: progress seen from now on is this run's
    stop = threading.Event()
    t = threading.Thread(target=_interrupt_once_running, args=(stop,), daemon=True)
    t.start()
    try:
        code = main(["calibrate", MODEL, "--num-images", "40", "--no-progress", "--ray", "--shards", "2",
                     "--out-table", str(out), "--save-stats", str(tmp_path / "s.npz")])
    finally:
        stop.set()
        t.join()
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no table, no statistics, no temporary file
    deadline = time.time() + 20  # the cancelled tasks give their CPUs back: the cluster's work has stopped
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2


def report_dict(report) -> dict:
    d = report.to_dict()
    d.pop("seconds")
    return d


def test_compare_on_ray_equals_one_process_bit_for_bit(demo_int8):
    from fcnquant.compare import CompareOptions, compare_models
    from fcnquant.execute import LocalExecutor

    quant, table = demo_int8
    # one onnxruntime thread on both sides (a worker runs as many as its task has CPUs): some float kernels
    # round differently with another thread count
    data, options = DataConfig(num_images=11), CompareOptions(drift_images=5, gallery=3)
    one = compare_models(MODEL, quant, data, LocalExecutor(1, progress=False), options, table=table)
    with RayExecutor(shards=3, threads=1, progress=False) as ex:
        many = compare_models(MODEL, quant, data, ex, options, table=table)
        # one pass over the 11 images in 3 contiguous shards (final metrics on each, drift on its share of the 5)
        assert [r.images for r in ex.reports] == [3, 4, 4]
    batched = compare_models(MODEL, quant, data, RunConfig(LocalExecutor(1, progress=False), batch_size=2),
                             options, table=table)  # exact sums per image: batching changes no bit
    assert report_dict(many) == report_dict(one) == report_dict(batched)  # final, drift, histograms, gallery
    assert one.final.labelled and one.images == 11 and len(one.histograms) > 0 and len(one.gallery) == 3
    assert [g.panels for g in many.gallery] == [g.panels for g in one.gallery]
    # the final mIoU is the one fcnquant eval computes
    val = open_dataset(builtin_dataset(), "val")
    assert many.final.miou_quant == evaluate(str(quant), DataConfig(val, num_images=11), QUIET).miou


def test_cli_compare_on_ray_writes_the_same_json(demo_int8, tmp_path, capsys):
    quant, _ = demo_int8
    for tag, extra in (("one", []), ("ray", ["--ray", "--shards", "2"])):
        assert main(["compare", MODEL, str(quant), "--num-images", "6", "--drift-images", "3", "--no-progress",
                     "--threads", "1", "--json", str(tmp_path / f"{tag}.json")] + extra) == 0
    one, on_ray = (json.loads((tmp_path / f"{t}.json").read_text()) for t in ("one", "ray"))
    one.pop("seconds"), on_ray.pop("seconds")
    assert one == on_ray
    assert main(["compare", MODEL, str(quant), "--shards", "2"]) == 2
    assert "--shards sets the number of shards of a --ray run" in capsys.readouterr().err


def test_ctrl_c_in_compare_on_ray_writes_no_report(demo_int8, tmp_path, capsys):
    from fcnquant.distributed.ray_backend import progress_actor

    quant, _ = demo_int8
    progress_actor()  # reset: progress seen from now on is this run's
    stop = threading.Event()
    t = threading.Thread(target=_interrupt_once_running, args=(stop,), daemon=True)
    t.start()
    try:
        code = main(["compare", MODEL, str(quant), "--num-images", "40", "--no-progress", "--ray", "--shards", "2",
                     "--json", str(tmp_path / "c.json"), "--report", str(tmp_path / "c.html")])
    finally:
        stop.set()
        t.join()
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2



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
