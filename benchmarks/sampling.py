"""Benchmark: steered sampling behind concept probability (Sec. 5) on SmolLM2, the authors' way vs steerlib's.

The authors' way: the model's own ``generate`` with a steering hook that adds ``α v`` at block ``ℓ``
(:func:`steerlib.steering.steer`), one ``α`` at a time, its ``K`` samples in one batch. steerlib
(:func:`steerlib.experiments.concept_probability.sample_steered_completions`): every ``α`` of a prompt in one
batch of ``n_α K`` rows, row ``i`` steered with its own ``α_i``.

Both ways are compared at equal *greedy* outputs, so that any difference is the computation's and not the
sampler's randomness: the authors' way decodes greedily (``do_sample=False``); steerlib's sampler keeps only the
most probable token (nucleus ``top_p`` of 1e-9, which leaves one token). The completions are compared text for
text (decoded, special tokens dropped); ``max_difference`` is the number of completions that differ (a batched
forward may round differently from a forward of ``K`` rows and flip a near tie).

Measured at a default size and along three axes (number of α, ``max_new_tokens``, block), each in fresh processes
(``measure.py``): time, extra peak memory, the differing completions, and the FLOP ratio authors' / lower bound.
Both ways do the same arithmetic (every row through every block, a KV cache for the generated tokens); the bound
only saves blocks ``0..ℓ`` of the prompt, identical on every row, so it is close to 1: what steerlib gains here is
not arithmetic but efficiency, one ``generate`` of ``n_α K`` rows instead of ``n_α`` of ``K`` rows (the weights
read and the per-step Python overhead once per step instead of once per α). The speed-up is thus bounded by how
much faster a large batch runs per row than a small one on the machine: little on a saturated CPU, much on a GPU.

The steering vector is random (seeded), of norm 4, at ``α ∈ [-16, 16]``: enough to change the completions.

Run: ``.venv/bin/python benchmarks/sampling.py [--json] [--save data/benchmarks]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from measure import (benchmark_main, axis_sizes, describe_machine, in_fresh_processes, matmul_gflops, median,
                     memory_method, summary, timed_with_peak_memory_on)
from steerlib.experiments.concept_probability import sample_steered_completions
from steerlib.models import load_model
from steerlib.prompts import load_eval_prompts
from steerlib.steering import steer

WORKLOAD = "sampling"
DEFAULT = {"n_alphas": 8, "max_new_tokens": 16, "layer": 12}
AXES = {"n_alphas": [4, 8, 16], "max_new_tokens": [8, 16, 32], "layer": [3, 12, 27]}
N_SAMPLES = 4
GREEDY_TOP_P = 1e-9
METHODS = ("authors", "steerlib")


def setup(size: dict, device: str | None = None):
    lm = load_model(device=device)
    prompt = load_eval_prompts()[0]
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    v = (v / v.norm() * 4.0).to(lm.device)
    alphas = torch.linspace(-16.0, 16.0, size["n_alphas"]).tolist()
    return lm, prompt, v, alphas


def authors_way(lm, prompt: str, v, layer: int, alphas, max_new_tokens: int) -> list[str]:
    """``generate`` under the steering hook, one α at a time (its K samples in one batch), greedy."""
    tokenizer = lm.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(lm.device)
    batch = ids.expand(N_SAMPLES, -1)
    texts = []
    with torch.no_grad():
        for alpha in alphas:
            with steer(lm, v, alpha, layer=layer):
                output = lm.model.generate(input_ids=batch, attention_mask=torch.ones_like(batch),
                                           max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
            texts += tokenizer.batch_decode(output[:, ids.shape[1]:], skip_special_tokens=True)
    return texts


def steerlib_way(lm, prompt: str, v, layer: int, alphas, max_new_tokens: int) -> list[str]:
    """All α of the prompt in one batch (:func:`sample_steered_completions`), keeping only the top token."""
    nested = sample_steered_completions(lm, v, [prompt], alphas, N_SAMPLES, max_new_tokens, layer=layer,
                                        top_p=GREEDY_TOP_P, progress=False)
    return [text for per_alpha in nested for text in per_alpha[0]]


def probe(method: str, size: dict, threads: int, result_path: str | None, device: str | None) -> dict:
    torch.set_num_threads(threads)
    lm, prompt, v, alphas = setup(size, device)
    way = authors_way if method == "authors" else steerlib_way
    way(lm, prompt, v, size["layer"], alphas[:2], 2)  # warm-up
    texts, seconds, peak = timed_with_peak_memory_on(
        lm.device, lambda: way(lm, prompt, v, size["layer"], alphas, size["max_new_tokens"]))
    if result_path:
        Path(result_path).write_text(json.dumps(texts))
    return {"seconds": seconds, "peak_extra_mib": peak}


def flops(lm, size: dict, prompt_tokens: int) -> tuple[float, float]:
    """Arithmetic (2 x multiply-adds) of the authors' way (the same as steerlib's) and of the lower bound, which runs
    blocks ``0..ℓ`` of the prompt once instead of once per row."""
    block_params = sum(p.numel() for p in lm.blocks[0].parameters())
    d, vocabulary, n_layers = lm.hidden_size, lm.unembedding.weight.shape[0], lm.n_layers
    rows, new, layer = size["n_alphas"] * N_SAMPLES, size["max_new_tokens"], size["layer"]

    def block(tokens: float, context: float) -> float:
        return tokens * (2 * block_params + 4 * context * d)

    prefill = block(prompt_tokens, (prompt_tokens + 1) / 2)
    decode = sum(block(1, prompt_tokens + t) for t in range(1, new)) * n_layers + new * 2 * d * vocabulary
    authors = rows * (n_layers * prefill + decode)
    bound = (layer + 1) * prefill + rows * ((n_layers - layer - 1) * prefill + decode)
    return authors, bound


def flop_ratio(lm, size: dict, prompt_tokens: int) -> float:
    authors, bound = flops(lm, size, prompt_tokens)
    return authors / bound


def arithmetic_rates(lm, rows: list[dict], prompt_tokens: int, threads: int) -> dict:
    """What bounds the speed-up: each row's achieved GFLOP/s of both ways (in place), and the rate of a matrix
    product of the model's MLP shape at the authors' batch (K rows) and at steerlib's (n_α K rows)."""
    d_in = lm.hidden_size
    d_out = lm.blocks[0].mlp.up_proj.out_features if hasattr(lm.blocks[0], "mlp") else 4 * d_in
    for row in rows:
        work = flops(lm, row, prompt_tokens)[0] / 1e9
        row["authors_gflops"], row["steerlib_gflops"] = work / row["authors_s"], work / row["steerlib_s"]
    batches = sorted({N_SAMPLES} | {row["n_alphas"] * N_SAMPLES for row in rows})
    device = str(lm.device)
    return {str(batch): matmul_gflops(batch, d_in, d_out, threads, device) for batch in batches}


