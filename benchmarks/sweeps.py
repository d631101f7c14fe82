"""Benchmark: a 256-α next-token sweep on SmolLM2, the straightforward way vs steerlib's α-batched forward.

The straightforward way (as the paper's code does it) registers a forward hook that adds ``α v`` at block
``ℓ`` and runs the model's full forward on the α-batch (every block on every position, logits of every
position). steerlib runs blocks ``0..ℓ`` once, blocks ``ℓ+1..L-1`` on the α-batch, and the unembedding on
the last position only; for last-token steering it also caches the prompt's prefix, so each α costs one
position through blocks ``ℓ+1..L-1``.

Measured, for all-position steering at the middle layer and for last-token steering:
- time and extra peak memory, each measurement in a fresh process after loading the model and a 2-α warm-up,
  repetitions interleaved across methods, medians reported (``measure.py``);
- the largest ``|difference|`` of next-token probabilities between the two methods;
- the FLOP ratio straightforward / lower bound, where the lower bound counts only what must be computed:
  blocks ``0..ℓ`` once on the prompt, blocks ``ℓ+1..L-1`` on the α-batch (one position each for last-token
  steering), the unembedding of the last position. The measured speed-up is compared with it;
- agreement in half precision: with the model loaded in fp16 and in bf16, the largest total variation between
  steerlib's next-token distribution and the model's own forward in that dtype under :func:`steer`, over the α
  of the grid (every 16th, and ±10⁴ where fp16 overflows) where the model's own forward stays finite; how many α overflow it (fp16); and the
  largest total variation of steerlib's half-precision rows from fp32, those rows included.

With ``--first-position`` it instead measures how the first position (SmolLM2's massive activation) affects
``‖v‖`` at every layer, including it in the token means or not.

Measured at 64 and 256 α by default (``--n-alphas``), so the growth of the cost with the number of α shows.

Run: ``.venv/bin/python benchmarks/sweeps.py [--json] [--save data/benchmarks]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from measure import (add_output_arguments, describe_machine, in_fresh_processes, memory_method, save_report,
                     timed_with_peak_memory_on)
from steerlib.models import load_model
from steerlib.steering import steer, steered_next_token_log_probs
from steerlib.vectors import SteeringVector, steering_vectors

PROMPT = ("My neighbour told me yesterday that the new bakery on the corner of our street sells the best "
          "bread in town, so early this morning I went there and")
FALLBACK_POSITIVE = ["I am so happy today, everything feels bright and wonderful!",
                     "What a joyful morning: I laughed with my friends and loved every minute.",
                     "I feel delighted and grateful, life is full of good surprises."]
FALLBACK_NEGATIVE = ["The meeting is scheduled for three o'clock in room four.",
                     "Tables are usually made of wood, metal or plastic.",
                     "The train leaves the station every twenty minutes."]
METHODS = ("straightforward-all", "steerlib-all", "straightforward-last", "steerlib-last")
WORKLOAD = "next-token-sweep"
N_ALPHAS = [64, 256]


def concept_texts() -> tuple[list[str], list[str], str]:
    """P and N (random), 32 each, from the repository's prompt sets ("joy" if present), else built-in texts."""
    from steerlib.prompts import load_prompt_set, prompt_sets_folder

    files = sorted(prompt_sets_folder().glob("*.jsonl"), key=lambda path: path.stem != "joy")
    for path in files:
        try:
            return (load_prompt_set(path.stem, "positive")[:32], load_prompt_set(path.stem, "negative_random")[:32],
                    f"prompt set {path.stem!r}")
        except ValueError:
            continue
    return FALLBACK_POSITIVE, FALLBACK_NEGATIVE, "built-in texts"


def setup(vector_path: str | None = None, device: str | None = None):
    """The model, the middle layer and its vector (read from ``vector_path`` when given, else computed)."""
    lm = load_model(device=device)
    layer = lm.n_layers // 2
    if vector_path is not None:
        vector = SteeringVector.load(vector_path)
    else:
        positive, negative, _ = concept_texts()
        vector = steering_vectors(lm, positive, negative, "joy", "random", layers=[layer], progress=False)[layer]
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(lm.device)
    return lm, layer, vector, ids


