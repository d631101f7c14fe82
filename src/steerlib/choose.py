"""Choosing α per prompt from one α-batched next-token sweep (chapter "Choosing α").

In the UFM the choice is exact (:func:`steerlib.ufm.budget_alpha`): the target concept's probability increases
with α (Th. 3.6) and ``ΔCE`` is convex with ``ΔCE(0) = ΔCE'(0) = 0`` (Th. 3.8), so the most concept a
cross-entropy budget ``B`` buys is at the largest α with ``ΔCE(α) <= B``. Per context, ``ΔCE`` is the KL
divergence from the unsteered next-token distribution to the steered one (:func:`steerlib.ufm.delta_ce`).

On an LLM the same quantity costs one forward of the prompt with α batched
(:func:`steerlib.steering.steered_next_token_log_probs`): ``KL(α) = KL(σ(y(0)) ‖ σ(y(α)))`` at the prompt's last
position, the local ``ΔCE`` of this prompt. Two things differ from the UFM: the concept probability of a real
model rises and then falls again, because at large α the distribution forgets the prompt and collapses onto the
few tokens of ``σ(LN(v) Wᵀ)`` (Prop. 4.1); and ``KL(α)`` then plateaus instead of growing. The rule therefore
takes the smaller of

- ``α_budget``: the largest α with ``KL(α) <= budget`` (the UFM's choice), and
- ``α_collapse``: the first α at which the steered distribution has covered ``collapse`` of its way to the
  Prop. 4.1 limit, measured by ``D(α) = KL(σ(y(α)) ‖ σ(LN(v) Wᵀ))``: ``D(α) <= (1 - collapse) D(0)``.

The recommended range runs from the α where ``KL`` reaches a quarter of the budget to the chosen α.

Example:
    >>> choice = choose_alpha(lm, vector, ["I think that", "Today I feel"], budget=2.0)
    >>> choice.alpha, choice.alpha_range, choice.table()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from steerlib.judge import INVALID
from steerlib.models import LoadedModel
from steerlib.steering import limit_logits, resolve_vector, steered_next_token_log_probs
from steerlib.store import Result

DEFAULT_BUDGET = 2.0
"""Default quality budget: ``KL(σ(y(0)) ‖ σ(y(α)))`` in nats at the prompt's last position."""

DEFAULT_COLLAPSE = 0.5
"""Default share of the way to the Prop. 4.1 limit after which the distribution is taken to have collapsed."""


@dataclass
class SweepDiagnostics:
    """What one α-batched next-token sweep of one prompt says about α (all curves on ``alphas``).

    Args:
        prompt: the prompt.
        alphas: the grid, increasing, starting at 0.
        kl: ``KL(σ(y(0)) ‖ σ(y(α)))``, the local ``ΔCE`` of Th. 3.8 at this prompt (nats).
        limit_kl: ``KL(σ(y(α)) ‖ σ(LN(v) Wᵀ))``, the distance to the Prop. 4.1 limit (nats).
        top_tokens: the token ids most probable at some α (the union of each α's top ``k``).
        top_probs: their probabilities, shape ``(len(alphas), len(top_tokens))``.
        token_strings: the decoded ``top_tokens``.
    """

    prompt: str
    alphas: np.ndarray
    kl: np.ndarray
    limit_kl: np.ndarray
    top_tokens: np.ndarray
    top_probs: np.ndarray
    token_strings: list[str] = field(default_factory=list)

    @property
    def peak_alphas(self) -> np.ndarray:
        """Where each top token's probability peaks on the grid (Th. 3.3's ``α(j, z)``; the grid's end for a
        token still rising, as the tokens of the Prop. 4.1 limit do)."""
        return self.alphas[self.top_probs.argmax(axis=0)]

    @property
    def limit_share(self) -> np.ndarray:
        """Share of the way to the Prop. 4.1 limit: ``1 - D(α) / D(0)``."""
        return 1.0 - self.limit_kl / self.limit_kl[0]


def check_budget(budget: float) -> float:
    """``budget`` as a positive finite float, or a ``ValueError`` saying what to give."""
    budget = float(budget)
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget={budget}: give the largest KL divergence from the unsteered next-token "
                         f"distribution you accept, in nats, a positive number (default {DEFAULT_BUDGET}).")
    return budget