def benchmark(repetitions: int, threads: int, device: str | None) -> dict:
    lm = load_model(device=device)
    prompt = load_eval_prompts()[0]
    prompt_tokens = len(lm.tokenizer(prompt)["input_ids"])
    sizes = axis_sizes(DEFAULT, AXES)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        arguments = []
        for index, size in enumerate(sizes):
            for method in METHODS:
                arguments.append(["--probe", method, "--size", json.dumps(size), "--threads", str(threads),
                                  "--result", str(Path(folder) / f"{index}-{method}.json")]
                                 + (["--device", device] if device else []))
        measured = in_fresh_processes(__file__, arguments, repetitions)
        for index, size in enumerate(sizes):
            authors, ours = measured[2 * index], measured[2 * index + 1]
            texts = {method: json.loads((Path(folder) / f"{index}-{method}.json").read_text()) for method in METHODS}
            differing = sum(a != b for a, b in zip(texts["authors"], texts["steerlib"]))
            row = dict(size)
            row.update({
                "n_samples": N_SAMPLES,
                "n_completions": len(texts["authors"]),
                "authors_s": median([m["seconds"] for m in authors]),
                "steerlib_s": median([m["seconds"] for m in ours]),
                "authors_peak_mib": median([m["peak_extra_mib"] for m in authors]),
                "steerlib_peak_mib": median([m["peak_extra_mib"] for m in ours]),
                "max_difference": differing + abs(len(texts["authors"]) - len(texts["steerlib"])),
                "distinct_completions": len(set(texts["steerlib"])),
                "flop_ratio_bound": flop_ratio(lm, size, prompt_tokens),
            })
            row["speedup"] = row["authors_s"] / row["steerlib_s"]
            # the authors' way needs almost no extra memory (a batch of K rows): no ratio below 1 MiB
            row["memory_ratio"] = (row["steerlib_peak_mib"] / row["authors_peak_mib"]
                                   if row["authors_peak_mib"] >= 1 else None)
            rows.append(row)
    matmul = arithmetic_rates(lm, rows, prompt_tokens, threads)
    report = {"workload": WORKLOAD, "title": "steered sampling for concept probability", "model": lm.name,
              "reference": "generate with the steering hook, one α at a time (K samples per batch), greedy",
              "steerlib": "sample_steered_completions: all α of a prompt in one batch, top token only",
              "difference": "completions that differ, text for text (greedy outputs)",
              "prompt_tokens": prompt_tokens, "n_samples": N_SAMPLES, "repetitions": repetitions,
              "threads": threads, "memory_method": memory_method(lm.device), "axes": AXES,
              "matmul_gflops": matmul, "matmul_shape": "(rows, d) @ (d, MLP width), fp32, per batch of rows",
              "machine": describe_machine(lm.device, threads), "rows": rows}
    return summary(report, DEFAULT)


def print_report(report: dict) -> None:
    print(f"{report['title']}: {report['model']}, {report['prompt_tokens']} prompt tokens, K = {report['n_samples']}, "
          f"median of {report['repetitions']}, {report['threads']} threads, {report['machine']['name']}")
    print(" α  new tokens block   authors   steerlib  speed-up (FLOP bound)   peak MiB authors / steerlib   differing"
          "   GFLOP/s authors / steerlib")
    for row in report["rows"]:
        print(f"{row['n_alphas']:2d} {row['max_new_tokens']:10d} {row['layer']:5d} {row['authors_s']:8.2f}s "
              f"{row['steerlib_s']:8.2f}s {row['speedup']:6.2f}x ({row['flop_ratio_bound']:.2f}x) "
              f"{row['authors_peak_mib']:12.0f} / {row['steerlib_peak_mib']:6.0f}   "
              f"{row['max_difference']}/{row['n_completions']}   {row['authors_gflops']:.1f} / {row['steerlib_gflops']:.1f}")
    print("matrix product of the MLP's shape, GFLOP/s per batch of rows: "
          + ", ".join(f"{rows} rows {rate:.1f}" for rows, rate in report["matmul_gflops"].items()))


def main() -> None:
    benchmark_main(__doc__.splitlines()[0], METHODS, probe, benchmark, print_report,
                   'where the model runs (default: the GPU when there is one, else the CPU)')


if __name__ == "__main__":
    sys.exit(main())
