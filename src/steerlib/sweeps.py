"""Next-token curves ``Δp(z, α)`` of a steered LLM (Def. 3.1, Th. 3.3, Fig. 6) and the model's log-odds (App. A).

A sweep fixes a prompt ``c``, a steering vector ``v`` at block ``ℓ`` and a grid of strengths ``α`` (always
containing 0), and records ``Δp(z | c, α) = σ_z(y(α)) − σ_z(y(0))`` at the last position, computed by the
α-batched forward of :mod:`steerlib.steering`. Theorem 3.3 predicts three shapes for these curves: a bump
(rise then fall) for most tokens, increasing for the tokens of maximal log-odds, decreasing for those of
minimal log-odds; Prop. 4.1 predicts that a few tokens, those of ``σ(LN(±v) Wᵀ)``, dominate at large ``|α|``.

Example:
    >>> sweep = next_token_sweep(lm, "Today I feel", vector, np.linspace(-200, 200, 81))
    >>> sweep.top_tokens("max", k=8)             # the 8 most probable tokens at the largest α
    >>> [c.shape for c in sweep.classify()]      # "bump", "increasing", "decreasing" or "flat"
    >>> sweep.save("results/sweep.npz"); NextTokenSweep.load("results/sweep.npz")
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from steerlib.models import LoadedModel
from steerlib.steering import (Positions, check_positions, mean_residual_norm, resolve_vector,
                               steered_next_token_log_probs)
from steerlib.vectors import SteeringVector, _check_texts, padded_batch

CurveKind = Literal["bump", "increasing", "decreasing", "flat"]


def alpha_grid(alphas: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """The sorted, de-duplicated grid of ``alphas`` with ``0`` inserted if absent (``Δp`` is relative to ``α = 0``)."""
    grid = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if grid.size == 0:
        raise ValueError("the α grid is empty: give at least one steering strength.")
    if not np.all(np.isfinite(grid)):
        raise ValueError("the α grid must contain finite numbers only.")
    return np.unique(np.concatenate([grid, [0.0]]))


def classify_curve(alphas: np.ndarray, delta_p: np.ndarray, tolerance: float = 0.05) -> tuple[CurveKind, float]:
    """The shape of one curve ``α ↦ Δp(z, α)`` on a sorted grid (Th. 3.3) and the ``α`` of its maximum.

    ``"bump"`` when the maximum is inside the grid and exceeds both ends by more than ``tolerance`` times the
    curve's range; otherwise ``"increasing"`` or ``"decreasing"`` by which end is higher; ``"flat"`` when the
    range is below 1e-9. On a finite grid this is what can be seen: a bump whose peak lies beyond the grid
    reads as monotone.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    delta_p = np.asarray(delta_p, dtype=np.float64)
    peak = int(np.argmax(delta_p))
    spread = float(delta_p.max() - delta_p.min())
    if spread < 1e-9:
        return "flat", float(alphas[peak])
    if 0 < peak < len(delta_p) - 1 and delta_p[peak] - max(delta_p[0], delta_p[-1]) > tolerance * spread:
        return "bump", float(alphas[peak])
    return ("increasing" if delta_p[-1] >= delta_p[0] else "decreasing"), float(alphas[peak])


@dataclass
class CurveShape:
    """The classified curve of one token: its shape, the ``α`` and height of its maximum."""

    token_id: int
    token: str
    shape: CurveKind
    peak_alpha: float
    peak_delta_p: float