def straightforward(lm, vector, ids, alphas, positions: str) -> torch.Tensor:
    """The paper's way: a hook adds α v at block ℓ; full forward of the α-batch; logits of every position."""
    with torch.no_grad(), steer(lm, vector, alphas, positions=positions):
        logits = lm.model(input_ids=ids.expand(len(alphas), -1)).logits
    return logits[:, -1].float().softmax(dim=-1)


def ours(lm, vector, ids, alphas, positions: str) -> torch.Tensor:
    return steered_next_token_log_probs(lm, ids[0], vector, alphas, positions=positions).exp()


def run_method(method: str, lm, vector, ids, alphas) -> torch.Tensor:
    kind, positions = method.rsplit("-", 1)
    return (straightforward if kind == "straightforward" else ours)(lm, vector, ids, alphas, positions)


def flop_counts(lm, layer: int, length: int, n_alphas: int) -> dict[str, float]:
    """Multiply-adds x 2 of the straightforward forward and of the lower bound, per steering mode."""
    block_params = sum(p.numel() for p in lm.blocks[0].parameters())
    d, vocabulary, n_layers = lm.hidden_size, lm.unembedding.weight.shape[0], lm.n_layers

    def block_flops(tokens: float, context: float) -> float:
        return tokens * (2 * block_params + 4 * context * d)  # weights + attention scores and values

    unembed = 2 * d * vocabulary
    mean_context = (length + 1) / 2
    straightforward_flops = n_layers * block_flops(n_alphas * length, mean_context) + n_alphas * length * unembed
    prefix = (layer + 1) * block_flops(length, mean_context)
    bound_all = prefix + (n_layers - layer - 1) * block_flops(n_alphas * length, mean_context) + n_alphas * unembed
    bound_last = (n_layers * block_flops(length, mean_context)  # the prompt once, with its cache
                  + (n_layers - layer - 1) * block_flops(n_alphas, length) + n_alphas * unembed)
    return {"straightforward": straightforward_flops, "bound-all": bound_all, "bound-last": bound_last}


def probe(method: str, n_alphas: int, vector_path: str, probabilities_path: str | None, threads: int,
          device: str | None = None) -> dict:
    """One measurement in a fresh process (``measure.py``): wall time and extra peak memory of one sweep, after
    loading and a 2-α warm-up (lazy initialisation)."""
    torch.set_num_threads(threads)
    lm, layer, vector, ids = setup(vector_path, device)
    alphas = torch.linspace(-200, 200, n_alphas)
    run_method(method, lm, vector, ids, alphas[:2])
    probabilities, seconds, peak = timed_with_peak_memory_on(
        lm.device, lambda: run_method(method, lm, vector, ids, alphas))
    if probabilities_path is not None:
        torch.save(probabilities.cpu(), probabilities_path)
    return {"method": method, "seconds": seconds, "peak_extra_mib": peak}


def benchmark(n_alphas: int, repetitions: int, threads: int, device: str | None = None) -> dict:
    """One size: both steering modes at ``n_alphas``, as in the report's ``"all"`` and ``"last"`` entries."""
    lm, layer, vector, ids = setup(device=device)
    flops = flop_counts(lm, layer, ids.shape[1], n_alphas)
    with tempfile.TemporaryDirectory() as folder:
        vector_path = str(vector.save(Path(folder) / "vector.safetensors"))
        arguments = [["--probe", method, "--n-alphas", str(n_alphas), "--vector", vector_path, "--threads",
                      str(threads), "--probabilities", str(Path(folder) / f"{method}.pt")]
                     + (["--device", device] if device else []) for method in METHODS]
        measured = dict(zip(METHODS, in_fresh_processes(__file__, arguments, repetitions)))
        probabilities = {method: torch.load(Path(folder) / f"{method}.pt") for method in METHODS}
    times = {method: [m["seconds"] for m in measured[method]] for method in METHODS}
    peaks = {method: [m["peak_extra_mib"] for m in measured[method]] for method in METHODS}
    report = {"model": lm.name, "layer": layer, "prompt_tokens": int(ids.shape[1]), "n_alphas": n_alphas,
              "repetitions": repetitions, "threads": threads, "memory_method": memory_method(lm.device),
              "machine": describe_machine(lm.device, threads)}
    for positions in ("all", "last"):
        slow, fast = f"straightforward-{positions}", f"steerlib-{positions}"
        report[positions] = {
            "straightforward_s": statistics.median(times[slow]), "steerlib_s": statistics.median(times[fast]),
            "speedup": statistics.median(times[slow]) / statistics.median(times[fast]),
            "flop_ratio_bound": flops["straightforward"] / flops[f"bound-{positions}"],
            "straightforward_peak_mib": statistics.median(peaks[slow]),
            "steerlib_peak_mib": statistics.median(peaks[fast]),
            "max_abs_probability_difference": float((probabilities[slow] - probabilities[fast]).abs().max()),
            "times_straightforward_s": times[slow], "times_steerlib_s": times[fast],
        }
    return report


