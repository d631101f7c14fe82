"""``steerlib-report``: one HTML page that tells a user which α to use for a (model, vector) (chapter "Choosing α").

The page shows, for a few prompts: the next-token bumps along α (Th. 3.3) with the recommended range of
:func:`steerlib.choose.choose_alpha`, the per-prompt diagnostics, the concept probability of sampled completions
judged by the embedding judge (Th. 3.6, Sec. 5), ``ΔCE`` on the packaged corpus (Th. 3.8) and completions at
the chosen α. Small defaults run on the embedded model on a CPU in a few minutes.

    steerlib-report --concept evil --layer 12                       # the embedded model, vector from its prompt sets
    steerlib-report --model path/or/hub-id --vector v.safetensors   # any model with a vector saved by steerlib
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from steerlib.choose import (
    DEFAULT_BUDGET,
    DEFAULT_COLLAPSE,
    AlphaChoice,
    check_budget,
    check_prompts,
    choose_alpha,
)

CONCEPT_GRID = 5
"""Strengths at which completions are sampled and judged: this many, evenly from 0 to the sweep's end."""


def _figure_html(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def bumps_figure(choice: AlphaChoice, prompt_index: int = 0, n_tokens: int = 8):
    """The probabilities of the most probable tokens along α for one prompt, the chosen α and the range shaded."""
    import matplotlib.pyplot as plt

    d = choice.diagnostics[prompt_index]
    order = np.argsort(-d.top_probs.max(axis=0))[:n_tokens]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for column in order:
        ax.plot(d.alphas, d.top_probs[:, column], label=repr(d.token_strings[column]) if d.token_strings else None)
    low, high = choice.alpha_range
    ax.axvspan(low, high, color="tab:green", alpha=0.15, label="recommended range")
    alpha = float(choice.per_prompt["alpha"].iloc[prompt_index])
    ax.axvline(alpha, color="tab:green", label=f"α for this prompt = {alpha:.3g}")
    ax.set(xlabel="α", ylabel="next-token probability", title=f"next token after {d.prompt!r}")
    ax.legend(fontsize=7, ncol=2)
    return fig


def curves_figure(choice: AlphaChoice, alphas: np.ndarray, concept_probability: np.ndarray | None,
                  delta_ce: np.ndarray):
    """Concept probability (when judged) and ``ΔCE`` on the corpus against α, with the recommended range."""
    import matplotlib.pyplot as plt

    panels = 2 if concept_probability is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.3), squeeze=False)
    axes = axes[0]
    if concept_probability is not None:
        axes[0].plot(alphas, concept_probability, "o-")
        axes[0].set(xlabel="α", ylabel="concept probability", ylim=(-0.03, 1.03))
    axes[-1].plot(alphas, delta_ce, "o-", color="tab:red")
    axes[-1].set(xlabel="α", ylabel="ΔCE on the corpus (nats)")
    for ax in axes:
        ax.axvspan(*choice.alpha_range, color="tab:green", alpha=0.15)
        ax.axvline(choice.alpha, color="tab:green")
    fig.tight_layout()
    return fig


def judge_label(judge) -> str:
    """A judge's name: its ``name``, else the function's or class's name."""
    return getattr(judge, "name", getattr(judge, "__name__", type(judge).__name__))


