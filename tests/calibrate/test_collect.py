"""The collection loop on a tiny FCN and tiny synthetic images, checked against numpy over the activations;
models whose weights are external data collect the same statistics."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from PIL import Image

from fcnquant.calibrate.collect import CollectOptions, collect_stats
from fcnquant.data import DataConfig
from fcnquant.execute import LocalExecutor, RunConfig, Shard
from fcnquant.calibrate.stats import merge_stats
from fcnquant.calibrate.table import build_table
from fcnquant.data import get_preset, iter_batches, open_dataset
from fcnquant.errors import CalibrationError, DataError
from fcnquant.runtime import with_outputs
from tests.calibrate.helpers import OBSERVED, tiny_fcn


def collect(model, ds, ids, preset=None, batch=1, *, shard=None, executor=None, **options):
    """collect_stats over exactly ``ids`` of ``ds`` (all of them for None), quietly."""
    data = DataConfig(ds, ids=ids, preset=preset)
    return collect_stats(model, data, RunConfig(executor, batch_size=batch, progress=False),
                         CollectOptions(**options), shard=shard)


def reference_activations(model_path, dataset, ids):
    """Independent: numpy preprocessing per image, onnxruntime with every observed tensor as a graph output."""
    m = onnx.load(str(model_path))
    for name in OBSERVED[1:-1]:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    preset = get_preset("awesome", model_hw=(32, 32))
    acts = {n: [] for n in OBSERVED}
    for i in ids:
        x = preset.transform(dataset.load_image(i))[0][None]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
        outs["input"] = x
        for n in OBSERVED:
            acts[n].append(outs[n].ravel())
    return {n: np.concatenate(v) for n, v in acts.items()}


def test_minmax_and_histograms_equal_numpy_over_all_activations(model, voc):
    ids = voc.ids[:5]
    stats = collect(model, voc, ids, None)
    ref = reference_activations(model, voc, ids)
    assert list(stats.tensors) == OBSERVED
    assert stats.image_ids == ids
    table = build_table(stats, "minmax", "ort-cpu")
    for name, values in ref.items():
        ts = stats.tensors[name]
        assert ts.min == np.min(values) and ts.max == np.max(values), name
        assert ts.count == values.size
        e = table.tensors[name]
        assert (e.min, e.max, e.lo, e.hi) == (np.min(values), np.max(values), np.min(values), np.max(values))
        # every value went into the histogram exactly once: bincount of the float32 bit pattern
        expected = np.bincount(values.view(np.uint32) >> ts.hist.shift, minlength=ts.hist.num_bins)
        np.testing.assert_array_equal(ts.hist.counts, expected)


def _assert_same(a, b):
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        sa, sb = a.tensors[name].state(), b.tensors[name].state()
        for key in sa:
            np.testing.assert_array_equal(sa[key], sb[key], err_msg=f"{name}.{key}")
            assert sa[key].dtype == sb[key].dtype


def test_batch_size_and_overlap_do_not_change_the_statistics(model, voc):
    ids = voc.ids[:5]
    one = collect(model, voc, ids, None, 1, overlap=False, threads=1)
    _assert_same(one, collect(model, voc, ids, None, 2, overlap=True))
    _assert_same(one, collect(model, voc, ids, None, 3, overlap=False))


@pytest.mark.parametrize("compiled", [False, True])
def test_observing_in_line_on_several_threads_gives_the_serial_statistics(model, voc, compiled):
    """A batch's tensors shared by 2 or 3 threads (and the next batch read by one of them): the statistics of one
    thread, bit for bit, which equal the independent counts over every activation."""
    from fcnquant.observers import kernel

    if compiled and not kernel.available():
        pytest.skip("fcnquant._native not built, or disabled")
    ids = voc.ids[:5]
    serial = collect(model, voc, ids, None, 1, overlap=False, threads=1, compiled=compiled)
    for threads, batch in ((2, 1), (3, 2), (2, 3)):
        _assert_same(serial, collect(model, voc, ids, None, batch, overlap=False, threads=threads,
                                     compiled=compiled))
    for name, values in reference_activations(model, voc, ids).items():
        expected = np.bincount(values.view(np.uint32) >> 13, minlength=1 << 19)
        np.testing.assert_array_equal(serial.tensors[name].hist.counts, expected)


def test_the_default_overlaps_only_off_the_cpu():
    cpu, cuda = ("CPUExecutionProvider",), ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert not CollectOptions().overlapped(cpu) and CollectOptions().overlapped(cuda)
    assert CollectOptions(overlap=True).overlapped(cpu) and not CollectOptions(overlap=False).overlapped(cuda)
    assert CollectOptions(threads=3).observer_threads() == 3
    assert 1 <= CollectOptions().observer_threads() <= 4
    with pytest.raises(DataError, match="at least 1"):
        CollectOptions(threads=0)


def test_compiled_and_numpy_observers_give_the_same_statistics_and_table(model, voc):
    """The choice only picks how the statistics are computed: the compiled kernel and the numpy observers give
    the same statistics bit for bit on the same images, hence the same table."""
    from fcnquant.observers import HistogramObserver, kernel
    from fcnquant.observers.fused import LaneHistogram

    if not kernel.available():
        pytest.skip("fcnquant._native not built, or disabled")
    ids = voc.ids[:4]
    numpy_stats = collect(model, voc, ids, None, 2, compiled=False)
    kernel_stats = collect(model, voc, ids, None, 2, compiled=True)
    assert {type(ts.hist) for ts in numpy_stats.tensors.values()} == {HistogramObserver}
    assert {type(ts.hist) for ts in kernel_stats.tensors.values()} == {LaneHistogram}
    _assert_same(numpy_stats, kernel_stats)
    for name, values in reference_activations(model, voc, ids).items():  # both equal the independent counts
        expected = np.bincount(values.view(np.uint32) >> 13, minlength=1 << 19)
        np.testing.assert_array_equal(numpy_stats.tensors[name].hist.counts, expected)
    for method in ("kl", "percentile", "mse"):
        assert (build_table(numpy_stats, method, created="x").to_dict()
                == build_table(kernel_stats, method, created="x").to_dict())


def test_the_default_observes_through_the_compiled_kernel_where_it_is_built(model, voc, monkeypatch):
    """Default: the compiled kernel when the extension is there (even for one image), numpy when it is not."""
    from fcnquant.observers import HistogramObserver, fused, kernel

    one = collect(model, voc, voc.ids[:1], None)
    want = fused.LaneHistogram if kernel.available() else HistogramObserver
    assert {type(ts.hist) for ts in one.tensors.values()} == {want}
    monkeypatch.setattr(kernel, "NATIVE", None)
    without = collect(model, voc, voc.ids[:1], None)
    assert {type(ts.hist) for ts in without.tensors.values()} == {HistogramObserver}
    _assert_same(one, without)


def test_fixed_batch_model_pads_the_last_batch_without_counting_it(tmp_path, voc):
    ids = voc.ids[:3]
    fixed = collect(tiny_fcn(tmp_path / "b2.onnx", batch="2"), voc, ids, None)
    dynamic = collect(tiny_fcn(tmp_path / "dyn.onnx"), voc, ids, None)
    for name in OBSERVED:  # same weights (same seed): identical statistics, 3 images counted, not 4
        np.testing.assert_array_equal(fixed.tensors[name].hist.counts, dynamic.tensors[name].hist.counts)
        a, b = fixed.tensors[name], dynamic.tensors[name]
        assert (a.min, a.max, a.count) == (b.min, b.max, b.count)
    assert fixed.tensors["input"].count == 3 * 3 * 32 * 32


def test_merged_shards_equal_the_single_run_bit_for_bit(model, voc):
    ids = voc.ids
    full = collect(model, voc, ids, None)
    _assert_same(full, collect(model, voc, ids, None, executor=LocalExecutor(shards=3, progress=False)))
    parts = [collect(model, voc, ids, None, shard=f"{i}/3") for i in (3, 1, 2)]
    assert [p.shard for p in parts] == ["3/3", "1/3", "2/3"]
    assert sorted(i for p in parts for i in p.image_ids) == sorted(ids)
    merged = merge_stats(parts)
    _assert_same(full, merged)
    assert merged.image_ids == full.image_ids and merged.shard is None
    assert build_table(merged, "kl", created="x").to_dict() == build_table(full, "kl", created="x").to_dict()


def test_shard_slices():
    ids = [str(i) for i in range(10)]
    slices = [Shard(i, 4).select(ids) for i in range(1, 5)]
    assert slices == [["0", "1"], ["2", "3", "4"], ["5", "6"], ["7", "8", "9"]]
    assert Shard.parse("2/4") == Shard(2, 4)
    for bad in ("0/4", "5/4", "1/0", "a/b", "3"):
        with pytest.raises(DataError):
            Shard.parse(bad)


def test_zero_images_is_a_clear_error(model, voc):
    with pytest.raises(DataError, match="no calibration images"):
        collect(model, voc, [], None)
    with pytest.raises(DataError, match="shard 1/3 of 2 image"):  # slices of 2 ids: [], [id0], [id1]
        collect(model, voc, voc.ids[:2], None, shard="1/3")


NAN_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
nan (float[1,3,32,32] input) => (float[1,3,32,32] output) {
    t = Add (input, two)
    y = Log (t)
    output = Relu (y)
}
"""