def check_collapse(collapse: float) -> float:
    """``collapse`` in ``(0, 1]``, or a ``ValueError``."""
    collapse = float(collapse)
    if not 0 < collapse <= 1:
        raise ValueError(f"collapse={collapse}: give the share of the way to the large-α limit (Prop. 4.1) taken "
                         "as collapse, in (0, 1] (1: never cap α by collapse).")
    return collapse


def first_crossing(alphas: np.ndarray, values: np.ndarray, level: float) -> float:
    """The first α at which ``values`` (0 at ``alphas[0]``) reaches ``level``, linearly interpolated between
    grid points; ``inf`` if it never does on the grid."""
    above = np.flatnonzero(values >= level)
    if above.size == 0:
        return float("inf")
    i = int(above[0])
    if i == 0:
        return float(alphas[0])
    x0, x1, y0, y1 = alphas[i - 1], alphas[i], values[i - 1], values[i]
    return float(x0 + (level - y0) / (y1 - y0) * (x1 - x0))


def rule_alpha(diagnostics: SweepDiagnostics, budget: float = DEFAULT_BUDGET,
               collapse: float = DEFAULT_COLLAPSE) -> tuple[float, float, float]:
    """The rule on one sweep: ``(α, α_budget, α_collapse)`` with ``α = min(α_budget, α_collapse)``, capped at
    the grid's end (see the module docstring). ``α_budget`` solves ``KL(α) = budget`` and ``α_collapse`` solves
    ``1 - D(α)/D(0) = collapse``, both by linear interpolation on the grid."""
    budget, collapse = check_budget(budget), check_collapse(collapse)
    alpha_budget = first_crossing(diagnostics.alphas, diagnostics.kl, budget)
    alpha_collapse = first_crossing(diagnostics.alphas, diagnostics.limit_share, collapse) if collapse < 1 else np.inf
    alpha = min(alpha_budget, alpha_collapse, float(diagnostics.alphas[-1]))
    return float(alpha), alpha_budget, float(alpha_collapse)


def diagnostics_from_log_probs(prompt: str, alphas: np.ndarray, log_probs: torch.Tensor, log_limit: torch.Tensor,
                               top_k: int = 5) -> SweepDiagnostics:
    """:class:`SweepDiagnostics` from next-token log-probabilities ``(len(alphas), V)`` (row 0 at ``α = 0``) and
    the log-softmax of the Prop. 4.1 limit logits ``(V,)``."""
    log_probs = log_probs.double().cpu()
    log_limit = log_limit.double().cpu()
    probs = log_probs.exp()
    kl = (probs[0] * (log_probs[0] - log_probs)).sum(dim=-1)
    limit_kl = (probs * (log_probs - log_limit)).sum(dim=-1)
    top = torch.unique(probs.topk(min(top_k, probs.shape[1]), dim=-1).indices.reshape(-1))
    return SweepDiagnostics(prompt, np.asarray(alphas, float), kl.clamp_min(0).numpy(), limit_kl.clamp_min(0).numpy(),
                            top.numpy(), probs[:, top].numpy())


def sweep_diagnostics(lm: LoadedModel, vector, prompt: str, alphas: Sequence[float], layer: int | None = None,
                      alphas_per_forward: int | None = None, top_k: int = 5) -> SweepDiagnostics:
    """One α-batched next-token sweep of ``prompt`` (:func:`steerlib.steering.steered_next_token_log_probs`)
    read as :class:`SweepDiagnostics`. ``alphas`` must be increasing and start at 0."""
    v, layer = resolve_vector(lm, vector, layer)
    alphas = np.asarray(alphas, dtype=float)
    log_probs = steered_next_token_log_probs(lm, prompt, v, torch.as_tensor(alphas), layer,
                                             alphas_per_forward=alphas_per_forward)
    log_limit = torch.log_softmax(limit_logits(lm, v.cpu()).double(), dim=-1)
    diagnostics = diagnostics_from_log_probs(prompt, alphas, log_probs, log_limit, top_k)
    diagnostics.token_strings = [lm.tokenizer.decode([int(t)]) for t in diagnostics.top_tokens]
    return diagnostics


