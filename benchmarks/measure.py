"""What every benchmark here measures the same way: one measurement per fresh process, its wall time and the extra
peak memory it needed, medians over interleaved repetitions (the machines are shared and noisy).

Peak memory is the kernel's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` just
before the measured call) minus the resident set before it, on Linux.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

MEMORY_METHOD = ("peak RSS (VmHWM reset by /proc/self/clear_refs) minus RSS before the call, in a fresh process "
                 "per measurement after a warm-up")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed_with_peak_memory(call: Callable[[], object]) -> tuple[object, float, float]:
    """``(result, seconds, extra peak MiB)`` of ``call()``, in this process."""
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, (status_kib("VmHWM") - before) / 1024


def in_fresh_processes(script: str, arguments: list[list[str]], repetitions: int) -> list[list[dict]]:
    """Run ``script`` with each argument list ``repetitions`` times, interleaved (every list once per repetition),
    each in a fresh process that prints one JSON object as its last line; returns them per argument list."""
    results: list[list[dict]] = [[] for _ in arguments]
    for _ in range(repetitions):
        for index, extra in enumerate(arguments):
            run = subprocess.run([sys.executable, script, *extra], capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(extra)} failed:\n{run.stderr[-3000:]}")
            results[index].append(json.loads(run.stdout.strip().splitlines()[-1]))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- what every benchmark script shares: --json, --save FOLDER, the machine that produced the numbers ---------------

def describe_machine(device: str = "cpu", threads: int | None = None) -> dict:
    """:func:`steerlib.store.machine_description` (CPU model, cores, threads, device, versions) with the platform,
    the threads the workload used, and a short ``name`` (the GPU's name when the models ran on one, else the CPU
    model) used in file names and by the book."""
    import platform
    import re

    from steerlib.store import machine_description

    machine = machine_description(device)
    name = machine["accelerator"] or machine["cpu"]
    if threads is not None:
        machine["torch_threads"] = threads
    return {"name": name, "slug": re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "machine", **machine,
            "platform": platform.platform()}


def add_output_arguments(parser) -> None:
    """``--json`` (print one JSON object) and ``--save FOLDER`` (write ``FOLDER/<workload>-<machine>.json``)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object (the workload's report)")
    parser.add_argument("--save", metavar="FOLDER",
                        help="also write the report to FOLDER/<workload>-<machine>.json (e.g. data/benchmarks)")


def benchmark_main(description: str, probes: tuple[str, ...], probe: Callable, benchmark: Callable,
                   print_report: Callable[[dict], None], device_help: str) -> None:
    """The command line every workload shares: ``--repetitions``, ``--threads``, ``--device``, ``--json``,
    ``--save``; the hidden ``--probe METHOD --size JSON --result FILE`` that :func:`in_fresh_processes` calls."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    add_output_arguments(parser)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per measurement (1: on a shared machine more threads mostly wait)")
    parser.add_argument("--device", help=device_help)
    parser.add_argument("--probe", choices=probes, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, json.loads(args.size), args.threads, args.result, args.device)))
        return
    report = benchmark(args.repetitions, args.threads, args.device)
    if args.save:
        save_report(report, args.save)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)


def save_report(report: dict, folder: str | Path) -> Path:
    """Write ``report`` (with ``workload`` and ``machine``) as ``folder/<workload>-<machine slug>.json``, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{report['workload']}-{report['machine']['slug']}.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(report, indent=1) + "\n")
    partial.replace(path)
    return path


def axis_sizes(default: dict, axes: dict) -> list[dict]:
    """The default size, then each axis varied alone (the other parameters at their default), without repeats."""
    seen, out = set(), []
    for axis, values in axes.items():
        for value in values:
            size = dict(default, **{axis: value})
            key = tuple(sorted(size.items()))
            if key not in seen:
                seen.add(key)
                out.append(size)
    return out


def summary(report: dict, default: dict) -> dict:
    """Top-level ``speedup``, ``memory_ratio`` and ``flop_ratio_bound`` (those of the default size's row) and
    ``max_difference`` (the largest over every row), added to ``report`` in place."""
    rows = report["rows"]
    main = next((row for row in rows if all(row.get(key) == value for key, value in default.items())), rows[0])
    for key in ("speedup", "memory_ratio", "flop_ratio_bound"):
        report[key] = main.get(key)
    report["max_difference"] = max(row["max_difference"] for row in rows)
    report["default_size"] = default
    return report


def timed_with_peak_memory_on(device, call: Callable[[], object]) -> tuple[object, float, float]:
    """:func:`timed_with_peak_memory` on the CPU; on a CUDA device, the time after synchronising and the extra peak
    of the GPU memory allocated by torch (what bounds a GPU run) instead of the resident set."""
    import torch

    if torch.device(device).type != "cuda":
        return timed_with_peak_memory(call)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = call()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return result, seconds, (torch.cuda.max_memory_allocated() - before) / 2**20


GPU_MEMORY_METHOD = "extra peak of torch.cuda.max_memory_allocated over the call (GPU memory), fresh process"


def memory_method(device) -> str:
    return GPU_MEMORY_METHOD if str(device).startswith("cuda") else MEMORY_METHOD


def matmul_gflops(rows: int, d_in: int, d_out: int, threads: int = 1, device: str = "cpu", seconds: float = 0.5) -> float:
    """GFLOP/s of an fp32 ``(rows, d_in) @ (d_in, d_out)`` product on this machine with ``threads`` threads: the rate
    a model's linear layers can reach at that batch, to which a benchmark's achieved rate is compared."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(rows, d_in, device=device)
    b = torch.randn(d_in, d_out, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * rows * d_in * d_out * count / (time.perf_counter() - start) / 1e9
