"""Helpers shared by the bench/ scripts (not part of the fcnquant package; nothing here is imported by it).

Models and data for the benchmarks, onnxruntime's ``quantize_static`` driven as a user would drive it,
measurement subprocesses with peak-memory watching (and a memory cap, so a peer that keeps every activation
in memory is stopped and reported instead of taking the machine down), interleaved latency rounds, machine
facts and Markdown tables.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
GB = 1e9  # reports use decimal units: 1 GB = 10^9 bytes
MB = 1e6

# onnxruntime's calibration methods as its enum names, keyed by the fcnquant method each corresponds to
ORT_METHOD_FOR = {"minmax": "MinMax", "kl": "Entropy", "percentile": "Percentile"}


# --- models and data -------------------------------------------------------------------------------------------
def onnx_input_hw(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """Returns the fixed (H, W) of an ONNX model's first input, or None when dynamic."""
    import onnx

    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    dims = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return (dims[2], dims[3]) if len(dims) == 4 and dims[2] and dims[3] else None


def export_zoo(name: str, out: str | os.PathLike[str], size: int, width: float = 1.0, seed: int = 0) -> Path:
    """Returns ``out`` after exporting zoo model ``name`` (seeded random weights) with ``fcnquant export``.

    Runs in a subprocess so torch is never imported into the measuring process.
    """
    out = Path(out)
    subprocess.run([sys.executable, "-m", "fcnquant", "export", name, "--size", str(size), "--width", repr(width),
                    "--seed", str(seed), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return out


def export_random_fcn8s(out: Path, size: int) -> Path:
    """Returns ``out`` after exporting a full-size fcn8s with seeded random weights at ``size`` x ``size``."""
    return export_zoo("fcn8s", out, size)


def ensure_model(path: str | None, workdir: Path, size: int = 320, name: str = "fcn8s", width: float = 1.0) -> Path:
    """Returns a ``name`` ONNX at ``size`` x ``size``: ``path``, /tmp/<name>.onnx (full width), or a fresh export.

    A candidate whose fixed input is not ``size`` x ``size`` is passed over.
    """
    cands = [path] + ([f"/tmp/{name}.onnx"] if width == 1.0 else [])
    for cand in cands:
        if cand and Path(cand).is_file() and onnx_input_hw(cand) == (size, size):
            return Path(cand)
    tag = "" if width == 1.0 else f"_w{width:g}"
    out = workdir / f"{name}{tag}_{size}.onnx"
    if not out.is_file():
        export_zoo(name, out, size, width)
    return out


def ensure_data(workdir: Path, train: int, val: int = 1, size: int = 360, seed: int = 0) -> Path:
    """Returns a synthetic VOC root in ``workdir`` with ``train``/``val`` images of ``size`` px (made once)."""
    from fcnquant.data import write_synthetic_voc

    root = workdir / f"voc_{train}_{val}_{size}_{seed}"
    if not (root / "VOC2012").is_dir():
        write_synthetic_voc(root, train=train, val=val, size=size, seed=seed, progress=False)
    return root


def load_images(dataset, preset, ids) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Returns the preprocessed (1, 3, H, W) images of ``ids`` and their masks (None without labels)."""
    from fcnquant.data import iter_batches

    xs, masks = [], []
    for batch in iter_batches(dataset, preset, ids, 1):
        xs.append(batch.images)
        masks.append(batch.masks[0] if batch.masks is not None else None)
    return xs, masks


def iter_images(dataset, preset, ids) -> Iterator[np.ndarray]:
    """Yields the preprocessed (1, 3, H, W) float32 images of ``ids`` one at a time (nothing kept)."""
    from fcnquant.data import iter_batches

    for batch in iter_batches(dataset, preset, ids, 1, with_masks=False):
        yield batch.images


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Returns the cosine similarity of two arrays (flattened, float64)."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- onnxruntime's static quantization, as its users call it -----------------------------------------------------
class _Reader:
    """A CalibrationDataReader over an image iterable; counts images and notes when it runs dry."""

    def __init__(self, input_name: str, images: Iterable[np.ndarray], progress_path: str | None = None) -> None:
        self.input_name = input_name
        self.it = iter(images)
        self.count = 0
        self.exhausted_at: float | None = None
        self.progress_path = progress_path

    def get_next(self):
        x = next(self.it, None)
        if x is None:
            if self.exhausted_at is None:
                self.exhausted_at = time.perf_counter()
            return None
        self.count += 1
        if self.progress_path:
            Path(self.progress_path).write_text(str(self.count))
        return {self.input_name: x}


def ort_quantize_static(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    images: Iterable[np.ndarray],
    method: str = "MinMax",
    *,
    per_channel: bool = True,
    cache_path: str | os.PathLike[str] | None = None,
    progress_path: str | None = None,
) -> dict:
    """Returns the timings of onnxruntime ``quantize_static`` writing the QDQ model of ``model`` to ``out``.

    Per-channel QDQ, uint8 activations / int8 weights (onnxruntime's recommended x86 CPU setting),
    ``method`` one of MinMax / Entropy / Percentile / Distribution with onnxruntime's defaults. The model is
    copied first (onnxruntime writes ``<model>-inferred.onnx`` beside its input). Keys: ``wall_s`` (the whole
    call), ``collect_s`` (until the reader ran dry: every image inferred), ``calib_s`` (until onnxruntime wrote
    its range cache: calibration without emission, only with ``cache_path``), ``images``.
    """
    import shutil
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    from fcnquant.runtime import make_session

    sess = make_session(str(model))
    name = sess.get_inputs()[0].name
    del sess

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="bench-ort-") as tmp:
        src = Path(tmp) / "model.onnx"
        shutil.copyfile(model, src)
        reader = Reader(name, images, progress_path)
        if cache_path is not None and Path(cache_path).exists():
            Path(cache_path).unlink()  # an existing cache would skip calibration altogether
        t0, w0 = time.perf_counter(), time.time()
        quantize_static(
            str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            **({"calibration_cache_path": str(cache_path)} if cache_path is not None else {}),
        )
        wall = time.perf_counter() - t0
    res = {"wall_s": wall, "collect_s": (reader.exhausted_at or t0 + wall) - t0, "images": reader.count}
    if cache_path is not None and Path(cache_path).is_file():
        res["calib_s"] = Path(cache_path).stat().st_mtime - w0
    return res


# --- measurement processes ---------------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """Returns this process's user + system CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def max_rss_bytes() -> int:
    """Returns this process's peak resident set size in bytes (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def mem_available_bytes() -> int:
    """Returns the machine's MemAvailable in bytes (0 when unknown)."""
    kib = _proc_kib("/proc/meminfo", "MemAvailable")
    return (kib or 0) * 1024


@dataclass
class ChildResult:
    """What a watched measurement subprocess returned: its JSON result, or why it was stopped."""

    ok: bool
    result: dict = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss_polled: int = 0  # bytes, the largest VmRSS the parent saw
    stopped: str | None = None  # "cap" | "memory" | None
    images_done: int | None = None
    error: str | None = None
    load: tuple[float, float] = (float("nan"), float("nan"))  # 1-minute load average at start and end

    @property
    def peak_rss(self) -> int:
        """Returns the child's own ru_maxrss when it finished, else the largest polled VmRSS (bytes)."""
        return int(self.result.get("max_rss", 0)) or self.peak_rss_polled


def run_watched(
    cmd: Sequence[str],
    *,
    cap_bytes: float,
    floor_bytes: float = 1.0 * GB,
    progress_path: str | None = None,
    poll_s: float = 0.05,
    log_path: str | os.PathLike[str] | None = None,
) -> ChildResult:
    """Returns the ChildResult of running ``cmd``, a process that prints one JSON object as its last stdout line.

    The parent polls the child's VmRSS; above ``cap_bytes``, or when the machine's MemAvailable falls below
    ``floor_bytes`` (the machine is shared), the child is killed and the result says so, with the image count
    the child last wrote to ``progress_path``.
    """
    if progress_path:
        Path(progress_path).unlink(missing_ok=True)
    errf = open(log_path, "w") if log_path else subprocess.DEVNULL
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=errf, text=True)
    peak, stopped = 0, None
    status = f"/proc/{proc.pid}/status"
    try:
        import threading

        out_chunks: list[str] = []
        pump = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
        pump.start()
        while proc.poll() is None:
            rss = (_proc_kib(status, "VmRSS") or 0) * 1024
            peak = max(peak, rss)
            if rss > cap_bytes:
                stopped = "cap"
            elif mem_available_bytes() < floor_bytes and rss > 0.5 * GB:
                stopped = "memory"
            if stopped:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                break
            time.sleep(poll_s)
        pump.join(timeout=10)
    finally:
        if errf is not subprocess.DEVNULL:
            errf.close()
    wall = time.perf_counter() - t0
    load = (load0, os.getloadavg()[0])
    done = None
    if progress_path and Path(progress_path).is_file():
        try:
            done = int(Path(progress_path).read_text() or 0)
        except ValueError:
            done = None
    if stopped:
        return ChildResult(False, wall_s=wall, peak_rss_polled=peak, stopped=stopped, images_done=done, load=load)
    text = "".join(out_chunks).strip()
    if proc.returncode != 0 or not text:
        tail = Path(log_path).read_text()[-2000:] if log_path and Path(log_path).is_file() else ""
        why = f"exit status {proc.returncode}" + (" (killed by signal: kernel OOM?)" if proc.returncode < 0 else "")
        return ChildResult(False, wall_s=wall, peak_rss_polled=peak, images_done=done, error=f"{why}\n{tail}",
                           load=load)
    return ChildResult(True, json.loads(text.splitlines()[-1]), wall_s=wall, peak_rss_polled=peak, images_done=done,
                       load=load)


# --- latency -----------------------------------------------------------------------------------------------------
def interleaved_latency(
    infer: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Returns per key the median and best seconds of ``infer[key]()``, all keys once per round, interleaved.

    Interleaving spreads machine noise evenly over the models being compared.
    """
    for fn in infer.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in infer}
    for _ in range(rounds):
        for k, fn in infer.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: {"median_s": statistics.median(v), "best_s": min(v), "runs": len(v)} for k, v in times.items()}


# --- reporting ---------------------------------------------------------------------------------------------------
def load_average() -> tuple[float, float, float]:
    """Returns the 1, 5 and 15 minute load averages."""
    return os.getloadavg()


def git_commit() -> str:
    """Returns the repository's HEAD commit (short), with ``+changes`` when the package's files differ from it
    (the measurement is then of code no commit holds), or 'unknown'."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "fcnquant"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if changed else "")


def machine_facts() -> dict:
    """Returns CPU, memory, software versions, the repository commit and the current time and load."""
    import onnx
    import onnxruntime

    import fcnquant

    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "isa": isa, "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gb": (_proc_kib("/proc/meminfo", "MemTotal") or 0) * 1024 / GB,
        "mem_available_gb": mem_available_bytes() / GB,
        "python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__, "fcnquant": fcnquant.__version__, "commit": git_commit(),
        "load_average": load_average(),
    }


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """Returns a GitHub Markdown table; ``align`` is one character per column ('l' or 'r', default: l then r)."""
    headers = list(headers)
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


RESULTS = REPO / "bench" / "results"


def results_header(title: str, script: str, order: float = 100) -> dict:
    """Returns the top-level keys of a results file (bench/README.md): title, order, script, date, commit, machine
    and the load average now (``load_start``)."""
    facts = machine_facts()
    return {"format_version": 2, "title": title, "order": order, "script": script, "date_utc": facts["date_utc"],
            "commit": os.environ.get("BENCH_COMMIT") or facts["commit"], "machine": facts,
            "load_start": [round(v, 2) for v in load_average()], "complete": True, "sections": []}


def write_results(name: str, results: dict, folder: Path | None = None) -> Path:
    """Writes ``results`` to ``<folder>/<name>.json`` (default bench/results) atomically, with ``load_end`` set to
    the load average now; returns the path."""
    import json

    from fcnquant._io import atomic_write_text

    results["load_end"] = [round(v, 2) for v in load_average()]
    path = Path(folder or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(results, indent=1) + "\n")
    return path
