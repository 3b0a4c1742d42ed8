"""Equivalence harness: runs a fixed list of fcnquant commands with one checkout's code and records what they wrote.

Every case is one ``python -m fcnquant ...`` subprocess with ``PYTHONPATH=<checkout>``, run in its own fresh folder
under a temporary work folder, on the shipped demo models (copied out of the checkout) and a small synthetic VOC that
the checkout itself generates (``synth-voc``; one case also generates the built-in dataset into a private
``$FCNQUANT_CACHE``). Commands that take ``--threads`` get ``--threads 1``, the ``--ray`` cases run ``--shards 2`` on
a local Ray instance.

Every file a case writes, its stdout and its exit status become artifacts. Each is normalized, hashed (sha256) and
written in normalized form beside the manifest, so two recordings can be compared file by file and the differing
files diffed with ordinary tools. Normalization removes only what legitimately changes between runs:

* text (JSON, HTML, stdout, TensorRT cache, id lists): the values of timing keys (``seconds``, ``images_per_s``,
  ``created``, ...), durations written as ``1.2 s`` / ``12.3 images/s``, the seconds column of tune's evaluation
  table, the work folder, the checkout and temporary folders in paths, Ray node names and pids. A sha256 of a file
  that normalization changed (an int8 model, a calibration table: they hold timing or table-hash metadata) is
  replaced by the sha256 of its normalized form, a ``...sha256`` JSON value that names no file of the run by a
  marker;
* ONNX models: ``metadata_props`` values normalized as text, ``fcnquant.table_sha256`` blanked (the sha256 of a
  table file, which holds the ``created`` time), a ``*sha256`` entry that names no file of the run (the float model
  AdaRound builds in memory, whose metadata holds its run time) replaced by a marker, then re-serialized
  deterministically. A readable ``.txt`` summary
  (metadata, nodes, initializer hashes) is written beside each normalized model for diffing;
* statistics (``.npz``): one line per array (name, dtype, shape, sha256 of the data); the ``meta`` JSON decoded and
  normalized as text;
* HTML reports: inline images replaced by the sha256 of their decoded bytes, then normalized as text;
* folders listed in a case's ``trees`` (the generated datasets): one artifact, the list of (path, sha256 of bytes).

stderr (logging, progress) is kept beside the artifacts for reference but is not part of the manifest.

Usage (the interpreter needs numpy and onnx; the project's venv has them):

    PY=/path/to/.venv/bin/python
    $PY bench/bench_equivalence.py record --checkout /path/to/baseline-checkout --out /tmp/golden/base.json
    $PY bench/bench_equivalence.py record --checkout /path/to/new-checkout --out /tmp/golden/new.json
    $PY bench/bench_equivalence.py diff /tmp/golden/base.json /tmp/golden/new.json     # exit 1 if anything differs

``diff`` prints each differing artifact with the paths of both normalized files (a model's or statistics file's
``.txt`` view) and the first ``--lines`` lines of their unified diff; ``--skip REGEX`` leaves artifacts whose
``CASE/ARTIFACT`` matches out of the verdict (listed, not counted), e.g. ``--skip '/stdout$'`` for CLI wording.

``record`` writes ``OUT`` (``{case: {artifact: sha256}}``), ``OUT_STEM.artifacts/<case>/...`` (normalized files,
stdout/stderr) and ``OUT_STEM.info.json`` (checkout commit, versions, per-case exit status and seconds, the
cross-checks). It exits 1 when a case ends with an unexpected exit status or a cross-check fails (a ``--ray`` case
whose artifacts differ from the local case's, merged shard statistics that differ from one run, ...); the manifest
is written either way. ``--cases REGEX`` runs only the matching cases (and, for a consistent run, whatever they
read must be among them); ``--work DIR`` keeps the raw outputs in a new folder under DIR; the ``list`` command prints
the cases. Record the baseline and the candidate on the same machine: onnxruntime's float results depend on its
intra-op thread count, which defaults to the machine's cores for the commands without ``--threads``.
"""
from __future__ import annotations

import argparse
import base64
import difflib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CASE_TIMEOUT_S = 600

# sha256 of the shipped demo models the cases run on (fcnquant/assets/demo/demo_models.json)
DEMO_MODELS = {
    "fcn8s.onnx": "8acef3be3e95daf709884536801d26a308e5c1d96fc04d500fe430387cdd2802",
    "fcn_r50_d8.onnx": "7c99b038a50588433fc5cd58fec4f6d04e6f317a92efe833f572ab3047685080",
}


