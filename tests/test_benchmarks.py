"""Saved benchmark results: the reader (steerlib.benchmarks) and the figures of the Performance appendix, on small
reports written here; every script of benchmarks/ answers --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from steerlib.benchmarks import (axis_rows, benchmark_summary, benchmarks_folder, load_benchmark_reports,  # noqa: E402
                                 load_benchmark_rows, machine_name)
from steerlib.plots import plot_benchmark_panels  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("sweeps.py", "cross_entropy.py", "sampling.py", "judge.py")


def row(n_alphas: int, layer: int = 12, authors: float = 4.0, steerlib: float = 1.0, **extra) -> dict:
    return dict(n_alphas=n_alphas, layer=layer, authors_s=authors * n_alphas, steerlib_s=steerlib * n_alphas,
                authors_peak_mib=100.0, steerlib_peak_mib=25.0, speedup=authors / steerlib, memory_ratio=0.25,
                flop_ratio_bound=2.0, max_difference=0.0, **extra)


def report(workload: str, machine: dict, rows: list[dict], default: dict) -> dict:
    return {"workload": workload, "title": workload.replace("-", " "), "machine": machine, "rows": rows,
            "default_size": default, "speedup": rows[0]["speedup"], "max_difference": 0.0}


CPU = {"name": "Test CPU", "slug": "test-cpu", "cores": 2, "device": "cpu", "accelerator": None}
GPU = {"name": "Test GPU", "slug": "test-gpu", "cores": 16, "device": "cuda", "accelerator": "Test GPU"}


@pytest.fixture
def folder(tmp_path):
    rows = [row(4), row(8), row(16), row(8, layer=3), row(8, layer=27)]
    for machine, scale in ((CPU, 1.0), (GPU, 0.01)):
        scaled = [dict(r, authors_s=r["authors_s"] * scale, steerlib_s=r["steerlib_s"] * scale) for r in rows]
        path = tmp_path / f"sampling-{machine['slug']}.json"
        path.write_text(json.dumps(report("sampling", machine, scaled, {"n_alphas": 8, "layer": 12})))
    sweep = [row(64, positions="all"), row(64, positions="last", steerlib=0.1)]
    (tmp_path / "next-token-sweep-test-cpu.json").write_text(
        json.dumps(report("next-token-sweep", CPU, sweep, {"n_alphas": 64})))
    return tmp_path


def test_reports_are_read_sorted_and_named_by_machine(folder):
    reports = load_benchmark_reports(folder)
    assert [(r["workload"], machine_name(r)) for r in reports] == [
        ("next-token-sweep", "Test CPU, 2 cores"), ("sampling", "Test CPU, 2 cores"), ("sampling", "Test GPU")]


def test_rows_carry_workload_machine_default_and_bound(folder):
    rows = load_benchmark_rows(folder)
    assert len(rows) == 12
    sampling = rows[(rows["workload"] == "sampling") & (rows["machine"] == "Test GPU")]
    assert sampling["default"].tolist() == [False, True, False, False, False]
    assert sampling["bound_s"].tolist() == pytest.approx((sampling["authors_s"] / 2.0).tolist())
    assert sampling["distance_to_bound"].tolist() == pytest.approx([2.0] * 5)


def test_summary_has_one_line_per_workload_variant_and_machine(folder):
    table = benchmark_summary(load_benchmark_rows(folder))
    assert len(table) == 4  # the sweep's two positions, sampling on two machines
    assert set(table["machine"]) == {"Test CPU, 2 cores", "Test GPU"}
    last = table[table["positions"] == "last"]
    assert last["speedup"].tolist() == pytest.approx([40.0])
    assert {"speedup", "memory_ratio", "flop_ratio_bound", "distance_to_bound", "max_difference"} <= set(table)


def test_axis_rows_keep_the_other_sizes_at_their_default(folder):
    rows = load_benchmark_rows(folder)
    along = axis_rows(rows, "sampling", "n_alphas")
    assert along[along["machine"] == "Test CPU, 2 cores"]["n_alphas"].tolist() == [4, 8, 16]
    assert set(axis_rows(rows, "sampling", "layer")["layer"]) == {3, 12, 27}
    assert axis_rows(rows, "sampling", "n_texts").empty


def test_panels_draw_every_machine(folder):
    rows = load_benchmark_rows(folder)
    fig = plot_benchmark_panels(rows, [("sampling", "n_alphas", "number of α"), ("sampling", "layer", "block"),
                                       ("next-token-sweep", "n_alphas", "number of α"), ("judge", "n_texts", "texts")])
    drawn = [ax for ax in fig.axes if ax.get_visible()]
    assert len(drawn) == 4  # sampling twice, the sweep's two positions; no judge rows
    labels = [line.get_label() for line in drawn[0].get_lines()]
    assert "steerlib (Test GPU)" in labels and "bound (Test CPU, 2 cores)" in labels
    with pytest.raises(ValueError, match="no benchmark rows"):
        plot_benchmark_panels(rows, [("judge", "n_texts", "texts")])


def test_a_folder_without_reports_or_with_a_foreign_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="make benchmark"):
        load_benchmark_reports(tmp_path)
    (tmp_path / "notes.json").write_text(json.dumps({"workload": "x"}))
    with pytest.raises(ValueError, match="lacks"):
        load_benchmark_reports(tmp_path)


def test_the_saved_results_of_this_repository_are_readable():
    table = benchmark_summary(load_benchmark_rows(benchmarks_folder()))
    assert len(table) >= 1 and table["speedup"].notna().all()


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_benchmark_script_answers_help(script):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--help"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "--json" in run.stdout and "--save" in run.stdout