def build_report(lm, vector, prompts: Sequence[str], *, budget: float = DEFAULT_BUDGET,
                 collapse: float = DEFAULT_COLLAPSE, alphas: Sequence[float] | None = None, judge=None,
                 n_samples: int = 4, max_new_tokens: int = 16, corpus_tokens: int = 256, seed: int = 0) -> str:
    """The report as one HTML string (figures inline as PNG).

    Args:
        lm: the model; vector: a :class:`steerlib.vectors.SteeringVector` of it.
        prompts: the prompts the rule reads (and completions start from).
        budget, collapse, alphas: passed to :func:`steerlib.choose.choose_alpha`.
        judge: ``judge(texts, concept) -> JudgeResult``; ``None`` skips the concept probability.
        n_samples, max_new_tokens: completions per prompt and α, and their length.
        corpus_tokens: tokens of the packaged corpus over which ``ΔCE`` is measured.
        seed: sampling seed.
    """
    from steerlib.corpora import corpus_blocks
    from steerlib.experiments.concept_probability import (
        judge_completions,
        sample_steered_completions,
    )
    from steerlib.steering import steered_target_log_probs

    choice = choose_alpha(lm, vector, prompts, budget, collapse=collapse, alphas=alphas)
    grid = choice.diagnostics[0].alphas
    coarse = np.unique(np.concatenate([np.linspace(0.0, grid[-1], CONCEPT_GRID), [choice.alpha]]))
    completions = sample_steered_completions(lm, vector, list(prompts), coarse, n_samples, max_new_tokens, seed,
                                             progress=False)
    probability = None
    if judge is not None:
        labels, _ = judge_completions(judge, completions, vector.concept)
        valid = labels >= 0
        probability = np.where(valid, labels, 0).sum(axis=(1, 2)) / np.maximum(valid.sum(axis=(1, 2)), 1)
    blocks = corpus_blocks(lm.tokenizer, n_tokens=corpus_tokens, block_length=64)
    scored = steered_target_log_probs(lm, blocks, vector, torch.as_tensor(coarse))
    cross_entropy = -scored.double().mean(dim=(1, 2)).cpu().numpy()
    delta_ce = cross_entropy - cross_entropy[0]
    chosen = int(np.flatnonzero(coarse == choice.alpha)[0])

    escape = html.escape
    title = f"Choosing α: {escape(vector.concept)} on {escape(lm.name)}, block {vector.layer}"
    rows = "".join(f"<tr><td>{escape(p)}</td><td>{escape(completions[chosen][m][0])}</td></tr>"
                   for m, p in enumerate(prompts))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>",
        ("<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;font-size:90%}</style></head><body>"),
        f"<h1>{title}</h1>",
        (f"<p><b>Recommended α = {choice.alpha:.4g}</b>, range [{choice.alpha_range[0]:.4g}, "
        f"{choice.alpha_range[1]:.4g}], for a budget of {choice.budget:g} nats of KL divergence from the unsteered "
        f"next-token distribution (capped where the distribution has covered {choice.collapse:g} of its way to "
        f"the large-α limit σ(LN(v)Wᵀ), Prop. 4.1). Vector norm {vector.norm:.4g}, "
        f"{len(prompts)} prompts.</p>"),
        "<h2>Next-token bumps (Th. 3.3)</h2>", _figure_html(bumps_figure(choice)),
        "<h2>Per-prompt diagnostics</h2>", choice.per_prompt.to_html(index=False, float_format="%.4g"),
        "<h2>Concept probability and ΔCE</h2>",
        _figure_html(curves_figure(choice, coarse, probability, delta_ce)),
        (f"<p>Concept probability: {n_samples} completions of {max_new_tokens} tokens per prompt and α, "
        f"{'judged by ' + escape(judge_label(judge)) if judge is not None else 'not judged'}"
        f"; ΔCE on {int(blocks[:, 1:].numel())} tokens of the packaged corpus.</p>"),
        f"<h2>Completions at α = {choice.alpha:.4g}</h2>",
        f"<table><tr><th>prompt</th><th>completion</th></tr>{rows}</table>",
        "</body></html>",
    ]
    return "\n".join(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steerlib-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="hub id or local folder (default the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--vector", default=None, help="a steering vector saved by SteeringVector.save (.safetensors)")
    p.add_argument("--concept", default=None, help="concept of data/prompt_sets (when no --vector is given)")
    p.add_argument("--layer", type=int, default=None, help="block to steer (required with --concept)")
    p.add_argument("--setting", default="contrastive", help="N of the vector: 'contrastive' or 'random'")
    p.add_argument("--n-texts", type=int, default=32, help="texts in P and in N for --concept")
    p.add_argument("--activations-dir", default="results/activations")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeat; default the first "
                   "--n-prompts evaluation prompts)")
    p.add_argument("--n-prompts", type=int, default=4)
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="max KL (nats) from the unsteered "
                   "next-token distribution")
    p.add_argument("--collapse", type=float, default=DEFAULT_COLLAPSE)
    p.add_argument("--alpha-max", type=float, default=None, help="end of the α sweep (default: 4 mean residual "
                   "norms / ‖v‖)")
    p.add_argument("--n-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--judge", default="embedding", choices=["embedding", "none"])
    p.add_argument("--dtype", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="steerlib-report.html", help="the HTML file written")
    return p


