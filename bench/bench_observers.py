"""Micro-benchmark of the calibration numerics (not a test): observer cost per value, method cost per tensor.

    python bench/bench_observers.py [--values 30000000]

Feeds fcn8s-like activations (ReLU outputs with ~half zeros, signed Add outputs) of --values values in total
through the numpy reference observers and the compiled one-pass kernel (``TensorStats.update``; numpy where
fcnquant._native is not built or FCNQUANT_NO_NATIVE=1) and reports ns per value, then times re-binning, KL, percentile and MSE on one
tensor's statistics. Prints the load average before and after.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from fcnquant.calibrate.kl import kl_divergences
from fcnquant.calibrate.methods import compute_range
from fcnquant.calibrate.mse import mse_errors
from fcnquant.calibrate.stats import TensorStats
from fcnquant.observers import HistogramObserver, MinMaxObserver, fused


def _tensors(total: int, seed: int = 0) -> list[np.ndarray]:
    """fcn8s-like tensor sizes at 320x320 (channels x spatial), scaled to `total` values."""
    shapes = [(64, 320, 320)] * 2 + [(128, 160, 160)] * 2 + [(256, 80, 80)] * 3 + [(512, 40, 40)] * 3 + \
             [(512, 20, 20)] * 3 + [(21, 40, 40), (21, 20, 20), (21, 320, 320)]
    sizes = np.array([np.prod(s) for s in shapes], dtype=np.float64)
    sizes = np.maximum((sizes * total / sizes.sum()).astype(int), 1)
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        x = (rng.standard_normal(n) * rng.uniform(0.5, 20)).astype(np.float32)
        out.append(np.maximum(x, 0) if k < len(sizes) - 3 else x)
    return out


class _NumpyBoth:
    """The numpy reference observers updated one after the other (three passes over the tensor)."""

    def __init__(self) -> None:
        self.h, self.m = HistogramObserver(), MinMaxObserver()

    def update(self, x: np.ndarray) -> None:
        self.h.update(x)
        self.m.update(x)


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def _best(fn, reps: int = 3, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=30_000_000, help="activation values per 'image'")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per observer (best is reported)")
    args = ap.parse_args()
    xs = _tensors(args.values)
    n = sum(x.size for x in xs)
    print(f"{len(xs)} tensors, {n / 1e6:.1f} M values")

    def run(make):
        obs = [make() for _ in xs]

        def go():
            for o, x in zip(obs, xs):
                o.update(x)
        return go

    print(f"load average: {_load()}")
    print(f"compiled kernel (fcnquant._native): {'in use' if fused.compiled() else 'NOT available'}")
    results = {}
    for label, make in [("HistogramObserver.update", HistogramObserver), ("MinMaxObserver.update", MinMaxObserver),
                        ("numpy reference (both)", _NumpyBoth), ("TensorStats.update (both)", TensorStats.new)]:
        t = _best(run(make), args.reps)
        cpu = _best(run(make), args.reps, time.thread_time)  # this thread's CPU time: robust to other jobs
        results[label] = t / n * 1e9
        print(f"{label:28s} {t / n * 1e9:6.2f} ns/value wall, {cpu / n * 1e9:6.2f} ns/value CPU  "
              f"({t * 1e3:.0f} ms per {n / 1e6:.0f} M values)")
    if fused.compiled():
        stats = [TensorStats.new() for _ in xs]
        for ts, x in zip(stats, xs):
            ts.update(x)
        t0 = time.perf_counter()
        for ts in stats:
            _ = ts.hist.counts  # folds the int32 lanes into the int64 counts (once per tensor, when read)
        fold = (time.perf_counter() - t0) / len(stats)
        print(f"{'lane fold (once per tensor)':28s} {fold * 1e3:6.2f} ms per tensor, when the statistics are read")
        print(f"one-pass kernel: {results['TensorStats.update (both)']:.2f} ns/value vs numpy reference "
              f"{results['numpy reference (both)']:.2f} ns/value "
              f"({results['numpy reference (both)'] / results['TensorStats.update (both)']:.1f}x); target <= 1.0")
    print(f"load average: {_load()}")
    naive = _best(lambda: [np.bincount(np.abs(x).view(np.uint32) >> 13, minlength=1 << 19) for x in xs])
    print(f"{'naive abs+bincount':28s} {naive / n * 1e9:6.2f} ns/value")

    ts = TensorStats.new()
    ts.update(xs[0])
    counts, edges = ts.linear(2048)
    for label, fn in [("to_linear(2048)", lambda: ts.linear(2048)),
                      ("kl_divergences(2048 bins)", lambda: kl_divergences(counts)),
                      ("compute_range kl", lambda: compute_range("kl", ts)),
                      ("compute_range percentile", lambda: compute_range("percentile", ts)),
                      ("mse_errors(2048 bins)", lambda: mse_errors(counts, edges[1])),
                      ("compute_range mse", lambda: compute_range("mse", ts))]:
        print(f"{label:28s} {_best(fn, 5) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