@dataclass(frozen=True)
class Case:
    """One ``python -m fcnquant ARGV`` run. ``{M8}``, ``{MR}`` (the demo fcn8s / fcn_r50_d8 copies), ``{DATA}``
    (the synthetic VOC of case synth-voc) and ``{C}`` (the folder holding every case's folder) are substituted."""

    name: str
    argv: tuple[str, ...]
    rc: int = 0
    trees: tuple[str, ...] = ()          # folders (relative to the case folder) hashed as one artifact each
    extra_trees: tuple[tuple[str, str], ...] = ()  # (artifact name, folder with placeholders) outside the case
    note: str = ""


def _c(name: str, *argv: str, **kw) -> Case:
    return Case(name, tuple(argv), **kw)


T1 = ("--threads", "1")
NP = ("--no-progress",)
RAY = ("--ray", "--shards", "2")
CAL = ("calibrate", "{M8}", "--data", "{DATA}", "--num-images", "8", *NP)
EVAL_ARGS = ("--data", "{DATA}", "--num-images", "12", "--json", "eval.json", *T1, *NP)
CMP_ARGS = ("--data", "{DATA}", "--num-images", "12", "--table", "{C}/cal-out-ortcpu/fcn8s.calib.json",
            "--stats", "{C}/cal-kl/stats.npz", "--json", "compare.json", "--report", "compare.html", "--gallery", "3",
            *T1, *NP)
TUNE_ARGS = ("tune", "{M8}", "--data", "{DATA}", "--max-drop", "0.02", "--out", "tuned.onnx", "--json", "tune.json",
             "--report", "tune.html", "--num-calib", "8", "--num-tune", "16", "--num-report", "6", "--rank-images",
             "4", "--target", "npu-pow2", "--per-tensor", *T1, *NP)

