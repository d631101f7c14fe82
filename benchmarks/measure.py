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
