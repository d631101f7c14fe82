"""Benchmark: the embedding judge (:class:`steerlib.judge.EmbeddingJudge`), the naive way vs steerlib's.

The naive way (as the judge was before): every text judged on its own, its concept's descriptions and the neutral
descriptions embedded again for every text, so three MiniLM forwards per text. steerlib's
(:meth:`EmbeddingJudge.record_margins`): the descriptions embedded once per concept (the neutral ones once), the
texts of a concept in batches of 64.

Measured at 3 sizes (number of texts: our labelled texts, ``data/judge_labels.jsonl``, cycled to the size), each in
fresh processes (``measure.py``): time, texts judged per second, MiniLM forwards per text (counted by a forward
hook on the embedding model), extra peak memory, and the largest difference of the margins between the two ways
(padding in a batch changes the rounding only). The bound is the fewest forwards that can do it: the texts in
batches of 64 per concept, one forward of descriptions per concept and one of the neutral ones; ``flop_ratio_bound``
is here the naive forwards over that bound (forwards, not FLOPs: a batched forward costs more than a single one).

Run: ``.venv/bin/python benchmarks/judge.py [--json] [--save data/benchmarks]``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from measure import (benchmark_main, axis_sizes, describe_machine, in_fresh_processes, median, memory_method,
                     summary, timed_with_peak_memory_on)
from steerlib.judge import CONCEPT_DESCRIPTIONS, NEUTRAL_DESCRIPTIONS, EmbeddingJudge, load_judge_labels

WORKLOAD = "judge"
DEFAULT = {"n_texts": 100}
AXES = {"n_texts": [25, 100, 400]}
BATCH = 64
METHODS = ("naive", "steerlib")


def records_of_size(n_texts: int) -> list[dict]:
    """Our labelled texts, cycled to ``n_texts``."""
    records = load_judge_labels()
    return [records[i % len(records)] for i in range(n_texts)]


def naive_way(judge: EmbeddingJudge, records: list[dict]) -> np.ndarray:
    """One text at a time, the concept's and the neutral descriptions embedded again for every text."""
    margins = []
    for record in records:
        concept = record["concept"].strip()
        embedded = judge.embed([record["text"]])
        positive = judge.embed([concept, f"a text expressing {concept}", *CONCEPT_DESCRIPTIONS.get(concept, ())])
        neutral = judge.embed(list(NEUTRAL_DESCRIPTIONS))
        margins.append(float((embedded @ positive.T).max() - (embedded @ neutral.T).max()))
    return np.array(margins)


def steerlib_way(judge: EmbeddingJudge, records: list[dict]) -> np.ndarray:
    return judge.record_margins(records)


def bound_forwards(records: list[dict]) -> int:
    """Texts in batches of 64 per concept, the descriptions once per concept, the neutral ones once."""
    per_concept: dict[str, int] = {}
    for record in records:
        per_concept[record["concept"]] = per_concept.get(record["concept"], 0) + 1
    return sum(math.ceil(n / BATCH) + 1 for n in per_concept.values()) + 1


def probe(method: str, size: dict, threads: int, result_path: str | None, device: str | None) -> dict:
    torch.set_num_threads(threads)
    records = records_of_size(size["n_texts"])
    way = naive_way if method == "naive" else steerlib_way
    warm = EmbeddingJudge(device=device)
    way(warm, records[:2])  # warm-up: loads MiniLM, first forwards
    judge = EmbeddingJudge(device=device)  # a fresh judge: no descriptions embedded yet
    judge._model, judge._tokenizer, judge.device = warm._model, warm._tokenizer, warm.device
    forwards = []
    handle = judge._model.register_forward_hook(lambda module, args, output: forwards.append(1))
    margins, seconds, peak = timed_with_peak_memory_on(judge.device, lambda: way(judge, records))
    handle.remove()
    if result_path:
        np.save(result_path, margins)
    return {"seconds": seconds, "peak_extra_mib": peak, "forwards": len(forwards), "device": str(judge.device)}