CASES: tuple[Case, ...] = (
    # data: the checkout writes the dataset the other cases read
    _c("synth-voc", "synth-voc", "data", "--train", "40", "--val", "12", "--seed", "0", *NP, trees=("data",)),
    # calibration tables, one per method (statistics saved once)
    _c("cal-kl", *CAL, "--method", "kl", "--out-table", "table.json", "--save-stats", "stats.npz",
       "--save-ids", "ids.txt"),
    _c("cal-minmax", *CAL, "--method", "minmax", "--out-table", "table.json"),
    _c("cal-percentile", "calibrate", "{M8}", "--from-stats", "{C}/cal-kl/stats.npz", "--method", "percentile",
       "--percentile", "99.9", "--target", "tensorrt", "--out-table", "table.json", "--trt-cache", "table.cache"),
    _c("cal-mse", "calibrate", "{M8}", "--from-stats", "{C}/cal-kl/stats.npz", "--method", "mse", "--target",
       "npu-pow2", "--out-table", "table.json"),
    _c("cal-percentile-asym", "calibrate", "{M8}", "--from-stats", "{C}/cal-kl/stats.npz", "--method",
       "percentile", "--param", "asymmetric=true", "--out-table", "table.json"),
    _c("cal-balanced", *CAL, "--balanced", "--seed", "3", "--method", "kl", "--out-table", "table.json",
       "--save-ids", "ids.txt"),
    # calibrate and emit in one go
    _c("cal-out-ortcpu", *CAL, "--method", "kl", "--out", "int8.onnx"),
    _c("cal-out-pow2-pt", *CAL, "--method", "kl", "--target", "npu-pow2", "--per-tensor", "--out", "int8.onnx"),
    _c("cal-out-trt-exclude", *CAL, "--method", "percentile", "--target", "tensorrt", "--quantize-output",
       "--exclude", "/pool3/pretrained.0/Conv", "--exclude-op", "Resize", "--out", "int8.onnx"),
    # accuracy recovery
    _c("cal-recover-pow2", *CAL, "--target", "npu-pow2", "--per-tensor", "--recover", "--out", "int8.onnx"),
    _c("cal-recover-adaround", *CAL, "--target", "npu-pow2", "--per-tensor", "--recover", "--adaround",
       "--adaround-iterations", "50", "--out", "int8.onnx"),
    _c("cal-recover-search", "calibrate", "{M8}", "--data", "{DATA}", "--num-images", "4", *NP, "--target",
       "npu-pow2", "--per-tensor", "--recover", "--scale-search", "--bias-correction-error", "auto", "--out",
       "int8.onnx"),
    _c("cal-equalize-bc-ortcpu", *CAL, "--per-tensor", "--equalize", "--bias-correction",
       "--bias-correction-error", "accumulated", "--out", "int8.onnx"),
    _c("cal-r50-recover", "calibrate", "{MR}", "--data", "{DATA}", "--num-images", "4", *NP, "--target",
       "npu-pow2", "--per-tensor", "--recover", "--out", "int8.onnx"),
    # sharded calibration by hand
    _c("cal-shard-1", *CAL, "--shard", "1/2", "--save-stats", "stats.npz"),
    _c("cal-shard-2", *CAL, "--shard", "2/2", "--save-stats", "stats.npz"),
    _c("merge-stats", "merge-stats", "{C}/cal-shard-1/stats.npz", "{C}/cal-shard-2/stats.npz", "--out", "stats.npz"),
    _c("cal-from-merged", "calibrate", "{M8}", "--from-stats", "{C}/merge-stats/stats.npz", "--method", "kl",
       "--out-table", "table.json"),
    # emission from a saved table
    _c("quantize-ortcpu", "quantize", "{M8}", "--table", "{C}/cal-out-ortcpu/fcn8s.calib.json", "--out",
       "int8.onnx"),
    _c("quantize-trt", "quantize", "{M8}", "--table", "{C}/cal-kl/table.json", "--target", "tensorrt", "--out",
       "int8.onnx"),
    _c("quantize-pow2-error", "quantize", "{M8}", "--table", "{C}/cal-mse/table.json", "--target", "npu-pow2",
       "--per-tensor", "--pow2-rounding", "error", "--exclude", "/head/block/block.4/Conv", "--out", "int8.onnx"),
    _c("fp16", "fp16", "{M8}", "--out", "fp16.onnx"),
    _c("fp16-keep-io", "fp16", "{M8}", "--out", "fp16.onnx", "--keep-io-fp32", "--block-op", "Resize"),
    _c("equalize", "equalize", "{M8}", "--out", "eq.onnx", "--json", "eq.json", *NP),
    _c("equalize-absorb", "equalize", "{M8}", "--out", "eq.onnx", "--json", "eq.json", "--absorb", "--absorb-padded",
       "--bound", "3sigma", "--data", "{DATA}", "--num-images", "8", *NP),
    _c("equalize-r50", "equalize", "{MR}", "--out", "eq.onnx", "--json", "eq.json", *NP),
    # evaluation and comparison
    _c("eval-float", "eval", "{M8}", *EVAL_ARGS),
    _c("eval-int8", "eval", "{C}/cal-out-ortcpu/int8.onnx", *EVAL_ARGS),
    _c("eval-r50-int8", "eval", "{C}/cal-r50-recover/int8.onnx", *EVAL_ARGS),
    _c("compare-int8", "compare", "{M8}", "{C}/cal-out-ortcpu/int8.onnx", *CMP_ARGS),
    _c("compare-recover", "compare", "{M8}", "{C}/cal-recover-pow2/int8.onnx", "--data", "{DATA}", "--num-images",
       "12", "--drift-images", "all", "--sort", "isolated", "--json", "compare.json", "--report", "compare.html",
       "--gallery", "0", *T1, *NP),
    _c("compare-fp16", "compare", "{M8}", "{C}/fp16/fp16.onnx", "--data", "{DATA}", "--num-images", "8",
       "--json", "compare.json", "--report", "compare.html", "--gallery", "1", *T1, *NP),
    _c("compare-fail-on-drop", "compare", "{M8}", "{C}/cal-out-ortcpu/int8.onnx", "--data", "{DATA}",
       "--num-images", "12", "--no-isolated", "--drift-images", "2", "--fail-on-drop", "0.5", "--json",
       "compare.json", *T1, *NP, rc=3),
    # tune
    _c("tune-pow2", *TUNE_ARGS),
    _c("tune-over-budget-fp16", "tune", "{M8}", "--data", "{DATA}", "--max-drop", "-0.5", "--out", "tuned.onnx",
       "--json", "tune.json", "--report", "tune.html", "--num-calib", "8", "--num-tune", "16", "--num-report", "6",
       "--target", "npu-pow2", "--per-tensor", "--fallback", "fp16", "--rank", "isolated", "--rank-images", "4",
       *T1, *NP, rc=3),
    _c("tune-recover", "tune", "{M8}", "--data", "{DATA}", "--max-drop", "1.0", "--out", "tuned.onnx", "--json",
       "tune.json", "--num-calib", "4", "--num-tune", "8", "--num-report", "4", "--target", "npu-pow2",
       "--per-tensor", "--recover", *T1, *NP),
    # the whole demo job
    _c("demo", "demo", "{M8}", "--data", "{DATA}", "--num-images", "8", "--eval-images", "8", "--gallery", "2",
       "--out", "out", *NP),
    # the built-in dataset (generated into this run's $FCNQUANT_CACHE) when no --data is given
    _c("builtin-eval", "eval", "{M8}", "--num-images", "8", "--json", "eval.json", *T1, *NP,
       extra_trees=(("builtin-voc", "{CACHE}"),)),
    _c("builtin-calibrate", "calibrate", "{M8}", "--num-images", "8", "--out-table", "table.json", *NP),
    # the same on a local Ray instance: must equal the single-process cases (see CROSS_CHECKS)
    _c("ray-cal", *CAL, "--method", "kl", "--out-table", "table.json", "--save-stats", "stats.npz", "--out",
       "int8.onnx", *RAY),
    _c("ray-eval", "eval", "{C}/cal-out-ortcpu/int8.onnx", *EVAL_ARGS, *RAY),
    _c("ray-compare", "compare", "{M8}", "{C}/cal-out-ortcpu/int8.onnx", *CMP_ARGS, *RAY),
    _c("ray-tune", *TUNE_ARGS, *RAY),
)

