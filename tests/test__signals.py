"""One signal policy: SIGTERM ends a run as Ctrl-C does; an interrupt at any moment (the imports, the deferred
onnxruntime import, the middle of the work, the renames of a set of artifacts) ends the command with status 130
(143 for SIGTERM), one line and no traceback, leaving nothing partial nor temporary behind.

The subprocess tests send a real signal at a chosen point with ``tests/signal_runner.py``."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fcnquant import _io
from fcnquant._io import all_or_nothing, atomic_write_text
from fcnquant._signals import Terminated, deferred, exit_status, sigterm_raises

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "signal_runner.py"
#: written into $TMPDIR by `import onnxruntime` itself (its telemetry session file), not by fcnquant
ORT_SESSION_FILE = ".ses"


def test_deferred_delivers_a_signal_after_the_block():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.fixture
def default_sigterm():
    """SIGTERM's default action for the test (a Ray driver started by another test installs its own handler)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_terminated_inside_the_block_only(default_sigterm):
    with pytest.raises(Terminated), sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert exit_status(Terminated()) == (143, "terminated") and exit_status(KeyboardInterrupt()) == (130, "interrupted")


def test_ctrl_c_while_a_set_is_renamed_leaves_the_whole_set(tmp_path, monkeypatch):
    renamed = []

    def replace_then_ctrl_c(tmp, target):
        os.replace(tmp, target)
        renamed.append(target.name)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # right after the first artifact is in place

    monkeypatch.setattr(_io, "_replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), all_or_nothing():
        for name in ("model", "table", "stats"):
            atomic_write_text(tmp_path / name, name)
    assert renamed == ["model", "table", "stats"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "stats", "table"]


def _run(tmp_path: Path, sig: str, point: str, *args, cwd: Path | None = None) -> tuple[int, list[str], Path]:
    """Runs ``fcnquant ARGS`` with ``sig`` sent at ``point``; returns (status, stderr lines, its TMPDIR)."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp), FCNQUANT_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, str(RUNNER), sig, point, *map(str, args)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=cwd or tmp_path)
    return res.returncode, res.stderr.splitlines(), tmp


def _ended(lines: list[str], word: str) -> None:
    """The run ended with ``word`` as its one error line: only log lines before it, no traceback."""
    assert lines and lines[-1] == word, lines
    assert all(line.startswith(("INFO:", "WARNING:")) for line in lines[:-1]), lines


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ORT_SESSION_FILE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_voc):
    from tests.test_evaluate import conv_model

    base = tmp_path_factory.mktemp("signals")
    return conv_model(base / "m.onnx"), synthetic_voc(train=3, val=2, size=32, seed=4)


@pytest.mark.parametrize("sig, status, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_an_interrupt_while_importing_is_one_line(setup, tmp_path, sig, status, word):
    model, _ = setup
    code, lines, tmp = _run(tmp_path, sig, "import:fcnquant.cli", "eval", model)
    assert (code, lines) == (status, [word])
    assert _left_in(tmp) == []


@pytest.mark.parametrize("sig, status, word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_an_interrupt_in_the_deferred_onnxruntime_import_is_one_line(setup, tmp_path, sig, status, word):
    model, data = setup
    code, lines, tmp = _run(tmp_path, sig, "import:onnxruntime.capi._pybind_state", "eval", model, "--data", data,
                            "--size", "24", "--no-progress", "--json", tmp_path / "e.json")
    assert code == status
    _ended(lines, word)
    assert _left_in(tmp) == [] and not (tmp_path / "e.json").exists()


def test_ctrl_c_right_after_the_int8_model_is_in_place_keeps_its_table_and_stats(setup, tmp_path):
    from fcnquant.calibrate import load_stats
    from fcnquant.calibrate.table import CalibrationTable
    from fcnquant.runtime import make_session

    model, data = setup
    out = tmp_path / "out"
    out.mkdir()
    code, lines, tmp = _run(tmp_path, "SIGINT", "after:fcnquant._io:_replace=/q.onnx", "calibrate", model,
                            "--data", data, "--size", "24", "--num-images", "2", "--no-progress", "--out",
                            out / "q.onnx", "--out-table", out / "t.json", "--save-stats", out / "s.npz")
    assert code == 130
    _ended(lines, "interrupted")
    assert _left_in(out) == ["q.onnx", "s.npz", "t.json"] and _left_in(tmp) == []
    table = CalibrationTable.load(out / "t.json")
    assert set(table.tensors) == set(load_stats(out / "s.npz").tensors)
    make_session(out / "q.onnx")  # the model is whole


@pytest.mark.parametrize("point, argv", [
    # onnxruntime's quantizer works on copies of the model
    ("call:fcnquant.quantize.qdq:run_quantize_static", ["--out", "{o}/q.onnx"]),
    # the workflow's staging folder (in TMPDIR when no model is written)
    ("call:fcnquant.workflows.int8:build_table", ["--out-table", "{o}/t.json", "--save-stats", "{o}/s.npz"]),
])
def test_sigterm_in_calibrate_leaves_no_temporary_and_no_artifact(setup, tmp_path, point, argv):
    model, data = setup
    out = tmp_path / "out"
    out.mkdir()
    code, lines, tmp = _run(tmp_path, "SIGTERM", point, "calibrate", model, "--data", data, "--size", "24",
                            "--num-images", "2", "--no-progress", *[a.format(o=out) for a in argv])
    assert code == 143
    _ended(lines, "terminated")
    assert _left_in(out) == [] and _left_in(tmp) == []


def test_sigterm_in_tune_leaves_no_temporary_and_no_artifact(setup, tmp_path):
    model, data = setup
    out = tmp_path / "out"
    out.mkdir()
    code, lines, tmp = _run(tmp_path, "SIGTERM", "call:fcnquant.tune.tuner:_report_pass", "tune", model,
                            "--data", data, "--max-drop", "100", "--num-calib", "1", "--num-tune",
                            "2", "--no-progress", "--out", out / "t.onnx", "--json", out / "t.json")
    assert code == 143
    _ended(lines, "terminated")
    assert _left_in(out) == [] and _left_in(tmp) == []


def test_an_interrupted_synth_voc_leaves_no_folder(tmp_path):
    code, lines, tmp = _run(tmp_path, "SIGTERM", "call:fcnquant.data.synth:_save_mask", "synth-voc",
                            tmp_path / "new" / "voc", "--train", "3", "--val", "1", "--size", "16", "--no-progress")
    assert code == 143
    _ended(lines, "terminated")
    assert not (tmp_path / "new").exists() and _left_in(tmp) == []
