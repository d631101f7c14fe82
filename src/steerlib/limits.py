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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.models import LoadedModel
from steerlib.steering import resolve_vector, steered_log_probs, steered_next_token_log_probs

Distance = Literal["tv", "js"]


def limit_logits(lm: LoadedModel, v: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """The limit logits ``LN(±v) Wᵀ`` of Prop. 4.1, in float32 on the CPU.

    ``LN`` is the model's final norm (RMSNorm for Llama-family models, LayerNorm for GPT-2) and ``W`` its
    unembedding (with Gemma's final soft-capping where the model has it, see ``LoadedModel.logits``). Both norms are invariant to positive rescaling of their input (up to their ``eps``), so
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
        return lm.logits(x).float().cpu()


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


@dataclass
class LimitSweep:
    """Distances to the Prop. 4.1 limit over a grid of ``|α|``, for both signs, several layers and prompts.

    Args:
        alphas: the magnitudes ``|α|``, increasing, shape ``(A,)``; sign ``s`` steers with ``s·|α|``.
        layers: the steered blocks, shape ``(L,)``.
        prompts: the prompts whose next-token distributions are compared.
        kl: ``KL(σ(y(s|α|)) ‖ σ(LN(s v)Wᵀ))`` at the last position, shape ``(2, L, P, A)``, sign ``+1`` first.
        pairwise_tv: largest total-variation distance between the steered next-token distributions of two
            prompts, shape ``(2, L, A)``.
        pairwise_js: the same with the Jensen-Shannon divergence (nats), shape ``(2, L, A)``.
        unsteered_tv: the largest pairwise total-variation distance at ``α = 0`` (the prompts' own spread).
        limit_top_tokens: for each sign and layer, the three most probable tokens of ``σ(LN(±v)Wᵀ)``.
        model_name: the model the sweep ran on.
        positions: ``"all"`` or ``"last"``, where ``α v`` was added.
    """

    alphas: np.ndarray
    layers: np.ndarray
    prompts: list[str]
    kl: np.ndarray
    pairwise_tv: np.ndarray
    pairwise_js: np.ndarray
    unsteered_tv: float
    limit_top_tokens: list[list[list[str]]] = field(default_factory=list)
    model_name: str = ""
    positions: str = "all"

    SIGNS = (1, -1)

    def mean_kl(self) -> np.ndarray:
        """KL averaged over prompts, shape ``(2, L, A)``."""
        return self.kl.mean(axis=2)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the sweep to one ``.npz`` file, atomically (written beside, then renamed); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"prompts": self.prompts, "unsteered_tv": self.unsteered_tv, "model_name": self.model_name,
                "positions": self.positions, "limit_top_tokens": self.limit_top_tokens}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, alphas=self.alphas, layers=self.layers, kl=self.kl, pairwise_tv=self.pairwise_tv,
                 pairwise_js=self.pairwise_js, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LimitSweep:
        """Read a sweep written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no limit sweep at {path}: run large_alpha_sweep(...) and save it first")
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(alphas=data["alphas"], layers=data["layers"], kl=data["kl"], pairwise_tv=data["pairwise_tv"],
                       pairwise_js=data["pairwise_js"], **meta)


def large_alpha_sweep(
    lm: LoadedModel,
    vectors: Mapping[int, object],
    prompts: Sequence[str],
    alphas: Sequence[float],
    positions: str = "all",
    progress: bool = True,
) -> LimitSweep:
    """Measure how fast the steered next-token distribution reaches ``σ(LN(±v)Wᵀ)`` (Prop. 4.1).

    For every layer ``ℓ`` (with its own vector ``v^(ℓ)``), prompt and ``α = ±|α|``, computes the last-position
    log-probabilities ``log σ(y(α))`` with the α-batched forward of :mod:`steerlib.steering`, then their KL
    divergence to the limit and the spread between prompts.

    Args:
        lm: the model.
        vectors: layer -> steering vector (a ``SteeringVector`` or a 1-D tensor) for that layer.
        prompts: at least two prompts (the spread between prompts needs two).
        alphas: positive magnitudes ``|α|``; both signs are run.
        positions: ``"all"`` (default, Sec. 4) or ``"last"``.
        progress: show a progress bar over layers and prompts.
    """
    prompts = list(prompts)
    if len(prompts) < 2:
        raise ValueError("give at least two prompts: Prop. 4.1 says their steered distributions merge")
    magnitudes = np.sort(np.asarray(alphas, dtype=float))
    if magnitudes.ndim != 1 or magnitudes.size == 0 or np.any(magnitudes <= 0):
        raise ValueError("alphas must be a non-empty 1-D grid of positive magnitudes |α| (both signs are run)")
    if not vectors:
        raise ValueError("vectors is empty: give {layer: steering vector}")
    layers = sorted(int(layer) for layer in vectors)
    signed = np.concatenate([magnitudes, -magnitudes])
    n_a = magnitudes.size
    kl = np.zeros((2, len(layers), len(prompts), n_a))
    pairwise_tv = np.zeros((2, len(layers), n_a))
    pairwise_js = np.zeros((2, len(layers), n_a))
    top_tokens: list[list[list[str]]] = [[], []]
    unsteered = []
    steps = tqdm(total=len(layers) * len(prompts), desc="large-α sweep", disable=not progress)
    for li, layer in enumerate(layers):
        v, _ = resolve_vector(lm, vectors[layer], layer)
        limits = [limit_logits(lm, v.cpu(), sign) for sign in LimitSweep.SIGNS]
        for si, limit in enumerate(limits):
            top = torch.topk(limit, 3).indices.tolist()
            top_tokens[si].append([lm.tokenizer.decode([t]) for t in top])
        per_prompt = []
        for pi, prompt in enumerate(prompts):
            log_probs = steered_next_token_log_probs(lm, prompt, v, signed, layer=layer, positions=positions).cpu()
            per_prompt.append(log_probs)
            for si, limit in enumerate(limits):
                kl[si, li, pi] = kl_divergence(log_probs[si * n_a:(si + 1) * n_a], limit).numpy()
            if li == 0:
                unsteered.append(steered_next_token_log_probs(lm, prompt, v, [0.0], layer=layer)[0].cpu())
            steps.update()
        stacked = torch.stack(per_prompt)  # (P, 2A, V)
        for si in range(2):
            for ai in range(n_a):
                rows = stacked[:, si * n_a + ai]
                pairwise_tv[si, li, ai] = max_pairwise_distance(rows, "tv")
                pairwise_js[si, li, ai] = max_pairwise_distance(rows, "js")
    steps.close()
    return LimitSweep(alphas=magnitudes, layers=np.array(layers), prompts=prompts, kl=kl, pairwise_tv=pairwise_tv,
                      pairwise_js=pairwise_js, unsteered_tv=max_pairwise_distance(torch.stack(unsteered), "tv"),
                      limit_top_tokens=top_tokens, model_name=lm.name, positions=positions)


def _text_ids(lm: LoadedModel, text: str) -> torch.Tensor:
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"][0]
    if ids.numel() < 2:
        raise ValueError(f"text {text!r} has fewer than two tokens: cross-entropy needs a token to predict")
    return ids


def steered_cross_entropy(lm: LoadedModel, texts: Sequence[str], vector, alphas: Sequence[float],
                          layer: int | None = None) -> np.ndarray:
    """Mean next-token cross-entropy of ``texts`` with ``α v`` added at every position, for each ``α``.

    ``CE(α) = -(1/#tokens) Σ_texts Σ_t log σ_{z_{t+1}}(y_t(α))`` over every predicted token of every text
    (the LLM counterpart of Def. 3.7's ``CE(f_α)``). Returns shape ``(len(alphas),)``.
    """
    total, count = np.zeros(len(alphas)), 0
    for text in texts:
        ids = _text_ids(lm, text)
        log_probs = steered_log_probs(lm, ids, vector, alphas, layer=layer,
                                      logit_positions=range(ids.numel() - 1)).cpu()
        targets = ids[1:].reshape(1, -1, 1).expand(log_probs.shape[0], -1, 1)
        total += -log_probs.gather(-1, targets).squeeze(-1).double().sum(-1).numpy()
        count += ids.numel() - 1
    return total / count


def limit_cross_entropy(lm: LoadedModel, texts: Sequence[str], v: torch.Tensor, sign: int = 1) -> float:
    """The plateau of ``CE(α)`` as ``α -> ±∞`` predicted by Prop. 4.1: every position predicts with
    ``σ(LN(±v)Wᵀ)``, so ``CE(±∞) = -(1/#tokens) Σ_texts Σ_t log σ_{z_{t+1}}(LN(±v)Wᵀ)``.
    """
    log_limit = torch.log_softmax(limit_logits(lm, v, sign).double(), dim=-1)
    targets = torch.cat([_text_ids(lm, text)[1:] for text in texts])
    return float(-log_limit[targets].mean())