@dataclass
class AlphaChoice:
    """What :func:`choose_alpha` returns.

    Args:
        alpha: the α to use for all the prompts: the median of the per-prompt α.
        alpha_range: the recommended range: from the median α where ``KL`` reaches a quarter of the budget to
            ``alpha``.
        per_prompt: one row per prompt: its α, ``α_budget``, ``α_collapse``, ``KL`` and the share of the way to
            the limit at its α, the quarter-budget α.
        diagnostics: the sweeps the rule read, one per prompt.
        budget, collapse: the settings used.
    """

    alpha: float
    alpha_range: tuple[float, float]
    per_prompt: pd.DataFrame
    diagnostics: list[SweepDiagnostics]
    budget: float
    collapse: float

    def table(self) -> pd.DataFrame:
        """The per-prompt diagnostics."""
        return self.per_prompt


def check_prompts(prompts) -> list[str]:
    """One prompt or a sequence of non-empty prompts, as a list, or a ``ValueError``."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt (a string or a list of strings), e.g. "
                         "steerlib.load_eval_prompts().")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("every prompt must be a non-empty string.")
    return prompts


def default_alphas(lm: LoadedModel, vector, layer: int | None = None, n_alphas: int = 41) -> np.ndarray:
    """A grid from 0 to the strength at which ``α‖v‖`` is four times the block's mean residual norm on a short
    neutral text (past where most models have collapsed onto the Prop. 4.1 limit)."""
    from steerlib.models import mean_residual_norm

    v, layer = resolve_vector(lm, vector, layer)
    norm = mean_residual_norm(lm, ["The weather today is mild and the streets are quiet."], layer)
    return np.linspace(0.0, 4.0 * norm / float(v.norm()), n_alphas)


def choose_alpha(lm: LoadedModel, vector, prompts: str | Sequence[str], budget: float = DEFAULT_BUDGET, *,
                 collapse: float = DEFAULT_COLLAPSE, alphas: Sequence[float] | None = None, layer: int | None = None,
                 alphas_per_forward: int | None = None) -> AlphaChoice:
    """Pick α for ``vector`` on ``prompts`` from one α-batched next-token sweep per prompt (module docstring).

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of ``lm`` (or a 1-D tensor with ``layer``).
        prompts: one prompt or several.
        budget: the largest ``KL(σ(y(0)) ‖ σ(y(α)))`` accepted at a prompt's last position, in nats (> 0).
        collapse: share of the way to the Prop. 4.1 limit at which α is capped, in ``(0, 1]`` (1: no cap).
        alphas: the sweep's grid, increasing from 0 (default :func:`default_alphas`).
        layer: steered block (default the vector's).
        alphas_per_forward: α values per forward (lower it when memory is short).

    Raises:
        ValueError: a vector of another model, a budget or collapse out of range, no prompts, a bad grid.
    """
    budget, collapse = check_budget(budget), check_collapse(collapse)
    prompts = check_prompts(prompts)
    resolve_vector(lm, vector, layer)
    grid = default_alphas(lm, vector, layer) if alphas is None else np.asarray(alphas, dtype=float)
    if grid.ndim != 1 or grid.size < 2 or grid[0] != 0 or np.any(np.diff(grid) <= 0):
        raise ValueError("alphas must be an increasing grid starting at 0 with at least two values, e.g. "
                         "np.linspace(0, 20, 41).")
    diagnostics = [sweep_diagnostics(lm, vector, p, grid, layer, alphas_per_forward) for p in prompts]
    rows = []
    for d in diagnostics:
        alpha, alpha_budget, alpha_collapse = rule_alpha(d, budget, collapse)
        rows.append({"prompt": d.prompt, "alpha": alpha, "alpha_budget": alpha_budget,
                     "alpha_collapse": alpha_collapse, "alpha_quarter_budget": min(
                         first_crossing(d.alphas, d.kl, budget / 4), alpha),
                     "kl_at_alpha": float(np.interp(alpha, d.alphas, d.kl)),
                     "limit_share_at_alpha": float(np.interp(alpha, d.alphas, d.limit_share))})
    table = pd.DataFrame(rows)
    alpha = float(table["alpha"].median())
    low = min(float(table["alpha_quarter_budget"].median()), alpha)
    return AlphaChoice(alpha, (low, alpha), table, diagnostics, budget, collapse)


# ---------------------------------------------------------------------------------------------------------
# Validation against the expensive ground truth: sampled completions judged, and ΔCE on a corpus
# ---------------------------------------------------------------------------------------------------------

@dataclass
class GroundTruth(Result):
    """The rule's sweeps and the ground truth for one (concept, block), on the same prompts.

    Args:
        alphas: the ground-truth grid (generation, judge, ``ΔCE``), increasing from 0.
        labels: judge labels ``(len(alphas), n_prompts, n_samples)`` (1 present, 0 absent, ``INVALID``).
        delta_ce: ``ΔCE(α)`` on the corpus blocks (Def. 3.7), shape ``(len(alphas),)``.
        sweep_alphas: the rule's finer grid, increasing from 0.
        kl, limit_kl: the sweep curves per prompt, shape ``(n_prompts, len(sweep_alphas))``.
        completions: one sampled completion per (α, prompt), ``[α][prompt]``.
        prompts: the prompts.
        parameters: model, concept, block, setting, sizes, machine, seconds taken.
    """

    alphas: np.ndarray
    labels: np.ndarray
    delta_ce: np.ndarray
    sweep_alphas: np.ndarray
    kl: np.ndarray
    limit_kl: np.ndarray
    completions: list
    prompts: list
    parameters: dict

    @property
    def per_prompt_probability(self) -> np.ndarray:
        """Concept probability per (α, prompt), invalid labels left out, shape ``(len(alphas), n_prompts)``."""
        valid = self.labels != INVALID
        return (np.where(valid, self.labels, 0).sum(axis=2) / np.maximum(valid.sum(axis=2), 1))

    def diagnostics(self, m: int) -> SweepDiagnostics:
        """The sweep of prompt ``m`` as :class:`SweepDiagnostics` (without its top tokens)."""
        return SweepDiagnostics(self.prompts[m], self.sweep_alphas, self.kl[m], self.limit_kl[m],
                                np.zeros(0, np.int64), np.zeros((self.sweep_alphas.size, 0)))


def ground_truth(lm: LoadedModel, vector, judge, prompts: Sequence[str], alphas: Sequence[float],
                 sweep_alphas: Sequence[float], n_samples: int, max_new_tokens: int, corpus_ids: torch.Tensor,
                 seed: int = 0, layer: int | None = None) -> GroundTruth:
    """Sample and judge completions (:func:`steerlib.experiments.concept_probability.sample_steered_completions`),
    ``ΔCE`` on ``corpus_ids`` (:func:`steerlib.steering.steered_target_log_probs`) and the rule's sweeps."""
    import platform
    import time

    from steerlib.experiments.concept_probability import (
        judge_completions,
        sample_steered_completions,
    )
    from steerlib.steering import steered_target_log_probs

    start = time.time()
    concept = vector.concept
    v, layer = resolve_vector(lm, vector, layer)
    alphas = np.asarray(alphas, float)
    completions = sample_steered_completions(lm, vector, list(prompts), alphas, n_samples, max_new_tokens, seed,
                                             layer, progress=False)
    labels, _ = judge_completions(judge, completions, concept)
    scored = steered_target_log_probs(lm, corpus_ids, v, torch.as_tensor(alphas), layer)
    cross_entropy = -scored.double().mean(dim=(1, 2)).cpu().numpy()
    sweeps = [sweep_diagnostics(lm, vector, p, sweep_alphas, layer) for p in prompts]
    parameters = {"model": lm.name, "concept": concept, "layer": layer, "setting": vector.setting,
                  "vector_norm": float(v.norm()), "n_samples": n_samples, "max_new_tokens": max_new_tokens,
                  "seed": seed, "corpus_tokens": int(corpus_ids[:, 1:].numel()),
                  "judge": getattr(judge, "name", type(judge).__name__),
                  "machine": f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}",
                  "seconds": round(time.time() - start, 1)}
    return GroundTruth(alphas, labels, cross_entropy - cross_entropy[0], np.asarray(sweep_alphas, float),
                       np.stack([s.kl for s in sweeps]), np.stack([s.limit_kl for s in sweeps]),
                       [[texts[m][0] for m in range(len(prompts))] for texts in completions], list(prompts),
                       parameters)


