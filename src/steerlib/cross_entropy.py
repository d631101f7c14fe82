"""``ΔCE(α)`` of a steered LLM on a text corpus (Def. 3.7, Th. 3.8, Prop. 4.1; Fig. 7 bottom, Fig. A.13).

Taught in the chapter "Cross-entropy on a real corpus" (``book/llm/cross_entropy.md``).

The corpus is cut into blocks of ``T`` tokens (:func:`steerlib.corpora.chunk_tokens`); every position of every
block is scored as a next-token prediction, so a block gives ``T - 1`` scored tokens and

    CE(α) = -(1/#tokens) Σ_blocks Σ_t log σ_{z_{t+1}}(y_t(α)),        ΔCE(α) = CE(α) - CE(0)   (Def. 3.7)

with ``α v`` added to the output of block ``ℓ`` at every position (Sec. 4). Computing it for many ``α``:

* blocks ``0..ℓ`` run once per batch of text blocks (their output does not depend on ``α``), with the model's
  own forward; the calls of the later blocks are recorded and replayed on the α-batch
  (:func:`steerlib.steering._run_recording`, the same machinery as the next-token sweeps);
* the α-batch ``(A·B, T, d)`` runs through blocks ``ℓ+1..L-1`` (``alpha_batch`` α values at a time), fp16 rows
  rescaled as in :mod:`steerlib.steering`;
* the logits ``(A·B·T, V)`` are never materialised at once: the final norm, the unembedding, the
  log-softmax and the gather of the target token's log-probability run on ``logit_chunk`` rows at a time.

Two predictions are compared with the measurement:

* **local law (Th. 3.8).** Write ``y_t(α)`` for the logits at position ``t`` and ``d_t = ∂y_t/∂α`` at ``α = 0``,
  the per-token steering direction. Differentiating ``CE = mean_t [logsumexp(y_t) - y_{t,z_t}]`` twice,

      ΔCE'(0)  = mean_t ( E_{p_t}[d_t] - d_{t,z_t} )
      ΔCE''(0) = mean_t Var_{p_t}(d_t) + mean_t ( E_{p_t}[y''_t] - y''_{t,z_t} ),     p_t = σ(y_t(0)).

  When the logits move linearly in ``α`` (the UFM: ``f_α(c) = W(h + α v)``, so ``d = Wv``, which equals the
  log-odds ``M`` up to a constant under Assumption 2, Lemma B.2), the second term vanishes and
  ``ΔCE(α) ≈ ΔCE'(0) α + (1/2) mean_t Var_{p_t}(d_t) α²`` — the form of Th. 3.8 with ``π_j -> 1/#tokens``,
  ``p(·|c_j) -> p_t`` and ``M -> d_t``. In the UFM, Assumption 2 also makes ``ΔCE'(0) = 0``; for an LLM it is
  ``0`` only on average over a corpus the model is calibrated on. :func:`derivative_statistics` measures every
  term by central finite differences at a small step, so how well the linear picture holds is a number.
* **plateau (Prop. 4.1).** As ``α -> ±∞`` every position predicts with ``σ(LN(±v) Wᵀ)``, so
  ``CE(±∞) = -(1/#tokens) Σ log σ_{z_{t+1}}(LN(±v) Wᵀ)`` on the same tokens: ``ΔCE`` tends to
  ``CE(±∞) - CE(0)``.

Example:
    >>> lm = load_model()
    >>> blocks = chunk_tokens(load_corpus(), lm.tokenizer, 128)[:32]
    >>> sweep = load_or_compute_cross_entropy("results/ce/joy.npz", lm, blocks, vectors[15], alphas)
    >>> fit = quadratic_fit(sweep.alphas, sweep.delta_ce, max_abs_alpha=0.2 * sweep.unit)
    >>> fit.curvature, sweep.statistics["curvature_linear"], sweep.delta_ce_limit
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.limits import limit_logits
from steerlib.models import LoadedModel
from steerlib.steering import _call_block, _run_recording, _ScaledResidual, resolve_vector
from steerlib.sweeps import alpha_grid

_STATISTICS = ("n_tokens", "ce_zero", "ce_minus", "ce_plus", "variance_d", "slope_terms", "nonlinear_terms",
               "variance_log_odds", "covariance_d_log_odds")


def corpus_blocks(tokenizer, corpus: str = "lee_background", n_tokens: int = 512, block_length: int = 64,
                  seed: int = 0) -> torch.Tensor:
    """Blocks of ``block_length`` token ids holding at least ``n_tokens`` scored tokens, from a real corpus.

    The corpus's token stream (documents separated by the end-of-text token) is cut into consecutive blocks
    (:func:`steerlib.corpora.chunk_tokens`) and ``ceil(n_tokens / (block_length - 1))`` of them are drawn
    without replacement (seeded), kept in corpus order.

    Args:
        tokenizer: the model's tokenizer.
        corpus: a name of :data:`steerlib.corpora.CORPORA` (default the Lee news articles shipped by gensim),
            ``"fineweb"`` (streams FineWeb, needs the dataset hub), or a local ``.jsonl``/``.parquet`` file
            with a ``text`` column.
        n_tokens: scored tokens wanted (the paper: 10^6 of FineWeb).
        block_length: tokens per block ``T``; each block scores ``T - 1`` next-token predictions.
        seed: which blocks are drawn.
    """
    from steerlib.corpora import CORPORA, FINEWEB, chunk_tokens, fineweb_texts, load_corpus

    if block_length < 2 or n_tokens < 1:
        raise ValueError(f"need block_length >= 2 and n_tokens >= 1, got {block_length} and {n_tokens}.")
    n_blocks = -(-n_tokens // (block_length - 1))
    if corpus in CORPORA:
        texts = load_corpus(corpus)
    else:
        source = FINEWEB if corpus == "fineweb" else corpus
        texts = fineweb_texts(n_blocks * block_length, tokenizer, source=source)
    blocks = chunk_tokens(texts, tokenizer, block_length)
    if blocks.shape[0] < n_blocks:
        raise ValueError(f"{corpus!r} gives {blocks.shape[0]} blocks of {block_length} tokens, fewer than the "
                         f"{n_blocks} needed for {n_tokens} tokens: lower n_tokens or give a larger corpus.")
    chosen = np.sort(np.random.default_rng(seed).choice(blocks.shape[0], n_blocks, replace=False))
    return blocks[torch.as_tensor(chosen)]


def _check_blocks(lm: LoadedModel, blocks) -> torch.Tensor:
    blocks = torch.as_tensor(blocks)
    if blocks.ndim != 2 or blocks.shape[0] == 0 or blocks.shape[1] < 2:
        raise ValueError(f"blocks has shape {tuple(blocks.shape)}: give token ids of shape (n_blocks, T) with T >= 2, "
                         "e.g. steerlib.corpora.chunk_tokens(texts, lm.tokenizer, 128).")
    if blocks.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"blocks must hold integer token ids, got dtype {blocks.dtype}.")
    vocabulary = int(lm.unembedding.weight.shape[0])
    if int(blocks.min()) < 0 or int(blocks.max()) >= vocabulary:
        raise ValueError(f"blocks hold token ids outside 0..{vocabulary - 1}: tokenise with {lm.name}'s tokenizer.")
    return blocks.long()


def _expand_over_alphas(value, batch: int, repeats: int):
    """Tile the per-text tensors of a recorded block call (masks) ``repeats`` times along the batch, α-major."""
    if isinstance(value, torch.Tensor):
        if batch > 1 and value.ndim >= 1 and value.shape[0] == batch:
            return value.repeat(repeats, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_expand_over_alphas(item, batch, repeats) for item in value)
    if isinstance(value, list):
        return [_expand_over_alphas(item, batch, repeats) for item in value]
    return value


def _expanded_call(call: tuple[tuple, dict], batch: int, repeats: int) -> tuple[tuple, dict]:
    args, kwargs = call
    return ((args[0],) + _expand_over_alphas(tuple(args[1:]), batch, repeats),
            {key: _expand_over_alphas(value, batch, repeats) for key, value in kwargs.items()})


def steered_residuals(lm: LoadedModel, ids: torch.Tensor, v: torch.Tensor, layer: int, alphas: torch.Tensor,
                      alpha_batch: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The last block's output for every ``α`` and text block, ``alpha_batch`` values of ``α`` at a time.

    Blocks ``0..layer`` run once on ``ids`` (model's own forward, stopped after the last block); blocks
    ``layer+1..L-1`` run on the α-batch with the recorded call arguments. Yields ``(chunk, u, scale)`` where
    ``chunk`` are the α values of this step, ``u`` has shape ``(len(chunk)·B, T, d)`` (α-major: row ``a·B + b``)
    and the true residual stream is ``scale · u`` (``scale = 1`` except for fp16 rows near overflow; the final
    norm removes it).

    Args:
        lm: the model.
        ids: token ids ``(B, T)``, no padding.
        v: fp32 steering direction on ``lm.device``.
        layer: steered block.
        alphas: 1-D fp32 tensor of strengths.
        alpha_batch: α values per forward (default all).
    """
    batch, length = ids.shape
    position_ids = torch.arange(length, device=lm.device)[None]
    hidden, calls = _run_recording(lm, layer, ids.to(lm.device), position_ids)
    alpha_batch = alpha_batch or alphas.numel()
    for start in range(0, alphas.numel(), alpha_batch):
        chunk = alphas[start:start + alpha_batch]
        steered = (hidden.float()[None] + chunk.reshape(-1, 1, 1, 1) * v).reshape(-1, length, hidden.shape[-1])
        residual = _ScaledResidual(steered, lm.dtype)
        for index in range(layer + 1, lm.n_layers):
            call = _expanded_call(calls[index], batch, chunk.numel())
            residual.step(_call_block(lm.blocks[index], call, residual.u))
        yield chunk, residual.u, residual.scale


