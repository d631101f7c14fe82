"""The large-α limit of a steered transformer (Prop. 4.1), measured: distance to ``σ(LN(±v)Wᵀ)``, the merging of
different prompts, and the plateau of the cross-entropy.

Taught in the chapter "The large-α limit LN(±v)Wᵀ" (``book/transformers/large_alpha_limit.md``).

Steering block ℓ gives logits ``y(α) = LN(h^(ℓ) + α v + R(α)) Wᵀ`` (Sec. 4, App. B.6) where ``R(α)``, the sum
of the downstream block updates, stays bounded because every block reads its input through a norm. Hence
(Prop. 4.1) ``y(α) -> LN(±v) Wᵀ`` (:func:`steerlib.steering.limit_logits`) as ``α -> ±∞``: the steered
next-token distribution forgets the prompt, and the cross-entropy of the steered model on any text tends to that
of ``σ(LN(±v)Wᵀ)`` on the same tokens.

Example:
    >>> grid, ce_grid = symmetric_alpha_grid(1e5, 11, "log", 1.0), symmetric_alpha_grid(1e6, 13, "log", 1.0)
    >>> params = LargeAlphaParameters(prompts=load_eval_prompts()[:4], alphas=grid[grid > 0],
    ...                               ce_layer=15, ce_alphas=ce_grid[ce_grid > 0])
    >>> sweep = load_or_run(lm, vectors, params, "results/large_alpha")   # vectors: {layer: SteeringVector}
    >>> sweep.mean_kl()[:, :, -1]                                          # KL at the largest |α|
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.models import LoadedModel, check_texts
from steerlib.stats import kl_divergence, loglog_slope, max_pairwise_distance
from steerlib.steering import (check_positions, limit_logits, limit_target_log_probs, resolve_vector,
                               steered_next_token_log_probs, steered_target_log_probs)
from steerlib.store import Result, content_key, load_or_compute

SIGNS = (1, -1)
"""The two directions of Prop. 4.1, in the order of the arrays below: ``α -> +∞`` first."""


@dataclass(frozen=True)
class LargeAlphaParameters:
    """What determines a large-α sweep, besides the model and the vectors.

    Args:
        prompts: at least two prompts (Prop. 4.1 says their steered distributions merge).
        alphas: positive magnitudes ``|α|``; both signs are run.
        positions: ``"all"`` (default, Sec. 4) or ``"last"``.
        ce_layer: the block whose vector steers the cross-entropy measurement (``None``: none).
        ce_alphas: positive magnitudes ``|α|`` of the cross-entropy curve (both signs and 0 are run).
    """

    prompts: tuple[str, ...]
    alphas: tuple[float, ...]
    positions: str = "all"
    ce_layer: int | None = None
    ce_alphas: tuple[float, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(check_texts(self.prompts, "prompts")))
        if len(self.prompts) < 2:
            raise ValueError("give at least two prompts: Prop. 4.1 says their steered distributions merge")
        for name in ("alphas", "ce_alphas"):
            grid = np.sort(np.asarray(getattr(self, name), dtype=float).reshape(-1))
            if np.any(grid <= 0) or (name == "alphas" and grid.size == 0):
                raise ValueError(f"{name} must be a grid of positive magnitudes |α| (both signs are run)")
            object.__setattr__(self, name, tuple(float(a) for a in grid))
        check_positions(self.positions)
        if self.ce_alphas and self.ce_layer is None:
            raise ValueError("ce_alphas needs ce_layer: the block whose vector steers the cross-entropy")


@dataclass
class LargeAlphaSweep(Result):
    """Distances to the Prop. 4.1 limit over a grid of ``|α|``, for both signs, several layers and prompts, and
    the cross-entropy of the prompts under steering with its predicted plateaus.

    Args:
        alphas: the magnitudes ``|α|``, increasing, shape ``(A,)``; sign ``s`` steers with ``s·|α|``.
        layers: the steered blocks, shape ``(L,)``.
        kl: ``KL(σ(y(s|α|)) ‖ σ(LN(s v)Wᵀ))`` at the last position, shape ``(2, L, P, A)``, sign ``+1`` first.
        pairwise_tv: largest total-variation distance between the steered next-token distributions of two
            prompts, shape ``(2, L, A)``.
        unsteered_tv: the largest pairwise total-variation distance at ``α = 0`` (the prompts' own spread).
        limit_top_tokens: for each sign and layer, the three most probable tokens of ``σ(LN(±v)Wᵀ)``.
        ce_alphas: ``α`` of the cross-entropy curve, ``-ce_alphas[::-1], 0, ce_alphas``.
        ce: ``CE(α)`` of the prompts (every predicted token), steering block ``ce_layer`` at every position.
        limit_ce: ``CE(±∞)`` predicted by Prop. 4.1 on the same tokens, ``[+, -]``.
        parameters: model, dtype, prompts, positions, ``ce_layer``, vector norms.
    """

    alphas: np.ndarray
    layers: np.ndarray
    kl: np.ndarray
    pairwise_tv: np.ndarray
    unsteered_tv: float
    limit_top_tokens: list
    ce_alphas: np.ndarray
    ce: np.ndarray
    limit_ce: np.ndarray
    parameters: dict

    def mean_kl(self) -> np.ndarray:
        """KL averaged over prompts, shape ``(2, L, A)``."""
        return self.kl.mean(axis=2)

    def kl_slopes(self, tail: int = 3) -> np.ndarray:
        """Log-log slopes of :meth:`mean_kl` over the ``tail`` largest ``|α|`` (``-2`` expected), shape ``(2, L)``."""
        mean_kl = self.mean_kl()
        return np.array([[loglog_slope(self.alphas, mean_kl[si, li], tail) for li in range(len(self.layers))]
                         for si in range(2)])

    @property
    def delta_ce(self) -> np.ndarray:
        """``ΔCE(α) = CE(α) - CE(0)`` on :attr:`ce_alphas`."""
        return self.ce - self.ce[np.flatnonzero(self.ce_alphas == 0.0)[0]]

    @property
    def plateau(self) -> np.ndarray:
        """``CE(±∞) - CE(0)``: the plateaus of ``ΔCE`` predicted by Prop. 4.1, ``[+, -]``."""
        return self.limit_ce - self.ce[np.flatnonzero(self.ce_alphas == 0.0)[0]]


def _text_ids(lm: LoadedModel, text: str) -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    if ids.shape[1] < 2:
        raise ValueError(f"text {text!r} has fewer than two tokens: cross-entropy needs a token to predict")
    return ids


def texts_cross_entropy(lm: LoadedModel, texts: Sequence[str], vector, alphas: Sequence[float],
                        layer: int | None = None,
                        alphas_per_forward: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``CE(α)`` of ``texts`` with ``α v`` added at every position, and the plateaus ``CE(±∞)`` (Prop. 4.1).

    ``CE(α) = -(1/#tokens) Σ_texts Σ_t log σ_{z_{t+1}}(y_t(α))`` over every predicted token of every text (the
    LLM counterpart of Def. 3.7's ``CE(f_α)``), from :func:`steerlib.steering.steered_target_log_probs`, one text
    at a time (no padding); ``CE(±∞)`` scores the same tokens with ``σ(LN(±v)Wᵀ)``. ``alphas_per_forward`` α
    values go through the later blocks at once (default all).

    Returns:
        ``(ce, limit_ce)`` of shapes ``(len(alphas),)`` and ``(2,)`` (``[+, -]``).
    """
    v, layer = resolve_vector(lm, vector, layer)
    total, limit_total, count = np.zeros(len(alphas)), np.zeros(2), 0
    for text in check_texts(texts, "texts"):
        ids = _text_ids(lm, text)
        log_probs = steered_target_log_probs(lm, ids, v, alphas, layer=layer, alphas_per_forward=alphas_per_forward)
        total -= log_probs.double().sum(dim=(1, 2)).cpu().numpy()
        for index, sign in enumerate(SIGNS):
            limit_total[index] -= float(limit_target_log_probs(lm, ids, v, sign).sum())
        count += ids.shape[1] - 1
    return total / count, limit_total / count


def run(lm: LoadedModel, vectors: Mapping[int, object], params: LargeAlphaParameters,
        progress: bool = True, alphas_per_forward: int | None = None) -> LargeAlphaSweep:
    """Measure how fast the steered next-token distribution reaches ``σ(LN(±v)Wᵀ)`` (Prop. 4.1).

    For every layer ``ℓ`` (with its own vector ``v^(ℓ)``), prompt and ``α = ±|α|``, computes the last-position
    log-probabilities ``log σ(y(α))`` with the α-batched engine of :mod:`steerlib.steering`, then their KL
    divergence to the limit and the spread between prompts; then the cross-entropy curve of the prompts at
    ``params.ce_layer`` (:func:`texts_cross_entropy`).

    Args:
        lm: the model.
        vectors: layer -> steering vector (a ``SteeringVector`` or a 1-D tensor) for that layer.
        params: prompts, grids and positions (:class:`LargeAlphaParameters`).
        progress: show a progress bar over layers and prompts.
        alphas_per_forward: α values per forward through the blocks after the steered one (default all at
            once); lower it when memory is short.
    """
    if not vectors:
        raise ValueError("vectors is empty: give {layer: steering vector}")
    layers = sorted(lm.check_layer(layer) for layer in vectors)
    magnitudes = np.asarray(params.alphas)
    signed = np.concatenate([magnitudes, -magnitudes])
    n_a, prompts = magnitudes.size, list(params.prompts)
    kl = np.zeros((2, len(layers), len(prompts), n_a))
    pairwise_tv = np.zeros((2, len(layers), n_a))
    top_tokens: list[list[list[str]]] = [[], []]
    unsteered = []
    steps = tqdm(total=len(layers) * len(prompts), desc="large-α sweep", disable=not progress)
    for li, layer in enumerate(layers):
        v, _ = resolve_vector(lm, vectors[layer], layer)
        limits = [limit_logits(lm, v.cpu(), sign) for sign in SIGNS]
        for si, limit in enumerate(limits):
            top_tokens[si].append([lm.tokenizer.decode([t]) for t in torch.topk(limit, 3).indices.tolist()])
        per_prompt = []
        for pi, prompt in enumerate(prompts):
            alphas = np.concatenate([signed, [0.0]]) if li == 0 else signed
            log_probs = steered_next_token_log_probs(lm, prompt, v, alphas, layer=layer,
                                                     positions=params.positions,
                                                     alphas_per_forward=alphas_per_forward).cpu()
            if li == 0:
                unsteered.append(log_probs[-1])
            per_prompt.append(log_probs[:2 * n_a])
            for si, limit in enumerate(limits):
                kl[si, li, pi] = kl_divergence(log_probs[si * n_a:(si + 1) * n_a], limit).numpy()
            steps.update()
        stacked = torch.stack(per_prompt)  # (P, 2A, V)
        for si in range(2):
            for ai in range(n_a):
                pairwise_tv[si, li, ai] = max_pairwise_distance(stacked[:, si * n_a + ai], "tv")
    steps.close()
    ce_magnitudes = np.asarray(params.ce_alphas)
    ce_alphas = np.concatenate([-ce_magnitudes[::-1], [0.0], ce_magnitudes])
    ce, limit_ce = (texts_cross_entropy(lm, prompts, vectors[params.ce_layer], ce_alphas, params.ce_layer,
                                        alphas_per_forward)
                    if ce_magnitudes.size else (np.zeros(1), np.full(2, np.nan)))
    parameters = {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "prompts": prompts,
                  "positions": params.positions, "ce_layer": params.ce_layer,
                  "vector_norms": {str(layer): float(resolve_vector(lm, vectors[layer], layer)[0].norm())
                                   for layer in layers}}
    return LargeAlphaSweep(alphas=magnitudes, layers=np.array(layers), kl=kl, pairwise_tv=pairwise_tv,
                           unsteered_tv=max_pairwise_distance(torch.stack(unsteered), "tv"),
                           limit_top_tokens=top_tokens, ce_alphas=ce_alphas, ce=ce, limit_ce=limit_ce,
                           parameters=parameters)


def load_or_run(lm: LoadedModel, vectors: Mapping[int, object], params: LargeAlphaParameters,
                folder: str | os.PathLike, progress: bool = True,
                alphas_per_forward: int | None = None) -> LargeAlphaSweep:
    """:func:`run`, saved under ``folder`` as ``large-alpha-<key>.npz`` and read back when it exists
    (``alphas_per_forward`` only splits the work: it is not part of the key)."""
    key = content_key(lm.name, str(lm.dtype), {str(k): vectors[k] for k in sorted(vectors)}, params)
    return load_or_compute(Path(folder) / f"large-alpha-{key}.npz",
                           lambda: run(lm, vectors, params, progress, alphas_per_forward),
                           LargeAlphaSweep)