def load_vector(lm, args):
    """The vector from ``--vector`` or from ``--concept`` and ``--layer``, checked against ``lm``."""
    from steerlib.vectors import SteeringVector, concept_vectors

    if args.vector is not None:
        if not Path(args.vector).exists():
            raise ValueError(f"--vector {args.vector}: no such file; save one with SteeringVector.save(path).")
        vector = SteeringVector.load(args.vector)
        vector.check_model(lm)
        return vector
    if args.concept is None or args.layer is None:
        raise ValueError("give --vector FILE, or --concept NAME and --layer N (a vector is then made from the "
                         "concept's prompt sets).")
    return concept_vectors(lm, args.concept, args.setting, args.n_texts, args.activations_dir,
                           layers=[lm.check_layer(args.layer)], progress=False)[lm.check_layer(args.layer)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``steerlib-report``; errors are printed as one line and exit with status 2."""
    args = parser().parse_args(argv)
    try:
        from steerlib.judge import make_judge
        from steerlib.models import load_model
        from steerlib.prompts import load_eval_prompts

        check_budget(args.budget)
        if args.n_prompts < 1 or args.n_samples < 1 or args.max_new_tokens < 1:
            raise ValueError("--n-prompts, --n-samples and --max-new-tokens must be at least 1.")
        prompts = check_prompts(args.prompt if args.prompt is not None else load_eval_prompts()[:args.n_prompts])
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
        vector = load_vector(lm, args)
        alphas = None if args.alpha_max is None else np.linspace(0.0, args.alpha_max, 41)
        judge = None if args.judge == "none" else make_judge(args.judge, lm)
        page = build_report(lm, vector, prompts, budget=args.budget, collapse=args.collapse, alphas=alphas,
                            judge=judge, n_samples=args.n_samples, max_new_tokens=args.max_new_tokens)
    except ValueError as error:
        print(f"steerlib-report: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------------------------------------------------
# Figures of the chapter "Choosing α"
# ---------------------------------------------------------------------------------------------------------

def plot_ufm_sweet_spot(p, M, target_members, alphas, labels, *, budget_alpha: float | None = None, ax=None,
                        title: str = "Δp(z | c, α) and the sweet spot"):
    """Fig. 3-like curves ``Δp(z | c_j, α)`` with their peaks (Th. 3.3), the sweet spot of
    :func:`steerlib.ufm.sweet_spot` shaded, and optionally the ΔCE-budget α (:func:`steerlib.ufm.budget_alpha`)."""
    from steerlib import plots, ufm

    members = np.asarray(target_members)
    is_target = np.isin(np.arange(len(M)), members)
    ax = plots.plot_delta_p_curves(alphas, ufm.delta_p(p, M, alphas), labels, is_target, ax=ax,
                                   peaks=ufm.bump_locations(p, M), title=title)
    lo, hi = ufm.sweet_spot(p, M, members)
    ax.axvspan(max(lo, alphas[0]), min(hi, alphas[-1]), color="tab:green", alpha=0.12, label="sweet spot")
    if budget_alpha is not None:
        ax.axvline(budget_alpha, color="black", lw=1.2, label="ΔCE-budget α")
    ax.legend(fontsize=7, ncol=2)
    return ax


def plot_validation_curves(truths, rows, block: int, *, ax=None):
    """Mean judged concept probability against α for each concept at ``block`` (lines), and the rule's α per
    prompt (ticks at the bottom, one row of ticks per concept)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 3.5))
    chosen = rows[(rows.method == "rule") & (rows.block == block)]
    for k, truth in enumerate(t for t in truths if t.parameters["layer"] == block):
        concept = truth.parameters["concept"]
        line, = ax.plot(truth.alphas, truth.per_prompt_probability.mean(axis=1), "o-", ms=3, label=concept)
        ticks = chosen[chosen.concept == concept]["alpha"]
        ax.plot(ticks, np.full(len(ticks), -0.04 - 0.03 * k), "|", color=line.get_color(), ms=8)
    ax.set(xlabel="α", ylabel="concept probability (mean over prompts)", ylim=(-0.2, 1.02),
           title=f"block {block}: ground truth and the rule's α (ticks)")
    ax.legend(fontsize=7)
    return ax


def offline_jshtml(movie) -> str:
    """``movie.to_jshtml()`` with the player's icons as characters (no Font Awesome from a CDN), as
    :func:`steerlib.plots.animate_next_token_rows` does, so the page works offline."""
    import re
    import warnings

    from steerlib.plots import _PLAYER_SYMBOLS

    with warnings.catch_warnings():  # a sampled completion may hold a glyph the font lacks: drawn as a box
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        page = movie.to_jshtml(default_mode="once")
    page = re.sub(r'<link rel="stylesheet"\s*href="[^"]*font-awesome[^"]*">', "", page)
    return re.sub(r'<i class="fa ([^"]+)"></i>', lambda icon: _PLAYER_SYMBOLS[icon.group(1)], page)


