"""Next-token curves of a steered LLM held against Th. 3.3 and App. A: bumps, peak order, log-odds.

Taught in the chapters "Next-token curves on LLMs" (``book/llm/next_token_curves.md``) and "Log-odds of real
models" (``book/llm/log_odds.md``).

Theorem 3.3 is stated for a perfectly trained UFM, where the log-odds ``M(z)`` (Def. 3.2) split the
vocabulary by sign: ``M(z) > 0`` exactly for the target tokens (Lemma B.4). An LLM has no labelled target
concept, so we *define* its target tokens the same way: ``z`` is a target token when the model's own
log-odds ``M(z) = mean_P log p(z|c) - mean_N log p(z|c)`` (:func:`steerlib.sweeps.log_odds`) is positive.
With that definition the theorem's claims become measurable on any sweep: the share of curves that bump, and
whether off-target tokens peak before target tokens.

Example:
    >>> M = concept_log_odds(lm, "joy", "random", 32, "results/log_odds")
    >>> shapes = sweep.classify(sweep.token_ids, alpha_range=(0, np.inf))
    >>> peak_order(shapes, M, alpha_end=sweep.alphas.max()).share_ordered
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from steerlib.activations import NEGATIVE_KIND, _check_setting
from steerlib.models import LoadedModel
from steerlib.prompts import load_prompt_set
from steerlib.sweeps import CurveShape, last_position_log_probs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def cached_last_position_log_probs(lm: LoadedModel, concept: str, kind: str, n_texts: int,
                                   folder: str | os.PathLike, layer: int | None = None) -> torch.Tensor:
    """``log p(·|c)`` at the last position of the first ``n_texts`` texts of a prompt set, loaded or computed.

    Args:
        lm: the model.
        concept: whose prompt-set file is read.
        kind: ``"positive"``, ``"negative_random"`` or ``"negative_contrastive"``.
        n_texts: how many texts (the first ones).
        folder: cache folder.
        layer: ``None`` for the model's output, or a block for the logit lens at its output
            (see :func:`steerlib.sweeps.last_position_log_probs`).

    Returns:
        fp32 CPU tensor of shape ``(n_texts, vocabulary)``.
    """
    from safetensors.torch import load_file, save_file

    where = "output" if layer is None else f"block{layer}"
    path = Path(folder) / f"{_slug(lm.name)}-{_slug(concept)}-{kind}-n{n_texts}-{where}.safetensors"
    if path.exists():
        return load_file(str(path))["log_probs"]
    texts = load_prompt_set(concept, kind)
    if len(texts) < n_texts:
        raise ValueError(f"the {kind} prompt set of {concept!r} has {len(texts)} texts, fewer than n_texts = "
                         f"{n_texts}: lower n_texts")
    log_probs = last_position_log_probs(lm, texts[:n_texts], layer).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"log_probs": log_probs}, str(tmp))
    tmp.replace(path)
    return log_probs


def concept_log_odds(lm: LoadedModel, concept: str, setting: str, n_texts: int, folder: str | os.PathLike,
                     layer: int | None = None) -> np.ndarray:
    """The model's log-odds ``M(z)`` (Def. 3.2, App. A) for ``concept`` with P and N of ``setting``, cached.

    ``M(z) = (1/|P|) Σ_P log p(z|c) - (1/|N|) Σ_N log p(z|c)``, with ``p(·|c)`` the next-token distribution at
    the last position of each text; float64, one entry per vocabulary token.

    Args:
        lm: the model.
        concept: e.g. ``"joy"``.
        setting: ``"random"`` or ``"contrastive"`` (which N).
        n_texts: texts per set (the first ones of each file).
        folder: cache folder. With ``layer=None`` this is the activations cache of
            :mod:`steerlib.activations` (the log-probabilities come from the same forward pass).
        layer: ``None`` for the model's output; a block for the logit lens at its output.
    """
    from steerlib.activations import prompt_set_last_log_probs

    kind = NEGATIVE_KIND[_check_setting(setting)]
    if layer is None:
        positive = prompt_set_last_log_probs(lm, concept, "positive", n_texts, folder)
        negative = prompt_set_last_log_probs(lm, concept, kind, n_texts, folder)
    else:
        positive = cached_last_position_log_probs(lm, concept, "positive", n_texts, folder, layer)
        negative = cached_last_position_log_probs(lm, concept, kind, n_texts, folder, layer)
    return (positive.double().mean(dim=0) - negative.double().mean(dim=0)).numpy()


def is_target_token(log_odds: np.ndarray, token_ids: Sequence[int]) -> np.ndarray:
    """Our definition of an LLM's target tokens, from Lemma B.4: ``M(z) > 0``."""
    return np.asarray(log_odds)[np.asarray(token_ids, dtype=np.int64)] > 0


def bump_share(shapes: Sequence[CurveShape]) -> float:
    """Share of the curves classified as a bump (Th. 3.3: all tokens but those of extremal log-odds)."""
    if not shapes:
        raise ValueError("no curves to classify")
    return float(np.mean([shape.shape == "bump" for shape in shapes]))