def validation_alphas(lm: LoadedModel, vector, n_alphas: int, reach: float) -> np.ndarray:
    """``n_alphas`` strengths from 0 to ``reach · mean‖h‖ / ‖v‖`` at the vector's block (``mean‖h‖`` on the
    evaluation prompts), rounded to 3 significant digits."""
    from steerlib.models import mean_residual_norm
    from steerlib.prompts import load_eval_prompts

    norm = mean_residual_norm(lm, load_eval_prompts(), vector.layer)
    top = reach * norm / vector.norm
    return np.array([float(f"{a:.3g}") for a in np.linspace(0.0, top, n_alphas)])


def validation_run(lm: LoadedModel, concept: str, layer: int, folder, *, setting: str = "contrastive",
                   n_texts: int = 32, n_prompts: int = 16, n_alphas: int = 11, reach: float = 1.5,
                   sweep_factor: int = 4, n_samples: int = 8, max_new_tokens: int = 16, corpus_tokens: int = 1024,
                   activations_dir="results/activations") -> GroundTruth:
    """:func:`ground_truth` for ``concept`` at block ``layer`` with the book's defaults (embedding judge, the
    evaluation prompts, the packaged corpus), saved as ``folder/ground-truth-<concept>-<layer>.npz`` and read
    back when there (computed by any version of the code)."""
    from pathlib import Path

    from steerlib.corpora import corpus_blocks
    from steerlib.judge import make_judge
    from steerlib.prompts import load_eval_prompts
    from steerlib.store import load_or_compute
    from steerlib.vectors import concept_vectors

    def compute() -> GroundTruth:
        vector = concept_vectors(lm, concept, setting, n_texts, activations_dir, layers=[layer], progress=False)[layer]
        alphas = validation_alphas(lm, vector, n_alphas, reach)
        sweep_alphas = np.linspace(0.0, alphas[-1], (n_alphas - 1) * sweep_factor + 1)
        corpus = corpus_blocks(lm.tokenizer, n_tokens=corpus_tokens, block_length=64)
        return ground_truth(lm, vector, make_judge("embedding", lm), load_eval_prompts()[:n_prompts], alphas,
                            sweep_alphas, n_samples, max_new_tokens, corpus)

    path = Path(folder) / f"ground-truth-{concept}-{layer}.npz"
    return load_or_compute(path, compute, GroundTruth, reuse_other_versions=True)