# (case/artifact, case/artifact): artifacts that must be identical within one recording
CROSS_CHECKS: tuple[tuple[str, str], ...] = (
    ("cal-out-ortcpu/fcn8s.calib.json", "cal-kl/table.json"),
    ("merge-stats/stats.npz", "cal-kl/stats.npz"),
    ("cal-from-merged/table.json", "cal-kl/table.json"),
    ("quantize-ortcpu/int8.onnx", "cal-out-ortcpu/int8.onnx"),
    ("ray-cal/table.json", "cal-kl/table.json"),
    ("ray-cal/stats.npz", "cal-kl/stats.npz"),
    ("ray-cal/int8.onnx", "cal-out-ortcpu/int8.onnx"),
    ("ray-eval/eval.json", "eval-int8/eval.json"),
    ("ray-compare/compare.json", "compare-int8/compare.json"),
    ("ray-compare/compare.html", "compare-int8/compare.html"),
    ("ray-compare/stdout", "compare-int8/stdout"),
    ("ray-tune/tune.json", "tune-pow2/tune.json"),
    ("ray-tune/tune.html", "tune-pow2/tune.html"),
    ("ray-tune/tuned.onnx", "tune-pow2/tuned.onnx"),
    ("ray-tune/stdout", "tune-pow2/stdout"),
)

# ---------------------------------------------------------------------------------------------------------------
# normalization

TIMING_KEYS = ("seconds", "images_per_s", "created", "elapsed", "duration", "wall_s", "cpu_s", "timestamp")
_KEY_RE = re.compile(
    r'(\\?"(?:' + "|".join(TIMING_KEYS) + r')\\?"\s*:\s*)'
    r'(\{[^{}]*\}|\\?"(?:[^"\\]|\\.)*?\\?"|-?[0-9][0-9.eE+-]*|null|NaN|-?Infinity)')
_DURATION_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(\s?)(s|ms|images/s|img/s|it/s)(?![\w/])")
# tune's evaluation table: "   2  gallop        1    -0.022     0.4  names" (text) and <td>seconds</td> (HTML)
_TUNE_ROW_RE = re.compile(r"(?m)^(\s*\d+  \S+\s+\d+  \s*[+-]?\d+\.\d{3}  \s*)\d+\.\d(  )")
_TUNE_HTML_RE = re.compile(r"(<tr><td>\d+</td><td>[^<]*</td><td>\d+</td><td>[+-]?\d+\.\d{3}</td><td>)[0-9.]+(</td>)")
_PID_RE = re.compile(r"\bpid \d+")
_NODE_RE = re.compile(r"\bnode \d+\.\d+\.\d+\.\d+ \([^)]*\)")
_SHA_KEY_RE = re.compile(r'(sha256\\?"\s*:\s*\\?")([0-9a-f]{64})(?![0-9a-f])')
_DATA_URI_RE = re.compile(r"data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=]+)")


