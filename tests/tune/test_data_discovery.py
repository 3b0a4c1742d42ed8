"""tune and equalize --absorb find their data as every command does: ./VOCdevkit in the working folder is used."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import onnx

from fcnquant.data import write_synthetic_voc
from fcnquant.demo_models import demo_model_path


def _non_demo_model(path):
    """The demo fcn8s without the metadata that marks it as a demo model (a demo model uses the built-in set)."""
    model = onnx.load(str(demo_model_path("fcn8s")))
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in ("fcnquant.weights",
                                                                            "fcnquant.model_sha256")]
    del model.metadata_props[:]
    for key, value in keep:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _run_cli(args, cwd):
    code = textwrap.dedent(f"""
        import sys
        from fcnquant.cli import main
        sys.exit(main({args!r}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "FCNQUANT_DATA"}
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env)


def test_tune_uses_a_voc_in_the_working_folder_and_says_so(tmp_path):
    write_synthetic_voc(tmp_path / "VOCdevkit", train=20, val=3, size=64, seed=3, progress=False)
    model = _non_demo_model(tmp_path / "m.onnx")
    res = _run_cli(["tune", str(model), "--max-drop", "100", "--out", "m.tuned.onnx", "--num-calib", "4",
                    "--num-tune", "4", "--rank-images", "2", "--no-progress"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"using the VOC dataset found at {tmp_path / 'VOCdevkit'}" in res.stderr, res.stderr
    assert "SYNTHETIC" not in res.stderr and (tmp_path / "m.tuned.onnx").is_file()


def test_equalize_absorb_uses_a_voc_in_the_working_folder_and_says_so(tmp_path):
    write_synthetic_voc(tmp_path / "VOCdevkit", train=6, val=1, size=64, seed=3, progress=False)
    model = _non_demo_model(tmp_path / "m.onnx")
    res = _run_cli(["equalize", str(model), "--out", "m.eq.onnx", "--absorb", "--num-images", "2",
                    "--no-progress"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"using the VOC dataset found at {tmp_path / 'VOCdevkit'}" in res.stderr, res.stderr
    assert "SYNTHETIC" not in res.stderr


def test_help_of_tune_and_equalize_names_the_data_search():
    from fcnquant.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("tune", "equalize"):
        text = " ".join(sub.choices[name].format_help().split())
        assert "./VOCdevkit" in text and "FCNQUANT_DATA" in text, name
