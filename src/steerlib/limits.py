"""The large-α limit of a steered transformer (Prop. 4.1) and the distances that measure it.

Taught in the chapter "The large-α limit LN(±v)Wᵀ" (``book/transformers/large_alpha_limit.md``).

Steering block ℓ gives logits ``y(α) = LN(h^(ℓ) + α v + R(α)) Wᵀ`` (Sec. 4, App. B.6) where ``R(α)``, the sum
of the downstream block updates, stays bounded because every block reads its input through a norm. Hence
(Prop. 4.1) ``y(α) -> LN(±v) Wᵀ`` as ``α -> ±∞``: the steered next-token distribution forgets the prompt and
tends to ``σ(LN(±v) Wᵀ)``. This module computes that limit for a loaded model and the distances used to watch
the convergence: ``KL(σ(y(α)) ‖ σ(LN(±v)Wᵀ))``, and the largest pairwise total-variation or Jensen-Shannon
distance between the steered distributions of different prompts.

Example:
    >>> lm = load_model()
    >>> limit = limit_logits(lm, v, sign=+1)                 # LN(v) Wᵀ, shape (V,)
    >>> kl_divergence(steered_logits, limit)                 # KL(σ(y(α)) ‖ σ(LN(v)Wᵀ)), one per row
    >>> max_pairwise_distance(steered_logits, "tv")          # prompts agree when this is ~0
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from steerlib.models import LoadedModel

Distance = Literal["tv", "js"]


def limit_logits(lm: LoadedModel, v: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """The limit logits ``LN(±v) Wᵀ`` of Prop. 4.1, in float32 on the CPU.

    ``LN`` is the model's final norm (RMSNorm for Llama-family models, LayerNorm for GPT-2) and ``W`` its
    unembedding. Both norms are invariant to positive rescaling of their input (up to their ``eps``), so
    the result does not depend on ``|v|``.

    Args:
        lm: the loaded model.
        v: the steering vector, shape ``(hidden_size,)``.
        sign: ``+1`` for ``α -> +∞``, ``-1`` for ``α -> -∞``.
    """
    if sign not in (1, -1):
        raise ValueError(f"sign must be +1 (α -> +∞) or -1 (α -> -∞), got {sign!r}")
    v = torch.as_tensor(v)
    if v.shape != (lm.hidden_size,):
        raise ValueError(f"v has shape {tuple(v.shape)}; {lm.name} needs a vector of shape ({lm.hidden_size},): "
                         "pass one layer's steering vector")
    if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
        raise ValueError("v must be finite and non-zero: the limit LN(±v)Wᵀ is undefined for v = 0")
    x = (sign * v).to(device=lm.device, dtype=lm.dtype)
    with torch.no_grad():
        return lm.unembedding(lm.final_norm(x)).float().cpu()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(logits, dtype=torch.float64), dim=-1)


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``KL(σ(p) ‖ σ(q)) = Σ_z σ_z(p) (log σ_z(p) - log σ_z(q))`` along the last axis, in float64.

    Args:
        logits_p: logits of the first distribution, shape ``(..., V)``.
        logits_q: logits of the second, broadcastable to ``logits_p`` (e.g. one limit row ``(V,)``).
    """
    log_p, log_q = _log_probs(logits_p), _log_probs(logits_q)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def total_variation(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance ``(1/2) Σ_z |σ_z(p) - σ_z(q)|`` along the last axis (in [0, 1])."""
    return 0.5 * (_log_probs(logits_p).exp() - _log_probs(logits_q).exp()).abs().sum(-1)


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence ``(1/2) KL(P ‖ M) + (1/2) KL(Q ‖ M)``, ``M = (P + Q)/2``, in nats (≤ log 2)."""
    log_p, log_q = _log_probs(logits_p), _log_probs(logits_q)
    log_m = torch.logaddexp(log_p, log_q) - np.log(2.0)
    kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0)


def max_pairwise_distance(logits: torch.Tensor, distance: Distance = "tv") -> float:
    """Largest distance between the next-token distributions of any two rows of ``logits``.

    Used to watch the steered distributions of different prompts merge as ``|α|`` grows (Prop. 4.1: the
    limit does not depend on the prompt).

    Args:
        logits: shape ``(n_prompts, V)``, one row per prompt, at least two rows.
        distance: ``"tv"`` (total variation) or ``"js"`` (Jensen-Shannon, nats).
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 2 or logits.shape[0] < 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; give (n_prompts, V) with n_prompts >= 2")
    functions = {"tv": total_variation, "js": js_divergence}
    if distance not in functions:
        raise ValueError(f"unknown distance {distance!r}: use one of {sorted(functions)}")
    rows, cols = torch.triu_indices(logits.shape[0], logits.shape[0], offset=1)
    return float(functions[distance](logits[rows], logits[cols]).max())


def loglog_slope(alphas: np.ndarray, values: np.ndarray, tail: int = 3) -> float:
    """Least-squares slope of ``log values`` against ``log |α|`` over the ``tail`` largest ``|α|``.

    When ``y(α) = LN(α v + b + o(1)) Wᵀ`` the logits approach the limit at rate ``1/|α|`` and a KL divergence,
    quadratic in a small logit difference, decays like ``|α|^-2``: a slope near ``-2``.

    Args:
        alphas: steering strengths (one sign), at least ``tail`` of them.
        values: positive values measured at those strengths.
        tail: how many of the largest ``|α|`` to fit.
    """
    alphas, values = np.abs(np.asarray(alphas, dtype=float)), np.asarray(values, dtype=float)
    if alphas.shape != values.shape or alphas.size < max(tail, 2) or tail < 2:
        raise ValueError(f"need matching alphas and values with at least tail = {tail} >= 2 points, "
                         f"got shapes {alphas.shape} and {values.shape}")
    order = np.argsort(alphas)[-tail:]
    if np.any(values[order] <= 0) or np.any(alphas[order] <= 0):
        raise ValueError("values and |α| on the fitted tail must be positive for a log-log slope")
    return float(np.polyfit(np.log(alphas[order]), np.log(values[order]), 1)[0])