def _target_log_probs(lm: LoadedModel, u: torch.Tensor, targets: torch.Tensor, logit_chunk: int) -> torch.Tensor:
    """``log σ_{target}(LN(u) Wᵀ)`` for rows ``u (N, d)`` and ``targets (N,)``, ``logit_chunk`` rows at a time."""
    out = torch.empty(u.shape[0], dtype=torch.float32, device=u.device)
    for start in range(0, u.shape[0], logit_chunk):
        rows = slice(start, start + logit_chunk)
        log_probs = lm.logits(u[rows]).float().log_softmax(dim=-1)
        out[rows] = log_probs.gather(-1, targets[rows, None])[:, 0]
    return out


def steered_target_log_probs(
    lm: LoadedModel,
    ids,
    vector,
    alphas: Sequence[float] | torch.Tensor,
    layer: int | None = None,
    alpha_batch: int | None = None,
    logit_chunk: int = 1024,
) -> torch.Tensor:
    """``log σ_{z_{t+1}}(y_t(α))`` at every position ``t < T - 1`` of every text block, for every ``α``.

    Equal (to float rounding) to the model's own forward inside :func:`steerlib.steering.steer` with
    ``positions="all"``, followed by a log-softmax and a gather of the next token, but blocks ``0..ℓ`` run
    once and the logits exist ``logit_chunk`` rows at a time (module docstring).

    Args:
        lm: the model.
        ids: token ids ``(B, T)`` without padding (e.g. rows of :func:`steerlib.corpora.chunk_tokens`).
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        alphas: the strengths.
        layer: steered block; default the vector's layer.
        alpha_batch: α values per forward through the later blocks (default all).
        logit_chunk: rows of logits ``(rows, V)`` materialised at once.

    Returns:
        fp32 tensor ``(len(alphas), B, T - 1)`` on ``lm.device``.
    """
    ids = _check_blocks(lm, ids).to(lm.device)
    v, layer = resolve_vector(lm, vector, layer)
    alphas = _check_alphas(alphas, lm.device)
    if logit_chunk < 1:
        raise ValueError(f"logit_chunk must be >= 1, got {logit_chunk}.")
    batch, length = ids.shape
    rows = []
    with torch.no_grad():
        for chunk, u, _ in steered_residuals(lm, ids, v, layer, alphas, alpha_batch):
            u = u[:, :-1].reshape(-1, u.shape[-1])
            targets = ids[:, 1:].repeat(chunk.numel(), 1).reshape(-1)
            rows.append(_target_log_probs(lm, u, targets, logit_chunk).reshape(chunk.numel(), batch, length - 1))
    return torch.cat(rows)