def nearest_index(alpha: float, grid: np.ndarray) -> int:
    """Index of the grid value nearest ``alpha`` (the ground truth exists on its grid only)."""
    return int(np.abs(np.asarray(grid) - alpha).argmin())


def rule_indices(truth: GroundTruth, budget: float, collapse: float = DEFAULT_COLLAPSE) -> np.ndarray:
    """The rule's α per prompt of ``truth``, as indices of its ground-truth grid."""
    return np.array([nearest_index(rule_alpha(truth.diagnostics(m), budget, collapse)[0], truth.alphas)
                     for m in range(len(truth.prompts))])


def leave_one_out_fixed(probability: np.ndarray) -> np.ndarray:
    """For each prompt ``m``, the grid index maximising the mean concept probability over the *other* prompts
    (one α for all, tuned without ``m``). ``probability``: ``(n_alphas, n_prompts)``."""
    n = probability.shape[1]
    others = (probability.sum(axis=1, keepdims=True) - probability) / max(n - 1, 1)
    return others.argmax(axis=0)


def leave_one_out_budget(truth: GroundTruth, budgets: Sequence[float], collapse: float = DEFAULT_COLLAPSE
                         ) -> tuple[np.ndarray, np.ndarray]:
    """For each prompt ``m``, the budget of ``budgets`` whose rule gives the largest mean concept probability over
    the *other* prompts, and the rule's grid index for ``m`` at that budget. Returns ``(budget, index)`` per prompt."""
    probability = truth.per_prompt_probability
    n = probability.shape[1]
    chosen = np.stack([rule_indices(truth, b, collapse) for b in budgets])
    scores = probability[chosen, np.arange(n)[None, :]]
    others = (scores.sum(axis=1, keepdims=True) - scores) / max(n - 1, 1)
    best = others.argmax(axis=0)
    return np.asarray(budgets, float)[best], chosen[best, np.arange(n)]