def draw_validation_frame(fig, left, right, truth, m: int, budget: float = DEFAULT_BUDGET,
                          collapse: float = DEFAULT_COLLAPSE) -> float:
    """Draw prompt ``m`` of ``truth`` on ``left`` and ``right`` of ``fig``: the sweep's ``KL(α)`` and share of the
    way to the Prop. 4.1 limit with the rule's α, the judged concept probability of that prompt against α, and a
    completion sampled at the grid α nearest the rule's. Returns the rule's α."""
    import textwrap

    from steerlib.choose import nearest_index, rule_alpha

    d = truth.diagnostics(m)
    alpha = rule_alpha(d, budget, collapse)[0]
    i = nearest_index(alpha, truth.alphas)
    for ax in (left, right):
        ax.clear()
        ax.axvline(alpha, color="tab:green", lw=1.5)
    left.plot(d.alphas, d.kl, label="KL(α) from unsteered")
    left.plot(d.alphas, d.limit_share, label="share of way to limit")
    left.axhline(budget, color="grey", ls=":", label="budget")
    left.set(xlabel="α", ylim=(-0.5, max(2 * budget, 1.5)), title=f"sweep: {truth.prompts[m]!r}")
    left.legend(fontsize=7, loc="upper left")
    right.plot(truth.alphas, truth.per_prompt_probability[:, m], "o-")
    right.set(xlabel="α", ylabel="concept probability", ylim=(-0.03, 1.03),
              title=f"{truth.parameters['concept']}, block {truth.parameters['layer']}: rule α = {alpha:.3g}")
    text = textwrap.fill(f"α = {truth.alphas[i]:.3g}: {truth.prompts[m]}{truth.completions[i][m]}", 110)
    fig.suptitle(text, fontsize=8, y=0.02, va="bottom")
    fig.subplots_adjust(bottom=0.3, wspace=0.3)
    return float(alpha)


def animate_validation(truths, budget: float = DEFAULT_BUDGET, collapse: float = DEFAULT_COLLAPSE,
                       prompts_per_truth: int = 4) -> str:
    """One frame per (concept, block, prompt) of :func:`draw_validation_frame`, precomputed (``jshtml``): works
    on the static page."""
    import matplotlib.pyplot as plt
    from matplotlib import animation

    frames = [(t, m) for t in truths for m in range(min(prompts_per_truth, len(t.prompts)))]
    if not frames:
        raise ValueError("no ground truth to animate: compute or load the validation first.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.9), dpi=72)
    movie = animation.FuncAnimation(fig, lambda k: draw_validation_frame(fig, left, right, *frames[k], budget,
                                                                         collapse),
                                    frames=len(frames), interval=1500)
    page = offline_jshtml(movie)
    plt.close(fig)
    return page


def explore_validation(truths, budget: float = DEFAULT_BUDGET, collapse: float = DEFAULT_COLLAPSE):
    """The live version of :func:`animate_validation` (ipywidgets, in a running notebook): pick a (concept, block),
    a prompt and a budget; :func:`draw_validation_frame` redraws. Returns the widget box."""
    try:
        import ipywidgets as widgets
    except ImportError as error:
        raise ImportError("the live explorer needs ipywidgets: pip install ipywidgets (or steerlib[notebook]); "
                          "the precomputed player (animate_validation) needs nothing.") from error
    import matplotlib.pyplot as plt

    from steerlib.choose import check_budget

    if not truths:
        raise ValueError("no ground truth to explore: compute or load the validation first.")
    check_budget(budget)
    pair = widgets.Dropdown(options=[(f"{t.parameters['concept']}, block {t.parameters['layer']}", k)
                                     for k, t in enumerate(truths)], description="concept")
    prompt = widgets.Dropdown(description="prompt")
    chosen_budget = widgets.FloatLogSlider(value=budget, base=2, min=-3, max=4, step=0.25, description="budget")
    out = widgets.Output()

    def list_prompts(_=None):
        prompt.options = [(text, m) for m, text in enumerate(truths[pair.value].prompts)]
        prompt.value = 0

    def draw(_=None):
        if prompt.value is None:  # between a change of (concept, block) and the list of its prompts
            return
        with out:
            out.clear_output(wait=True)
            fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.9))
            draw_validation_frame(fig, left, right, truths[pair.value], prompt.value, chosen_budget.value, collapse)
            plt.show()

    list_prompts()
    pair.observe(list_prompts, names="value")
    for control in (pair, prompt, chosen_budget):
        control.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([pair, prompt, chosen_budget]), out])