def _check_alphas(alphas, device) -> torch.Tensor:
    alphas = torch.as_tensor(alphas, dtype=torch.float32, device=device).reshape(-1)
    if alphas.numel() == 0:
        raise ValueError("alphas is empty: give at least one steering strength.")
    if not torch.isfinite(alphas).all():
        raise ValueError("alphas must be finite numbers.")
    return alphas


def limit_target_log_probs(lm: LoadedModel, ids, v: torch.Tensor, sign: int) -> torch.Tensor:
    """``log σ_{z_{t+1}}(LN(±v) Wᵀ)`` at every scored position of ``ids (B, T)``, shape ``(B, T - 1)`` (Prop. 4.1)."""
    ids = torch.as_tensor(ids).long()
    log_limit = torch.log_softmax(limit_logits(lm, v.cpu(), sign).double(), dim=-1)
    return log_limit[ids[:, 1:].cpu()]


def _layer_norms(lm: LoadedModel, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """``‖h_t^(ℓ)‖`` at every position but the first of each block (the first carries a massive activation)."""
    hidden, _ = _run_recording(lm, layer, ids.to(lm.device), torch.arange(ids.shape[1], device=lm.device)[None])
    return hidden[:, 1:].float().norm(dim=-1).reshape(-1)


def derivative_statistics(
    lm: LoadedModel,
    ids,
    vector,
    step: float,
    layer: int | None = None,
    log_odds: np.ndarray | torch.Tensor | None = None,
    logit_chunk: int = 256,
) -> dict[str, float]:
    """Sums over scored positions of the terms of ``ΔCE'(0)`` and ``ΔCE''(0)`` (module docstring, Th. 3.8).

    With ``y^±`` the logits at ``α = ±step`` and ``y^0`` at ``α = 0`` (central differences):
    ``d_t = (y^+ - y^-)/(2 step)``, ``y''_t = (y^+ - 2 y^0 + y^-)/step²``, ``p_t = σ(y^0_t)``. Returned (float
    sums, divide by ``n_tokens``): ``variance_d = Σ_t Var_{p_t}(d_t)``, ``slope_terms = Σ_t (E_{p_t}[d_t] -
    d_{t,z})``, ``nonlinear_terms = Σ_t (E_{p_t}[y''_t] - y''_{t,z})``, ``ce_zero``, ``ce_plus``, ``ce_minus``
    (summed ``-log σ_z``), and, with ``log_odds`` ``M`` (App. A), ``variance_log_odds = Σ_t Var_{p_t}(M)`` and
    ``covariance_d_log_odds = Σ_t Cov_{p_t}(d_t, M)``. Needs fp32: in bf16/fp16, rounding swamps differences
    at a small step.

    Args:
        lm: the model.
        ids: token ids ``(B, T)``.
        vector: steering vector (or 1-D tensor with ``layer``).
        step: the finite-difference step in ``α`` (absolute units).
        layer: steered block; default the vector's layer.
        log_odds: the model's ``M(z)``, size ``V``, or ``None``.
        logit_chunk: positions whose three logit rows ``(3, rows, V)`` exist at once.
    """
    ids = _check_blocks(lm, ids).to(lm.device)
    v, layer = resolve_vector(lm, vector, layer)
    if not step > 0:
        raise ValueError(f"step must be a positive number, got {step!r}.")
    M = None
    if log_odds is not None:
        M = torch.as_tensor(np.asarray(log_odds), dtype=torch.float32, device=lm.device)
        if M.shape != (int(lm.unembedding.weight.shape[0]),):
            raise ValueError(f"log_odds has shape {tuple(M.shape)}; give one value per token of {lm.name}'s vocabulary.")
    alphas = torch.tensor([-step, 0.0, step], dtype=torch.float32, device=lm.device)
    sums = dict.fromkeys(_STATISTICS, 0.0)
    with torch.no_grad():
        _, u, _ = next(steered_residuals(lm, ids, v, layer, alphas))
        u = u[:, :-1].reshape(3, -1, u.shape[-1])
        targets = ids[:, 1:].reshape(-1)
        sums["n_tokens"] = float(targets.numel())
        for start in range(0, targets.numel(), logit_chunk):
            rows = slice(start, start + logit_chunk)
            z = targets[rows, None]
            y_minus, y_zero, y_plus = (lm.logits(u[i, rows]).float() for i in range(3))
            log_p = y_zero.log_softmax(dim=-1)
            p = log_p.exp()
            d = (y_plus - y_minus) / (2 * step)
            second = (y_plus - 2 * y_zero + y_minus) / step**2
            mean_d = (p * d).sum(-1, keepdim=True)
            sums["variance_d"] += float((p * (d - mean_d) ** 2).sum(-1).double().sum())
            sums["slope_terms"] += float((mean_d - d.gather(-1, z)).double().sum())
            sums["nonlinear_terms"] += float(((p * second).sum(-1, keepdim=True) - second.gather(-1, z)).double().sum())
            sums["ce_zero"] -= float(log_p.gather(-1, z).double().sum())
            sums["ce_plus"] -= float(y_plus.log_softmax(dim=-1).gather(-1, z).double().sum())
            sums["ce_minus"] -= float(y_minus.log_softmax(dim=-1).gather(-1, z).double().sum())
            if M is not None:
                centred_M = M - (p * M).sum(-1, keepdim=True)
                sums["variance_log_odds"] += float((p * centred_M**2).sum(-1).double().sum())
                sums["covariance_d_log_odds"] += float((p * centred_M * (d - mean_d)).sum(-1).double().sum())
    return sums


@dataclass
class QuadraticFit:
    """Least-squares ``ΔCE(α) ≈ slope · α + curvature · α²`` on ``|α| <= max_abs_alpha`` (Th. 3.8's local law).

    Args:
        slope: fitted ``ΔCE'(0)``.
        curvature: fitted ``(1/2) ΔCE''(0)``, the coefficient of ``α²``.
        max_abs_alpha: the fitting window.
        n_points: grid points used (``α = 0`` included; it carries no information since ``ΔCE(0) = 0``).
        relative_residual: ``‖residual‖ / ‖ΔCE‖`` on the window (small when the law holds there).
    """

    slope: float
    curvature: float
    max_abs_alpha: float
    n_points: int
    relative_residual: float

    def __call__(self, alphas: np.ndarray) -> np.ndarray:
        alphas = np.asarray(alphas, dtype=float)
        return self.slope * alphas + self.curvature * alphas**2


def quadratic_fit(alphas: np.ndarray, delta_ce: np.ndarray, max_abs_alpha: float) -> QuadraticFit:
    """Fit ``ΔCE(α) = b α + c α²`` (no constant: ``ΔCE(0) = 0`` by definition) on ``|α| <= max_abs_alpha``.

    Args:
        alphas: the grid.
        delta_ce: ``ΔCE`` on the grid.
        max_abs_alpha: half-width of the window near 0 where the local law (Th. 3.8) is expected.
    """
    alphas = np.asarray(alphas, dtype=float).reshape(-1)
    delta_ce = np.asarray(delta_ce, dtype=float).reshape(-1)
    if alphas.shape != delta_ce.shape:
        raise ValueError(f"alphas {alphas.shape} and delta_ce {delta_ce.shape} must have the same shape.")
    inside = np.abs(alphas) <= max_abs_alpha
    nonzero = inside & (alphas != 0)
    if np.unique(alphas[nonzero]).size < 2:
        raise ValueError(f"the window |α| <= {max_abs_alpha} holds {int(nonzero.sum())} non-zero grid points; "
                         "a slope and a curvature need at least two distinct ones: widen it or refine the grid.")
    design = np.stack([alphas[inside], alphas[inside] ** 2], axis=1)
    (slope, curvature), *_ = np.linalg.lstsq(design, delta_ce[inside], rcond=None)
    residual = delta_ce[inside] - design @ np.array([slope, curvature])
    norm = float(np.linalg.norm(delta_ce[inside]))
    return QuadraticFit(float(slope), float(curvature), float(max_abs_alpha), int(inside.sum()),
                        float(np.linalg.norm(residual) / norm) if norm > 0 else 0.0)


@dataclass
class CrossEntropySweep:
    """``ΔCE(α)`` on a corpus with the quantities that predict its shape, and the parameters that made it.

    Args:
        alphas: absolute strengths ``α``, sorted, containing 0.
        unit: ``mean‖h^(ℓ)‖ / ‖v‖`` over the scored tokens (first position of each block excluded), so that
            ``alphas / unit`` is the relative strength (``α_rel = 1`` moves the residual by its typical norm).
        ce: ``CE(α)`` in nats per token.
        n_tokens: scored tokens.
        limit_ce: ``CE(±∞)`` of Prop. 4.1 on the same tokens, ``[sign +, sign -]``.
        statistics: means per token of the terms of :func:`derivative_statistics` (``variance_d``,
            ``slope_terms``, ``nonlinear_terms``, ``variance_log_odds``, ``covariance_d_log_odds`` when log-odds
            were given) plus ``step`` and the finite-difference ``curvature_measured = (CE(+s) + CE(-s) -
            2 CE(0)) / (2 s²)``.
        parameters: model, layer, vector metadata, corpus description, sizes.
    """

    alphas: np.ndarray
    unit: float
    ce: np.ndarray
    n_tokens: int
    limit_ce: np.ndarray
    statistics: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)

    @property
    def ce_zero(self) -> float:
        """``CE(0)``, the unsteered model's cross-entropy."""
        return float(self.ce[np.flatnonzero(self.alphas == 0.0)[0]])

    @property
    def delta_ce(self) -> np.ndarray:
        """``ΔCE(α) = CE(α) - CE(0)`` (Def. 3.7)."""
        return self.ce - self.ce_zero

    @property
    def alphas_relative(self) -> np.ndarray:
        """``α / unit``; on a relative grid, the values asked for exactly (a division may miss them by one
        rounding, which decides whether a grid point falls inside a window such as ``|α_rel| <= 0.1``)."""
        if self.parameters.get("alpha_scale") == "relative":
            return np.asarray(self.parameters["alphas_given"], dtype=np.float64)
        return self.alphas / self.unit

    @property
    def delta_ce_limit(self) -> np.ndarray:
        """The plateaus ``CE(±∞) - CE(0)`` predicted by Prop. 4.1, ``[α -> +∞, α -> -∞]``."""
        return self.limit_ce - self.ce_zero

    @property
    def curvature_linear(self) -> float:
        """``(1/2) mean_t Var_{p_t}(d_t)``: Th. 3.8's coefficient with ``M -> d_t`` (exact if logits are linear in α)."""
        return 0.5 * self.statistics["variance_d"]

    @property
    def slope_predicted(self) -> float:
        """``ΔCE'(0) = mean_t (E_{p_t}[d_t] - d_{t,z})`` (finite differences)."""
        return self.statistics["slope_terms"]

    @property
    def curvature_nonlinear(self) -> float:
        """``(1/2) mean_t (E_{p_t}[y''_t] - y''_{t,z})``: the part of ``(1/2) ΔCE''(0)`` from curved logits."""
        return 0.5 * self.statistics["nonlinear_terms"]

    def local_law_predicted(self, relative: bool = True) -> tuple[float, float]:
        """``(ΔCE'(0), (1/2) mean_t Var_{p_t}(d_t))``: the slope and the linear-logit curvature, per unit of
        ``α_rel`` (``relative=True``) or of ``α``."""
        scale = self.unit if relative else 1.0
        return self.slope_predicted * scale, self.curvature_linear * scale**2

    @property
    def log_odds_correlation(self) -> float:
        """Pooled ``ρ = mean_t Cov_{p_t}(d_t, M) / sqrt(mean_t Var_{p_t}(d_t) · mean_t Var_{p_t}(M))``.

        ``ρ²`` is the share of ``mean_t Var_{p_t}(d_t)`` that the best multiple ``κ M`` of the log-odds
        reproduces: the Th. 3.8 coefficient computed from ``κ M`` instead of ``d`` is ``ρ²`` times
        :attr:`curvature_linear`. In the UFM under Assumption 2, ``d = M`` up to a constant and ``ρ = 1``.
        """
        if "variance_log_odds" not in self.statistics:
            raise ValueError("this sweep was computed without log_odds: pass log_odds= to cross_entropy_sweep.")
        stats = self.statistics
        return stats["covariance_d_log_odds"] / np.sqrt(stats["variance_d"] * stats["variance_log_odds"])

    @property
    def curvature_log_odds(self) -> float:
        """Th. 3.8's coefficient taken literally with the model's log-odds: ``(1/2) mean_t Var_{p_t}(M)``."""
        if "variance_log_odds" not in self.statistics:
            raise ValueError("this sweep was computed without log_odds: pass log_odds= to cross_entropy_sweep.")
        return 0.5 * self.statistics["variance_log_odds"]

    def plateau_ratio(self) -> np.ndarray:
        """``ΔCE`` at the largest and at the smallest ``α`` over its Prop. 4.1 plateau, ``[+, -]`` (→ 1)."""
        return np.array([self.delta_ce[-1] / self.delta_ce_limit[0], self.delta_ce[0] / self.delta_ce_limit[1]])

    def save(self, path: str | os.PathLike) -> Path:
        """Write everything to one ``.npz`` file, atomically (written beside, then renamed); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, alphas=self.alphas, unit=np.float64(self.unit), ce=self.ce,
                 n_tokens=np.int64(self.n_tokens), limit_ce=self.limit_ce,
                 statistics=np.array(json.dumps(self.statistics)), parameters=np.array(json.dumps(self.parameters)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CrossEntropySweep:
        """Read a sweep written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no cross-entropy sweep at {path}: compute it with cross_entropy_sweep first.")
        with np.load(path, allow_pickle=False) as data:
            return cls(alphas=data["alphas"], unit=float(data["unit"]), ce=data["ce"],
                       n_tokens=int(data["n_tokens"]), limit_ce=data["limit_ce"],
                       statistics=json.loads(str(data["statistics"])),
                       parameters=json.loads(str(data["parameters"])))