@dataclass
class NextTokenSweep:
    """``Δp(z, α)`` for one prompt, one vector and a grid of ``α``, with the parameters that made it.

    Args:
        alphas: absolute strengths ``α``, sorted, containing 0.
        alphas_relative: the same grid in units of ``mean‖h‖ / ‖v‖`` (``α_rel = α ‖v‖ / mean‖h‖``).
        reference_norm: ``mean‖h‖`` at the steered layer (over the prompt or a reference set).
        token_ids: the tokens kept (all of the vocabulary, or the union of the top tokens, see
            :func:`next_token_sweep`).
        tokens: their decoded strings.
        p0: ``σ_z(y(0))`` for the kept tokens.
        delta_p: ``Δp(z, α)``, shape ``(len(alphas), len(token_ids))``.
        top_at_max, top_at_min: the ``top_k`` most probable token ids at the largest and smallest ``α``.
        parameters: model, prompt, layer, positions, vector metadata and norm, sweep options.
    """

    alphas: np.ndarray
    alphas_relative: np.ndarray
    reference_norm: float
    token_ids: np.ndarray
    tokens: list[str]
    p0: np.ndarray
    delta_p: np.ndarray
    top_at_max: np.ndarray
    top_at_min: np.ndarray
    parameters: dict = field(default_factory=dict)

    @property
    def probabilities(self) -> np.ndarray:
        """``σ_z(y(α)) = p0 + Δp``, shape ``(len(alphas), len(token_ids))``."""
        return self.p0[None, :] + self.delta_p

    def column(self, token_id: int) -> int:
        """Index of ``token_id`` among the kept tokens."""
        where = np.flatnonzero(self.token_ids == token_id)
        if where.size == 0:
            raise ValueError(f"token {token_id} was not kept in this sweep: pass it in token_ids= when sweeping.")
        return int(where[0])

    def curve(self, token_id: int) -> np.ndarray:
        """``α ↦ Δp(z, α)`` for one token."""
        return self.delta_p[:, self.column(token_id)]

    def top_tokens(self, at: Literal["max", "min"] = "max", k: int | None = None) -> np.ndarray:
        """The most probable token ids at the largest (``"max"``) or smallest (``"min"``) ``α`` (Fig. 6)."""
        if at not in ("max", "min"):
            raise ValueError(f"at={at!r}: use 'max' (largest α) or 'min' (smallest α).")
        top = self.top_at_max if at == "max" else self.top_at_min
        return top if k is None else top[:k]

    def token(self, token_id: int) -> str:
        return self.tokens[self.column(token_id)]

    def classify(self, token_ids: Sequence[int] | None = None, alpha_range: tuple[float, float] | None = None,
                 tolerance: float = 0.05) -> list[CurveShape]:
        """Shapes of the curves (Th. 3.3) of ``token_ids`` (default the top tokens at the largest ``α``).

        Args:
            token_ids: tokens to classify.
            alpha_range: restrict the grid to ``[low, high]``, e.g. ``(0, inf)`` for Fig. 3's ``α >= 0``.
            tolerance: see :func:`classify_curve`.
        """
        token_ids = self.top_at_max if token_ids is None else token_ids
        inside = np.ones(len(self.alphas), dtype=bool)
        if alpha_range is not None:
            inside = (self.alphas >= alpha_range[0]) & (self.alphas <= alpha_range[1])
            if inside.sum() < 3:
                raise ValueError(f"alpha_range {alpha_range} keeps fewer than 3 grid points.")
        shapes = []
        for token_id in token_ids:
            curve = self.curve(int(token_id))[inside]
            shape, peak_alpha = classify_curve(self.alphas[inside], curve, tolerance)
            shapes.append(CurveShape(int(token_id), self.token(int(token_id)), shape, peak_alpha, float(curve.max())))
        return shapes

    def save(self, path: str | os.PathLike) -> Path:
        """Write the sweep and its parameters to one ``.npz`` file, atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, alphas=self.alphas, alphas_relative=self.alphas_relative,
                 reference_norm=np.float64(self.reference_norm), token_ids=self.token_ids,
                 tokens=np.array(self.tokens, dtype=np.str_), p0=self.p0, delta_p=self.delta_p,
                 top_at_max=self.top_at_max, top_at_min=self.top_at_min,
                 parameters=np.array(json.dumps(self.parameters)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NextTokenSweep:
        """Read a sweep written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no sweep file at {path}: compute it with next_token_sweep first.")
        with np.load(path, allow_pickle=False) as data:
            return cls(alphas=data["alphas"], alphas_relative=data["alphas_relative"],
                       reference_norm=float(data["reference_norm"]), token_ids=data["token_ids"],
                       tokens=[str(t) for t in data["tokens"]], p0=data["p0"], delta_p=data["delta_p"],
                       top_at_max=data["top_at_max"], top_at_min=data["top_at_min"],
                       parameters=json.loads(str(data["parameters"])))


