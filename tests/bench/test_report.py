"""bench/report.py: BENCHMARKS.md rebuilt from results files (bench/README.md's schema), checked on small files
whose Markdown is written out by hand here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "mem_total_gb": 8.0, "python": "3.11.7", "onnxruntime": "1.32.0"}


def _file(title, order, rows, **extra):
    return {"format_version": 2, "title": title, "order": order, "script": "python bench/bench_x.py",
            "date_utc": "2026-12-06 08:00 UTC", "commit": "abc1234", "machine": MACHINE,
            "load_start": [0.5, 1.0, 1.5], "load_end": [2.25, 1.5, 1.0],
            "sections": [{"title": "Times", "columns": ["what", "seconds", "ratio"], "rows": rows,
                          "notes": "best of 2"}], **extra}


def test_one_section_renders_as_written_by_hand(report):
    res = _file("Emulator", 60, [["fcn8s", 1.5, "1.07x"], ["fcn16s", 2.125, None]], summary="Two models.")
    expected = "\n\n".join([
        "## Emulator",
        "*`python bench/bench_x.py`, 2026-12-06 08:00 UTC, commit abc1234; load average (1/5/15 min) "
        "0.50 / 1.00 / 1.50 at start, 2.25 / 1.50 / 1.00 at end (idle); machine: Test CPU, 2 logical CPUs, 8.0 GB, "
        "python 3.11.7, onnxruntime 1.32.0.*",
        "Two models.",
        "### Times\n\n"
        "| what | seconds | ratio |\n"
        "| --- | ---: | --- |\n"
        "| fcn8s | 1.50 | 1.07x |\n"
        "| fcn16s | 2.12 | - |\n\n"
        "best of 2",
    ])
    assert report.render_section("emulate", res) == expected


def test_report_orders_sections_and_keeps_nothing_else(report, tmp_path):
    (tmp_path / "b_late.json").write_text(json.dumps(_file("Late", 90, [["x", 1, "y"]])))
    (tmp_path / "a_early.json").write_text(json.dumps(_file("Early", 10, [["x", 2, "y"]])))
    results = report.load_results(tmp_path)
    assert list(results) == ["a_early", "b_late"]
    text = report.render_report(results)
    headings = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert headings == ["# Benchmarks", "## Early", "### Times", "## Late", "### Times"]
    assert text.count("commit abc1234") == 2
    # the order key decides, not the file name
    (tmp_path / "a_early.json").write_text(json.dumps(_file("Early", 95, [["x", 2, "y"]])))
    text = report.render_report(report.load_results(tmp_path))
    assert text.index("## Late") < text.index("## Early")


def test_unknown_file_without_sections_lists_its_scalars(report):
    text = report.render_section("mystery", {"wall_s": 3.5, "ok": True, "nested": {"a": 1}})
    assert "| wall_s | 3.50 |" in text and "| ok | yes |" in text and "nested" not in text


def test_headline_replaces_readme_table_only(report):
    head = {"columns": ["model", "delta"], "rows": [["fcn8s", "-0.25"]], "align": "lr"}
    results = {"z": _file("Z", 1, [], headline=head)}
    table = report.headline_table(results)
    assert table == "| model | delta |\n| --- | ---: |\n| fcn8s | -0.25 |"
    readme = "# T\n\n## Benchmarks\n\nThe headline:\n\n| old | t |\n| --- | --- |\n| 1 | 2 |\n\nafter\n\n## Next\n"
    assert report.replace_readme_table(readme, table) == (
        "# T\n\n## Benchmarks\n\nThe headline:\n\n" + table + "\n\nafter\n\n## Next\n")
    assert report.replace_readme_table("# T\n\n## Other\n\n| a |\n", table) == "# T\n\n## Other\n\n| a |\n"
    text = report.render_report(results)
    assert text.index("## Headline") < text.index("## Z") and table in text


def test_repository_report_is_current(report):
    """BENCHMARKS.md is exactly what bench/results gives (rerun `python bench/report.py` after a bench)."""
    results = report.load_results(ROOT / "bench" / "results")
    assert (ROOT / "BENCHMARKS.md").read_text() == report.render_report(results)
    table = report.headline_table(results)
    if table is not None:
        assert table in (ROOT / "README.md").read_text()