def regret_rows(truths: Sequence[GroundTruth], budget: float = DEFAULT_BUDGET, budgets: Sequence[float] | None = None,
                collapse: float = DEFAULT_COLLAPSE) -> pd.DataFrame:
    """One row per (concept, block, prompt): the concept probability and ``ΔCE`` at the best grid α of the
    prompt (``oracle``, ties to the smallest α) and at the α of each method, with the regrets

    ``concept lost = p̂(oracle α) - p̂(method α)`` and ``ΔCE added = ΔCE(method α) - ΔCE(oracle α)``.

    Methods: ``rule`` (the rule at ``budget``), ``rule, budget tuned`` (the budget of ``budgets`` best on the other
    prompts, :func:`leave_one_out_budget`), ``fixed α`` (one α for all, tuned on the other prompts,
    :func:`leave_one_out_fixed`). Nothing chosen for a prompt sees that prompt's ground truth.
    """
    budgets = list(budgets) if budgets is not None else list(np.geomspace(0.25, 8.0, 11))
    rows = []
    for truth in truths:
        probability, delta_ce = truth.per_prompt_probability, truth.delta_ce
        oracle = probability.argmax(axis=0)
        tuned_budget, tuned = leave_one_out_budget(truth, budgets, collapse)
        methods = {"rule": rule_indices(truth, budget, collapse), "rule, budget tuned": tuned,
                   "fixed α": leave_one_out_fixed(probability)}
        for m, prompt in enumerate(truth.prompts):
            for method, index in methods.items():
                i, o = int(index[m]), int(oracle[m])
                rows.append({"concept": truth.parameters["concept"], "block": truth.parameters["layer"],
                             "prompt": prompt, "method": method, "alpha": truth.alphas[i],
                             "oracle_alpha": truth.alphas[o], "probability": probability[i, m],
                             "oracle_probability": probability[o, m],
                             "concept_lost": probability[o, m] - probability[i, m],
                             "delta_ce": delta_ce[i], "delta_ce_added": delta_ce[i] - delta_ce[o],
                             "budget": tuned_budget[m] if method == "rule, budget tuned" else
                             (budget if method == "rule" else np.nan)})
    return pd.DataFrame(rows)


def bootstrap_mean(values: np.ndarray, clusters: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile bootstrap interval resampling whole clusters (here: prompts, each with
    all its concepts and blocks)."""
    values, clusters = np.asarray(values, float), np.asarray(clusters)
    names, codes = np.unique(clusters, return_inverse=True)
    sums = np.bincount(codes, weights=values, minlength=names.size)
    counts = np.bincount(codes, minlength=names.size)
    draws = np.random.default_rng(seed).integers(0, names.size, size=(n_boot, names.size))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def regret_table(rows: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method: mean concept probability lost and ``ΔCE`` added against the best grid α per prompt, with 95%
    bootstrap intervals over prompts (:func:`bootstrap_mean`), and the share of rows losing more than 0.25."""
    out = []
    for method, group in rows.groupby("method", sort=False):
        lost = bootstrap_mean(group["concept_lost"], group["prompt"], n_boot, seed=seed)
        added = bootstrap_mean(group["delta_ce_added"], group["prompt"], n_boot, seed=seed)
        out.append({"method": method, "concept lost": lost[0], "lost low": lost[1], "lost high": lost[2],
                    "ΔCE added": added[0], "added low": added[1], "added high": added[2],
                    "share losing > 0.25": float((group["concept_lost"] > 0.25).mean()), "rows": len(group)})
    return pd.DataFrame(out).set_index("method")


def load_ground_truths(folder) -> list[GroundTruth]:
    """Every ``ground-truth-*.npz`` under ``folder``, sorted by block then concept."""
    from pathlib import Path

    truths = [GroundTruth.load(p) for p in sorted(Path(folder).glob("ground-truth-*.npz"))]
    return sorted(truths, key=lambda t: (t.parameters["layer"], t.parameters["concept"]))