def _kept_token_ids(probabilities: torch.Tensor, delta_p: torch.Tensor, zero: int, top_k: int,
                    keep_tokens: int | None, extra: Sequence[int]) -> torch.Tensor:
    """``extra``, the ``top_k`` tokens at the largest, smallest and zero ``α``, then the largest ``max |Δp|``."""
    vocabulary = probabilities.shape[1]
    if keep_tokens is None or keep_tokens >= vocabulary:
        return torch.arange(vocabulary)
    required = [int(t) for t in extra]
    for row in (-1, 0, zero):
        required += probabilities[row].topk(min(top_k, vocabulary)).indices.tolist()
    required = list(dict.fromkeys(required))
    by_change = delta_p.abs().amax(dim=0).topk(min(keep_tokens, vocabulary)).indices.tolist()
    kept = list(dict.fromkeys(required + by_change))
    return torch.tensor(kept[:max(keep_tokens, len(required))])


def next_token_sweep(
    lm: LoadedModel,
    prompt: str,
    vector: SteeringVector | torch.Tensor,
    alphas: Sequence[float] | np.ndarray,
    layer: int | None = None,
    positions: Positions = "all",
    alpha_scale: Literal["absolute", "relative"] = "absolute",
    reference_texts: Sequence[str] | None = None,
    top_k: int = 8,
    keep_tokens: int | None = 64,
    token_ids: Sequence[int] = (),
    batch_size: int | None = None,
) -> NextTokenSweep:
    """``Δp(z | prompt, α)`` over a grid of ``α`` (Def. 3.1, Fig. 6), from one α-batched forward.

    Args:
        lm: the model.
        prompt: the fixed context ``c`` (tokenised with the tokenizer's defaults; apply a chat template first
            if you want one).
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        alphas: the grid; sorted and 0 inserted by :func:`alpha_grid`.
        layer: block whose output is steered; default the vector's layer.
        positions: ``"all"`` or ``"last"`` (App. A, last-token steering).
        alpha_scale: ``"absolute"`` (``alphas`` are ``α``) or ``"relative"`` (``α = α_rel · mean‖h‖ / ‖v‖``).
        reference_texts: texts over which ``mean‖h‖`` is taken (default the prompt); first positions are
            excluded as for the vectors.
        top_k: how many most probable tokens to record at the largest and smallest ``α``.
        keep_tokens: how many token curves to keep: the top tokens at both ends and at ``α = 0``, then the
            largest ``max_α |Δp|``, up to this many (at least the top tokens); ``None`` keeps the whole vocabulary.
        token_ids: tokens always kept (e.g. to compare resampled vectors on the same tokens).
        batch_size: α values per forward pass (default all).
    """
    check_positions(positions)
    if alpha_scale not in ("absolute", "relative"):
        raise ValueError(f"alpha_scale={alpha_scale!r}: use 'absolute' or 'relative'.")
    if top_k < 1:
        raise ValueError("top_k must be at least 1.")
    v, layer = resolve_vector(lm, vector, layer)
    grid = alpha_grid(alphas)
    reference = _check_texts(reference_texts, "reference_texts") if reference_texts is not None else [prompt]
    reference_norm = mean_residual_norm(lm, reference, layer)
    vector_norm = float(v.norm())
    if vector_norm == 0.0:
        raise ValueError("the steering vector is zero: P and N have the same mean activation.")
    unit = reference_norm / vector_norm
    absolute = grid * unit if alpha_scale == "relative" else grid
    log_probs = steered_next_token_log_probs(lm, prompt, v, torch.as_tensor(absolute), layer, positions, batch_size)
    probabilities = log_probs.exp().cpu()
    zero = int(np.flatnonzero(absolute == 0.0)[0])
    delta_p = probabilities - probabilities[zero]
    kept = _kept_token_ids(probabilities, delta_p, zero, top_k, keep_tokens, token_ids)
    vocabulary = probabilities.shape[1]
    metadata = vector.metadata() if isinstance(vector, SteeringVector) else {"layer": layer}
    parameters = {"model": lm.name, "prompt": prompt, "layer": layer, "positions": positions,
                  "alpha_scale": alpha_scale, "top_k": top_k, "keep_tokens": keep_tokens,
                  "vocabulary": vocabulary, "vector": metadata, "vector_norm": vector_norm,
                  "dtype": str(lm.dtype).replace("torch.", ""),
                  "reference": "prompt" if reference_texts is None else f"{len(reference)} texts"}
    return NextTokenSweep(
        alphas=absolute.astype(np.float64),
        alphas_relative=grid if alpha_scale == "relative" else absolute / unit,  # the grid asked for, exactly
        reference_norm=reference_norm,
        token_ids=kept.numpy().astype(np.int64),
        tokens=[lm.tokenizer.decode([int(t)]) for t in kept],
        p0=probabilities[zero, kept].numpy().astype(np.float64),
        delta_p=delta_p[:, kept].numpy().astype(np.float64),
        top_at_max=probabilities[-1].topk(top_k).indices.numpy().astype(np.int64),
        top_at_min=probabilities[0].topk(top_k).indices.numpy().astype(np.int64),
        parameters=parameters,
    )