@dataclass
class PeakOrder:
    """Pairs (off-target token, target token) of rising curves and whether the off-target one peaks first.

    Args:
        n_pairs: pairs whose order can be decided on the grid.
        n_ordered: pairs where the off-target token peaks strictly before the target token (Th. 3.3).
        n_target, n_off_target: rising tokens of each kind that entered the comparison.
        median_target_peak, median_off_target_peak: median peak ``α`` of each kind (``nan`` if none).
    """

    n_pairs: int
    n_ordered: int
    n_target: int
    n_off_target: int
    median_target_peak: float
    median_off_target_peak: float

    @property
    def share_ordered(self) -> float:
        """``n_ordered / n_pairs`` (``nan`` when no pair can be decided)."""
        return self.n_ordered / self.n_pairs if self.n_pairs else float("nan")


def peak_order(shapes: Sequence[CurveShape], log_odds: np.ndarray, alpha_end: float,
               min_rise: float = 1e-4) -> PeakOrder:
    """Th. 3.3's peak order on measured curves: do off-target tokens (``M <= 0``) peak before target ones?

    Only curves that rise (peak ``Δp > min_rise``) and are classified ``"bump"`` or monotone towards
    ``alpha_end`` count. A monotone curve peaks at the end of the grid or beyond, so its true peak is only
    known to be ``>= alpha_end`` (``<=`` for a negative ``alpha_end``): a pair of two such curves is
    undecided and left out; a pair with one of them is decided by that bound.

    Args:
        shapes: classified curves, e.g. ``sweep.classify(sweep.token_ids, alpha_range=(0, np.inf))``.
        log_odds: ``M(z)`` over the vocabulary (:func:`concept_log_odds`).
        alpha_end: the end of the grid the curves were classified on (``α_max``, or ``α_min`` for ``α <= 0``).
        min_rise: smallest peak ``Δp`` for a curve to count.
    """
    direction = 1.0 if alpha_end > 0 else -1.0
    rising = [s for s in shapes if s.peak_delta_p > min_rise and s.shape in ("bump", "increasing", "decreasing")]
    # On α <= 0 the curves are read from 0 towards alpha_end: "far" means a larger |α|.
    entries = []
    for shape in rising:
        censored = shape.shape != "bump"
        if censored and not np.isclose(shape.peak_alpha, alpha_end):
            continue  # monotone, but its maximum sits at α = 0: it never rises in this direction
        entries.append((direction * shape.peak_alpha, censored, bool(log_odds[shape.token_id] > 0)))
    targets = [e for e in entries if e[2]]
    off_targets = [e for e in entries if not e[2]]
    n_pairs = n_ordered = 0
    for off_peak, off_censored, _ in off_targets:
        for target_peak, target_censored, _ in targets:
            if off_censored and target_censored:
                continue
            n_pairs += 1
            if off_censored:
                continue  # off-target still rising at the end: it cannot peak before the target
            n_ordered += int(target_censored or off_peak < target_peak)

    def median(group):
        return float(direction * np.median([e[0] for e in group])) if group else float("nan")

    return PeakOrder(n_pairs, n_ordered, len(targets), len(off_targets), median(targets), median(off_targets))


def top_token_curves(sweep, at: str = "max", k: int = 8) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """The curves of the ``k`` most probable tokens at the largest (``"max"``) or smallest (``"min"``) ``α``,
    on the half-line they are read on (``α >= 0`` or ``α <= 0``), as in Figs. 6 and A.10.

    Args:
        sweep: a :class:`steerlib.sweeps.NextTokenSweep`.
        at: ``"max"`` or ``"min"``.
        k: how many tokens.

    Returns:
        ``(alphas, delta_p, token_ids, tokens)`` with ``delta_p`` of shape ``(len(alphas), k)``.
    """
    token_ids = [int(t) for t in sweep.top_tokens(at, k)]
    inside = sweep.alphas >= 0 if at == "max" else sweep.alphas <= 0
    curves = np.stack([sweep.curve(t)[inside] for t in token_ids], axis=1)
    return sweep.alphas[inside], curves, token_ids, [sweep.token(t) for t in token_ids]


def half_line(at: str) -> tuple[float, float]:
    """The ``alpha_range`` of :meth:`NextTokenSweep.classify` for ``at="max"`` (``α >= 0``) or ``"min"``."""
    if at not in ("max", "min"):
        raise ValueError(f"at={at!r}: use 'max' (α >= 0) or 'min' (α <= 0)")
    return (0.0, np.inf) if at == "max" else (-np.inf, 0.0)


def log_odds_ranks(log_odds: np.ndarray, token_ids: Sequence[int], side: str = "max") -> np.ndarray:
    """Rank of each token's ``M(z)`` in the vocabulary: 1 for the largest (``side="max"``) or smallest
    (``"min"``) log-odds, ``V`` for the other end (ties share the best rank).
    """
    if side not in ("max", "min"):
        raise ValueError(f"side={side!r}: use 'max' (rank 1 = largest M) or 'min' (rank 1 = smallest M)")
    values = np.asarray(log_odds, dtype=np.float64)
    values = -values if side == "max" else values
    ordered = np.sort(values)
    return np.searchsorted(ordered, values[np.asarray(token_ids, dtype=np.int64)], side="left") + 1