@pytest.fixture()
def nan_case(tmp_path):
    """Two plain images: 'gray' is fine, 'dark' has black pixels, whose Log(x + 2) is NaN after normalisation."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / "gray.png")
    dark = np.full((32, 32, 3), 128, np.uint8)
    dark[:4, :4] = 0
    Image.fromarray(dark).save(folder / "dark.png")
    m = onnx.parser.parse_model(NAN_MODEL)
    m.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    onnx.save(m, str(tmp_path / "nan.onnx"))
    return tmp_path / "nan.onnx", open_dataset(folder)


def _log_reference(ds, path):
    """The Log output 'y' for both images, computed by onnxruntime (numpy's log differs in the last ulp)."""
    m = onnx.load(str(path))
    m.graph.output.append(onnx.ValueInfoProto(name="y"))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    preset = get_preset("awesome", model_hw=(32, 32))
    return np.stack([sess.run(["y"], {"input": preset.transform(ds.load_image(i))[0][None]})[0]
                     for i in ("gray", "dark")])


def test_nan_activation_error_names_tensor_and_image(nan_case):
    path, ds = nan_case
    bad = int((~np.isfinite(_log_reference(ds, path))).sum())  # the R and G channels of the 4x4 black patch
    assert bad == 32
    with pytest.raises(CalibrationError, match=rf"tensor 'y' has {bad} NaN/Inf value\(s\) on image\(s\) dark;"):
        collect(path, ds, ["gray", "dark"], None)


def test_skip_nonfinite_counts_and_keeps_the_finite_values(nan_case, caplog):
    path, ds = nan_case
    stats = collect(path, ds, ["gray", "dark"], None, skip_nonfinite=True)
    y = _log_reference(ds, path)
    finite = y[np.isfinite(y)]
    bad = y.size - finite.size
    ts = stats.tensors["y"]
    assert ts.nonfinite == bad and ts.count == finite.size
    assert (ts.min, ts.max) == (finite.min(), finite.max())
    assert stats.tensors["output"].nonfinite == bad and stats.tensors["input"].nonfinite == 0
    assert "dark" in caplog.text and "'y'" in caplog.text


def test_unknown_image_id_fails_before_inference(model, voc):
    with pytest.raises(DataError, match="not in dataset.*nope"):
        collect(model, voc, [voc.ids[0], "nope"], None)


def test_tensor_override_and_unknown_tensor(model, voc):
    stats = collect(model, voc, voc.ids[:1], None, tensors=["p1", "output"])
    assert list(stats.tensors) == ["p1", "output"]
    ref = reference_activations(model, voc, voc.ids[:1])
    assert stats.tensors["output"].max == ref["output"].max()
    from fcnquant.errors import ModelError

    with pytest.raises(ModelError, match="'ghost'"):
        collect(model, voc, voc.ids[:1], None, tensors=["ghost"])


def test_external_data_model_collects_the_same_statistics(tmp_path, synthetic_voc):
    voc = synthetic_voc(train=3, val=0, size=40, seed=5)
    path = tiny_fcn(tmp_path / "m.onnx")
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(str(path)), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (ext.parent / "weights.bin").is_file()
    ds = open_dataset(voc, "train")
    a = collect_stats(path, ds, RunConfig(progress=False))
    b = collect_stats(ext, ds, RunConfig(progress=False))
    assert list(a.tensors) == list(b.tensors) == OBSERVED
    for name in OBSERVED:
        np.testing.assert_array_equal(a.tensors[name].hist.counts, b.tensors[name].hist.counts)
        assert (a.tensors[name].min, a.tensors[name].max) == (b.tensors[name].min, b.tensors[name].max)
    # and the values are the model's: min/max of r1 from an independent session
    sess = ort.InferenceSession(with_outputs(onnx.load(str(path)), ["r1"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    pre = get_preset("awesome", model_hw=(32, 32))
    r1 = np.concatenate([sess.run(["r1"], {"input": bt.images})[0] for bt in iter_batches(ds, pre, batch_size=1)])
    assert (b.tensors["r1"].min, b.tensors["r1"].max) == (float(r1.min()), float(r1.max()))


class _ChannelSums:
    """A test accumulator: the per-channel float64 sums of every batch, in order (merging appends)."""

    def __init__(self, record: bool) -> None:
        self.record, self.sums = record, []

    def update(self, x):
        self.sums.append(np.asarray(x, np.float64).sum(axis=(0, 2, 3)))

    def merge(self, other):
        self.sums += other.sums


def test_extra_accumulators_ride_on_the_collection_pass(model, voc):
    """collect_with_extra: the same statistics as collect_stats, plus extra accumulators fed the real images'
    values of any tensor (observed or not: the MaxPool output p1, the input), merged in shard order."""
    from fcnquant.calibrate.collect import collect_with_extra

    ids = voc.ids[:5]
    extra = {"p": ("p1", _ChannelSums), "x": ("input", _ChannelSums)}
    data = DataConfig(voc, ids=ids)
    stats, accs = collect_with_extra(model, data, RunConfig(batch_size=2, progress=False), CollectOptions(), extra)
    _assert_same(stats, collect(model, voc, ids, None))
    m = onnx.load(str(model))
    sess = ort.InferenceSession(with_outputs(m, ["p1"]).SerializeToString(), providers=["CPUExecutionProvider"])
    preset = get_preset("awesome", model_hw=(32, 32))
    xs = [preset.transform(voc.load_image(i))[0][None] for i in ids]
    ref_p = sum(sess.run(["p1"], {"input": x})[0].astype(np.float64).sum(axis=(0, 2, 3)) for x in xs)
    ref_x = sum(x.astype(np.float64).sum(axis=(0, 2, 3)) for x in xs)
    assert len(accs["p"].sums) == 3  # batches of 2, 2 and 1 images
    np.testing.assert_allclose(sum(accs["p"].sums), ref_p, rtol=1e-6)
    np.testing.assert_allclose(sum(accs["x"].sums), ref_x, rtol=1e-12)
    _, three = collect_with_extra(model, data, RunConfig(LocalExecutor(shards=3, progress=False), batch_size=1,
                                                         progress=False), CollectOptions(), extra)
    _, one = collect_with_extra(model, data, RunConfig(batch_size=1, progress=False), CollectOptions(), extra)
    assert [s.tobytes() for s in three["p"].sums] == [s.tobytes() for s in one["p"].sums]
    assert [a.record for a in (one["p"], three["p"])] == [False, False]  # the first shard's accumulator holds all


def test_the_first_batch_read_beside_the_session_build_is_used_only_when_it_is_right(model, voc, monkeypatch):
    """The first batch is read from the model's declared input while the session is built; a guess the session
    contradicts (another preset), or one that failed, is read again: the statistics never change."""
    import fcnquant.calibrate.collect as collect_module

    ids = voc.ids[:3]
    reference = collect(model, voc, ids, None, 2, overlap=True)
    real_read, real_started = collect_module._read_first, collect_module._started
    outcomes = []
    monkeypatch.setattr(collect_module, "_started",
                        lambda reading, batching: outcomes.append(real_started(reading, batching)) or outcomes[-1])
    _assert_same(reference, collect(model, voc, ids, None, 2, overlap=False))
    assert outcomes[-1] is not None and outcomes[-1][1].ids == ids[:2]  # read beside the build, and used

    def other_preset(ctx, data, facts, batch_size):
        batching, batches, first = real_read(ctx, data, facts, batch_size)
        batches.close()
        return (get_preset("awesome", size=16),) + batching[1:], batches, first

    monkeypatch.setattr(collect_module, "_read_first", other_preset)
    _assert_same(reference, collect(model, voc, ids, None, 2, overlap=False))
    assert outcomes[-1] is None

    def failing(*_):
        raise OSError("disk error")

    monkeypatch.setattr(collect_module, "_read_first", failing)
    _assert_same(reference, collect(model, voc, ids, None, 2, overlap=False))
    assert outcomes[-1] is None


def test_an_unreadable_first_image_is_the_loops_error(model, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(folder / "b.png")
    ds = open_dataset(folder)
    with pytest.raises(DataError) as in_line:
        collect(model, ds, ["a", "b"], None, overlap=False)
    with pytest.raises(DataError) as overlapped:
        collect(model, ds, ["a", "b"], None, overlap=True)
    assert str(in_line.value) == str(overlapped.value) and "a.png" in str(in_line.value)


@pytest.mark.parametrize("threads", [0, 1])
def test_the_sessions_threads_are_the_runs(model, voc, threads, monkeypatch):
    """``RunConfig(threads=N)`` (the CLI's --threads) reaches calibration's session as its intra-op thread count."""
    import fcnquant.calibrate.collect as collect_module

    seen = []
    real = collect_module.make_session
    monkeypatch.setattr(collect_module, "make_session", lambda *a, **k: seen.append(k["threads"]) or real(*a, **k))
    ids = list(voc.ids)[:1]
    collect_stats(model, DataConfig(voc, ids=tuple(ids)), RunConfig(threads=threads, progress=False))
    assert seen == [threads]


def _wide_fcn(path):
    """Conv 3->64 + Relu, Conv 64->64 + Relu (147 kB of weights: above the size read by reference), Conv 64->3."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
             for n, s in (("w1", (64, 3, 3, 3)), ("w2", (64, 64, 3, 3)), ("w3", (3, 64, 1, 1)))]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["output"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 32, 32])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_weights_read_by_reference_or_from_the_files_bytes_give_the_models_statistics(tmp_path, voc, monkeypatch):
    """Calibration's session reads large weights from the model file (its folder handed to onnxruntime); where
    onnxruntime refuses that form (here: a reference to a missing file) the file's bytes serve; both give the
    min/max onnxruntime computes on the whole model and the same statistics."""
    import fcnquant.calibrate.collect as collect_module

    path = _wide_fcn(tmp_path / "wide.onnx")
    ids = list(voc.ids)[:2]
    folders = []
    real_session, real_reference = collect_module.make_session, collect_module.weights_by_reference
    monkeypatch.setattr(collect_module, "make_session",
                        lambda *a, **k: folders.append(k.get("weights_dir")) or real_session(*a, **k))
    by_reference = collect(path, voc, ids)
    assert folders == [tmp_path]
    monkeypatch.setattr(collect_module, "weights_by_reference", lambda raw, name: real_reference(raw, "gone.onnx"))
    from_bytes = collect(path, voc, ids)
    assert folders == [tmp_path, tmp_path, None]  # refused, then built from the bytes
    _assert_same(by_reference, from_bytes)
    sess = ort.InferenceSession(with_outputs(onnx.load(str(path)), ["r2"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    pre = get_preset("awesome", model_hw=(32, 32))
    r2 = np.concatenate([sess.run(["r2"], {"input": pre.transform(voc.load_image(i))[0][None]})[0] for i in ids])
    assert (by_reference.tensors["r2"].min, by_reference.tensors["r2"].max) == (float(r2.min()), float(r2.max()))