def sweep_key(lm: LoadedModel, prompt: str, vector, alphas, **options) -> str:
    """A short hash of everything that determines a sweep (model, prompt, vector values, grid, options)."""
    v = vector.vector if isinstance(vector, SteeringVector) else torch.as_tensor(vector)
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": lm.name, "prompt": prompt, "dtype": str(lm.dtype),
                              "alphas": alpha_grid(alphas).tolist(),
                              "layer": vector.layer if isinstance(vector, SteeringVector) else None,
                              "options": {k: (list(o) if isinstance(o, (tuple, list)) else o)
                                          for k, o in sorted(options.items()) if k != "batch_size"}},
                             sort_keys=True, default=str).encode())
    digest.update(v.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_compute_sweep(folder: str | os.PathLike, lm: LoadedModel, prompt: str, vector, alphas,
                          **options) -> NextTokenSweep:
    """:func:`next_token_sweep`, saved under ``folder`` as ``sweep-<key>.npz`` and reused when it exists.

    The key hashes every input (see :func:`sweep_key`), so a changed prompt, vector or grid is recomputed.
    """
    path = Path(folder) / f"sweep-{sweep_key(lm, prompt, vector, alphas, **options)}.npz"
    if path.exists():
        return NextTokenSweep.load(path)
    sweep = next_token_sweep(lm, prompt, vector, alphas, **options)
    sweep.save(path)
    return sweep


def resampled_sweeps(lm: LoadedModel, prompt: str, vectors: Sequence[SteeringVector], alphas,
                     token_ids: Sequence[int], **options) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std of ``Δp(z, α)`` over resampled vectors (App. A error bars), for fixed ``token_ids``.

    Args:
        vectors: e.g. one layer of each :func:`steerlib.vectors.bootstrap_vectors` resampling.
        token_ids: the tokens whose curves are compared (e.g. the top tokens of the full-data sweep).
        options: passed to :func:`next_token_sweep`.

    Returns:
        ``(alphas, mean, std)`` with ``mean`` and ``std`` of shape ``(len(alphas), len(token_ids))``.
    """
    if not vectors:
        raise ValueError("give at least one resampled vector.")
    curves = []
    for vector in vectors:
        sweep = next_token_sweep(lm, prompt, vector, alphas, token_ids=token_ids, **options)
        curves.append(np.stack([sweep.curve(int(t)) for t in token_ids], axis=1))
    stacked = np.stack(curves)
    return sweep.alphas, stacked.mean(axis=0), stacked.std(axis=0)


def last_position_log_probs(lm: LoadedModel, texts: Sequence[str], layer: int | None = None,
                            batch_size: int = 8) -> torch.Tensor:
    """``log p(· | c)`` at the last position of each text, shape ``(len(texts), vocabulary)``, fp32 CPU.

    With ``layer``, the distribution read from the output of that block through the final norm and the
    unembedding (the "logit lens"), which is what steering at that layer pushes on directly.
    """
    from steerlib.steering import record_block_outputs

    texts = _check_texts(texts, "texts")
    stop_at = lm.n_layers - 1 if layer is None else lm.check_layer(layer)
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = padded_batch(lm, texts[start:start + batch_size], "left")
        hidden = record_block_outputs(lm, batch, [stop_at], lambda hidden: hidden[:, -1:])[stop_at]
        with torch.no_grad():
            rows.append(lm.logits(hidden)[:, 0].float().log_softmax(dim=-1).cpu())
    return torch.cat(rows)


def log_odds(lm: LoadedModel, positive: Sequence[str], negative: Sequence[str], layer: int | None = None,
             batch_size: int = 8) -> np.ndarray:
    """The model's log-odds ``M(z) = mean_{P} log p(z|c) − mean_{N} log p(z|c)`` (Def. 3.2, App. A).

    ``p(· | c)`` is the model's next-token distribution at the last position of each prompt (with ``layer``,
    the logit lens at that block, see :func:`last_position_log_probs`). With ``|P| = |N| = q`` this is
    Def. 3.2's ``(1/q) log(Π_P p / Π_N p)``. Returns a float64 array of size ``vocabulary``.
    """
    positive_log_probs = last_position_log_probs(lm, positive, layer, batch_size)
    negative_log_probs = last_position_log_probs(lm, negative, layer, batch_size)
    return (positive_log_probs.double().mean(dim=0) - negative_log_probs.double().mean(dim=0)).numpy()


@dataclass
class LogOddsReport:
    """Where the tokens dominating at large ``|α|`` sit among the log-odds (App. A).

    Args:
        token_ids: the tokens examined.
        log_odds: their ``M(z)``.
        percentiles: share of the vocabulary with ``M`` at most theirs (1 = the maximum, 0 ~ the minimum).
        argmax_token, argmin_token: tokens attaining ``max M`` and ``min M``.
    """

    token_ids: np.ndarray
    log_odds: np.ndarray
    percentiles: np.ndarray
    argmax_token: int
    argmin_token: int

    def extremal(self, top: float = 0.01, side: Literal["max", "min"] = "max") -> np.ndarray:
        """Whether each token lies in the top (``"max"``) or bottom (``"min"``) ``top`` share of ``M``."""
        return self.percentiles >= 1 - top if side == "max" else self.percentiles <= top


def log_odds_report(log_odds_values: np.ndarray, token_ids: Sequence[int]) -> LogOddsReport:
    """Percentiles of ``M(token)`` in the vocabulary, e.g. for ``sweep.top_tokens("max")`` (App. A)."""
    values = np.asarray(log_odds_values, dtype=np.float64)
    token_ids = np.asarray(token_ids, dtype=np.int64)
    ordered = np.sort(values)
    percentiles = np.searchsorted(ordered, values[token_ids], side="right") / len(values)
    return LogOddsReport(token_ids, values[token_ids], percentiles, int(np.argmax(values)), int(np.argmin(values)))
