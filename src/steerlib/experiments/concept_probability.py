"""Concept probability of a steered LLM: sample, judge, average (Sec. 5, Th. 3.6, Fig. 7 top, A.11, A.12).

Taught in the chapter "concept probability with a judge" (``book/llm/concept_probability.md``). For a steering
vector ``v`` at block ``ℓ`` and a grid of strengths ``α``, the concept probability is estimated as

    p̂(α) = (1 / (M K)) Σ_{m ≤ M} Σ_{k ≤ K} J(x_{m,k}(α)),

where ``x_{m,k}(α)`` is the k-th completion sampled from prompt ``m`` with ``α v`` added to the output of
block ``ℓ`` at every position (prompt and generated tokens), and ``J ∈ {0, 1}`` is a judge's label
(:mod:`steerlib.judge`). The paper uses M = 12 prompts, K = 32 samples and α ∈ [-40, 40]; Theorem 3.6
predicts, in its idealised model, a tanh (sigmoid) law in α, which :func:`steerlib.stats.fit_sigmoid` tests with
a 4-parameter logistic.

All α of one prompt are sampled in one batch (one row per (α, sample), α given per row to
:func:`steerlib.steering.steer`), with the model's own ``generate`` and KV cache: the hook adds ``α_i v`` to
row ``i`` on the prefill and on every generated position.

Example:
    >>> params = ConceptParameters(prompts, alphas=np.linspace(-8, 8, 9), n_samples=4)
    >>> sweep = load_or_run(lm, vector, judge, params, "results/concept_probability")
    >>> sweep.probability, sweep.band()              # p̂(α) and a 95% Wilson band
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.judge import INVALID
from steerlib.models import LoadedModel, check_texts
from steerlib.stats import SigmoidFit, bootstrap_band, fit_sigmoid, spearman, wilson_interval
from steerlib.steering import resolve_vector, steer
from steerlib.store import Result, content_key, load_or_compute


@dataclass(frozen=True)
class ConceptParameters:
    """What determines a concept-probability sweep, besides the model, the vector and the judge.

    Args:
        prompts: the M evaluation contexts (tokenised as plain text with the tokenizer's defaults).
        alphas: the steering strengths.
        n_samples: ``K``, completions per prompt and α.
        max_new_tokens: completion length.
        seed: base seed (prompt ``m`` samples with ``seed + m``).
        layer: block to steer (default the vector's).
        concept: the concept judged (default the vector's).
        top_p, temperature: nucleus sampling.
    """

    prompts: tuple[str, ...]
    alphas: tuple[float, ...]
    n_samples: int
    max_new_tokens: int = 24
    seed: int = 0
    layer: int | None = None
    concept: str | None = None
    top_p: float = 0.95
    temperature: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(check_texts(self.prompts, "prompts")))
        object.__setattr__(self, "alphas", tuple(float(a) for a in np.asarray(self.alphas, dtype=float).reshape(-1)))
        if not self.alphas or self.n_samples < 1 or self.max_new_tokens < 1:
            raise ValueError("need at least one α, n_samples >= 1 and max_new_tokens >= 1.")


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


@dataclass
class ConceptSweep(Result):
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
    completions: list
    prompts: list
    parameters: dict

    @property
    def valid(self) -> np.ndarray:
        return self.labels != INVALID

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def n_done(self) -> int:
        """Prompts sampled and judged so far (the first ``n_done`` of :attr:`prompts`)."""
        return int(self.labels.shape[1])

    @property
    def complete(self) -> bool:
        return self.n_done == len(self.prompts)

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
            return bootstrap_band(self.labels, level, n_boot, seed, invalid=INVALID)
        raise ValueError(f"method={method!r}: use 'wilson' or 'bootstrap'.")

    def positive_peak(self) -> int:
        """Index of the largest p̂(α) over ``α > 0`` (the first on ties): the peak that steering towards the concept
        reaches, which a curve falling from ``α = 0`` would otherwise put at 0."""
        positive = np.flatnonzero(self.alphas > 0)
        if positive.size == 0:
            raise ValueError("the grid has no α > 0: include positive strengths to find the peak of steering.")
        return int(positive[np.nanargmax(self.probability[positive])])

    def fit(self) -> SigmoidFit:
        """:func:`fit_sigmoid` of p̂(α)."""
        return fit_sigmoid(self.alphas, self.probability)

    def spearman(self) -> float:
        """Spearman rank correlation of p̂(α) with α (+1: increases throughout)."""
        return spearman(self.alphas, self.probability)


def judge_completions(judge, completions: list[list[list[str]]], concept: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and margins, shape ``(n_alpha, M, K)``, of nested completions, judged in one call.

    Raises:
        ValueError: the judge returned another number of labels, or labels outside {1, 0, INVALID} (a custom
            judge returning 2 would otherwise make a concept probability of 2).
    """
    n_alpha, n_prompts, n_samples = len(completions), len(completions[0]), len(completions[0][0])
    flat = [text for per_alpha in completions for per_prompt in per_alpha for text in per_prompt]
    result = judge(flat, concept)
    labels, margins = np.asarray(result.labels), np.asarray(result.margins, float)
    if labels.shape != (len(flat),) or margins.shape != (len(flat),):
        raise ValueError(f"the judge returned {labels.shape} labels and {margins.shape} margins for {len(flat)} "
                         "texts: give one label and one margin per text.")
    unknown = sorted(set(labels.tolist()) - {0, 1, INVALID})
    if unknown:
        raise ValueError(f"the judge returned labels {unknown}: labels must be 1 (concept present), 0 (absent) or "
                         f"{INVALID} (unreadable answer, counted as invalid).")
    shape = (n_alpha, n_prompts, n_samples)
    return labels.astype(int).reshape(shape), margins.reshape(shape)


def run(lm: LoadedModel, vector, judge, params: ConceptParameters, max_batch: int = 512,
        progress: bool = True, path: str | os.PathLike | None = None) -> ConceptSweep:
    """Sample steered completions (:func:`sample_steered_completions`) and judge them: p̂(α) (Sec. 5).

    Prompts are sampled and judged one at a time; with ``path``, the sweep is saved after each prompt and a run
    that was interrupted resumes at its first prompt not done (the same completions, each prompt being seeded
    with ``seed + its index``).

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of ``lm`` (or a tensor with ``params.layer``).
        judge: a callable ``judge(texts, concept) -> JudgeResult`` (:mod:`steerlib.judge`).
        params: prompts, grid, sizes and sampling (:class:`ConceptParameters`).
        max_batch: largest number of rows per ``generate`` call.
        progress: show a progress bar over prompts.
        path: where to save the sweep prompt by prompt and to resume from.
    """
    concept = params.concept or getattr(vector, "concept", None)
    if not concept:
        raise ValueError("give concept=... in the parameters (a bare tensor carries no concept name).")
    alphas = np.asarray(params.alphas, dtype=np.float64)
    v, layer = resolve_vector(lm, vector, params.layer)
    parameters = dict(model=lm.name, concept=concept, layer=layer, vector_norm=float(v.norm()),
                      judge=judge_name(judge), n_samples=params.n_samples, max_new_tokens=params.max_new_tokens,
                      seed=params.seed, top_p=params.top_p, temperature=params.temperature,
                      setting=getattr(vector, "setting", None))
    prompts = list(params.prompts)
    empty = np.zeros((len(alphas), 0, params.n_samples))
    sweep = ConceptSweep(alphas, empty.astype(int), empty, [[] for _ in alphas], prompts, parameters)
    if path is not None and Path(path).exists():
        saved = ConceptSweep.load(path)
        if saved.parameters == parameters and saved.prompts == prompts:
            sweep = saved
    for m in tqdm(range(sweep.n_done, len(prompts)), desc="prompts", initial=sweep.n_done, total=len(prompts),
                  disable=not progress):
        completions = sample_steered_completions(lm, vector, [prompts[m]], alphas, params.n_samples,
                                                 params.max_new_tokens, params.seed + m, params.layer, params.top_p,
                                                 params.temperature, max_batch, progress=False)
        labels, margins = judge_completions(judge, completions, concept)
        sweep = ConceptSweep(alphas, np.concatenate([sweep.labels, labels], axis=1),
                             np.concatenate([sweep.margins, margins], axis=1),
                             [done + new for done, new in zip(sweep.completions, completions)], prompts, parameters)
        if path is not None:
            sweep.save(path)
    return sweep


def judge_name(judge) -> str:
    """A judge's name with what sets its verdicts (the embedding judge's threshold), for keys and records."""
    return getattr(judge, "name", type(judge).__name__) + f":{getattr(judge, 'threshold', '')}"


def load_or_run(lm: LoadedModel, vector, judge, params: ConceptParameters, folder: str | os.PathLike,
                max_batch: int = 512, progress: bool = True) -> ConceptSweep:
    """:func:`run`, saved under ``folder`` as ``concept-<key>.npz`` (model, dtype, vector, judge, parameters) and
    read back when it exists."""
    key = content_key(lm.name, str(lm.dtype), vector, judge_name(judge), params)
    path = Path(folder) / f"concept-{key}.npz"
    return load_or_compute(path, lambda: run(lm, vector, judge, params, max_batch, progress, path), ConceptSweep)
