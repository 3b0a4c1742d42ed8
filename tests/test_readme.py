"""README.md stays true: every command line it shows parses, and every Python block runs as written (on a small
synthetic VOC and the shipped demo model, laid out under the names the README uses)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("fcnquant "):
                lines.append(line)
    return lines


def test_readme_fits_16_kib():
    """README stays short (at most 16 KiB); details go to docs/."""
    assert len(README.encode("utf-8")) <= 16 * 1024


def test_readme_shows_commands_and_python():
    assert len(_command_lines()) >= 5 and _blocks("python")


@pytest.mark.parametrize("line", _command_lines())
def test_every_command_line_parses(line):
    from fcnquant.cli import build_parser

    argv = shlex.split(line)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse rejects: an option or subcommand the CLI does not have
        pytest.fail(f"README command does not parse ({exc.code}): {line}")


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_every_python_block_runs(tmp_path, index):
    from fcnquant.data import write_synthetic_voc
    from fcnquant.demo_models import demo_model_path

    shutil.copy(demo_model_path("fcn8s"), tmp_path / "fcn8s.onnx")
    # enough train images for tune's default split: 50 calibration + 200 tuning
    write_synthetic_voc(tmp_path / "VOCdevkit", train=260, val=12, size=160, progress=False)
    (tmp_path / "block.py").write_text(_blocks("python")[index], encoding="utf-8")
    r = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
