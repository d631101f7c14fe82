"""Token-averaged activations of the saved prompt sets, computed once per model and reused by the chapters.

Taught in the chapter "Steering vectors from generated prompt sets" (``book/llm/steering_vectors.md``).
Eq. (3) needs, for every text ``j`` of P and N, the token-wise mean ``h_j^(ℓ)`` of the residual stream at
every block ``ℓ`` (Sec. 4). Those means are the only expensive part: once they are known, the steering
vector of any layer, the bootstrap resamplings of P and N (App. A error bars) and the norms per layer are
cheap. This module computes them for the first ``n_texts`` texts of a prompt set
(:func:`steerlib.prompts.load_prompt_set`) and caches them under a folder, one safetensors file per
(model, concept, kind, size, first-position policy).

Example:
    >>> lm = load_model()
    >>> vectors = concept_vectors(lm, "joy", "random", n_texts=32, folder="results/vectors")
    >>> vectors[15].norm                      # ‖v^(15)‖ for joy, N random
    >>> resampled = concept_bootstrap_vectors(lm, "joy", "random", 32, "results/vectors", n_resamples=5)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from steerlib.models import LoadedModel
from steerlib.prompts import load_prompt_set
from steerlib.vectors import SETTINGS, FirstPosition, SteeringVector, bootstrap_vectors, vectors_from_activations

NEGATIVE_KIND = {"random": "negative_random", "contrastive": "negative_contrastive"}
"""The prompt-set kind that plays N in each setting (Sec. 4)."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def activations_path(folder: str | os.PathLike, model_name: str, concept: str, kind: str, n_texts: int) -> Path:
    """Where :func:`prompt_set_activations` caches one prompt set's per-text means (both first-position
    policies) and last-position log-probabilities."""
    return Path(folder) / f"{_slug(model_name)}-{_slug(concept)}-{kind}-n{n_texts}.safetensors"


def prompt_set_activations(
    lm: LoadedModel,
    concept: str,
    kind: str,
    n_texts: int,
    folder: str | os.PathLike,
    first_position: FirstPosition = "exclude",
    batch_size: int = 8,
    progress: bool = True,
    prompt_folder: str | os.PathLike | None = None,
) -> torch.Tensor:
    """``h_j^(ℓ)`` for the first ``n_texts`` texts of a prompt set and every block, loaded or computed.

    Args:
        lm: the model.
        concept: the concept whose prompt-set file is read (``data/prompt_sets/<concept>.jsonl``).
        kind: ``"positive"``, ``"negative_random"`` or ``"negative_contrastive"``.
        n_texts: how many texts (the first ones of the file); the file must hold at least that many.
        folder: cache folder.
        first_position: ``"exclude"`` (default) or ``"include"`` the first token of each text in its mean.
        batch_size: texts per forward pass.
        progress: show a progress bar.
        prompt_folder: folder of the prompt-set files (default ``data/prompt_sets/``).

    Returns:
        fp32 CPU tensor of shape ``(n_texts, lm.n_layers, lm.hidden_size)``.
    """
    return _load_or_compute_set(lm, concept, kind, n_texts, folder, first_position, batch_size, progress,
                                prompt_folder)["activations"]


def prompt_set_last_log_probs(
    lm: LoadedModel,
    concept: str,
    kind: str,
    n_texts: int,
    folder: str | os.PathLike,
    batch_size: int = 8,
    progress: bool = True,
    prompt_folder: str | os.PathLike | None = None,
) -> torch.Tensor:
    """``log p(·|c_j)``, the model's next-token log-probabilities at the last position of each text.

    They come out of the same forward pass as :func:`prompt_set_activations` and are cached with them; they
    give the model's log-odds ``M(z)`` (Def. 3.2, see :func:`steerlib.curves.concept_log_odds`).

    Returns:
        fp32 CPU tensor of shape ``(n_texts, vocabulary)``.
    """
    return _load_or_compute_set(lm, concept, kind, n_texts, folder, "exclude", batch_size, progress,
                                prompt_folder)["last_log_probs"]