def cross_entropy_sweep(
    lm: LoadedModel,
    blocks,
    vector,
    alphas: Sequence[float] | np.ndarray,
    layer: int | None = None,
    alpha_scale: str = "absolute",
    batch_size: int = 8,
    alpha_batch: int | None = None,
    logit_chunk: int = 1024,
    derivative_step: float | None = 0.01,
    log_odds: np.ndarray | None = None,
    corpus: str = "",
    progress: bool = True,
) -> CrossEntropySweep:
    """``CE(α)`` on the text blocks for a grid of ``α``, with the Prop. 4.1 plateau and the Th. 3.8 terms.

    Args:
        lm: the model.
        blocks: token ids ``(n_blocks, T)`` (:func:`steerlib.corpora.chunk_tokens`); ``n_blocks · (T - 1)``
            tokens are scored.
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        alphas: the grid (sorted, 0 inserted).
        layer: steered block; default the vector's layer.
        alpha_scale: ``"absolute"`` (``alphas`` are ``α``) or ``"relative"`` (``α = α_rel · unit`` with
            ``unit = mean‖h^(ℓ)‖ / ‖v‖`` measured on these tokens).
        batch_size: text blocks per forward through blocks ``0..ℓ``.
        alpha_batch: α values per forward through the later blocks (default all).
        logit_chunk: rows of logits materialised at once.
        derivative_step: finite-difference step of :func:`derivative_statistics`, relative (times ``unit``);
            ``None`` skips them.
        log_odds: the model's ``M(z)`` (App. A, :func:`steerlib.sweeps.log_odds`) for the coarse comparison.
        corpus: a description of the text, stored in the parameters.
        progress: show a progress bar over text batches.
    """
    blocks = _check_blocks(lm, blocks)
    v, layer = resolve_vector(lm, vector, layer)
    if alpha_scale not in ("absolute", "relative"):
        raise ValueError(f"alpha_scale={alpha_scale!r}: use 'absolute' or 'relative'.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    vector_norm = float(v.norm())
    if vector_norm == 0.0:
        raise ValueError("the steering vector is zero: P and N have the same mean activation.")
    if derivative_step is not None and lm.dtype != torch.float32:
        raise ValueError(f"the finite differences of the Th. 3.8 terms need fp32 logits, but {lm.name} is loaded in "
                         f"{lm.dtype}: load it with load_model(..., dtype=torch.float32) or pass derivative_step=None.")
    grid = alpha_grid(alphas)
    batches = [blocks[start:start + batch_size] for start in range(0, blocks.shape[0], batch_size)]
    with torch.no_grad():
        norms = torch.cat([_layer_norms(lm, ids, layer) for ids in batches])
    unit = float(norms.double().mean()) / vector_norm
    absolute = grid * unit if alpha_scale == "relative" else grid
    alphas_tensor = torch.as_tensor(absolute, dtype=torch.float32)
    totals = np.zeros(absolute.size)
    limit_totals = np.zeros(2)
    sums = dict.fromkeys(_STATISTICS, 0.0)
    step = None if derivative_step is None else derivative_step * unit
    for ids in tqdm(batches, desc="ΔCE(α)", disable=not progress):
        log_probs = steered_target_log_probs(lm, ids, v, alphas_tensor, layer, alpha_batch, logit_chunk)
        totals -= log_probs.double().sum(dim=(1, 2)).cpu().numpy()
        for index, sign in enumerate((1, -1)):
            limit_totals[index] -= float(limit_target_log_probs(lm, ids, v, sign).sum())
        if step is not None:
            for key, value in derivative_statistics(lm, ids, v, step, layer, log_odds).items():
                sums[key] += value
    n_tokens = int(blocks.shape[0] * (blocks.shape[1] - 1))
    statistics = {}
    if step is not None:
        statistics = {key: sums[key] / n_tokens for key in _STATISTICS if key != "n_tokens"}
        if log_odds is None:
            del statistics["variance_log_odds"], statistics["covariance_d_log_odds"]
        statistics["step"] = step
        statistics["curvature_measured"] = (statistics["ce_plus"] + statistics["ce_minus"]
                                            - 2 * statistics["ce_zero"]) / (2 * step**2)
    metadata = vector.metadata() if hasattr(vector, "metadata") else {"layer": layer}
    parameters = {"model": lm.name, "layer": layer, "vector": metadata, "vector_norm": vector_norm,
                  "alpha_scale": alpha_scale, "alphas_given": [float(a) for a in grid],
                  "block_length": int(blocks.shape[1]), "n_blocks": int(blocks.shape[0]), "corpus": corpus,
                  "dtype": str(lm.dtype).replace("torch.", ""), "derivative_step": derivative_step,
                  "mean_residual_norm": float(norms.double().mean())}
    return CrossEntropySweep(alphas=absolute.astype(np.float64), unit=unit, ce=totals / n_tokens,
                             n_tokens=n_tokens, limit_ce=limit_totals / n_tokens, statistics=statistics,
                             parameters=parameters)


def sweep_key(lm: LoadedModel, blocks, vector, alphas, **options) -> str:
    """A short hash of everything that determines a sweep: model, token ids, vector values, grid, options."""
    v = vector.vector if hasattr(vector, "vector") else torch.as_tensor(vector)
    digest = hashlib.sha256()
    digest.update(json.dumps({"model": lm.name, "dtype": str(lm.dtype), "alphas": alpha_grid(alphas).tolist(),
                              "layer": getattr(vector, "layer", None),
                              "options": {key: value for key, value in sorted(options.items())
                                          if key not in ("batch_size", "alpha_batch", "logit_chunk", "progress")}},
                             sort_keys=True, default=str).encode())
    digest.update(torch.as_tensor(blocks).long().cpu().numpy().tobytes())
    digest.update(v.detach().to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_or_compute_cross_entropy(folder: str | os.PathLike, lm: LoadedModel, blocks, vector, alphas,
                                  name: str = "ce", **options) -> CrossEntropySweep:
    """:func:`cross_entropy_sweep`, saved as ``folder/<name>-<key>.npz`` and reused when it exists.

    The key hashes every input that changes the result (:func:`sweep_key`), so a changed corpus, vector, grid
    or option is recomputed, while a restarted run reuses what it had finished.
    """
    key_options = {key: (value.tolist() if isinstance(value, np.ndarray) else value) for key, value in options.items()}
    if isinstance(key_options.get("log_odds"), list):
        key_options["log_odds"] = hashlib.sha256(np.asarray(options["log_odds"], dtype=np.float64).tobytes()).hexdigest()
    path = Path(folder) / f"{name}-{sweep_key(lm, blocks, vector, alphas, **key_options)}.npz"
    if path.exists():
        return CrossEntropySweep.load(path)
    sweep = cross_entropy_sweep(lm, blocks, vector, alphas, **options)
    sweep.save(path)
    return sweep
