"""Benchmark: steered cross-entropy over a corpus (ΔCE, Sec. 5) on SmolLM2, the authors' way vs steerlib's.

The authors' way: a hook adds ``α v`` at block ``ℓ`` (:func:`steerlib.steering.steer`), the model's full forward
runs on the α-batch of text blocks, and every logit is materialised and log-softmaxed in fp32 before the next
tokens' log-probabilities are gathered. steerlib (:func:`steerlib.steering.steered_target_log_probs`): blocks
``0..ℓ`` once on the text blocks, blocks ``ℓ+1..L-1`` on the α-batch, logits ``logit_chunk`` rows at a time.

Measured at a default size and along three axes (number of α, text length, block), each in fresh processes
(``measure.py``): time, extra peak memory, the largest difference of the cross-entropies between the two ways,
and the FLOP ratio authors' / lower bound, where the bound counts blocks ``0..ℓ`` once on the texts, blocks
``ℓ+1..L-1`` and the unembedding on the α-batch (the unembedding of every position is needed for the CE).

Run: ``.venv/bin/python benchmarks/cross_entropy.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from measure import MEMORY_METHOD, in_fresh_processes, median, timed_with_peak_memory
from steerlib.corpora import corpus_blocks
from steerlib.models import load_model
from steerlib.steering import steer, steered_target_log_probs

DEFAULT = {"n_alphas": 8, "length": 64, "layer": 15}
AXES = {"n_alphas": [4, 8, 16], "length": [32, 64, 128], "layer": [3, 15, 27]}
N_BLOCKS = 2
METHODS = ("authors", "steerlib")


def authors_way(lm, blocks, v, layer, alphas) -> torch.Tensor:
    """Per-α cross-entropy from the hooked full forward of the α-batch, all logits in fp32."""
    batch = blocks.shape[0]
    with torch.no_grad(), steer(lm, v, alphas.repeat_interleave(batch), layer=layer):
        logits = lm.model(input_ids=blocks.repeat(len(alphas), 1)).logits
    log_probs = logits.float().log_softmax(dim=-1)[:, :-1]
    targets = blocks[:, 1:].repeat(len(alphas), 1)
    picked = log_probs.gather(-1, targets[..., None])[..., 0]
    return -picked.reshape(len(alphas), batch, -1).double().mean(dim=(1, 2))


def steerlib_way(lm, blocks, v, layer, alphas) -> torch.Tensor:
    return -steered_target_log_probs(lm, blocks, v, alphas, layer=layer).double().mean(dim=(1, 2))


def setup(size: dict):
    lm = load_model()
    blocks = corpus_blocks(lm.tokenizer, "lee_background", N_BLOCKS * (size["length"] - 1), size["length"], 0)
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * 10.0
    alphas = torch.linspace(-20.0, 20.0, size["n_alphas"])
    return lm, blocks, v, alphas


def probe(method: str, size: dict, threads: int, result_path: str | None) -> dict:
    torch.set_num_threads(threads)
    lm, blocks, v, alphas = setup(size)
    way = authors_way if method == "authors" else steerlib_way
    way(lm, blocks[:1, :8], v, size["layer"], alphas[:2])  # warm-up
    ce, seconds, peak = timed_with_peak_memory(lambda: way(lm, blocks, v, size["layer"], alphas))
    if result_path:
        torch.save(ce, result_path)
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
    seen, out = set(), []
    for axis, values in AXES.items():
        for value in values:
            size = dict(DEFAULT, **{axis: value})
            key = tuple(sorted(size.items()))
            if key not in seen:
                seen.add(key)
                out.append(size)
    return out


def benchmark(repetitions: int, threads: int) -> dict:
    lm = load_model()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        arguments = []
        for index, size in enumerate(sizes()):
            for method in METHODS:
                arguments.append(["--probe", method, "--size", json.dumps(size), "--threads", str(threads),
                                  "--result", str(Path(folder) / f"{index}-{method}.pt")])
        measured = in_fresh_processes(__file__, arguments, repetitions)
        for index, size in enumerate(sizes()):
            authors, ours = measured[2 * index], measured[2 * index + 1]
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
            row["speedup"] = row["authors_s"] / row["steerlib_s"]
            row["memory_ratio"] = row["steerlib_peak_mib"] / max(row["authors_peak_mib"], 1e-9)
            rows.append(row)
    return {"workload": "cross-entropy over a corpus", "model": lm.name, "n_text_blocks": N_BLOCKS,
            "repetitions": repetitions, "threads": threads, "memory_method": MEMORY_METHOD, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per measurement (1: on a shared machine more threads mostly wait)")
    parser.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, json.loads(args.size), args.threads, args.result)))
        return
    report = benchmark(args.repetitions, args.threads)
    if args.json:
        print(json.dumps(report))
        return
    print(f"{report['workload']}: {report['model']}, {report['n_text_blocks']} text blocks, median of "
          f"{report['repetitions']}, {report['threads']} threads")
    print(" α  tokens block   authors   steerlib  speed-up (FLOP bound)   peak MiB authors / steerlib   max |ΔCE|")
    for row in report["rows"]:
        print(f"{row['n_alphas']:2d} {row['length']:7d} {row['layer']:5d} {row['authors_s']:8.2f}s {row['steerlib_s']:8.2f}s "
              f"{row['speedup']:6.2f}x ({row['flop_ratio_bound']:.2f}x) {row['authors_peak_mib']:12.0f} / "
              f"{row['steerlib_peak_mib']:6.0f} ({row['memory_ratio']:.2f})   {row['max_abs_ce_difference']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