def benchmark(repetitions: int, threads: int, device: str | None) -> dict:
    sizes = axis_sizes(DEFAULT, AXES)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        arguments = []
        for index, size in enumerate(sizes):
            for method in METHODS:
                arguments.append(["--probe", method, "--size", json.dumps(size), "--threads", str(threads),
                                  "--result", str(Path(folder) / f"{index}-{method}.npy")]
                                 + (["--device", device] if device else []))
        measured = in_fresh_processes(__file__, arguments, repetitions)
        for index, size in enumerate(sizes):
            naive, ours = measured[2 * index], measured[2 * index + 1]
            margins = {method: np.load(Path(folder) / f"{index}-{method}.npy") for method in METHODS}
            n = size["n_texts"]
            row = dict(size)
            row.update({
                "authors_s": median([m["seconds"] for m in naive]),
                "steerlib_s": median([m["seconds"] for m in ours]),
                "authors_peak_mib": median([m["peak_extra_mib"] for m in naive]),
                "steerlib_peak_mib": median([m["peak_extra_mib"] for m in ours]),
                "authors_forwards": naive[0]["forwards"],
                "steerlib_forwards": ours[0]["forwards"],
                "bound_forwards": bound_forwards(records_of_size(n)),
                "max_difference": float(np.abs(margins["naive"] - margins["steerlib"]).max()),
            })
            row["authors_texts_per_s"] = n / row["authors_s"]
            row["steerlib_texts_per_s"] = n / row["steerlib_s"]
            row["authors_forwards_per_text"] = row["authors_forwards"] / n
            row["steerlib_forwards_per_text"] = row["steerlib_forwards"] / n
            row["forward_ratio"] = row["authors_forwards"] / row["steerlib_forwards"]
            row["flop_ratio_bound"] = row["authors_forwards"] / row["bound_forwards"]
            row["speedup"] = row["authors_s"] / row["steerlib_s"]
            row["memory_ratio"] = row["steerlib_peak_mib"] / max(row["authors_peak_mib"], 1e-9)
            rows.append(row)
        device_used = measured[0][0]["device"]
    report = {"workload": WORKLOAD, "title": "the embedding judge", "model": "all-MiniLM-L6-v2",
              "reference": "each text alone, descriptions embedded again for every text (3 forwards per text)",
              "steerlib": "EmbeddingJudge.record_margins: descriptions once per concept, texts in batches of 64",
              "difference": "largest |margin difference|",
              "bound": "fewest MiniLM forwards (flop_ratio_bound counts forwards)",
              "repetitions": repetitions, "threads": threads, "memory_method": memory_method(device_used), "axes": AXES,
              "machine": describe_machine(device_used, threads), "rows": rows}
    report = summary(report, DEFAULT)
    main_row = next(row for row in rows if row["n_texts"] == DEFAULT["n_texts"])
    report["forward_ratio"] = main_row["forward_ratio"]
    return report


def print_report(report: dict) -> None:
    print(f"{report['title']}: {report['model']}, median of {report['repetitions']}, {report['threads']} threads, "
          f"{report['machine']['name']}")
    print("texts   naive   steerlib  speed-up   texts/s naive / steerlib   forwards/text naive / steerlib (bound)"
          "   max |Δmargin|")
    for row in report["rows"]:
        print(f"{row['n_texts']:5d} {row['authors_s']:6.2f}s {row['steerlib_s']:8.2f}s {row['speedup']:7.1f}x "
              f"{row['authors_texts_per_s']:10.1f} / {row['steerlib_texts_per_s']:7.1f} "
              f"{row['authors_forwards_per_text']:14.2f} / {row['steerlib_forwards_per_text']:.3f} "
              f"({row['bound_forwards'] / row['n_texts']:.3f}), {row['forward_ratio']:.0f}x fewer   "
              f"{row['max_difference']:.1e}")


def main() -> None:
    benchmark_main(__doc__.splitlines()[0], METHODS, probe, benchmark, print_report,
                   'where MiniLM runs (default: the GPU when there is one, else the CPU)')


if __name__ == "__main__":
    sys.exit(main())
