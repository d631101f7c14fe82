"""Benchmark: steered cross-entropy over a corpus (ΔCE, Sec. 5) on SmolLM2, the authors' way vs steerlib's.

The authors' way: a hook adds ``α v`` at block ``ℓ`` (:func:`steerlib.steering.steer`), the model's full forward
runs on the α-batch of text blocks, and every logit is materialised and log-softmaxed in fp32 before the next
tokens' log-probabilities are gathered. steerlib (:func:`steerlib.steering.steered_target_log_probs`): blocks
``0..ℓ`` once on the text blocks, blocks ``ℓ+1..L-1`` on the α-batch, logits ``logit_chunk`` rows at a time.

Measured at a default size and along three axes (number of α, text length, block), each in fresh processes
(``measure.py``): time, extra peak memory, the largest difference of the cross-entropies between the two ways,
and the FLOP ratio authors' / lower bound, where the bound counts blocks ``0..ℓ`` once on the texts, blocks
``ℓ+1..L-1`` and the unembedding on the α-batch (the unembedding of every position is needed for the CE).

At the default size it also measures steerlib with smaller ``logit_chunk`` (256 and 128 rows of logits at a time
instead of the default 1024): steerlib's peak is set by one chunk of logits (rows × vocabulary, fp32) and its
log-softmax, so smaller chunks lower it, at some cost in time (the library's default is not changed here).

Run: ``.venv/bin/python benchmarks/cross_entropy.py [--json] [--save data/benchmarks]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from measure import (benchmark_main, axis_sizes, describe_machine, in_fresh_processes, median, memory_method,
                     summary, timed_with_peak_memory_on)
from steerlib.corpora import corpus_blocks
from steerlib.models import load_model
from steerlib.steering import steer, steered_target_log_probs

DEFAULT = {"n_alphas": 8, "length": 64, "layer": 15}
AXES = {"n_alphas": [4, 8, 16], "length": [32, 64, 128], "layer": [3, 15, 27]}
N_BLOCKS = 2
METHODS = ("authors", "steerlib")
LOGIT_CHUNKS = (256, 128)
WORKLOAD = "cross-entropy"


def authors_way(lm, blocks, v, layer, alphas) -> torch.Tensor:
    """Per-α cross-entropy from the hooked full forward of the α-batch, all logits in fp32."""
    batch = blocks.shape[0]
    with torch.no_grad(), steer(lm, v, alphas.repeat_interleave(batch), layer=layer):
        logits = lm.model(input_ids=blocks.repeat(len(alphas), 1)).logits
    log_probs = logits.float().log_softmax(dim=-1)[:, :-1]
    targets = blocks[:, 1:].repeat(len(alphas), 1)
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    return -picked.reshape(len(alphas), batch, -1).double().mean(dim=(1, 2))


def steerlib_way(lm, blocks, v, layer, alphas, logit_chunk: int = 1024) -> torch.Tensor:
    return -steered_target_log_probs(lm, blocks, v, alphas, layer=layer,
                                     logit_chunk=logit_chunk).double().mean(dim=(1, 2))


def way_of(method: str):
    """``"authors"``, ``"steerlib"`` or ``"steerlib-chunk<rows>"`` (steerlib with that ``logit_chunk``)."""
    if method == "authors":
        return authors_way
    if method == "steerlib":
        return steerlib_way
    chunk = int(method.removeprefix("steerlib-chunk"))
    return lambda lm, blocks, v, layer, alphas: steerlib_way(lm, blocks, v, layer, alphas, chunk)


def setup(size: dict, device: str | None = None):
    lm = load_model(device=device)
    blocks = corpus_blocks(lm.tokenizer, "lee_background", N_BLOCKS * (size["length"] - 1), size["length"], 0)
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    v = (v / v.norm() * 10.0).to(lm.device)
    alphas = torch.linspace(-20.0, 20.0, size["n_alphas"])
    return lm, blocks.to(lm.device), v, alphas


def probe(method: str, size: dict, threads: int, result_path: str | None, device: str | None = None) -> dict:
    torch.set_num_threads(threads)
    lm, blocks, v, alphas = setup(size, device)
    way = way_of(method)
    way(lm, blocks[:1, :8], v, size["layer"], alphas[:2])  # warm-up
    ce, seconds, peak = timed_with_peak_memory_on(lm.device, lambda: way(lm, blocks, v, size["layer"], alphas))
    if result_path:
        torch.save(ce.cpu(), result_path)
    return {"seconds": seconds, "peak_extra_mib": peak}


def flop_ratio(lm, size: dict) -> float:
    """Multiply-adds of the authors' way over the lower bound (both score every position)."""
    block_params = sum(p.numel() for p in lm.blocks[0].parameters())
    d, vocabulary, n_layers = lm.hidden_size, lm.unembedding.weight.shape[0], lm.n_layers
    tokens, context = N_BLOCKS * size["length"], (size["length"] + 1) / 2
    per_block = tokens * (2 * block_params + 4 * context * d)
    unembed = tokens * 2 * d * vocabulary
    a, layer = size["n_alphas"], size["layer"]
    authors = a * (n_layers * per_block + unembed)
    bound = (layer + 1) * per_block + a * ((n_layers - layer - 1) * per_block + unembed)
    return authors / bound


