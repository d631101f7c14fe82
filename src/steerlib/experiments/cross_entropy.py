"""``ΔCE(α)`` of a steered LLM on a text corpus (Def. 3.7, Th. 3.8, Prop. 4.1; Fig. 7 bottom, Fig. A.13).

Taught in the chapter "Cross-entropy on a real corpus" (``book/llm/cross_entropy.md``).

The corpus is cut into blocks of ``T`` tokens (:func:`steerlib.corpora.chunk_tokens`); every position of every
block is scored as a next-token prediction, so a block gives ``T - 1`` scored tokens and

    CE(α) = -(1/#tokens) Σ_blocks Σ_t log σ_{z_{t+1}}(y_t(α)),        ΔCE(α) = CE(α) - CE(0)   (Def. 3.7)

with ``α v`` added to the output of block ``ℓ`` at every position (Sec. 4). Computing it for many ``α``:

* the α-batched engine of :mod:`steerlib.steering` (:func:`~steerlib.steering.steered_target_log_probs`) runs
  blocks ``0..ℓ`` once per batch of text blocks and the α-batch ``(A·B, T, d)`` through blocks ``ℓ+1..L-1``
  (``alphas_per_forward`` α values at a time), the same engine as the next-token sweeps;
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
    >>> blocks = corpus_blocks(lm.tokenizer, "lee_background", n_tokens=512, block_length=64)
    >>> params = CrossEntropyParameters(alphas=(0.05, 0.1, 1, 10), alpha_scale="relative")
    >>> sweep = load_or_run(lm, blocks, vectors[15], params, "results/cross_entropy")
    >>> fit = quadratic_fit(sweep.alphas_relative, sweep.delta_ce, max_abs_alpha=0.1)   # steerlib.stats
    >>> fit.curvature, sweep.curvature_linear * sweep.unit**2, sweep.delta_ce_limit
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.models import LoadedModel, record_block_outputs
from steerlib.steering import (alpha_grid, check_token_blocks, limit_target_log_probs, resolve_vector,
                               steered_residuals, steered_target_log_probs)
from steerlib.store import Result, content_key, load_or_compute

_STATISTICS = ("n_tokens", "ce_zero", "ce_minus", "ce_plus", "variance_d", "slope_terms", "nonlinear_terms",
               "variance_log_odds", "covariance_d_log_odds")


@dataclass(frozen=True)
class CrossEntropyParameters:
    """What determines a ``ΔCE`` sweep, besides the model, the text blocks and the vector.

    Args:
        alphas: the grid (sorted, 0 inserted).
        layer: steered block; default the vector's layer.
        alpha_scale: ``"absolute"`` (``alphas`` are ``α``) or ``"relative"`` (``α = α_rel · unit`` with
            ``unit = mean‖h^(ℓ)‖ / ‖v‖`` measured on the scored tokens).
        derivative_step: finite-difference step of :func:`derivative_statistics`, relative (times ``unit``);
            ``None`` skips them.
        batch_size: text blocks per forward through blocks ``0..ℓ`` (the finite differences are summed per
            batch, so it is part of what determines the result).
        corpus: a description of the text, stored in the result.
    """

    alphas: tuple[float, ...]
    layer: int | None = None
    alpha_scale: str = "absolute"
    derivative_step: float | None = 0.01
    batch_size: int = 8
    corpus: str = ""

    def __post_init__(self):
        object.__setattr__(self, "alphas", tuple(float(a) for a in np.asarray(self.alphas, dtype=float).reshape(-1)))
        if self.alpha_scale not in ("absolute", "relative"):
            raise ValueError(f"alpha_scale={self.alpha_scale!r}: use 'absolute' or 'relative'.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


def _layer_norms(lm: LoadedModel, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """``‖h_t^(ℓ)‖`` at every position but the first of each block (the first carries a massive activation)."""
    inputs = {"input_ids": ids.to(lm.device), "position_ids": torch.arange(ids.shape[1], device=lm.device)[None]}
    return record_block_outputs(lm, inputs, [layer], lambda hidden: hidden[:, 1:].float().norm(dim=-1).reshape(-1))[layer]


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
    ids = check_token_blocks(lm, ids).to(lm.device)
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
        _, u = next(steered_residuals(lm, ids, v, layer, alphas))
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
class CrossEntropySweep(Result):
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
    statistics: dict
    parameters: dict

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
            raise ValueError("this sweep was computed without log_odds: pass log_odds= to run.")
        stats = self.statistics
        return stats["covariance_d_log_odds"] / np.sqrt(stats["variance_d"] * stats["variance_log_odds"])

    @property
    def curvature_log_odds(self) -> float:
        """Th. 3.8's coefficient taken literally with the model's log-odds: ``(1/2) mean_t Var_{p_t}(M)``."""
        if "variance_log_odds" not in self.statistics:
            raise ValueError("this sweep was computed without log_odds: pass log_odds= to run.")
        return 0.5 * self.statistics["variance_log_odds"]

    def plateau_ratio(self) -> np.ndarray:
        """``ΔCE`` at the largest and at the smallest ``α`` over its Prop. 4.1 plateau, ``[+, -]`` (→ 1)."""
        return np.array([self.delta_ce[-1] / self.delta_ce_limit[0], self.delta_ce[0] / self.delta_ce_limit[1]])


def run(
    lm: LoadedModel,
    blocks,
    vector,
    params: CrossEntropyParameters,
    log_odds: np.ndarray | None = None,
    alphas_per_forward: int | None = None,
    logit_chunk: int = 1024,
    progress: bool = True,
) -> CrossEntropySweep:
    """``CE(α)`` on the text blocks for a grid of ``α``, with the Prop. 4.1 plateau and the Th. 3.8 terms.

    Args:
        lm: the model.
        blocks: token ids ``(n_blocks, T)`` (:func:`steerlib.corpora.corpus_blocks`); ``n_blocks · (T - 1)``
            tokens are scored.
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give the layer).
        params: grid, layer, scale and derivative step (:class:`CrossEntropyParameters`).
        log_odds: the model's ``M(z)`` (App. A, :func:`steerlib.vectors.log_odds`) for the coarse comparison.
        alphas_per_forward: α values per forward through the later blocks (default all).
        logit_chunk: rows of logits materialised at once.
        progress: show a progress bar over text batches.
    """
    blocks = check_token_blocks(lm, blocks)
    v, layer = resolve_vector(lm, vector, params.layer)
    alpha_scale, batch_size, derivative_step = params.alpha_scale, params.batch_size, params.derivative_step
    vector_norm = float(v.norm())
    if vector_norm == 0.0:
        raise ValueError("the steering vector is zero: P and N have the same mean activation.")
    if derivative_step is not None and lm.dtype != torch.float32:
        raise ValueError(f"the finite differences of the Th. 3.8 terms need fp32 logits, but {lm.name} is loaded in "
                         f"{lm.dtype}: load it with load_model(..., dtype=torch.float32) or pass derivative_step=None.")
    grid = alpha_grid(params.alphas)
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
        log_probs = steered_target_log_probs(lm, ids, v, alphas_tensor, layer, alphas_per_forward, logit_chunk)
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
                  "block_length": int(blocks.shape[1]), "n_blocks": int(blocks.shape[0]), "corpus": params.corpus,
                  "dtype": str(lm.dtype).replace("torch.", ""), "derivative_step": derivative_step,
                  "mean_residual_norm": float(norms.double().mean())}
    return CrossEntropySweep(alphas=absolute.astype(np.float64), unit=unit, ce=totals / n_tokens,
                             n_tokens=n_tokens, limit_ce=limit_totals / n_tokens, statistics=statistics,
                             parameters=parameters)


def load_or_run(lm: LoadedModel, blocks, vector, params: CrossEntropyParameters, folder: str | os.PathLike,
                log_odds: np.ndarray | None = None, alphas_per_forward: int | None = None, logit_chunk: int = 1024,
                progress: bool = True) -> CrossEntropySweep:
    """:func:`run`, saved under ``folder`` as ``cross-entropy-<key>.npz`` (model, dtype, token ids, vector,
    log-odds, parameters) and read back when it exists."""
    key = content_key(lm.name, str(lm.dtype), torch.as_tensor(blocks).long(), vector, log_odds, params)
    return load_or_compute(Path(folder) / f"cross-entropy-{key}.npz",
                           lambda: run(lm, blocks, vector, params, log_odds, alphas_per_forward, logit_chunk,
                                       progress), CrossEntropySweep)
