"""Saved benchmark results, read back for the book: one JSON file per workload and machine.

Taught in the appendix "Performance" (``book/appendix/performance.md``). The scripts of ``benchmarks/`` (run with
``make benchmark``) write ``data/benchmarks/<workload>-<machine>.json``: a report holding ``workload``, ``title``,
``machine`` (a dict with at least ``name``), the headline ``speedup`` and ``max_difference``, and ``rows``, one per
measured size, each with ``authors_s`` and ``steerlib_s`` (seconds of the authors' way and of steerlib's),
``authors_peak_mib`` and ``steerlib_peak_mib`` (extra peak memory), ``speedup``, ``memory_ratio``,
``flop_ratio_bound`` (authors' arithmetic over the least arithmetic that computes the result) and
``max_difference``. A result computed on another machine (a GPU) dropped into the same folder is read beside the
others, grouped by machine.

Example:
    >>> rows = load_benchmark_rows()                 # every row of every saved report  # doctest: +SKIP
    >>> benchmark_summary(rows)                      # one line per workload, variant and machine  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from steerlib.store import data_path

REQUIRED = ("workload", "machine", "rows")
"""Keys every saved report must have."""

ROW_REQUIRED = ("authors_s", "steerlib_s", "speedup", "max_difference")
"""Keys every row of a saved report must have."""

SIZE_COLUMNS = ("n_alphas", "length", "max_new_tokens", "layer", "n_texts", "positions")
"""Columns that say which size (or variant) a row measures; absent ones are left out of the summary."""


def benchmarks_folder() -> Path:
    """``data/benchmarks/``, where ``make benchmark`` saves its reports."""
    return data_path("benchmarks")


def load_benchmark_reports(folder: str | Path | None = None) -> list[dict]:
    """Every ``*.json`` report in ``folder`` (default :func:`benchmarks_folder`), sorted by workload and machine.

    Raises:
        ValueError: no report there, or a file that is not a benchmark report (naming it and what it lacks).
    """
    folder = Path(folder) if folder is not None else benchmarks_folder()
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ValueError(f"no benchmark results in {folder}: run `make benchmark` (it saves them there), or "
                         "copy the JSON files of another machine into it.")
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}): rerun the benchmark that wrote it.") from None
        missing = [key for key in REQUIRED if key not in report]
        if missing or not isinstance(report.get("rows"), list) or not report["rows"]:
            raise ValueError(f"{path} is not a benchmark report: it lacks {missing or ['rows']} "
                             "(write it with a script of benchmarks/ and --save).")
        for row in report["rows"]:
            lacking = [key for key in ROW_REQUIRED if key not in row]
            if lacking:
                raise ValueError(f"{path}: a row lacks {lacking}; rerun the benchmark that wrote it.")
        report["file"] = path.name
        reports.append(report)
    return sorted(reports, key=lambda r: (r["workload"], machine_name(r)))


def machine_name(report: dict) -> str:
    """The machine of a report in words: its ``name`` (the GPU, else the CPU model) and its core count."""
    machine = report["machine"]
    if isinstance(machine, str):
        return machine
    name = machine.get("name", "unknown machine")
    if machine.get("accelerator"):
        return name
    cores = machine.get("cores")
    return f"{name}, {cores} cores" if cores else name


def load_benchmark_rows(folder: str | Path | None = None) -> pd.DataFrame:
    """Every row of every report (:func:`load_benchmark_reports`), with the report's ``workload``, ``title``,
    ``machine`` (:func:`machine_name`) and ``default`` (whether the row is the report's default size, the one
    quoted as its headline); ``bound_s`` is the time the authors' way would take doing only the bound's
    arithmetic at its own rate (``authors_s / flop_ratio_bound``), and ``distance_to_bound`` is the speed-up
    over the FLOP ratio (1: steerlib saves exactly the arithmetic the bound saves; for the judge, whose bound
    counts MiniLM forwards, the ratio of forwards saved over the bound's)."""
    frames = []
    for report in load_benchmark_reports(folder):
        rows = pd.DataFrame(report["rows"])
        default = report.get("default_size") or {}
        rows["default"] = True
        for key, value in default.items():
            if key in rows:
                rows["default"] &= rows[key] == value
        rows.insert(0, "machine", machine_name(report))
        rows.insert(0, "title", report.get("title", report["workload"]))
        rows.insert(0, "workload", report["workload"])
        frames.append(rows)
    rows = pd.concat(frames, ignore_index=True)
    if "flop_ratio_bound" not in rows:
        rows["flop_ratio_bound"] = float("nan")
    rows["bound_s"] = rows["authors_s"] / rows["flop_ratio_bound"]
    rows["distance_to_bound"] = rows["speedup"] / rows["flop_ratio_bound"]
    if "forward_ratio" in rows:  # the judge's bound counts forwards: how close steerlib's forwards are to it
        counted = rows["forward_ratio"].notna()
        rows.loc[counted, "distance_to_bound"] = rows["forward_ratio"] / rows["flop_ratio_bound"]
    return rows


def benchmark_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """The headline rows (default sizes), one per workload, variant and machine: time of each way, speed-up,
    memory ratio (steerlib's extra peak over the authors'), FLOP bound, distance to it, largest difference."""
    head = rows[rows["default"]]
    variant = [column for column in ("positions",) if column in head and head[column].notna().any()]
    columns = (["title", *variant, "machine", "authors_s", "steerlib_s", "speedup", "authors_peak_mib",
                "steerlib_peak_mib", "memory_ratio", "flop_ratio_bound", "distance_to_bound", "max_difference"])
    table = head[[column for column in columns if column in head]].copy()
    if variant:
        table["positions"] = table["positions"].fillna("")
    return table.rename(columns={"title": "workload"}).reset_index(drop=True)


def axis_rows(rows: pd.DataFrame, workload: str, axis: str, default: dict | None = None) -> pd.DataFrame:
    """The rows of ``workload`` along ``axis`` (the other size columns at the report's default), sorted by it."""
    if axis not in rows:
        return rows.iloc[:0]
    picked = rows[(rows["workload"] == workload) & rows[axis].notna()]
    others = [c for c in SIZE_COLUMNS if c != axis and c in picked and picked[c].notna().any() and c != "positions"]
    if default is None and others:
        default = {c: picked.loc[picked["default"], c].iloc[0] for c in others if picked["default"].any()}
    for column, value in (default or {}).items():
        if column in picked and column != axis:
            picked = picked[picked[column] == value]
    return picked.sort_values(["machine", axis])