def sizes() -> list[dict]:
    return axis_sizes(DEFAULT, AXES)


def benchmark(repetitions: int, threads: int, device: str | None = None) -> dict:
    lm = load_model(device=device)
    rows = []
    chunk_methods = [f"steerlib-chunk{chunk}" for chunk in LOGIT_CHUNKS]
    with tempfile.TemporaryDirectory() as folder:
        arguments, where = [], {}
        for index, size in enumerate(sizes()):
            methods = METHODS + tuple(chunk_methods if size == DEFAULT else ())
            for method in methods:
                where[index, method] = len(arguments)
                arguments.append(["--probe", method, "--size", json.dumps(size), "--threads", str(threads),
                                  "--result", str(Path(folder) / f"{index}-{method}.pt")]
                                 + (["--device", device] if device else []))
        measured = in_fresh_processes(__file__, arguments, repetitions)
        chunk_rows = []
        for index, size in enumerate(sizes()):
            authors, ours = measured[where[index, "authors"]], measured[where[index, "steerlib"]]
            ce = {method: torch.load(Path(folder) / f"{index}-{method}.pt") for method in METHODS}
            row = dict(size)
            row.update({
                "authors_s": median([m["seconds"] for m in authors]),
                "steerlib_s": median([m["seconds"] for m in ours]),
                "authors_peak_mib": median([m["peak_extra_mib"] for m in authors]),
                "steerlib_peak_mib": median([m["peak_extra_mib"] for m in ours]),
                "max_abs_ce_difference": float((ce["authors"] - ce["steerlib"]).abs().max()),
                "flop_ratio_bound": flop_ratio(lm, size),
            })
            row["max_difference"] = row["max_abs_ce_difference"]
            row["speedup"] = row["authors_s"] / row["steerlib_s"]
            row["memory_ratio"] = row["steerlib_peak_mib"] / max(row["authors_peak_mib"], 1e-9)
            rows.append(row)
            if size == DEFAULT:
                for chunk, method in zip(LOGIT_CHUNKS, chunk_methods):
                    runs = measured[where[index, method]]
                    chunked = torch.load(Path(folder) / f"{index}-{method}.pt")
                    chunk_rows.append({
                        "logit_chunk": chunk,
                        "steerlib_s": median([m["seconds"] for m in runs]),
                        "steerlib_peak_mib": median([m["peak_extra_mib"] for m in runs]),
                        "speedup": row["authors_s"] / median([m["seconds"] for m in runs]),
                        "memory_ratio": median([m["peak_extra_mib"] for m in runs]) / max(row["authors_peak_mib"], 1e-9),
                        "max_difference": float((ce["authors"] - chunked).abs().max()),
                    })
    report = {"workload": WORKLOAD, "title": "cross-entropy over a corpus", "model": lm.name,
              "reference": "hooked full forward of the α-batch over the text blocks, all logits, fp32 log-softmax",
              "steerlib": "steered_target_log_probs: blocks 0..ℓ once, α-batched later blocks, logits 1024 rows at a time",
              "difference": "largest |ΔCE difference| (nats)",
              "n_text_blocks": N_BLOCKS, "repetitions": repetitions, "threads": threads,
              "memory_method": memory_method(lm.device), "axes": AXES,
              "machine": describe_machine(lm.device, threads), "rows": rows,
              "logit_chunk_rows": chunk_rows}
    return summary(report, DEFAULT)


def print_report(report: dict) -> None:
    print(f"{report['title']}: {report['model']}, {report['n_text_blocks']} text blocks, median of "
          f"{report['repetitions']}, {report['threads']} threads, {report['machine']['name']}")
    print(" α  tokens block   authors   steerlib  speed-up (FLOP bound)   peak MiB authors / steerlib   max |ΔCE|")
    for row in report["rows"]:
        print(f"{row['n_alphas']:2d} {row['length']:7d} {row['layer']:5d} {row['authors_s']:8.2f}s {row['steerlib_s']:8.2f}s "
              f"{row['speedup']:6.2f}x ({row['flop_ratio_bound']:.2f}x) {row['authors_peak_mib']:12.0f} / "
              f"{row['steerlib_peak_mib']:6.0f} ({row['memory_ratio']:.2f})   {row['max_abs_ce_difference']:.1e}")
    for row in report["logit_chunk_rows"]:
        print(f"default size, logit_chunk {row['logit_chunk']}: steerlib {row['steerlib_s']:.2f}s, speed-up "
              f"{row['speedup']:.2f}x, peak {row['steerlib_peak_mib']:.0f} MiB ({row['memory_ratio']:.2f} of the "
              f"authors'), max |ΔCE| {row['max_difference']:.1e}")


def main() -> None:
    probes = METHODS + tuple(f"steerlib-chunk{c}" for c in LOGIT_CHUNKS)
    benchmark_main(__doc__.splitlines()[0], probes, probe, benchmark, print_report,
                   'where the model runs (default: the GPU when there is one, else the CPU)')


if __name__ == "__main__":
    sys.exit(main())
