"""Statistics the chapters share: confidence bands, fits, divergences between distributions, slopes, cosines.

Example:
    >>> low, high = wilson_interval(successes=np.array([3, 9]), trials=np.array([16, 16]))
    >>> fit_sigmoid(alphas, probability).r2               # the tanh law of Th. 3.6, as a 4-parameter logistic
    >>> quadratic_fit(alphas, delta_ce, max_abs_alpha=0.1)  # Th. 3.8's local law
    >>> kl_divergence(steered_logits, limit_logits)         # Prop. 4.1: distance to the limit, one per row
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

Distance = Literal["tv", "js"]


def wilson_interval(successes: np.ndarray, trials: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion, elementwise; ``(0, 1)`` where ``trials`` is 0.

    ``(p̂ + z²/2n ± z sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile of ``level``.
    It treats the M·K labels of one α as independent draws; :func:`bootstrap_band` does not.
    """
    from scipy.stats import norm

    successes, trials = np.asarray(successes, float), np.asarray(trials, float)
    if np.any(successes < 0) or np.any(successes > trials) or not 0 < level < 1:
        raise ValueError("need 0 <= successes <= trials and 0 < level < 1.")
    z = norm.ppf(0.5 + level / 2)
    n = np.maximum(trials, 1.0)
    p = successes / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    empty = trials == 0
    return np.where(empty, 0.0, np.clip(centre - half, 0, 1)), np.where(empty, 1.0, np.clip(centre + half, 0, 1))


def bootstrap_band(labels: np.ndarray, level: float = 0.95, n_boot: int = 1000, seed: int = 0, invalid: int = -1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of p̂(α) resampling prompts, then samples within each drawn prompt (two-stage bootstrap).

    Args:
        labels: ``(n_alpha, M, K)`` labels in {1, 0, invalid}; invalid ones are left out of each mean.
        level: coverage of the band.
        n_boot: bootstrap replicates.
        seed: seeds the resampling.
        invalid: the label of an unreadable judge answer (:data:`steerlib.judge.INVALID`).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (n_alpha, prompts, samples), got {labels.shape}.")
    rng = np.random.default_rng(seed)
    _, n_prompts, n_samples = labels.shape
    prompt_draw = rng.integers(0, n_prompts, size=(n_boot, n_prompts))
    sample_draw = rng.integers(0, n_samples, size=(n_boot, n_prompts, n_samples))
    resampled = labels[:, prompt_draw[..., None], sample_draw]  # (n_alpha, n_boot, M, K)
    valid = resampled != invalid
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(valid, resampled, 0).sum((2, 3)) / valid.sum((2, 3))
    low, high = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2], axis=1)
    return low, high


def logistic4(alpha: np.ndarray, bottom: float, top: float, midpoint: float, slope: float) -> np.ndarray:
    """4-parameter logistic ``bottom + (top - bottom) / (1 + exp(-slope (α - midpoint)))``.

    Equal to ``a + b tanh(slope (α - midpoint) / 2)``: the shape Theorem 3.6 gives for the concept probability.
    """
    return bottom + (top - bottom) / (1 + np.exp(-np.clip(slope * (np.asarray(alpha) - midpoint), -60, 60)))


@dataclass
class SigmoidFit:
    """Least-squares fit of :func:`logistic4` to p̂(α).

    Args:
        bottom, top, midpoint, slope: the parameters (``top`` is the limit at ``α → +∞`` when slope > 0).
        r2: coefficient of determination ``1 - SS_res / SS_tot`` (``nan`` when p̂ is constant).
        rmse: root-mean-square residual.
        converged: whether ``scipy.optimize.curve_fit`` converged.
    """

    bottom: float
    top: float
    midpoint: float
    slope: float
    r2: float
    rmse: float
    converged: bool

    @property
    def params(self) -> tuple[float, float, float, float]:
        return self.bottom, self.top, self.midpoint, self.slope

    def __call__(self, alpha) -> np.ndarray:
        return logistic4(alpha, *self.params)


def fit_sigmoid(alphas: Sequence[float], probability: Sequence[float]) -> SigmoidFit:
    """Fit :func:`logistic4` to ``(α, p̂(α))`` with ``bottom, top ∈ [0, 1]``, starting from the data's range.

    Several starting slopes of both signs are tried and the best fit is kept, so an increasing, decreasing or
    flat trend is found without being assumed.
    """
    from scipy.optimize import curve_fit

    x, y = np.asarray(alphas, float), np.asarray(probability, float)
    keep = np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 4:
        raise ValueError(f"a 4-parameter logistic needs at least 4 finite points, got {x.size}.")
    span = max(float(np.ptp(x)), 1e-9)
    best = None
    for sign in (1.0, -1.0):
        for scale in (2.0, 8.0, 32.0):
            start = [float(y.min()), float(y.max()), float(np.median(x)), sign * scale / span]
            if sign < 0:
                start[0], start[1] = start[1], start[0]
            try:
                params, _ = curve_fit(logistic4, x, y, p0=start, bounds=([0, 0, x.min() - span, -1e3],
                                                                        [1, 1, x.max() + span, 1e3]), maxfev=20000)
                converged = True
            except RuntimeError:
                params, converged = np.array(start), False
            residual = float(((y - logistic4(x, *params)) ** 2).sum())
            if best is None or residual < best[1] - 1e-12:
                best = (params, residual, converged)
    params, residual, converged = best
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - residual / total if total > 0 else float("nan")
    return SigmoidFit(*map(float, params), r2=r2, rmse=float(np.sqrt(residual / x.size)), converged=converged)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of ``y`` with ``x`` over the finite ``y`` (+1: increases throughout; 0 if flat)."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(y)
    if keep.sum() < 2 or np.ptp(y[keep]) == 0:
        return 0.0
    return float(spearmanr(x[keep], y[keep]).statistic)


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