def benchmark_sizes(n_alphas: list[int], repetitions: int, threads: int, device: str | None = None) -> dict:
    """Every size of ``n_alphas``, the largest one's entries at the top (``"all"``, ``"last"``, half precision),
    and one row per size and steering mode in the common form of the benchmarks (``rows``)."""
    per_size = [benchmark(n, repetitions, threads, device) for n in n_alphas]
    report = dict(per_size[-1])
    rows = []
    for size in per_size:
        for positions in ("all", "last"):
            entry = size[positions]
            rows.append({"n_alphas": size["n_alphas"], "positions": positions,
                         "authors_s": entry["straightforward_s"], "steerlib_s": entry["steerlib_s"],
                         "authors_peak_mib": entry["straightforward_peak_mib"],
                         "steerlib_peak_mib": entry["steerlib_peak_mib"], "speedup": entry["speedup"],
                         "memory_ratio": entry["steerlib_peak_mib"] / max(entry["straightforward_peak_mib"], 1e-9),
                         "flop_ratio_bound": entry["flop_ratio_bound"],
                         "max_difference": entry["max_abs_probability_difference"]})
    lm_vector = setup(device=device)
    grid = torch.linspace(-200, 200, n_alphas[-1])[::16]
    report["half_precision"] = half_precision_agreement(lm_vector[2], lm_vector[3].cpu(),
                                                        torch.cat([grid, torch.tensor([-1e4, 1e4])]), device)
    last = next(row for row in rows if row["positions"] == "last" and row["n_alphas"] == n_alphas[-1])
    report.update({"workload": WORKLOAD, "title": "next-token sweep",
                   "reference": "hooked full forward of the α-batch, logits of every position",
                   "steerlib": "steered_next_token_log_probs: blocks 0..ℓ once, last position unembedded, "
                               "prefix cached for last-token steering",
                   "difference": "largest |next-token probability difference|",
                   "axes": {"n_alphas": list(n_alphas)}, "rows": rows,
                   "speedup": last["speedup"], "memory_ratio": last["memory_ratio"],
                   "flop_ratio_bound": last["flop_ratio_bound"],
                   "max_difference": max(row["max_difference"] for row in rows),
                   "default_size": {"n_alphas": n_alphas[-1]}})
    return report


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (p - q).abs().sum(dim=-1)


def half_precision_agreement(vector: SteeringVector, ids: torch.Tensor, alphas: torch.Tensor,
                              device: str | None = None) -> dict:
    """Per dtype and steering mode: steerlib against the model's own forward in that dtype, and against fp32."""
    reference = load_model(dtype=torch.float32, device=device)
    ids = ids.to(reference.device)
    report = {}
    for dtype in (torch.float16, torch.bfloat16):
        lm = load_model(dtype=dtype, device=device)
        for positions in ("all", "last"):
            fp32 = ours(reference, vector, ids, alphas, positions)
            steered = ours(lm, vector, ids, alphas, positions)
            own_rows, finite = [], []
            for alpha in alphas.tolist():
                try:
                    own_rows.append(straightforward(lm, vector, ids, [alpha], positions)[0])
                    finite.append(bool(torch.isfinite(own_rows[-1]).all()))
                except ValueError:  # the model's own fp16 residual stream overflows: steer() refuses
                    own_rows.append(torch.full_like(steered[0], float("nan")))
                    finite.append(False)
            finite = torch.tensor(finite)
            own = torch.stack(own_rows)
            steered, fp32, own = steered.cpu(), fp32.cpu(), own.cpu()
            report[f"{str(dtype).replace('torch.', '')}-{positions}"] = {
                "max_tv_to_own_forward": float(total_variation(steered[finite], own[finite]).max()),
                "alphas_where_own_forward_overflows": int((~finite).sum()),
                "max_tv_to_fp32": float(total_variation(steered, fp32).max()),
                "own_forward_max_tv_to_fp32": float(total_variation(own[finite], fp32[finite]).max()),
                "all_finite": bool(torch.isfinite(steered).all()),
            }
    return report