def _load_or_compute_set(lm, concept, kind, n_texts, folder, first_position, batch_size, progress,
                         prompt_folder) -> dict[str, torch.Tensor]:
    """Per-text token means at every block and last-position log-probabilities, from one cached forward.

    The cache holds the means without the first position, the first position's state and the token counts,
    so both first-position policies come out of the same pass: with it included, the mean of a text of
    ``T`` tokens is ``((T - 1) · mean_without + h_first) / T``. Texts are run sorted by length, which keeps
    padding (computed, then masked) to a minimum.
    """
    from safetensors.torch import load_file, save_file

    from steerlib.vectors import _check_first_position

    if n_texts < 1:
        raise ValueError(f"n_texts must be at least 1, got {n_texts}")
    _check_first_position(first_position)
    path = activations_path(folder, lm.name, concept, kind, n_texts)
    if path.exists():
        cached = load_file(str(path))
    else:
        cached = _compute_set(lm, concept, kind, n_texts, batch_size, progress, prompt_folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(cached, str(tmp))
        tmp.replace(path)
    activations = cached["means_without_first"]
    if first_position == "include":
        others = cached["counts"].reshape(-1, 1, 1)
        activations = (activations * others + cached["first"]) / (others + 1)
    return {"activations": activations, "last_log_probs": cached["last_log_probs"]}


def _compute_set(lm, concept, kind, n_texts, batch_size, progress, prompt_folder) -> dict[str, torch.Tensor]:
    from steerlib.vectors import _forward_blocks

    texts = load_prompt_set(concept, kind, prompt_folder)
    if len(texts) < n_texts:
        raise ValueError(f"the {kind} prompt set of {concept!r} has {len(texts)} texts, fewer than n_texts = "
                         f"{n_texts}: lower n_texts or generate more with steerlib.prompts.generate_prompt_sets")
    texts = texts[:n_texts]
    lengths = [len(lm.tokenizer(text)["input_ids"]) for text in texts]
    if min(lengths) < 2:
        raise ValueError(f"a text of the {kind} set of {concept!r} has fewer than two tokens: nothing is left "
                         "once the first position is set aside; remove it from the prompt set")
    order = sorted(range(n_texts), key=lambda j: lengths[j])
    d = lm.hidden_size

    def reduce(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Mean over the kept tokens, the first token's state, the last position's state, the count."""
        weights = keep.to(torch.float32).unsqueeze(-1)
        count = weights.sum(dim=1)
        mean = (hidden.float() * weights).sum(dim=1) / count
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        first = hidden[rows, keep.to(torch.float32).argmax(dim=1) - 1].float()  # left padding: just before
        return torch.cat([mean, first, hidden[:, -1].float(), count], dim=-1).cpu()

    batches = _forward_blocks(lm, [texts[j] for j in order], list(range(lm.n_layers)), reduce, "exclude",
                              batch_size, "left", progress)
    stacked = torch.cat([torch.stack(per_layer, dim=1) for per_layer in batches])  # (n, layers, 3d + 1)
    unsort = torch.empty(n_texts, dtype=torch.long)
    unsort[torch.tensor(order)] = torch.arange(n_texts)
    stacked = stacked[unsort]
    with torch.no_grad():
        last = stacked[:, -1, 2 * d:3 * d].to(device=lm.device, dtype=lm.dtype)
        log_probs = lm.logits(last).float().log_softmax(dim=-1).cpu()
    return {"means_without_first": stacked[:, :, :d].contiguous(), "first": stacked[:, :, d:2 * d].contiguous(),
            "counts": stacked[:, 0, -1].contiguous(), "last_log_probs": log_probs.contiguous()}


def _check_setting(setting: str) -> str:
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r}: use 'random' (N from an empty prompt) or 'contrastive' "
                         "(N from the negated concept).")
    return setting


def concept_vectors(
    lm: LoadedModel,
    concept: str,
    setting: str,
    n_texts: int,
    folder: str | os.PathLike,
    layers: list[int] | None = None,
    first_position: FirstPosition = "exclude",
    normalise: bool = False,
    progress: bool = True,
    prompt_folder: str | os.PathLike | None = None,
) -> dict[int, SteeringVector]:
    """Difference-of-means vectors ``v^(ℓ)`` (Eq. (3)) of ``concept`` from its saved prompt sets, cached.

    P is the ``positive`` set, N the ``negative_random`` or ``negative_contrastive`` set (``setting``), each
    cut to its first ``n_texts`` texts; every block's means come from one cached forward pass per set.

    Args:
        lm: the model.
        concept: e.g. ``"joy"``.
        setting: ``"random"`` or ``"contrastive"``.
        n_texts: ``|P| = |N|``.
        folder: cache folder of the activations.
        layers: blocks to return (default all).
        first_position: ``"exclude"`` (default) or ``"include"`` (see :mod:`steerlib.vectors`).
        normalise: scale each vector to unit norm (App. A, Fig. A.1).
        progress: show progress bars when computing.
        prompt_folder: folder of the prompt-set files (default ``data/prompt_sets/``).
    """
    positive, negative = _set_activations(lm, concept, setting, n_texts, folder, first_position, progress,
                                          prompt_folder)
    layers = list(range(lm.n_layers)) if layers is None else [lm.check_layer(layer) for layer in layers]
    return vectors_from_activations(positive[:, layers], negative[:, layers], layers, lm.name, concept, setting,
                                    first_position, normalise)


def concept_bootstrap_vectors(
    lm: LoadedModel,
    concept: str,
    setting: str,
    n_texts: int,
    folder: str | os.PathLike,
    layers: list[int] | None = None,
    n_resamples: int = 5,
    seed: int = 0,
    first_position: FirstPosition = "exclude",
    normalise: bool = False,
    progress: bool = True,
    prompt_folder: str | os.PathLike | None = None,
) -> list[dict[int, SteeringVector]]:
    """Vectors from ``n_resamples`` bootstrap resamplings of P and N (App. A, Fig. A.3), from cached means.

    Arguments as in :func:`concept_vectors`; ``seed`` fixes the resampling.
    """
    positive, negative = _set_activations(lm, concept, setting, n_texts, folder, first_position, progress,
                                          prompt_folder)
    layers = list(range(lm.n_layers)) if layers is None else [lm.check_layer(layer) for layer in layers]
    return bootstrap_vectors(positive[:, layers], negative[:, layers], layers, lm.name, concept, setting,
                             n_resamples, seed, first_position, normalise)


def _set_activations(lm, concept, setting, n_texts, folder, first_position, progress, prompt_folder):
    kind = NEGATIVE_KIND[_check_setting(setting)]
    positive = prompt_set_activations(lm, concept, "positive", n_texts, folder, first_position, progress=progress,
                                      prompt_folder=prompt_folder)
    negative = prompt_set_activations(lm, concept, kind, n_texts, folder, first_position, progress=progress,
                                      prompt_folder=prompt_folder)
    return positive, negative


def early_middle_last(n_layers: int) -> list[int]:
    """An early, a middle and the last block: ``[n/5, n/2, n-1]`` (rounded down), as in Figs. A.7-A.9.

    For the 30 blocks of SmolLM2 this is ``[6, 15, 29]``.
    """
    if n_layers < 3:
        raise ValueError(f"need at least 3 blocks to pick early, middle and last ones, got {n_layers}")
    return [n_layers // 5, n_layers // 2, n_layers - 1]


def residual_norm_profile(lm: LoadedModel, texts: list[str], batch_size: int = 8,
                          progress: bool = True) -> dict[str, np.ndarray]:
    """Mean residual-stream norm at the output of every block, at the first position and at the others.

    One forward pass over ``texts``. The two profiles are the scale against which a steering vector's norm
    ``‖v^(ℓ)‖`` is judged (``α ‖v‖`` must rival ``‖h‖`` before steering does anything) and show the massive
    activation Llama-family models carry at the first position.

    Returns:
        ``{"first": (n_layers,), "others": (n_layers,)}``: the mean over texts of ``‖h_1^(ℓ)‖``, and the mean
        over all other (non-padding) tokens of ``‖h_t^(ℓ)‖``.
    """
    from steerlib.vectors import _check_texts, _forward_blocks

    texts = _check_texts(texts, "texts")

    def norms(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        token_norms = hidden.float().norm(dim=-1)
        first = keep.to(torch.float32).argmax(dim=1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        others = keep.clone()
        others[rows, first] = False
        return torch.stack([token_norms[rows, first].sum(), token_norms[others].sum(),
                            others.sum().to(torch.float32)]).cpu()

    batches = _forward_blocks(lm, texts, list(range(lm.n_layers)), norms, "include", batch_size, "left", progress)
    totals = torch.stack([torch.stack(per_layer) for per_layer in batches]).sum(dim=0).double()  # (layers, 3)
    return {"first": (totals[:, 0] / len(texts)).numpy(), "others": (totals[:, 1] / totals[:, 2]).numpy()}


def cosine_similarity_matrix(vectors: list[torch.Tensor]) -> np.ndarray:
    """Cosine similarities ``<u, v> / (‖u‖ ‖v‖)`` between every pair of vectors, shape ``(n, n)``."""
    if not vectors:
        raise ValueError("give at least one vector")
    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in vectors])
    norms = stacked.norm(dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("a vector is zero: its cosine similarity is undefined")
    unit = stacked / norms
    return (unit @ unit.T).numpy()