# the sha256 of a model that exists only in memory (AdaRound's float model, whose metadata holds its run time)
UNRECORDED = "<sha256 of an unrecorded model>"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Normalizer:
    """Text and file normalization for one recording (its work folder, checkout and sha256 substitutions)."""

    def __init__(self, work: Path, checkout: Path):
        self.paths = []
        for p, label in ((work, "<WORK>"), (checkout, "<CHECKOUT>")):
            for variant in {str(p), str(p.resolve())}:
                self.paths.append((variant, label))
        self.paths.sort(key=lambda x: -len(x[0]))
        tmp = os.path.realpath(tempfile.gettempdir())
        self.tmp_re = re.compile(r"(?:" + "|".join(re.escape(t) for t in {tmp, tempfile.gettempdir(), "/tmp"})
                                 + r")/[^/\s\"'<>:,;)\]}]+")
        self.sha_map: dict[str, str] = {}  # raw sha256 -> sha256 of the normalized file, where they differ
        self.known: set[str] = set()         # sha256 of every file the run read or wrote

    def text(self, s: str) -> str:
        for variant, label in self.paths:
            s = s.replace(variant, label)
        s = self.tmp_re.sub("<TMP>/<tmpdir>", s)
        s = _KEY_RE.sub(lambda m: m.group(1) + "null", s)
        s = _TUNE_ROW_RE.sub(r"\g<1>  T.T\g<2>", s)
        s = _TUNE_HTML_RE.sub(r"\g<1>T\g<2>", s)
        s = _DURATION_RE.sub(r"T\1\2", s)
        s = _PID_RE.sub("pid N", s)
        s = _NODE_RE.sub("node <NODE>", s)
        for raw, norm in self.sha_map.items():
            if raw in s:
                s = s.replace(raw, "norm-" + norm[:59])
            if raw[:12] in s:
                s = s.replace(raw[:12], "norm-" + norm[:7])
        return _SHA_KEY_RE.sub(lambda m: m.group(0) if m.group(2) in self.known else m.group(1) + UNRECORDED, s)

    def onnx_model(self, raw: bytes) -> tuple[bytes, str]:
        """Returns (normalized serialized model, readable summary)."""
        import onnx

        model = onnx.load_model_from_string(raw)
        for prop in model.metadata_props:
            if prop.key == "fcnquant.table_sha256":
                prop.value = "<blanked>"
            elif prop.key.endswith("sha256") and prop.value not in self.known:
                prop.value = UNRECORDED
            else:
                prop.value = self.text(prop.value)
        data = model.SerializeToString(deterministic=True)
        return data, onnx_summary(model)

    def npz(self, raw: bytes) -> str:
        import io

        import numpy as np

        lines = []
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            for key in sorted(z.files):
                a = np.ascontiguousarray(z[key])
                lines.append(f"{key}\t{a.dtype.str}\t{list(a.shape)}\t{sha256(a.tobytes())}")
                if key == "meta" and a.dtype == np.uint8:
                    try:
                        lines.append("meta json: " + self.text(a.tobytes().decode("utf-8")))
                    except UnicodeDecodeError:
                        pass
        return "\n".join(lines) + "\n"

    def html(self, s: str) -> str:
        s = _DATA_URI_RE.sub(lambda m: f"data:{m.group(1)};sha256,{sha256(base64.b64decode(m.group(2)))}", s)
        return self.text(s)


def onnx_summary(model) -> str:
    """Returns a line-per-item text view of a model: header, metadata, inputs/outputs, nodes, initializer hashes."""
    import numpy as np
    from onnx import helper, numpy_helper

    out = [f"ir_version {model.ir_version}; producer {model.producer_name} {model.producer_version}; opsets "
           + ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)]
    for p in model.metadata_props:
        out.append(f"meta {p.key} = {p.value}")
    g = model.graph
    for vi in g.input:
        out.append(f"input {helper.printable_value_info(vi)}")
    for vi in g.output:
        out.append(f"output {helper.printable_value_info(vi)}")
    for n in g.node:
        attrs = ", ".join(f"{a.name}={helper.get_attribute_value(a)!r}"[:200] for a in n.attribute)
        out.append(f"node {n.op_type} {n.name!r}: {list(n.input)} -> {list(n.output)} {attrs}")
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        a = np.ascontiguousarray(a)
        out.append(f"init {t.name} {a.dtype.str} {list(a.shape)} {sha256(a.tobytes())}")
    return "\n".join(out) + "\n"