def first_position_report() -> dict:
    """‖v‖ per layer with the first position included in or excluded from the token means (SmolLM2)."""
    lm = load_model()
    positive, negative, source = concept_texts()
    vectors = {policy: steering_vectors(lm, positive, negative, "joy", "random", first_position=policy,
                                        progress=False) for policy in ("exclude", "include")}
    layers = range(lm.n_layers)
    ids = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    return {
        "model": lm.name, "texts": source, "n_pos": len(positive), "n_neg": len(negative),
        "norm_exclude": [vectors["exclude"][layer].norm for layer in layers],
        "norm_include": [vectors["include"][layer].norm for layer in layers],
        "cosine": [float(torch.nn.functional.cosine_similarity(vectors["exclude"][layer].vector,
                                                               vectors["include"][layer].vector, dim=0))
                   for layer in layers],
        "first_position_norm_over_median_token_norm": [float(h[0, 0].norm() / h[0, 1:].norm(dim=-1).median())
                                                       for h in hidden[1:]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    parser.add_argument("--n-alphas", type=int, nargs="+", default=N_ALPHAS,
                        help="sizes of the α grid, one measurement each (default: %(default)s)")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per measurement (1: on a shared machine more threads mostly wait)")
    parser.add_argument("--first-position", action="store_true", help="measure the first-position policy instead")
    parser.add_argument("--device", help="where the model runs (default: the GPU when there is one, else the CPU)")
    parser.add_argument("--probe", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--vector", help=argparse.SUPPRESS)
    parser.add_argument("--probabilities", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.n_alphas[0], args.vector, args.probabilities, args.threads,
                               args.device)))
        return
    report = (first_position_report() if args.first_position
              else benchmark_sizes(args.n_alphas, args.repetitions, args.threads, args.device))
    if args.save and not args.first_position:
        save_report(report, args.save)
    if args.json:
        print(json.dumps(report))
        return
    if args.first_position:
        print(f"{report['model']}, {report['texts']} (|P| = {report['n_pos']}, |N| = {report['n_neg']})")
        print("layer  ‖v‖ exclude  ‖v‖ include  ratio  cosine  ‖h_first‖/median ‖h_t‖ (prompt)")
        for layer, (e, i, c, f) in enumerate(zip(report["norm_exclude"], report["norm_include"], report["cosine"],
                                                 report["first_position_norm_over_median_token_norm"])):
            print(f"{layer:5d}  {e:11.2f}  {i:11.2f}  {i / e:5.2f}  {c:6.3f}  {f:8.1f}")
        return
    print(f"{report['model']}, layer {report['layer']}, {report['prompt_tokens']} prompt tokens, "
          f"median of {report['repetitions']}, {report['threads']} threads, {report['machine']['name']}")
    for row in report["rows"]:
        print(f"{row['n_alphas']:4d} α, {row['positions']:>4}: straightforward {row['authors_s']:.2f} s, steerlib "
              f"{row['steerlib_s']:.3f} s, speed-up {row['speedup']:.1f}x (FLOP bound {row['flop_ratio_bound']:.1f}x); "
              f"peak extra memory {row['authors_peak_mib']:.0f} MiB vs {row['steerlib_peak_mib']:.0f} MiB; "
              f"max |Δprob| {row['max_difference']:.2e}")
    print("half precision, steerlib against the model's own forward in that dtype (α where it is finite) and fp32:")
    for name, row in report["half_precision"].items():
        print(f"{name:>13}: max TV to own forward {row['max_tv_to_own_forward']:.2e}, own forward overflows at "
              f"{row['alphas_where_own_forward_overflows']} α; max TV to fp32 {row['max_tv_to_fp32']:.2e} "
              f"(own forward {row['own_forward_max_tv_to_fp32']:.2e}); all finite: {row['all_finite']}")


if __name__ == "__main__":
    main()
