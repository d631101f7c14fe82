"""Difference-of-means steering vectors of a real transformer (Eq. (3), Sec. 4), with their metadata.

For a text ``j``, ``h_j^(ℓ)`` is the token-wise mean of the residual stream at the output of block ``ℓ``
(the model's ``hidden_states[ℓ + 1]``) over the text's tokens (Sec. 4-5). The steering vector is

    v^(ℓ) = (1/|P|) Σ_{j∈P} h_j^(ℓ) − (1/|N|) Σ_{j∈N} h_j^(ℓ)          (Eq. (3))

computed for every layer from one forward pass over P and one over N, in padded batches whose padding is
masked out (left or right padding give the same vectors as one text at a time).

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

Example:
    >>> lm = load_model()
    >>> vectors = steering_vectors(lm, positive_texts, negative_texts, concept="joy", setting="random")
    >>> v = vectors[15]                                  # a SteeringVector for block 15
    >>> v.save("results/joy-15.safetensors"); SteeringVector.load("results/joy-15.safetensors")
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.models import LoadedModel
from steerlib.steering import record_block_outputs

FirstPosition = Literal["exclude", "include"]
FIRST_POSITIONS = ("exclude", "include")
SETTINGS = ("random", "contrastive")


def _check_first_position(first_position: str) -> str:
    if first_position not in FIRST_POSITIONS:
        raise ValueError(f"first_position={first_position!r}: use 'exclude' (drop the first token of every text "
                         "from the mean, the default) or 'include'.")
    return first_position


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of texts, not one string: wrap it in a list.")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: give at least one text.")
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{what} must contain strings only.")
    return texts


def padded_batch(lm: LoadedModel, texts: Sequence[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` and pad them to one length, with the attention mask and matching position ids.

    Position ids count real tokens only (``cumsum(mask) - 1``), so a padded text sees the same positions as
    when it is run alone, for rotary (Llama) and learned (GPT-2) position embeddings alike.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: use 'left' or 'right'.")
    encoded = [lm.tokenizer(text)["input_ids"] for text in texts]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("a text tokenises to no tokens: remove empty texts.")
    length = max(len(ids) for ids in encoded)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(texts), length), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), length), dtype=torch.long)
    for row, ids in enumerate(encoded):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        mask[row, span] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {name: tensor.to(lm.device) for name, tensor in
            (("input_ids", input_ids), ("attention_mask", mask), ("position_ids", position_ids))}


def _kept_tokens(mask: torch.Tensor, first_position: str) -> torch.Tensor:
    """The tokens averaged into ``h_j``: real (not padding), minus each text's first one when excluded."""
    keep = mask.bool().clone()
    if first_position == "exclude":
        first = mask.argmax(dim=1)
        keep[torch.arange(mask.shape[0], device=mask.device), first] = False
    return keep


def _forward_blocks(
    lm: LoadedModel,
    texts: list[str],
    layers: list[int],
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    first_position: str,
    batch_size: int,
    padding_side: str,
    progress: bool,
) -> list[list[torch.Tensor]]:
    """Run ``texts`` in padded batches; for each batch and each layer, ``reduce(hidden, kept_tokens)``."""
    outputs: list[list[torch.Tensor]] = []
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc="activations", disable=not progress or len(batches) < 2):
        batch = padded_batch(lm, texts[start:start + batch_size], padding_side)
        keep = _kept_tokens(batch["attention_mask"], first_position)
        if not bool(keep.any(dim=1).all()):
            raise ValueError("a text has no token left to average (one token and first_position='exclude'): "
                             "use longer texts or first_position='include'.")
        recorded = record_block_outputs(lm, batch, layers, lambda hidden: reduce(hidden, keep))
        outputs.append([recorded[index] for index in layers])
    return outputs


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
    texts = _check_texts(texts, "texts")
    _check_first_position(first_position)
    layers = list(range(lm.n_layers)) if layers is None else [lm.check_layer(layer) for layer in layers]

    def token_mean(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        weights = keep.to(torch.float32).unsqueeze(-1)
        return ((hidden.float() * weights).sum(dim=1) / weights.sum(dim=1)).cpu()

    batches = _forward_blocks(lm, texts, layers, token_mean, first_position, batch_size, padding_side, progress)
    return torch.cat([torch.stack(per_layer, dim=1) for per_layer in batches])


def token_norms(
    lm: LoadedModel,
    texts: Sequence[str],
    layer: int,
    first_position: FirstPosition = "exclude",
    batch_size: int = 8,
) -> torch.Tensor:
    """``‖h_t‖`` for every kept token of ``texts`` at the output of block ``layer`` (fp32, CPU, 1-D)."""
    texts = _check_texts(texts, "texts")
    _check_first_position(first_position)
    lm.check_layer(layer)

    def norms(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return hidden.float().norm(dim=-1)[keep].cpu()

    batches = _forward_blocks(lm, texts, [layer], norms, first_position, batch_size, "left", progress=False)
    return torch.cat([per_layer[0] for per_layer in batches])


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
        if self.setting not in SETTINGS:
            raise ValueError(f"setting={self.setting!r}: use 'random' or 'contrastive'.")
        _check_first_position(self.first_position)
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


def save_steering_vectors(vectors: dict[int, SteeringVector], path: str | os.PathLike) -> Path:
    """Write several vectors (e.g. one per layer) to one safetensors file, atomically; returns the path."""
    from safetensors.torch import save_file

    if not vectors:
        raise ValueError("no vectors to save.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"layer_{layer}": vector.vector.contiguous() for layer, vector in vectors.items()}
    metadata = {"steerlib": json.dumps({str(layer): vector.metadata() for layer, vector in vectors.items()})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_steering_vectors(path: str | os.PathLike) -> dict[int, SteeringVector]:
    """Read vectors written by :func:`save_steering_vectors` or :meth:`SteeringVector.save`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ValueError(f"no steering vector file at {path}: compute and save one first.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = (handle.metadata() or {}).get("steerlib")
        if metadata is None:
            raise ValueError(f"{path} is not a steerlib steering-vector file (no 'steerlib' metadata).")
        return {int(layer): SteeringVector(vector=handle.get_tensor(f"layer_{layer}"), **fields)
                for layer, fields in json.loads(metadata).items()}


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
    positive = _check_texts(positive, "positive (P)")
    negative = _check_texts(negative, "negative (N)")
    layers = list(range(lm.n_layers)) if layers is None else [lm.check_layer(layer) for layer in layers]
    if setting not in SETTINGS:
        raise ValueError(f"setting={setting!r}: use 'random' or 'contrastive'.")
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
