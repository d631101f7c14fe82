"""Steering vectors of a real transformer from prompt sets: difference of means (Eq. (3), Sec. 4), with their
metadata, and the model's log-odds ``M`` (Def. 3.2, App. A) from the same prompts.

For a text ``j``, ``h_j^(ℓ)`` is the token-wise mean of the residual stream at the output of block ``ℓ``
(the model's ``hidden_states[ℓ + 1]``) over the text's tokens (Sec. 4-5). The steering vector is

    v^(ℓ) = (1/|P|) Σ_{j∈P} h_j^(ℓ) − (1/|N|) Σ_{j∈N} h_j^(ℓ)          (Eq. (3))

computed for every layer from one forward pass over P and one over N, in padded batches whose padding is
masked out (left or right padding give the same vectors as one text at a time). The model's log-odds
``M(z) = mean_P log p(z|c) − mean_N log p(z|c)`` use the next-token distribution at the last position of the
same texts, from the same forward pass.

First position. Llama-family models (SmolLM2 included) put a massive activation on the first position of
every sequence, whatever the token. Averaged into ``h_j`` with weight ``1/T_j``, it adds to ``v`` a term that
depends on the lengths of the texts in P and N rather than on the concept. Measured on SmolLM2-135M-Instruct
(``benchmarks/sweeps.py --first-position``, 32 + 32 texts of the "apathetic" prompt set, N random): up to
block 10 the first position is 1-10 times the median token norm and both policies agree (‖v‖ ratio
0.95-0.99, cosine > 0.98); from block 11 on it is 100-170 times larger, and including it multiplies ‖v‖ by
3.4 at block 11 and 2.5 at the middle block 15, where the two vectors have cosine 0.40 only; the effect fades
towards the last blocks (ratio 0.97, cosine 0.997 at block 29). The default ``first_position="exclude"``
therefore drops the first token of every text from its mean; ``"include"`` keeps it, as a plain mean would.
Steering itself adds ``α v`` to every position, the first included (see :mod:`steerlib.steering`).

Prompt sets. The saved sets of ``data/prompt_sets`` (:mod:`steerlib.prompts`) are read once per model: the
per-text means of every block and the last-position log-probabilities are cached (:func:`prompt_set_activations`,
keyed by the model, its dtype and the texts), after which vectors of any layer, bootstrap resamplings of P and N
(App. A error bars) and log-odds cost nothing.

Taught in the chapter "Steering vectors from generated prompt sets" (``book/llm/steering_vectors.md``).

Example:
    >>> lm = load_model()
    >>> vectors = concept_vectors(lm, "joy", "random", n_texts=32, folder="results/activations")
    >>> v = vectors[15]                                  # a SteeringVector for block 15
    >>> v.save("results/joy-15.safetensors"); SteeringVector.load("results/joy-15.safetensors")
    >>> M = concept_log_odds(lm, "joy", "random", 32, "results/activations")
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from steerlib.models import (LoadedModel, check_texts, last_position_log_probs, padded_batch, read_blocks,
                             record_block_outputs)
from steerlib.prompts import load_prompt_set
from steerlib.store import Result, atomic_write, content_key, load_or_compute

FirstPosition = Literal["exclude", "include"]
FIRST_POSITIONS = ("exclude", "include")
SETTINGS = ("random", "contrastive")
NEGATIVE_KIND = {"random": "negative_random", "contrastive": "negative_contrastive"}
"""The prompt-set kind that plays N in each setting (Sec. 4)."""


def check_setting(setting: str) -> str:
    """Return ``setting`` if it is ``"random"`` or ``"contrastive"``, else a ``ValueError``."""
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r}: use 'random' (N from an empty prompt) or 'contrastive' "
                         "(N from the negated concept).")
    return setting


def token_mean_activations(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: Sequence[int] | None = None,
    first_position: FirstPosition = "exclude",
    batch_size: int = 8,
    padding_side: str = "left",
    progress: bool = True,
) -> torch.Tensor:
    """``h_j^(ℓ)``: the token-wise mean residual stream of each text at the output of each block (Sec. 4).

    Args:
        lm: the model.
        texts: the texts (prompts or generations).
        layers: blocks to read (default all); all are read in the same forward pass.
        first_position: ``"exclude"`` (default) drops each text's first token from the mean, ``"include"``
            keeps it (see the module docstring).
        batch_size: texts per forward pass.
        padding_side: ``"left"`` or ``"right"``; padding is masked, so the result does not depend on it.
        progress: show a progress bar over batches.

    Returns:
        fp32 CPU tensor of shape ``(len(texts), len(layers), hidden_size)``.
    """
    layers = lm.check_layers(layers)

    def token_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        weights = keep.to(torch.float32).unsqueeze(-1)
        return ((hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)).cpu()

    return torch.stack(read_blocks(lm, texts, layers, token_mean, first_position, batch_size, padding_side,
                                   progress), dim=1)


@dataclass
class SteeringVector:
    """A steering vector ``v`` for one block of one model, with what made it.

    Args:
        vector: ``v``, fp32, shape ``(hidden_size,)``.
        model_name: ``LoadedModel.name`` of the model it was computed on.
        layer: the block whose output it was read from (and, by default, is steered).
        concept: the target concept (e.g. ``"joy"``).
        setting: ``"random"`` (N = the model's own unprompted text) or ``"contrastive"`` (N = the negated concept).
        n_pos, n_neg: ``|P|`` and ``|N|``.
        first_position: how the first token of each text was treated (``"exclude"`` or ``"include"``).
        normalised: whether ``v`` was scaled to unit norm.
        raw_norm: ``‖v‖`` of the difference of means before any normalisation.
    """

    vector: torch.Tensor
    model_name: str
    layer: int
    concept: str
    setting: str
    n_pos: int
    n_neg: int
    first_position: str = "exclude"
    normalised: bool = False
    raw_norm: float = float("nan")

    def __post_init__(self):
        self.vector = torch.as_tensor(self.vector).detach().to(device="cpu", dtype=torch.float32)
        if self.vector.ndim != 1:
            raise ValueError(f"a steering vector is 1-D, got shape {tuple(self.vector.shape)}.")
        check_setting(self.setting)
        if self.first_position not in FIRST_POSITIONS:
            raise ValueError(f"first_position={self.first_position!r}: use 'exclude' or 'include'.")
        if self.raw_norm != self.raw_norm:
            self.raw_norm = float(self.vector.norm())

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])

    @property
    def norm(self) -> float:
        """``‖v‖`` of the stored vector (1 when normalised)."""
        return float(self.vector.norm())

    def normalise(self) -> SteeringVector:
        """A copy scaled to unit norm (App. A "normalised v"); ``raw_norm`` keeps the original norm."""
        norm = self.vector.norm()
        if float(norm) == 0.0:
            raise ValueError("cannot normalise a zero vector: P and N have the same mean activation.")
        return replace(self, vector=self.vector / norm, normalised=True)

    def check_model(self, lm: LoadedModel, layer: int | None = None) -> None:
        """Raise a ``ValueError`` unless this vector belongs to ``lm`` and fits the width of block ``layer``."""
        if self.model_name != lm.name:
            raise ValueError(f"this steering vector was computed on {self.model_name!r}, not {lm.name!r}: "
                             "compute one on this model with steering_vectors(lm, ...).")
        if self.hidden_size != lm.hidden_size:
            raise ValueError(f"this steering vector has size {self.hidden_size} but the blocks of {lm.name} have "
                             f"width {lm.hidden_size}: compute one on this model.")
        lm.check_layer(self.layer if layer is None else layer)

    def metadata(self) -> dict:
        """Everything but the tensor, as JSON-ready values."""
        return {key: value for key, value in asdict(self).items() if key != "vector"}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vector and its metadata to one safetensors file, atomically; returns the path."""
        return save_steering_vectors({self.layer: self}, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        """Read a vector written by :meth:`save`."""
        vectors = load_steering_vectors(path)
        if len(vectors) != 1:
            raise ValueError(f"{path} holds vectors for layers {sorted(vectors)}: use load_steering_vectors.")
        return next(iter(vectors.values()))


def _tensor_checksum(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def save_steering_vectors(vectors: dict[int, SteeringVector], path: str | os.PathLike) -> Path:
    """Write several vectors (e.g. one per layer) to one safetensors file with their metadata and checksums,
    atomically; returns the path."""
    from safetensors.torch import save_file

    if not vectors:
        raise ValueError("no vectors to save.")
    tensors = {f"layer_{layer}": vector.vector.contiguous() for layer, vector in vectors.items()}
    fields = {str(layer): vector.metadata() | {"checksum": _tensor_checksum(vector.vector)}
              for layer, vector in vectors.items()}
    metadata = {"steerlib": json.dumps(fields)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_steering_vectors(path: str | os.PathLike) -> dict[int, SteeringVector]:
    """Read vectors written by :func:`save_steering_vectors` or :meth:`SteeringVector.save`; a ``ValueError`` for a
    missing, unreadable or altered file (a vector whose bytes changed no longer matches its checksum)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise ValueError(f"no steering vector file at {path}: compute and save one first.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = (handle.metadata() or {}).get("steerlib")
            if metadata is None:
                raise ValueError(f"{path} is not a steerlib steering-vector file (no 'steerlib' metadata).")
            fields = json.loads(metadata)
            tensors = {layer: handle.get_tensor(f"layer_{layer}") for layer in fields}
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable steering-vector file ({error}): compute the vector again.") \
            from error
    vectors = {}
    for layer, entry in fields.items():
        checksum = entry.pop("checksum", None)
        if checksum is not None and checksum != _tensor_checksum(tensors[layer]):
            raise ValueError(f"{path}: the vector of layer {layer} no longer matches its checksum (the file was "
                             "altered): compute the vector again.")
        vectors[int(layer)] = SteeringVector(vector=tensors[layer], **entry)
    return vectors


def vectors_from_activations(
    positive_activations: torch.Tensor,
    negative_activations: torch.Tensor,
    layers: Sequence[int],
    model_name: str,
    concept: str,
    setting: str,
    first_position: FirstPosition = "exclude",
    normalise: bool = False,
) -> dict[int, SteeringVector]:
    """Eq. (3) from per-text means ``(n, len(layers), d)`` as returned by :func:`token_mean_activations`."""
    if positive_activations.ndim != 3 or positive_activations.shape[1:] != negative_activations.shape[1:]:
        raise ValueError(f"activations of shapes {tuple(positive_activations.shape)} and "
                         f"{tuple(negative_activations.shape)} do not match: both must be (texts, layers, hidden).")
    if positive_activations.shape[1] != len(layers):
        raise ValueError(f"{positive_activations.shape[1]} layers of activations for {len(layers)} layer indices.")
    difference = positive_activations.float().mean(dim=0) - negative_activations.float().mean(dim=0)
    vectors = {}
    for row, layer in enumerate(layers):
        vector = SteeringVector(difference[row], model_name, int(layer), concept, setting,
                                n_pos=int(positive_activations.shape[0]), n_neg=int(negative_activations.shape[0]),
                                first_position=first_position)
        vectors[int(layer)] = vector.normalise() if normalise else vector
    return vectors


def steering_vectors(
    lm: LoadedModel,
    positive: Sequence[str],
    negative: Sequence[str],
    concept: str,
    setting: str,
    layers: Sequence[int] | None = None,
    normalise: bool = False,
    first_position: FirstPosition = "exclude",
    batch_size: int = 8,
    progress: bool = True,
) -> dict[int, SteeringVector]:
    """Difference-of-means vectors ``v^(ℓ)`` (Eq. (3)) for every requested block, from texts P and N.

    Args:
        lm: the model.
        positive: P, texts that express the concept.
        negative: N, texts that do not (``setting="random"``) or express its opposite (``"contrastive"``).
        concept: name of the concept, recorded in the metadata.
        setting: ``"random"`` or ``"contrastive"``.
        layers: blocks (default all, in one forward pass per batch).
        normalise: scale each ``v`` to unit norm (App. A); ``raw_norm`` keeps the original norm.
        first_position: ``"exclude"`` (default) or ``"include"`` the first token of each text in its mean.
        batch_size: texts per forward pass.
        progress: show progress bars.
    """
    positive = check_texts(positive, "positive (P)")
    negative = check_texts(negative, "negative (N)")
    layers = lm.check_layers(layers)
    check_setting(setting)
    positive_activations = token_mean_activations(lm, positive, layers, first_position, batch_size, progress=progress)
    negative_activations = token_mean_activations(lm, negative, layers, first_position, batch_size, progress=progress)
    return vectors_from_activations(positive_activations, negative_activations, layers, lm.name, concept, setting,
                                    first_position, normalise)


def bootstrap_vectors(
    positive_activations: torch.Tensor,
    negative_activations: torch.Tensor,
    layers: Sequence[int],
    model_name: str,
    concept: str,
    setting: str,
    n_resamples: int = 5,
    seed: int = 0,
    first_position: FirstPosition = "exclude",
    normalise: bool = False,
) -> list[dict[int, SteeringVector]]:
    """Vectors from ``n_resamples`` bootstrap resamplings of P and N (App. A error bars).

    Each resampling draws ``|P|`` texts from P and ``|N|`` from N with replacement and applies Eq. (3) to the
    per-text means (so the model is not run again). Sweep each resampled vector and report mean ± std.
    """
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1.")
    generator = np.random.default_rng(seed)
    resampled = []
    for _ in range(n_resamples):
        pos = torch.as_tensor(generator.integers(0, positive_activations.shape[0], positive_activations.shape[0]))
        neg = torch.as_tensor(generator.integers(0, negative_activations.shape[0], negative_activations.shape[0]))
        resampled.append(vectors_from_activations(positive_activations[pos], negative_activations[neg], layers,
                                                  model_name, concept, setting, first_position, normalise))
    return resampled


@dataclass
class PromptSetActivations(Result):
    """What one forward pass over the first ``n_texts`` texts of a prompt set gives, kept for every block.

    Args:
        means_without_first: per-text token means without the first position, ``(n, n_layers, d)``.
        first: the first position's state, ``(n, n_layers, d)``.
        counts: tokens in each mean, ``(n,)``; with the first position included the mean of a text of ``T``
            tokens is ``((T - 1) · mean_without + h_first) / T``, so both policies come from one pass.
        mean_last_log_probs: ``(1/n) Σ_j log p(·|c_j)`` at the last position of the texts, float64,
            ``(vocabulary,)``: what the log-odds of Def. 3.2 need (one row, not one per text, which on a
            262k-token vocabulary and 500 texts would be half a gigabyte).
        parameters: model, dtype, concept, kind, size.
    """

    means_without_first: np.ndarray
    first: np.ndarray
    counts: np.ndarray
    mean_last_log_probs: np.ndarray
    parameters: dict

    def means(self, first_position: FirstPosition = "exclude") -> torch.Tensor:
        """``h_j^(ℓ)`` of every text and block, ``(n, n_layers, d)``, with or without the first position."""
        means = torch.from_numpy(self.means_without_first)
        if first_position == "exclude":
            return means
        if first_position != "include":
            raise ValueError(f"first_position={first_position!r}: use 'exclude' or 'include'.")
        others = torch.from_numpy(self.counts).reshape(-1, 1, 1)
        return (means * others + torch.from_numpy(self.first)) / (others + 1)


def _compute_set(lm: LoadedModel, texts: list[str], parameters: dict, batch_size: int,
                 progress: bool) -> PromptSetActivations:
    """Run ``texts`` sorted by length (less padding, computed then masked) and keep what every block gives."""
    lengths = [len(lm.tokenizer(text)["input_ids"]) for text in texts]
    if min(lengths) < 2:
        raise ValueError(f"a text of the {parameters['kind']} set of {parameters['concept']!r} has fewer than two "
                         "tokens: nothing is left once the first position is set aside; remove it from the set")
    order = sorted(range(len(texts)), key=lambda j: lengths[j])
    d = lm.hidden_size

    def reduce(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Mean over the kept tokens, the first token's state, the last position's state, the count."""
        weights = keep.to(torch.float32).unsqueeze(-1)
        count = weights.sum(dim=1)
        mean = (hidden.float() * weights).sum(dim=1) / count
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        first = hidden[rows, keep.to(torch.float32).argmax(dim=1) - 1].float()  # left padding: just before
        return torch.cat([mean, first, hidden[:, -1].float(), count], dim=-1).cpu()

    per_layer = read_blocks(lm, [texts[j] for j in order], list(range(lm.n_layers)), reduce, "exclude",
                            batch_size, "left", progress)
    stacked = torch.stack(per_layer, dim=1)  # (n, layers, 3d + 1), sorted by length
    unsort = torch.empty(len(texts), dtype=torch.long)
    unsort[torch.tensor(order)] = torch.arange(len(texts))
    stacked = stacked[unsort]
    last = stacked[:, -1, 2 * d:3 * d]
    total = torch.zeros(lm.unembedding.weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        for chunk in last.split(64):  # at most 64 rows of vocabulary-wide logits at once
            log_probs = lm.logits(chunk.to(device=lm.device, dtype=lm.dtype)).float().log_softmax(dim=-1)
            total += log_probs.double().sum(dim=0).cpu()
    return PromptSetActivations(stacked[:, :, :d].numpy(), stacked[:, :, d:2 * d].numpy(),
                                stacked[:, 0, -1].numpy(), (total / len(texts)).numpy(), parameters)


def prompt_set_activations(
    lm: LoadedModel,
    concept: str,
    kind: str,
    n_texts: int,
    folder: str | os.PathLike,
    batch_size: int = 8,
    progress: bool = True,
    prompt_folder: str | os.PathLike | None = None,
) -> PromptSetActivations:
    """Per-text means at every block and last-position log-probabilities of a prompt set, loaded or computed.

    Saved under ``folder`` with a key of the model, its dtype and the texts themselves, so another dtype or an
    edited prompt set is computed anew.

    Args:
        lm: the model.
        concept: the concept whose prompt-set file is read (``data/prompt_sets/<concept>.jsonl``).
        kind: ``"positive"``, ``"negative_random"`` or ``"negative_contrastive"``.
        n_texts: how many texts (the first ones of the file); the file must hold at least that many.
        folder: cache folder.
        batch_size: texts per forward pass.
        progress: show a progress bar.
        prompt_folder: folder of the prompt-set files (default ``data/prompt_sets/``).
    """
    if n_texts < 1:
        raise ValueError(f"n_texts must be at least 1, got {n_texts}")
    texts = load_prompt_set(concept, kind, prompt_folder)
    if len(texts) < n_texts:
        raise ValueError(f"the {kind} prompt set of {concept!r} has {len(texts)} texts, fewer than n_texts = "
                         f"{n_texts}: lower n_texts or generate more with steerlib.prompts.generate_prompt_sets")
    texts = texts[:n_texts]
    parameters = {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "concept": concept, "kind": kind,
                  "n_texts": n_texts}
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{lm.name}-{concept}-{kind}-n{n_texts}")
    path = Path(folder) / f"{name}-{content_key(parameters, texts)}.npz"
    return load_or_compute(path, lambda: _compute_set(lm, texts, parameters, batch_size, progress),
                           PromptSetActivations)


def _set_pair(lm, concept, setting, n_texts, folder, progress, prompt_folder):
    negative_kind = NEGATIVE_KIND[check_setting(setting)]
    return tuple(prompt_set_activations(lm, concept, kind, n_texts, folder, progress=progress,
                                        prompt_folder=prompt_folder) for kind in ("positive", negative_kind))


def concept_vectors(
    lm: LoadedModel,
    concept: str,
    setting: str,
    n_texts: int,
    folder: str | os.PathLike,
    layers: Sequence[int] | str | None = None,
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
        layers: blocks to return: indices or ``"early"``/``"middle"``/``"last"``, or ``None`` for all.
        first_position: ``"exclude"`` (default) or ``"include"`` (module docstring).
        normalise: scale each vector to unit norm (App. A, Fig. A.1).
        progress: show progress bars when computing.
        prompt_folder: folder of the prompt-set files (default ``data/prompt_sets/``).
    """
    layers = lm.check_layers(layers)
    positive, negative = _set_pair(lm, concept, setting, n_texts, folder, progress, prompt_folder)
    return vectors_from_activations(positive.means(first_position)[:, layers], negative.means(first_position)[:, layers],
                                    layers, lm.name, concept, setting, first_position, normalise)


def concept_bootstrap_vectors(
    lm: LoadedModel,
    concept: str,
    setting: str,
    n_texts: int,
    folder: str | os.PathLike,
    layers: Sequence[int] | str | None = None,
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
    layers = lm.check_layers(layers)
    positive, negative = _set_pair(lm, concept, setting, n_texts, folder, progress, prompt_folder)
    return bootstrap_vectors(positive.means(first_position)[:, layers], negative.means(first_position)[:, layers],
                             layers, lm.name, concept, setting, n_resamples, seed, first_position, normalise)


LogOddsPositions = Literal["last", "all"]


def all_positions_mean_log_probs(lm: LoadedModel, texts: Sequence[str], layer: int | None = None,
                                 batch_size: int = 8) -> np.ndarray:
    """``(1/n) Σ_j (1/T_j) Σ_t log p(· | c_{j,≤t})``: the next-token log-probabilities after every prefix of each
    text (every real position, padding excluded), averaged over the text's ``T_j`` positions, then over the
    texts; float64, ``(vocabulary,)``. With ``layer``, read from that block through the final norm and the
    unembedding, as :func:`steerlib.models.last_position_log_probs`."""
    texts = check_texts(texts, "texts")
    stop_at = lm.n_layers - 1 if layer is None else lm.check_layer(layer)
    total = torch.zeros(lm.unembedding.weight.shape[0], dtype=torch.float64)
    for start in range(0, len(texts), batch_size):
        batch = padded_batch(lm, texts[start:start + batch_size], "left")
        hidden = record_block_outputs(lm, batch, [stop_at], lambda h: h)[stop_at]
        mask = batch["attention_mask"].bool()
        weights = (1.0 / mask.sum(dim=1, keepdim=True).double()).expand_as(mask)[mask].cpu()
        rows = hidden[mask]
        with torch.no_grad():
            for chunk, weight in zip(rows.split(256), weights.split(256)):  # 256 rows of vocabulary-wide logits
                log_probs = lm.logits(chunk).float().log_softmax(dim=-1).double().cpu()
                total += (weight[:, None] * log_probs).sum(dim=0)
    return (total / len(texts)).numpy()


def log_odds(lm: LoadedModel, positive: Sequence[str], negative: Sequence[str], layer: int | None = None,
             batch_size: int = 8, positions: LogOddsPositions = "last") -> np.ndarray:
    """The model's log-odds ``M(z) = mean_{P} log p(z|c) − mean_{N} log p(z|c)`` (Def. 3.2, App. A).

    ``p(· | c)`` is the model's next-token distribution at the last position of each prompt (``positions="last"``,
    the book's definition), or after every prefix of it, averaged over its positions (``"all"``,
    :func:`all_positions_mean_log_probs`). With ``layer``, the logit lens at that block (see
    :func:`steerlib.models.last_position_log_probs`). With ``|P| = |N| = q`` the last-position form is
    Def. 3.2's ``(1/q) log(Π_P p / Π_N p)``. Returns a float64 array of size ``vocabulary``.
    """
    if positions == "all":
        return (all_positions_mean_log_probs(lm, positive, layer, batch_size)
                - all_positions_mean_log_probs(lm, negative, layer, batch_size))
    if positions != "last":
        raise ValueError(f"positions={positions!r}: use 'last' or 'all'.")
    positive_log_probs = last_position_log_probs(lm, positive, layer, batch_size)
    negative_log_probs = last_position_log_probs(lm, negative, layer, batch_size)
    return (positive_log_probs.double().mean(dim=0) - negative_log_probs.double().mean(dim=0)).numpy()


@dataclass
class MeanLogProbs(Result):
    """:func:`all_positions_mean_log_probs` of a prompt set, saved: ``values`` ``(vocabulary,)`` and the
    parameters (model, dtype, concept, kind, size) that made it."""

    values: np.ndarray
    parameters: dict


def concept_log_odds(lm: LoadedModel, concept: str, setting: str, n_texts: int, folder: str | os.PathLike,
                     progress: bool = True, prompt_folder: str | os.PathLike | None = None,
                     positions: LogOddsPositions = "last") -> np.ndarray:
    """:func:`log_odds` of ``concept`` with P and N of ``setting`` from its saved prompt sets (float64, one entry
    per vocabulary token). ``positions="last"`` (the book's ``M``) reads the cached forward pass of
    :func:`prompt_set_activations`; ``"all"`` averages over every position of the texts, cached under ``folder``
    as well."""
    if positions == "last":
        positive, negative = _set_pair(lm, concept, setting, n_texts, folder, progress, prompt_folder)
        return positive.mean_last_log_probs - negative.mean_last_log_probs
    if positions != "all":
        raise ValueError(f"positions={positions!r}: use 'last' or 'all'.")
    means = []
    for kind in ("positive", NEGATIVE_KIND[check_setting(setting)]):
        texts = load_prompt_set(concept, kind, prompt_folder)[:n_texts]
        if len(texts) < n_texts:
            raise ValueError(f"the {kind} prompt set of {concept!r} has {len(texts)} texts, fewer than n_texts = "
                             f"{n_texts}: lower n_texts")
        parameters = {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "concept": concept,
                      "kind": kind, "n_texts": n_texts, "positions": "all"}
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in f"{lm.name}-{concept}-{kind}-n{n_texts}")
        path = Path(folder) / f"{name}-all-positions-{content_key(parameters, texts)}.npz"
        compute = (lambda texts=texts, parameters=parameters:
                   MeanLogProbs(all_positions_mean_log_probs(lm, texts), parameters))
        means.append(load_or_compute(path, compute, MeanLogProbs).values)
    return means[0] - means[1]
