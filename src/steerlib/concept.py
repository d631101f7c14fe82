"""Concept probability of a steered LLM: sample, judge, average (Sec. 5, Fig. 7 top, A.11, A.12).

Taught in the chapter "concept probability with a judge" (``book/llm/concept_probability.md``). For a steering
vector ``v`` at block ``ℓ`` and a grid of strengths ``α``, the concept probability is estimated as

    p̂(α) = (1 / (M K)) Σ_{m ≤ M} Σ_{k ≤ K} J(x_{m,k}(α)),

where ``x_{m,k}(α)`` is the k-th completion sampled from prompt ``m`` with ``α v`` added to the output of
block ``ℓ`` at every position (prompt and generated tokens), and ``J ∈ {0, 1}`` is a judge's label
(:mod:`steerlib.judge`). The paper uses M = 12 prompts, K = 32 samples and α ∈ [-40, 40]; Theorem 3.6
predicts, in its idealised model, a tanh (sigmoid) law in α, which :func:`fit_sigmoid` tests with a
4-parameter logistic.

All α of one prompt are sampled in one batch (one row per (α, sample), α given per row to
:func:`steerlib.steering.steer`), with the model's own ``generate`` and KV cache: the hook adds ``α_i v`` to
row ``i`` on the prefill and on every generated position.

Example:
    >>> sweep = concept_probability_sweep(lm, vector, prompts, np.linspace(-8, 8, 9), judge, n_samples=4)
    >>> sweep.probability, sweep.band()              # p̂(α) and a 95% Wilson band
    >>> fit_sigmoid(sweep.alphas, sweep.probability)  # 4-parameter logistic, R², RMSE
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from steerlib.judge import INVALID
from steerlib.models import LoadedModel
from steerlib.steering import resolve_vector, steer


@torch.no_grad()
def sample_steered_completions(
    lm: LoadedModel,
    vector,
    prompts: Sequence[str],
    alphas: Sequence[float],
    n_samples: int,
    max_new_tokens: int,
    seed: int = 0,
    layer: int | None = None,
    top_p: float = 0.95,
    temperature: float = 1.0,
    max_batch: int = 512,
    progress: bool = True,
) -> list[list[list[str]]]:
    """Completions ``x_{m,k}(α)`` sampled with steering active, as ``[α][prompt][sample]`` strings.

    For each prompt, the ``len(alphas) * n_samples`` rows run in one ``generate`` call (split in chunks of at
    most ``max_batch`` rows); row ``i`` is steered with its own ``α_i``. Each prompt's randomness is seeded with
    ``seed + prompt index``. Decoded texts hold the generated tokens only.

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of ``lm`` (or a tensor with ``layer``).
        prompts: evaluation contexts (tokenised as plain text with the tokenizer's defaults).
        alphas: the steering strengths.
        n_samples: ``K``, completions per prompt and α.
        max_new_tokens: completion length.
        seed: base seed.
        layer: block to steer (default the vector's).
        top_p, temperature: nucleus sampling.
        max_batch: largest number of rows per ``generate`` call.
        progress: show a ``tqdm`` bar over prompts.
    """
    from tqdm.auto import tqdm

    if not prompts or n_samples < 1 or max_new_tokens < 1 or len(alphas) == 0:
        raise ValueError("need at least one prompt, one α, n_samples >= 1 and max_new_tokens >= 1.")
    resolve_vector(lm, vector, layer)
    tokenizer = lm.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    row_alphas = np.repeat(np.asarray(alphas, dtype=np.float64), n_samples)
    texts = [[[""] * n_samples for _ in prompts] for _ in alphas]
    for m, prompt in enumerate(tqdm(prompts, desc="prompts", **({} if progress else {"disable": True}))):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(lm.device)
        if ids.shape[1] == 0:
            raise ValueError(f"prompt {m} tokenises to nothing: remove empty prompts.")
        torch.manual_seed(seed + m)
        decoded: list[str] = []
        for start in range(0, len(row_alphas), max_batch):
            chunk = row_alphas[start:start + max_batch]
            batch = ids.expand(len(chunk), -1)
            with steer(lm, vector, alpha=torch.as_tensor(chunk, dtype=torch.float32), layer=layer):
                output = lm.model.generate(input_ids=batch, attention_mask=torch.ones_like(batch),
                                           max_new_tokens=max_new_tokens, do_sample=True, top_p=top_p, top_k=0,
                                           temperature=temperature, pad_token_id=pad_id)
            decoded += tokenizer.batch_decode(output[:, ids.shape[1]:], skip_special_tokens=True)
        for row, text in enumerate(decoded):
            texts[row // n_samples][m][row % n_samples] = text
    return texts


def wilson_interval(successes: np.ndarray, trials: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion, elementwise; ``(0, 1)`` where ``trials`` is 0.

    ``(p̂ + z²/2n ± z sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile of ``level``.
    It treats the M·K labels of one α as independent draws; :func:`bootstrap_band` does not.
    """
    from scipy.stats import norm

    successes, trials = np.asarray(successes, float), np.asarray(trials, float)
    if np.any(successes < 0) or np.any(successes > trials) or not 0 < level < 1:
        raise ValueError("need 0 <= successes <= trials and 0 < level < 1.")
    z = norm.ppf(0.5 + level / 2)
    n = np.maximum(trials, 1.0)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    empty = trials == 0
    return np.where(empty, 0.0, np.clip(centre - half, 0, 1)), np.where(empty, 1.0, np.clip(centre + half, 0, 1))


def bootstrap_band(labels: np.ndarray, level: float = 0.95, n_boot: int = 1000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of p̂(α) resampling prompts, then samples within each drawn prompt (two-stage bootstrap).

    Args:
        labels: ``(n_alpha, M, K)`` labels in {1, 0, INVALID}; invalid ones are left out of each mean.
        level: coverage of the band.
        n_boot: bootstrap replicates.
        seed: seeds the resampling.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (n_alpha, prompts, samples), got {labels.shape}.")
    rng = np.random.default_rng(seed)
    _, n_prompts, n_samples = labels.shape
    prompt_draw = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
    sample_draw = rng.integers(0, n_samples, size=(n_boot, n_prompts, n_samples))
    resampled = labels[:, prompt_draw[..., None], sample_draw]  # (n_alpha, n_boot, M, K)
    valid = resampled != INVALID
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(valid, resampled, 0).sum((2, 3)) / valid.sum((2, 3))
    low, high = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return low, high


def logistic4(alpha: np.ndarray, bottom: float, top: float, midpoint: float, slope: float) -> np.ndarray:
    """4-parameter logistic ``bottom + (top - bottom) / (1 + exp(-slope (α - midpoint)))``.

    Equal to ``a + b tanh(slope (α - midpoint) / 2)``: the shape Theorem 3.6 gives for the concept probability.
    """
    return bottom + (top - bottom) / (1 + np.exp(-np.clip(slope * (np.asarray(alpha) - midpoint), -60, 60)))


@dataclass
class SigmoidFit:
    """Least-squares fit of :func:`logistic4` to p̂(α).

    Args:
        bottom, top, midpoint, slope: the parameters (``top`` is the limit at ``α → +∞`` when slope > 0).
        r2: coefficient of determination ``1 - SS_res / SS_tot`` (``nan`` when p̂ is constant).
        rmse: root-mean-square residual.
        converged: whether ``scipy.optimize.curve_fit`` converged.
    """

    bottom: float
    top: float
    midpoint: float
    slope: float
    r2: float
    rmse: float
    converged: bool

    @property
    def params(self) -> tuple[float, float, float, float]:
        return self.bottom, self.top, self.midpoint, self.slope

    def __call__(self, alpha) -> np.ndarray:
        return logistic4(alpha, *self.params)


def fit_sigmoid(alphas: Sequence[float], probability: Sequence[float]) -> SigmoidFit:
    """Fit :func:`logistic4` to ``(α, p̂(α))`` with ``bottom, top ∈ [0, 1]``, starting from the data's range.

    Several starting slopes of both signs are tried and the best fit is kept, so an increasing, decreasing or
    flat trend is found without being assumed.
    """
    from scipy.optimize import curve_fit

    x, y = np.asarray(alphas, float), np.asarray(probability, float)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 4:
        raise ValueError(f"a 4-parameter logistic needs at least 4 finite points, got {x.size}.")
    span = max(float(np.ptp(x)), 1e-9)
    best = None
    for sign in (1.0, -1.0):
        for scale in (2.0, 8.0, 32.0):
            start = [float(y.min()), float(y.max()), float(np.median(x)), sign * scale / span]
            if sign < 0:
                start[0], start[1] = start[1], start[0]
            try:
                params, _ = curve_fit(logistic4, x, y, p0=start, bounds=([0, 0, x.min() - span, -1e3],
                                                                        [1, 1, x.max() + span, 1e3]), maxfev=20000)
                converged = True
            except RuntimeError:
                params, converged = np.array(start), False
            residual = float(((y - logistic4(x, *params)) ** 2).sum())
            if best is None or residual < best[1] - 1e-12:
                best = (params, residual, converged)
    params, residual, converged = best
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - residual / total if total > 0 else float("nan")
    return SigmoidFit(*map(float, params), r2=r2, rmse=float(np.sqrt(residual / x.size)), converged=converged)


@dataclass
class ConceptSweep:
    """Judged completions of a steered model over a grid of α.

    Args:
        alphas: the grid, shape ``(n_alpha,)``.
        labels: judge labels, shape ``(n_alpha, M, K)``, in {1, 0, INVALID}.
        margins: the judge's margins, same shape (``nan`` for generated-reply judges).
        completions: the texts, nested ``[α][prompt][sample]``.
        prompts: the M evaluation prompts.
        parameters: everything that determined the sweep (model, concept, layer, vector norm, judge, seed, ...).
    """

    alphas: np.ndarray
    labels: np.ndarray
    margins: np.ndarray
    completions: list[list[list[str]]]
    prompts: list[str]
    parameters: dict = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return self.labels != INVALID

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def probability(self) -> np.ndarray:
        """p̂(α): mean of the valid labels at each α."""
        counts = self.valid.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.valid, self.labels, 0).sum((1, 2)) / counts

    def band(self, method: str = "wilson", level: float = 0.95, n_boot: int = 1000, seed: int = 0
             ) -> tuple[np.ndarray, np.ndarray]:
        """Confidence band of p̂(α): ``"wilson"`` (binomial, labels independent) or ``"bootstrap"`` (over
        prompts, then samples; wider when prompts differ)."""
        if method == "wilson":
            return wilson_interval((self.labels == 1).sum((1, 2)), self.valid.sum((1, 2)), level)
        if method == "bootstrap":
            return bootstrap_band(self.labels, level, n_boot, seed)
        raise ValueError(f"method={method!r}: use 'wilson' or 'bootstrap'.")

    def fit(self) -> SigmoidFit:
        """:func:`fit_sigmoid` of p̂(α)."""
        return fit_sigmoid(self.alphas, self.probability)

    def spearman(self) -> float:
        """Spearman rank correlation of p̂(α) with α (+1: increases throughout)."""
        from scipy.stats import spearmanr

        keep = np.isfinite(self.probability)
        if np.ptp(self.probability[keep]) == 0:
            return 0.0
        return float(spearmanr(self.alphas[keep], self.probability[keep]).statistic)

    def save(self, path: str | os.PathLike) -> Path:
        """Arrays to ``<path>`` (npz) and texts + parameters to ``<path>.json``, each written atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, alphas=self.alphas, labels=self.labels, margins=self.margins)
        os.replace(tmp, path)
        meta = path.with_name(path.name + ".json")
        tmp_meta = meta.with_name(meta.name + ".tmp")
        tmp_meta.write_text(json.dumps({"completions": self.completions, "prompts": self.prompts,
                                        "parameters": self.parameters}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp_meta, meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConceptSweep:
        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        if not path.exists() or not meta_path.exists():
            raise ValueError(f"no saved concept sweep at {path} (and {meta_path.name}): compute it first.")
        with np.load(path) as arrays:
            alphas, labels, margins = arrays["alphas"], arrays["labels"], arrays["margins"]
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return cls(alphas, labels, margins, meta["completions"], meta["prompts"], meta["parameters"])


def judge_completions(judge, completions: list[list[list[str]]], concept: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and margins, shape ``(n_alpha, M, K)``, of nested completions, judged in one call."""
    n_alpha, n_prompts, n_samples = len(completions), len(completions[0]), len(completions[0][0])
    flat = [text for per_alpha in completions for per_prompt in per_alpha for text in per_prompt]
    result = judge(flat, concept)
    shape = (n_alpha, n_prompts, n_samples)
    return np.asarray(result.labels, int).reshape(shape), np.asarray(result.margins, float).reshape(shape)


def concept_probability_sweep(
    lm: LoadedModel,
    vector,
    prompts: Sequence[str],
    alphas: Sequence[float],
    judge,
    n_samples: int,
    max_new_tokens: int = 24,
    seed: int = 0,
    layer: int | None = None,
    concept: str | None = None,
    top_p: float = 0.95,
    temperature: float = 1.0,
    max_batch: int = 512,
    progress: bool = True,
) -> ConceptSweep:
    """Sample steered completions (:func:`sample_steered_completions`) and judge them: p̂(α) (Sec. 5).

    Args:
        lm, vector, prompts, alphas, n_samples, max_new_tokens, seed, layer, top_p, temperature, max_batch,
            progress: as in :func:`sample_steered_completions`.
        judge: a callable ``judge(texts, concept) -> JudgeResult`` (:mod:`steerlib.judge`).
        concept: the concept judged (default the vector's).
    """
    concept = concept or getattr(vector, "concept", None)
    if not concept:
        raise ValueError("give concept=... (a bare tensor carries no concept name).")
    alphas = np.asarray(alphas, dtype=np.float64)
    completions = sample_steered_completions(lm, vector, prompts, alphas, n_samples, max_new_tokens, seed, layer,
                                             top_p, temperature, max_batch, progress)
    labels, margins = judge_completions(judge, completions, concept)
    v, layer = resolve_vector(lm, vector, layer)
    parameters = dict(model=lm.name, concept=concept, layer=layer, vector_norm=float(v.norm()),
                      judge=getattr(judge, "name", type(judge).__name__), n_samples=n_samples,
                      max_new_tokens=max_new_tokens, seed=seed, top_p=top_p, temperature=temperature,
                      setting=getattr(vector, "setting", None))
    return ConceptSweep(alphas, labels, margins, completions, list(prompts), parameters)


def sweep_key(lm: LoadedModel, vector, prompts: Sequence[str], alphas: Sequence[float], judge_name: str,
              **options) -> str:
    """A short hash of everything that determines a concept sweep (model, vector values, prompts, grid, judge,
    sizes, seed)."""
    from steerlib.vectors import SteeringVector

    v = vector.vector if isinstance(vector, SteeringVector) else torch.as_tensor(vector)
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": lm.name, "dtype": str(lm.dtype), "prompts": list(prompts),
                              "alphas": np.asarray(alphas, float).tolist(), "judge": judge_name,
                              "layer": getattr(vector, "layer", None), "concept": getattr(vector, "concept", None),
                              "options": options}, sort_keys=True, default=str).encode())
    digest.update(v.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_compute(path: str | os.PathLike, compute: Callable[[], ConceptSweep]) -> ConceptSweep:
    """``ConceptSweep.load(path)`` if it was saved, else ``compute()``, saved atomically at ``path``."""
    path = Path(path)
    if path.exists() and path.with_name(path.name + ".json").exists():
        return ConceptSweep.load(path)
    sweep = compute()
    sweep.save(path)
    return sweep


def load_or_compute_concept_sweep(folder: str | os.PathLike, lm: LoadedModel, vector, prompts: Sequence[str],
                                  alphas: Sequence[float], judge, n_samples: int, max_new_tokens: int = 24,
                                  seed: int = 0, **options) -> ConceptSweep:
    """:func:`concept_probability_sweep`, saved as ``<folder>/concept-<key>.npz`` (+ ``.json``) and reused.

    The key hashes every input (:func:`sweep_key`), so changing the vector, prompts, grid, judge or sizes
    recomputes, while rerunning a chapter reuses.
    """
    judge_name = getattr(judge, "name", type(judge).__name__) + f":{getattr(judge, 'threshold', '')}"
    key = sweep_key(lm, vector, prompts, alphas, judge_name, n_samples=n_samples, max_new_tokens=max_new_tokens,
                    seed=seed, **{k: v for k, v in options.items() if k not in ("progress", "max_batch")})
    return load_or_compute(Path(folder) / f"concept-{key}.npz",
                           lambda: concept_probability_sweep(lm, vector, prompts, alphas, judge, n_samples,
                                                             max_new_tokens, seed, **options))


def sweep_summary(sweep: ConceptSweep) -> dict:
    """p̂(α), band, fit and trend of a sweep as JSON-ready values (for tables and glue)."""
    fit = sweep.fit()
    low, high = sweep.band()
    return dict(alphas=sweep.alphas.tolist(), probability=sweep.probability.tolist(), low=low.tolist(),
                high=high.tolist(), fit=asdict(fit), spearman=sweep.spearman(), n_invalid=sweep.n_invalid,
                **sweep.parameters)