def tree_listing(folder: Path) -> str:
    lines = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        lines.append(f"{f.relative_to(folder).as_posix()}\t{sha256(f.read_bytes())}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# record


def _placeholders(work: Path, models: Path) -> dict[str, str]:
    return {"{M8}": str(models / "fcn8s.onnx"), "{MR}": str(models / "fcn_r50_d8.onnx"),
            "{DATA}": str(work / "cases" / "synth-voc" / "data"), "{C}": str(work / "cases"),
            "{CACHE}": str(work / "cache")}


def _fill(s: str, ph: dict[str, str]) -> str:
    for k, v in ph.items():
        s = s.replace(k, v)
    return s


def _demo_models(checkout: Path, dest: Path) -> dict[str, str]:
    """Copies the demo fcn8s and fcn_r50_d8 out of the checkout; returns {file: sha256}."""
    dest.mkdir(parents=True)
    found = {}
    for name in DEMO_MODELS:
        hits = [p for p in checkout.rglob(name) if ".venv" not in p.parts and ".git" not in p.parts]
        hits = [p for p in hits if p.parent.name == "demo"] or hits
        if not hits:
            raise SystemExit(f"{name} not found in {checkout}")
        shutil.copyfile(hits[0], dest / name)
        found[name] = sha256((dest / name).read_bytes())
    for name, expected in DEMO_MODELS.items():
        if found[name] != expected:
            print(f"warning: the checkout's {name} has sha256 {found[name]}, not {expected}", file=sys.stderr)
    return found


def _env(checkout: Path, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FCNQUANT_", "PYTHON", "RAY_"))}
    env.update({
        "PYTHONPATH": str(checkout),
        "FCNQUANT_CACHE": str(work / "cache"),         # the built-in dataset is generated by the checkout's code
        "RAY_USAGE_STATS_ENABLED": "0",
        "TQDM_DISABLE": "1",
        # BLAS (AdaRound, equalization) on one thread: the same float results on any machine
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    })
    return env


def _git_rev(checkout: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True).stdout.strip()
        return rev + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions(python: str, env: dict[str, str], cwd: Path) -> dict:
    code = ("import json, fcnquant, numpy, onnx, onnxruntime\n"
            "try:\n import ray; rv = ray.__version__\nexcept Exception: rv = None\n"
            "print(json.dumps({'fcnquant_file': fcnquant.__file__, 'fcnquant': fcnquant.__version__, "
            "'numpy': numpy.__version__, 'onnx': onnx.__version__, 'onnxruntime': onnxruntime.__version__, "
            "'ray': rv}))")
    r = subprocess.run([python, "-c", code], check=False, env=env, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"cannot import fcnquant with PYTHONPATH={env['PYTHONPATH']}:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _children_cpu() -> float:
    """CPU seconds of the finished child processes so far (Ray's worker processes are not among them)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def record(args) -> int:
    checkout = Path(args.checkout).resolve()
    out = Path(args.out).resolve()
    python = args.python or sys.executable
    cases = [c for c in CASES if re.search(args.cases, c.name)] if args.cases else list(CASES)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="fcnquant-eq-", dir=args.work))
    else:
        work = Path(tempfile.mkdtemp(prefix="fcnquant-eq-"))
    art_root = out.with_name(out.stem + ".artifacts")
    if art_root.exists():
        shutil.rmtree(art_root)
    art_root.mkdir(parents=True)
    t_start = time.perf_counter()
    try:
        env = _env(checkout, work)
        (work / "cases").mkdir()
        versions = _versions(python, env, work)
        if not Path(versions["fcnquant_file"]).resolve().is_relative_to(checkout):
            raise SystemExit(f"PYTHONPATH={checkout} imports fcnquant from {versions['fcnquant_file']}")
        models = _demo_models(checkout, work / "models")
        ph = _placeholders(work, work / "models")
        info = {"checkout": str(checkout), "commit": _git_rev(checkout), "python": python,
                "load_average_start": os.getloadavg(), "platform": platform.platform(), "cpus": os.cpu_count(),
                "versions": versions, "input_models": models, "cases": {}, "cross_checks": {}}
        print(f"recording {len(cases)} case(s) of {checkout} ({info['commit']}) in {work}", flush=True)
        results = {}
        for case in cases:
            cdir = work / "cases" / case.name
            cdir.mkdir()
            argv = [python, "-m", "fcnquant", *(_fill(a, ph) for a in case.argv)]
            t, cpu = time.perf_counter(), _children_cpu()
            with open(work / f"{case.name}.stdout", "wb") as so, open(work / f"{case.name}.stderr", "wb") as se:
                try:
                    rc = subprocess.run(argv, check=False, cwd=cdir, env=env, stdout=so, stderr=se,
                                        timeout=CASE_TIMEOUT_S).returncode
                except subprocess.TimeoutExpired:
                    rc = "timeout"
            secs, cpu = time.perf_counter() - t, _children_cpu() - cpu
            results[case.name] = rc
            info["cases"][case.name] = {"argv": [_fill(a, ph) for a in case.argv], "rc": rc,
                                        "expected_rc": case.rc, "seconds": round(secs, 1),
                                        "cpu_seconds": round(cpu, 1)}
            flag = "" if rc == case.rc else f"   <-- exit {rc}, expected {case.rc}"
            print(f"  {case.name:<24} {secs:6.1f} s  (cpu {cpu:5.1f} s)  exit {rc}{flag}", flush=True)
        manifest = _normalize_all(cases, results, work, checkout, art_root, ph)
        failures = [n for n, c in info["cases"].items() if c["rc"] != c["expected_rc"]]
        bad_checks = []
        for a, b in CROSS_CHECKS:
            ca, aa = a.split("/", 1)
            cb, ab = b.split("/", 1)
            if ca not in manifest or cb not in manifest:
                continue
            ok = manifest[ca].get(aa) is not None and manifest[ca].get(aa) == manifest[cb].get(ab)
            info["cross_checks"][f"{a} == {b}"] = ok
            if not ok:
                bad_checks.append(f"{a} != {b}")
        info["total_seconds"] = round(time.perf_counter() - t_start, 1)
        info["load_average_end"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        out.with_name(out.stem + ".info.json").write_text(json.dumps(info, indent=1) + "\n")
        n_art = sum(len(v) for v in manifest.values())
        print(f"wrote {out} ({len(manifest)} cases, {n_art} artifacts) and {art_root}/ in {info['total_seconds']} s")
        for f in failures:
            print(f"FAILED: case {f} exited {info['cases'][f]['rc']} (expected {info['cases'][f]['expected_rc']}); "
                  f"see {art_root / f / 'stderr.txt'}")
        for c in bad_checks:
            print(f"CROSS-CHECK FAILED: {c}")
        if not failures and not bad_checks:
            print(f"all cases exited as expected; {len(info['cross_checks'])} cross-checks equal")
        return 1 if failures or bad_checks else 0
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _put(entry: dict[str, str], folder: Path, name: str, data: bytes, file_name: str | None = None) -> None:
    """Records artifact ``name`` (sha256 of ``data``) and writes ``data`` to ``folder/(file_name or name)``."""
    entry[name] = sha256(data)
    target = folder / (file_name or name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _normalize_all(cases, exit_status: dict, work: Path, checkout: Path, art_root: Path, ph: dict[str, str]) -> dict:
    norm = Normalizer(work, checkout)
    files: dict[str, list[tuple[str, Path]]] = {}
    for case in cases:
        cdir = work / "cases" / case.name
        trees = [cdir / t for t in case.trees]
        items = []
        for f in sorted(p for p in cdir.rglob("*") if p.is_file()):
            if any(f.is_relative_to(t) for t in trees):
                continue
            items.append((f.relative_to(cdir).as_posix(), f))
        files[case.name] = items
    norm.known = {sha256(f.read_bytes()) for items in files.values() for _, f in items}
    norm.known |= {sha256(f.read_bytes()) for f in (work / "models").iterdir()}
    # pass 1: sha256 substitutions for files whose bytes hold run-dependent values
    for items in files.values():
        for _, f in items:
            raw = f.read_bytes()
            if f.suffix == ".onnx":
                data, _ = norm.onnx_model(raw)
            elif f.suffix == ".json":
                data = norm.text(raw.decode("utf-8")).encode()
            else:
                continue
            if data != raw:
                norm.sha_map[sha256(raw)] = sha256(data)
    # pass 2: normalized artifacts
    manifest: dict[str, dict[str, str]] = {}
    for case in cases:
        adir = art_root / case.name
        adir.mkdir(parents=True)
        entry: dict[str, str] = {}
        so = (work / f"{case.name}.stdout").read_bytes().decode("utf-8", "replace")
        _put(entry, adir, "stdout", f"exit status: {exit_status[case.name]}\n{norm.text(so)}".encode())
        se = (work / f"{case.name}.stderr").read_bytes().decode("utf-8", "replace")
        (adir / "stderr.txt").write_text(norm.text(se))
        for name, f in files[case.name]:
            raw = f.read_bytes()
            if f.suffix == ".onnx":
                data, summary = norm.onnx_model(raw)
                _put(entry, adir, name, data)
                (adir / (name + ".txt")).write_text(summary)
            elif f.suffix == ".npz":  # artifact stats.npz, stored as its listing stats.npz.txt
                _put(entry, adir, name, norm.npz(raw).encode(), file_name=name + ".txt")
            elif f.suffix in (".html", ".htm"):
                _put(entry, adir, name, norm.html(raw.decode("utf-8")).encode())
            else:
                try:
                    _put(entry, adir, name, norm.text(raw.decode("utf-8")).encode())
                except UnicodeDecodeError:
                    _put(entry, adir, name, raw)
        for t in case.trees:
            _put(entry, adir, t + ".tree.txt", tree_listing(work / "cases" / case.name / t).encode())
        for label, folder in case.extra_trees:
            _put(entry, adir, label + ".tree.txt", tree_listing(Path(_fill(folder, ph))).encode())
        manifest[case.name] = entry
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# diff


def diff(args) -> int:
    a_path, b_path = Path(args.a), Path(args.b)
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    a_art, b_art = a_path.with_name(a_path.stem + ".artifacts"), b_path.with_name(b_path.stem + ".artifacts")
    n_diff = same = skipped = 0
    skip = re.compile(args.skip) if args.skip else None
    for case in sorted(set(a) | set(b)):
        if case not in a or case not in b:
            print(f"{case}: case only in {'A' if case in a else 'B'}")
            n_diff += 1
            continue
        for name in sorted(set(a[case]) | set(b[case])):
            ha, hb = a[case].get(name), b[case].get(name)
            if ha == hb:
                same += 1
                continue
            if skip is not None and skip.search(f"{case}/{name}"):
                skipped += 1
                print(f"{case}/{name}: differs (skipped)")
                continue
            n_diff += 1
            if ha is None or hb is None:
                print(f"{case}/{name}: only in {'A' if hb is None else 'B'}")
                continue
            fa, fb = _artifact_file(a_art / case, name), _artifact_file(b_art / case, name)
            print(f"{case}/{name}: differs\n    A {fa}\n    B {fb}")
            if args.lines:
                _show_diff(fa, fb, args.lines)
    print(f"{same} artifact(s) equal, {n_diff} differ" + (f", {skipped} differing ones skipped" if skipped else ""))
    return 1 if n_diff else 0


def _artifact_file(folder: Path, name: str) -> Path:
    """Returns the file to read for an artifact: a model's or statistics file's text view when there is one."""
    text = folder / (name + ".txt")
    return text if text.is_file() else folder / name


def _show_diff(fa: Path, fb: Path, lines: int) -> None:
    try:
        ta = fa.read_text(encoding="utf-8").splitlines()
        tb = fb.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        print("      (binary)")
        return
    ta, tb = _split_long(ta), _split_long(tb)  # long lines (metadata JSON, HTML) cut into items
    shown = 0
    for line in difflib.unified_diff(ta, tb, "A", "B", n=0, lineterm=""):
        if line.startswith(("---", "+++")):
            continue
        print("      " + line[:300])
        shown += 1
        if shown >= lines:
            print("      ...")
            break


def _split_long(lines: list[str], limit: int = 300) -> list[str]:
    return [part for line in lines for part in (re.split(r"(?<=,)|(?<=>)(?=<)", line) if len(line) > limit else [line])]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="run the cases with a checkout's code and write the manifest")
    r.add_argument("--checkout", required=True, help="repository root whose fcnquant/ is run (PYTHONPATH)")
    r.add_argument("--out", required=True, help="manifest JSON to write; artifacts go to OUT_STEM.artifacts/")
    r.add_argument("--work", help="keep the raw outputs in a new folder under WORK (default: a removed temp folder)")
    r.add_argument("--cases", help="only the cases whose name matches this regular expression")
    r.add_argument("--python", help="interpreter for the cases (default: this one)")
    d = sub.add_parser("diff", help="compare two manifests; exit 1 if any artifact differs")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--lines", type=int, default=20, help="diff lines shown per differing text artifact (0: none)")
    d.add_argument("--skip", metavar="REGEX", help="do not count differing artifacts whose CASE/ARTIFACT matches, "
                   "e.g. '/stdout$'")
    sub.add_parser("list", help="print the cases")
    args = p.parse_args(argv)
    if args.command == "record":
        return record(args)
    if args.command == "diff":
        return diff(args)
    for c in CASES:
        print(f"{c.name:<24} fcnquant {' '.join(c.argv)}" + (f"   (exit {c.rc})" if c.rc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
