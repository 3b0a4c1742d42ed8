"""The compiled one-pass observer kernel against the numpy observers (the reference), and the numpy fallback."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fcnquant.calibrate.stats import TensorStats
from fcnquant.observers import HistogramObserver, MinMaxObserver, NonFiniteError, fused, kernel

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="fcnquant._native not built, or disabled")


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 200_003  # odd, not a multiple of any unroll
    relu = np.maximum(rng.standard_normal(n) * 3, 0).astype(np.float32)
    signed = (rng.standard_normal(n) * np.exp(rng.uniform(-20, 20, n))).astype(np.float32)
    signed[:100] = -0.0
    signed[100:200] = 0.0
    sub = (rng.uniform(-1, 1, n) * 1e-39).astype(np.float32)  # subnormal float32
    sub[::7] = np.float32(1.4e-45)  # the smallest subnormal
    sub[::11] = -np.float32(1.4e-45)
    extremes = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny, 0.0],
                        np.float32)
    return {"random": rng.standard_normal(n).astype(np.float32), "relu": relu, "signed": signed,
            "subnormal": sub, "extremes": extremes, "one": np.array([-2.5], np.float32),
            "float64": rng.standard_normal(1001) * 1e3}


def _reference(x: np.ndarray, m: int = 10, skip: bool = False) -> tuple[HistogramObserver, MinMaxObserver]:
    h, mm = HistogramObserver(m, skip_nonfinite=skip), MinMaxObserver(skip_nonfinite=skip)
    h.update(x)
    mm.update(x)
    return h, mm


def _fused(x: np.ndarray, m: int = 10, skip: bool = False, cls=fused.LaneHistogram):
    h, mm = cls(m, skip_nonfinite=skip), MinMaxObserver(skip_nonfinite=skip)
    fused.update_stats(h, mm, x)
    return h, mm


CLASSES = [fused.LaneHistogram, HistogramObserver]  # the compiled kernel (two int32 lanes) / numpy


def _same(a: tuple[HistogramObserver, MinMaxObserver], b: tuple[HistogramObserver, MinMaxObserver]) -> None:
    np.testing.assert_array_equal(a[0].counts, b[0].counts)
    assert a[0].nonfinite == b[0].nonfinite
    for key in ("min", "max", "count", "nonfinite"):
        va, vb = getattr(a[1], key), getattr(b[1], key)
        assert va == vb and np.signbit(va) == np.signbit(vb), key  # bit-identical, signed zero included


@needs_kernel
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kind,m", [(k, m) for k in _inputs() for m in (0, 10)] + [("signed", 14)])
def test_kernel_counts_and_extremes_equal_numpy(kind, m, cls):
    x = _inputs()[kind]
    got = _fused(x, m, cls=cls)
    _same(got, _reference(x, m))
    # and against an independent bincount of the bit patterns
    bits = np.asarray(x, np.float32).reshape(-1).view(np.uint32).astype(np.int64)
    np.testing.assert_array_equal(got[0].counts, np.bincount(bits >> (23 - m), minlength=1 << (9 + m)))


@needs_kernel
@pytest.mark.parametrize("kind,m", [(k, m) for k in _inputs() for m in (0, 10)])
def test_one_lane_kernel_counts_and_extremes_equal_numpy(kind, m):
    x = np.asarray(_inputs()[kind], np.float32).reshape(-1)
    ref_h, ref_m = _reference(x, m)
    counts = np.zeros(ref_h.num_bins, np.int64)
    lo, hi = kernel.observe(x, counts, ref_h.shift)
    np.testing.assert_array_equal(counts, ref_h.counts)
    assert (lo, hi) == (ref_m.min, ref_m.max) and np.signbit(lo) == np.signbit(ref_m.min)


@needs_kernel
def test_kernel_reads_the_same_memory_as_float_and_bits():
    x = np.array([3.0, -1.0, 0.5, -0.0, 7.25], np.float32)
    c = np.zeros(1 << 19, np.int64)
    assert kernel.observe(x, c, 13) == (-1.0, 7.25)
    assert c.sum() == 5 and c[x.view(np.uint32) >> 13].min() >= 1


@needs_kernel
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kernel_nonfinite_raises_with_state_unchanged(bad, cls):
    x = _inputs()["signed"].copy()
    x[12345] = bad
    h, mm = _fused(_inputs()["relu"], cls=cls)
    counts, lo, hi, n = h.counts.copy(), mm.min, mm.max, mm.count
    with pytest.raises(NonFiniteError) as exc:
        fused.update_stats(h, mm, x)
    assert exc.value.count == 1
    np.testing.assert_array_equal(h.counts, counts)
    assert (mm.min, mm.max, mm.count) == (lo, hi, n)


@needs_kernel
@pytest.mark.parametrize("cls", CLASSES)
def test_kernel_nonfinite_skipped_equals_numpy(cls):
    x = _inputs()["signed"].copy()
    x[[5, 600, 70_000]] = [np.nan, np.inf, -np.inf]
    x[7] = np.float32(-3e38)  # the finite minimum is still found
    _same(_fused(x, skip=True, cls=cls), _reference(x, skip=True))
    all_bad = np.array([np.nan, np.inf], np.float32)
    _same(_fused(all_bad, skip=True, cls=cls), _reference(all_bad, skip=True))
    # a batch with NaN skipped, then clean batches: same as numpy fed the same batches
    h, mm = cls(skip_nonfinite=True), MinMaxObserver(skip_nonfinite=True)
    rh, rm = HistogramObserver(skip_nonfinite=True), MinMaxObserver(skip_nonfinite=True)
    for batch in (x, _inputs()["relu"], x[:1000]):
        fused.update_stats(h, mm, batch)
        rh.update(batch)
        rm.update(batch)
    _same((h, mm), (rh, rm))


@needs_kernel
def test_lanes_fold_before_int32_could_overflow(monkeypatch):
    """With a tiny fold threshold the lanes are folded inside and between updates; counts stay exact."""
    monkeypatch.setattr(fused, "FOLD_AT", 1000)
    x = _inputs()["relu"][:50_001]  # ~half zeros: bin 0 gets far more than 1000 counts
    h, mm = _fused(x, 2)
    _same((h, mm), _reference(x, 2))
    h2 = fused.LaneHistogram(2)
    for s in range(0, x.size, 777):
        fused.update_stats(h2, MinMaxObserver(), x[s:s + 777])
    np.testing.assert_array_equal(h2.counts, _reference(x, 2)[0].counts)


@needs_kernel
def test_lane_histogram_merges_and_round_trips_its_state():
    x, y = _inputs()["signed"], _inputs()["relu"]
    a, b = _fused(x)[0], _fused(y)[0]
    a.merge(b)  # both have pending lanes
    ref = _reference(np.concatenate([x, y]))[0]
    np.testing.assert_array_equal(a.counts, ref.counts)
    back = HistogramObserver.from_state(_fused(x)[0].state())
    np.testing.assert_array_equal(back.counts, _reference(x)[0].counts)
    assert fused.new_histogram().__class__ is fused.LaneHistogram


@needs_kernel
def test_kernel_batches_merge_to_the_single_pass():
    x = _inputs()["signed"]
    single = TensorStats.new()
    single.update(x)
    parts = []
    for a, b in [(0, 17), (17, 50_000), (50_000, 50_001), (50_001, x.size)]:
        ts = TensorStats.new()
        for s in range(a, b, 9_999):
            ts.update(x[s:min(s + 9_999, b)])
        parts.append(ts)
    merged = TensorStats.new()
    for k in [2, 0, 3, 1]:
        merged.merge(parts[k])
    ref_h, ref_m = _reference(x)
    for ts in (single, merged):
        _same((ts.hist, ts.minmax), (ref_h, ref_m))


def test_numpy_fallback_gives_the_same_state(monkeypatch):
    x = _inputs()["signed"]
    want = _fused(x) if kernel.available() else _reference(x)
    monkeypatch.setattr(kernel, "NATIVE", None)
    assert not fused.compiled() and type(fused.new_histogram()) is HistogramObserver
    _same(_fused(x, cls=HistogramObserver), want)
    ts = TensorStats.new()
    ts.update(x)
    _same((ts.hist, ts.minmax), want)
    with pytest.raises(RuntimeError):
        kernel.observe(x, np.zeros(1 << 19, np.int64), 13)


def test_without_the_extension_the_package_falls_back_to_numpy():
    """A fresh interpreter where the compiled extension cannot be imported (not built): statistics still work,
    through the numpy observers, and so do the drift sums."""
    code = (
        "import sys, numpy as np\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'fcnquant._native': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fcnquant.observers import kernel, fused\n"
        "from fcnquant.calibrate.stats import TensorStats\n"
        "from fcnquant.compare.drift import kernel as drift_kernel, metrics\n"
        "assert kernel.NATIVE is None and not fused.compiled() and drift_kernel.drift_sums is None\n"
        "ts = TensorStats.new(); x = np.arange(-5, 6, dtype=np.float32); ts.update(x)\n"
        "assert (ts.min, ts.max, ts.count) == (-5.0, 5.0, 11) and ts.hist.total == 11\n"
        "acc = metrics.DriftAccumulator(); acc.update(x, x + np.float32(1)); r = acc.result()\n"
        "assert r.count == 11 and r.mse == 1.0 and r.max_abs == 1.0\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_disable_env_turns_the_kernel_off():
    code = "from fcnquant.observers import fused; print(fused.compiled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, kernel.DISABLE_ENV: "1"})
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


@needs_kernel
@pytest.mark.parametrize("kind", ["random", "relu", "signed", "subnormal", "extremes", "one"])
def test_state_read_from_the_lanes_equals_the_folded_state(kind):
    x = _inputs()[kind]
    ref, _ = _reference(np.concatenate([x, x[: x.size // 2]]))
    h = fused.LaneHistogram(10)
    fused.update_stats(h, MinMaxObserver(), x)
    fused.update_stats(h, MinMaxObserver(), x[: x.size // 2])
    fast = h.state()  # counts never touched: read from the lanes
    assert not h._counts_used and h._pending == x.size + x.size // 2
    want = ref.state()
    for key in want:
        assert fast[key].dtype == want[key].dtype and np.array_equal(fast[key], want[key]), key
    h.counts  # noqa: B018  (a fold: the dense path from now on)
    for key, value in h.state().items():
        assert np.array_equal(value, want[key]), key
    assert all(v.size == 0 for k, v in fused.LaneHistogram(10).state().items() if k in ("index", "count"))


@needs_kernel
def test_views_read_from_the_lanes_equal_the_numpy_observers():
    x = _inputs()["signed"]
    ref, mm = _reference(x)
    h = fused.LaneHistogram(10)
    fused.update_stats(h, MinMaxObserver(), x)
    bins = np.array([0, 5, (x[7:8].view(np.uint32) >> h.shift)[0]], dtype=np.intp)
    assert np.array_equal(h.count_at(bins), ref.count_at(bins)) and h.count_at(bins)[2] >= 1
    assert h.total == ref.total == x.size
    for absolute in (True, False):
        a = h.to_linear(64, absolute=absolute, vmin=mm.min, vmax=mm.max)
        b = ref.to_linear(64, absolute=absolute, vmin=mm.min, vmax=mm.max)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert h.quantile(0.999, vmin=mm.min, vmax=mm.max) == ref.quantile(0.999, vmin=mm.min, vmax=mm.max)
    assert not h._counts_used  # none of these folded the lanes


@needs_kernel
def test_a_fold_inside_observe_is_not_lost_by_the_lane_views(monkeypatch):
    x = _inputs()["relu"]
    monkeypatch.setattr(fused, "FOLD_AT", 50_000)  # several folds inside one update
    h = fused.LaneHistogram(10)
    fused.update_stats(h, MinMaxObserver(), x)
    ref, _ = _reference(x)
    idx, cnt = h.nonzero_bins()
    want = ref.nonzero_bins()
    assert np.array_equal(idx, want[0]) and np.array_equal(cnt, want[1]) and h.total == x.size


def test_new_histogram_follows_the_choice(monkeypatch):
    assert type(fused.new_histogram(compiled=False)) is HistogramObserver
    want = fused.LaneHistogram if kernel.available() else HistogramObserver
    assert type(fused.new_histogram(compiled=True)) is want and type(fused.new_histogram()) is want
    monkeypatch.setattr(kernel, "NATIVE", None)  # unavailable: numpy whatever is asked
    assert type(fused.new_histogram(compiled=True)) is HistogramObserver
    assert type(fused.new_histogram()) is HistogramObserver


@needs_kernel
def test_the_kernels_refuse_buffers_they_would_read_or_write_out_of_bounds():
    """Wrong element types, too few bins for the shift, strided views: an exception, nothing written."""
    x = np.array([1.0, -2.0, 3.0], np.float32)
    native = kernel.NATIVE
    lanes = np.zeros(2 << 19, np.int32)
    with pytest.raises(ValueError):  # shift 13 needs 2**19 bins: one bin short
        native.observe_lanes(x, np.zeros((2 << 19) - 2, np.int32), 13)
    with pytest.raises(ValueError):
        native.observe(x, np.zeros((1 << 19) - 1, np.int64), 13)
    for bad_shift in (0, 32):
        with pytest.raises(ValueError):
            native.observe_lanes(x, lanes, bad_shift)
    with pytest.raises(TypeError):  # float64 values
        native.observe_lanes(x.astype(np.float64), lanes, 13)
    with pytest.raises(TypeError):  # int64 lanes
        native.observe_lanes(x, np.zeros(2 << 19, np.int64), 13)
    with pytest.raises(TypeError):  # unsigned counts: only signed ones are accepted
        native.observe(x, np.zeros(1 << 19, np.uint64), 13)
    with pytest.raises(ValueError):  # fold: lanes must be twice the bins
        native.fold_lanes(np.zeros(6, np.int32), np.zeros(4, np.int64))
    with pytest.raises((BufferError, ValueError)):  # a strided view is not C-contiguous
        native.observe_lanes(np.zeros(8, np.float32)[::2], lanes, 13)
    with pytest.raises((BufferError, ValueError)):  # a read-only array cannot take counts
        ro = np.zeros(2 << 19, np.int32)
        ro.flags.writeable = False
        native.observe_lanes(x, ro, 13)
    assert not lanes.any()
