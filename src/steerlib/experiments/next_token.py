"""Next-token curves ``Δp(z, α)`` of a steered LLM (Def. 3.1, Th. 3.3, Fig. 6).

A sweep fixes a prompt ``c``, a steering vector ``v`` at block ``ℓ`` and a grid of strengths ``α`` (always
containing 0), and records ``Δp(z | c, α) = σ_z(y(α)) − σ_z(y(0))`` at the last position, computed by the
α-batched engine of :mod:`steerlib.steering`. Theorem 3.3 predicts three shapes for these curves (a bump for
most tokens, monotone for those of extreme log-odds), read by :mod:`steerlib.theory_checks`; Prop. 4.1 predicts
that a few tokens, those of ``σ(LN(±v) Wᵀ)``, dominate at large ``|α|``.

Taught in the chapters "Next-token curves on LLMs" and "Log-odds of real models".

Example:
    >>> params = NextTokenParameters("Today I feel", alphas=np.linspace(-200, 200, 41))
    >>> sweep = load_or_run(lm, vector, params, "results/next_token")
    >>> sweep.top_tokens("max", k=8)             # the 8 most probable tokens at the largest α
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from steerlib.models import LoadedModel, check_texts, mean_residual_norm
from steerlib.steering import alpha_grid, check_positions, resolve_vector, steered_next_token_log_probs
from steerlib.store import Result, content_key, load_or_compute, machine_description
from steerlib.vectors import SteeringVector, concept_bootstrap_vectors, concept_log_odds, concept_vectors


@dataclass(frozen=True)
class NextTokenParameters:
    """What determines a next-token sweep, besides the model and the vector.

    Args:
        prompt: the fixed context ``c`` (tokenised with the tokenizer's defaults; apply a chat template first
            if you want one).
        alphas: the grid; sorted and 0 inserted by :func:`steerlib.steering.alpha_grid`.
        layer: block whose output is steered; default the vector's layer.
        positions: ``"all"`` or ``"last"`` (App. A, last-token steering).
        alpha_scale: ``"absolute"`` (``alphas`` are ``α``) or ``"relative"`` (``α = α_rel · mean‖h‖ / ‖v‖``).
        reference_texts: texts over which ``mean‖h‖`` is taken (default the prompt); first positions are
            excluded as for the vectors.
        top_k: how many most probable tokens to record at the largest and smallest ``α``.
        keep_tokens: how many token curves to keep: the top tokens at both ends and at ``α = 0``, then the
            largest ``max_α |Δp|``, up to this many (at least the top tokens); ``None`` keeps the whole vocabulary.
        token_ids: tokens always kept (e.g. to compare resampled vectors on the same tokens).
    """

    prompt: str
    alphas: tuple[float, ...]
    layer: int | None = None
    positions: Literal["all", "last"] = "all"
    alpha_scale: Literal["absolute", "relative"] = "absolute"
    reference_texts: tuple[str, ...] | None = None
    top_k: int = 8
    keep_tokens: int | None = 64
    token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "alphas", tuple(float(a) for a in np.asarray(self.alphas, dtype=float).reshape(-1)))
        object.__setattr__(self, "token_ids", tuple(int(t) for t in self.token_ids))
        if self.reference_texts is not None:
            object.__setattr__(self, "reference_texts", tuple(check_texts(self.reference_texts, "reference_texts")))
        if self.layer is not None:
            object.__setattr__(self, "layer", int(self.layer))
        check_positions(self.positions)
        if self.alpha_scale not in ("absolute", "relative"):
            raise ValueError(f"alpha_scale={self.alpha_scale!r}: use 'absolute' or 'relative'.")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1.")


@dataclass
class NextTokenSweep(Result):
    """``Δp(z, α)`` for one prompt, one vector and a grid of ``α``, with the parameters that made it.

    Args:
        alphas: absolute strengths ``α``, sorted, containing 0.
        alphas_relative: the same grid in units of ``mean‖h‖ / ‖v‖`` (``α_rel = α ‖v‖ / mean‖h‖``).
        reference_norm: ``mean‖h‖`` at the steered layer (over the prompt or a reference set).
        token_ids: the tokens kept (all of the vocabulary, or the union of the top tokens, see
:func:`run`).
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
    parameters: dict

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


def run(lm: LoadedModel, vector: SteeringVector | torch.Tensor, params: NextTokenParameters,
        alphas_per_forward: int | None = None, reference_norm: float | None = None) -> NextTokenSweep:
    """``Δp(z | prompt, α)`` over a grid of ``α`` (Def. 3.1, Fig. 6), from one α-batched forward.

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of this model, or a 1-D tensor (then give ``layer``).
        params: the prompt, grid and options (:class:`NextTokenParameters`).
        alphas_per_forward: α values per forward pass (default all; does not change the result).
        reference_norm: ``mean‖h‖`` over ``params.reference_texts`` when the caller has it already (many prompts
            steered at one block share it); default measured here.
    """
    prompt, layer, positions, alpha_scale = params.prompt, params.layer, params.positions, params.alpha_scale
    top_k, keep_tokens = params.top_k, params.keep_tokens
    v, layer = resolve_vector(lm, vector, layer)
    grid = alpha_grid(params.alphas)
    reference = list(params.reference_texts) if params.reference_texts is not None else [prompt]
    if reference_norm is None:
        reference_norm = mean_residual_norm(lm, reference, layer)
    vector_norm = float(v.norm())
    if vector_norm == 0.0:
        raise ValueError("the steering vector is zero: P and N have the same mean activation.")
    unit = reference_norm / vector_norm
    absolute = grid * unit if alpha_scale == "relative" else grid
    log_probs = steered_next_token_log_probs(lm, prompt, v, torch.as_tensor(absolute), layer, positions,
                                             alphas_per_forward)
    probabilities = log_probs.exp().cpu()
    zero = int(np.flatnonzero(absolute == 0.0)[0])
    delta_p = probabilities - probabilities[zero]
    kept = _kept_token_ids(probabilities, delta_p, zero, top_k, keep_tokens, params.token_ids)
    vocabulary = probabilities.shape[1]
    metadata = vector.metadata() if isinstance(vector, SteeringVector) else {"layer": layer}
    parameters = {"model": lm.name, "prompt": prompt, "layer": layer, "positions": positions,
                  "alpha_scale": alpha_scale, "top_k": top_k, "keep_tokens": keep_tokens,
                  "vocabulary": vocabulary, "vector": metadata, "vector_norm": vector_norm,
                  "dtype": str(lm.dtype).replace("torch.", ""),
                  "reference": "prompt" if params.reference_texts is None else f"{len(reference)} texts"}
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


def load_or_run(lm: LoadedModel, vector, params: NextTokenParameters, folder: str | os.PathLike,
                alphas_per_forward: int | None = None) -> NextTokenSweep:
    """:func:`run`, saved under ``folder`` as ``next-token-<key>.npz`` (the key: model, dtype, vector values and
    metadata, parameters) and read back when it exists."""
    key = content_key(lm.name, str(lm.dtype), vector, params)
    return load_or_compute(Path(folder) / f"next-token-{key}.npz",
                           lambda: run(lm, vector, params, alphas_per_forward), NextTokenSweep)


def load_or_run_concept(lm: LoadedModel, concept: str, setting: str, n_texts: int, activations_dir: str | os.PathLike,
                        params: NextTokenParameters, folder: str | os.PathLike, normalise: bool = False,
                        alphas_per_forward: int | None = None) -> NextTokenSweep:
    """:func:`load_or_run` with the vector of ``concept`` at block ``params.layer`` made from its saved prompt sets
    (:func:`steerlib.vectors.concept_vectors`, N of ``setting``, ``n_texts`` texts each, optionally of unit norm)."""
    if params.layer is None:
        raise ValueError("give the block to steer: NextTokenParameters(..., layer=...).")
    vector = concept_vectors(lm, concept, setting, n_texts, activations_dir, layers=[params.layer],
                             normalise=normalise, progress=False)[params.layer]
    return load_or_run(lm, vector, params, folder, alphas_per_forward)


def resampled_sweeps(lm: LoadedModel, vectors: Sequence[SteeringVector], params: NextTokenParameters,
                     token_ids: Sequence[int], alphas_per_forward: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std of ``Δp(z, α)`` over resampled vectors (App. A error bars), for fixed ``token_ids``.

    Args:
        vectors: e.g. one layer of each :func:`steerlib.vectors.bootstrap_vectors` resampling.
        params: the sweep (its ``token_ids`` are replaced by ``token_ids``).
        token_ids: the tokens whose curves are compared (e.g. the top tokens of the full-data sweep).
        alphas_per_forward: α values per forward pass (default all; does not change the result).

    Returns:
        ``(alphas, mean, std)`` with ``mean`` and ``std`` of shape ``(len(alphas), len(token_ids))``.
    """
    if not vectors:
        raise ValueError("give at least one resampled vector.")
    params = replace(params, token_ids=tuple(int(t) for t in token_ids))
    curves = []
    for vector in vectors:
        sweep = run(lm, vector, params, alphas_per_forward)
        curves.append(np.stack([sweep.curve(int(t)) for t in token_ids], axis=1))
    stacked = np.stack(curves)
    return sweep.alphas, stacked.mean(axis=0), stacked.std(axis=0)


SHAPES = ("bump", "increasing", "decreasing", "flat")
"""Curve shapes of :func:`steerlib.theory_checks.classify_curve`, in the order :class:`NextTokenGrid` codes them."""

SIGNS = ("+", "-")
"""The two half-lines of a symmetric grid: ``α >= 0`` (read at the largest α) and ``α <= 0`` (at the smallest)."""


_PER_BLOCK_FIELDS = ("layers", "units", "vector_norms", "top_ids", "top_shapes", "top_shapes_coarse", "top_peaks",
                     "top_log_odds", "pairs", "ordered")


@dataclass
class NextTokenGrid(Result):
    """One concept's next-token curves over blocks × prompts × both signs, summarised curve by curve.

    The paper's grid (Figs. 6, A.7-A.10, Table A.2) on one model. Each block ``ℓ`` is steered with the concept's
    vector ``v^(ℓ)`` on every prompt ``c`` over one grid of *relative* strengths ``α_rel`` (``α = α_rel ·
    mean‖h^(ℓ)‖ / ‖v^(ℓ)‖``, the mean over all prompts, first positions excluded), so blocks of different residual
    norms compare. For each sign, the ``top_k`` most probable tokens at the end of that half-line are kept with the
    shape of their curve (Th. 3.3, :func:`steerlib.theory_checks.classify_curve`) on the full grid and on every
    other grid point (a verdict that changes is one that hangs on the grid step), their peak ``α_rel`` and their
    log-odds ``M(z)`` (Def. 3.2); and Th. 3.3's peak order is counted over the ``keep_tokens`` curves that change
    most (:func:`steerlib.theory_checks.peak_order`). Arrays are indexed ``[block, prompt, sign, rank]``.

    Args:
        layers: the blocks, shape ``(L,)``.
        prompts: the evaluation prompts (``P`` of them).
        alphas_relative: the grid of ``α_rel``, symmetric, containing 0.
        units: ``mean‖h^(ℓ)‖ / ‖v^(ℓ)‖`` per block (``α = α_rel · unit``).
        vector_norms: ``‖v^(ℓ)‖`` per block.
        top_ids: token ids, ``(L, P, 2, top_k)``.
        top_shapes, top_shapes_coarse: indices into :data:`SHAPES` on the full grid and on every other point.
        top_peaks: ``α_rel`` of each curve's maximum on its half-line (signed).
        top_log_odds: ``M(z)`` of each token.
        pairs, ordered: (off-target, target) pairs decided on the grid and those peaking in Th. 3.3's order,
            ``(L, P, 2)``.
        target_base_rate: share of the vocabulary with ``M(z) > 0``, what a share of target tokens compares with.
        token_strings: decoded string of every token id that appears, keyed by the id as a string.
        parameters: model, dtype, concept, setting, texts per set, prompt source, resample, sizes.
    """

    layers: np.ndarray
    prompts: list
    alphas_relative: np.ndarray
    units: np.ndarray
    vector_norms: np.ndarray
    top_ids: np.ndarray
    top_shapes: np.ndarray
    top_shapes_coarse: np.ndarray
    top_peaks: np.ndarray
    top_log_odds: np.ndarray
    pairs: np.ndarray
    ordered: np.ndarray
    target_base_rate: float
    token_strings: dict
    parameters: dict

    def select_blocks(self, layers: Sequence[int]) -> NextTokenGrid:
        """The same grid restricted to ``layers`` (blocks it holds), in their order."""
        held = self.layers.tolist()
        absent = [layer for layer in layers if layer not in held]
        if absent:
            raise ValueError(f"blocks {absent} are not in this grid (it holds {held}).")
        index = [held.index(layer) for layer in layers]
        return replace(self, **{name: getattr(self, name)[index] for name in _PER_BLOCK_FIELDS})


def _half_line_summary(sweep: NextTokenSweep, unit: float, log_odds: np.ndarray, sign: str, top_k: int) -> dict:
    from steerlib.theory_checks import classify, classify_curve, peak_order

    inside = sweep.alphas >= 0 if sign == "+" else sweep.alphas <= 0
    alphas = sweep.alphas[inside]
    ends = (0.0, np.inf) if sign == "+" else (-np.inf, 0.0)
    coarse = np.arange(len(alphas))[::-2][::-1] if sign == "+" else np.arange(len(alphas))[::2]
    top = sweep.top_tokens("max" if sign == "+" else "min", top_k)
    shapes, shapes_coarse, peaks = [], [], []
    for token_id in top:
        curve = sweep.curve(int(token_id))[inside]
        shape, peak = classify_curve(alphas, curve)
        shapes.append(SHAPES.index(shape))
        shapes_coarse.append(SHAPES.index(classify_curve(alphas[coarse], curve[coarse])[0]))
        peaks.append(peak / unit)
    order = peak_order(classify(sweep, sweep.token_ids, alpha_range=ends), log_odds,
                       alpha_end=float(alphas[-1] if sign == "+" else alphas[0]))
    return {"ids": top, "shapes": shapes, "shapes_coarse": shapes_coarse, "peaks": peaks,
            "log_odds": log_odds[top], "pairs": order.n_pairs, "ordered": order.n_ordered}


def run_grid(lm: LoadedModel, vectors: dict[int, SteeringVector], log_odds: np.ndarray, prompts: Sequence[str],
             alphas_relative: Sequence[float], top_k: int = 8, keep_tokens: int = 32,
             alphas_per_forward: int | None = None, parameters: dict | None = None,
             progress: bool = True) -> NextTokenGrid:
    """:class:`NextTokenGrid` of one concept: every block of ``vectors`` steered on every prompt.

    Args:
        lm: the model.
        vectors: ``{block: v^(ℓ)}``, e.g. :func:`steerlib.vectors.concept_vectors` with ``layers=None``.
        log_odds: ``M(z)`` over the vocabulary (:func:`steerlib.vectors.concept_log_odds`), which says which tokens
            are target tokens (Lemma B.4 as a definition).
        prompts: the evaluation prompts.
        alphas_relative: the grid of ``α_rel`` (symmetric, with an even number of magnitudes per side so that
            every other point keeps both ends).
        top_k: curves kept per half-line (the most probable tokens at its end).
        keep_tokens: curves over which the peak order is counted.
        alphas_per_forward: α values per forward pass (memory).
        parameters: recorded with the result (concept, setting, source, ...).
        progress: a progress bar over blocks.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    prompts = check_texts(prompts, "prompts")
    grid = alpha_grid(alphas_relative)
    if not np.allclose(grid, -grid[::-1]) or (len(grid) // 2) % 2:
        raise ValueError(f"alphas_relative must be symmetric with an even number of magnitudes per side, got "
                         f"{len(grid) // 2}: e.g. symmetric_alpha_grid(16, 20, 'log', 0.02).")
    layers = sorted(vectors)
    shape = (len(layers), len(prompts), len(SIGNS), top_k)
    fields = {name: np.zeros(shape, dtype) for name, dtype in
              (("ids", np.int64), ("shapes", np.int8), ("shapes_coarse", np.int8), ("peaks", np.float32),
               ("log_odds", np.float32))}
    pairs = np.zeros(shape[:3], np.int32)
    ordered = np.zeros(shape[:3], np.int32)
    units, vector_norms, strings = np.zeros(len(layers)), np.zeros(len(layers)), {}
    for i, layer in enumerate(tqdm(layers, desc="blocks", disable=not progress)):
        vector = vectors[layer]
        reference_norm = mean_residual_norm(lm, prompts, layer)
        vector_norms[i] = float(vector.vector.norm())
        units[i] = reference_norm / vector_norms[i]
        for j, prompt in enumerate(prompts):
            params = NextTokenParameters(prompt, grid, layer=layer, alpha_scale="relative", top_k=top_k,
                                         keep_tokens=keep_tokens, reference_texts=tuple(prompts))
            sweep = run(lm, vector, params, alphas_per_forward, reference_norm=reference_norm)
            for s, sign in enumerate(SIGNS):
                summary = _half_line_summary(sweep, units[i], log_odds, sign, top_k)
                for name, values in fields.items():
                    values[i, j, s] = summary[name]
                pairs[i, j, s], ordered[i, j, s] = summary["pairs"], summary["ordered"]
            strings.update({str(t): sweep.token(int(t)) for t in sweep.top_at_max[:top_k]})
            strings.update({str(t): sweep.token(int(t)) for t in sweep.top_at_min[:top_k]})
    recorded = {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "top_k": top_k,
                "keep_tokens": keep_tokens, **(parameters or {}), "machine": machine_description(lm.device),
                "seconds": round(time.perf_counter() - started, 1)}
    return NextTokenGrid(
        layers=np.asarray(layers, dtype=np.int64), prompts=list(prompts), alphas_relative=grid.astype(np.float64),
        units=units, vector_norms=vector_norms, top_ids=fields["ids"], top_shapes=fields["shapes"],
        top_shapes_coarse=fields["shapes_coarse"], top_peaks=fields["peaks"], top_log_odds=fields["log_odds"],
        pairs=pairs, ordered=ordered, target_base_rate=float(np.mean(log_odds > 0)), token_strings=strings,
        parameters=recorded)


def load_or_run_concept_grid(lm: LoadedModel, concept: str, setting: str, n_texts: int,
                             activations_dir: str | os.PathLike, folder: str | os.PathLike, prompts: Sequence[str],
                             alphas_relative: Sequence[float], layers: Sequence[int | str] | None = None,
                             resample: int | None = None, prompt_folder: str | os.PathLike | None = None,
                             source: str = "generated", top_k: int = 8, keep_tokens: int = 32,
                             alphas_per_forward: int | None = None, progress: bool = True) -> NextTokenGrid:
    """:func:`run_grid` for ``concept``'s vectors from its prompt sets, saved under ``folder``, resumable block by
    block.

    The blocks already in a file of ``folder`` computed with the same model, dtype, prompt sets, prompts, grid and
    sizes (and the same ``‖v^(ℓ)‖``) are read back, by any version of steerlib's code; only the others are steered,
    into a new file ``next-token-grid-<concept>-<setting>-<key>.npz``. Widening ``layers`` later therefore costs
    only the new blocks. Returns the grid of ``layers``, in their order.

    Args:
        concept, setting, n_texts, activations_dir: as in :func:`steerlib.vectors.concept_vectors`.
        folder: where the results go.
        prompts, alphas_relative, top_k, keep_tokens, alphas_per_forward: as in :func:`run_grid`.
        layers: blocks (indices or ``"early"``/``"middle"``/``"last"``); default every block.
        resample: ``None`` for the vector of all texts, ``r`` for the ``r``-th bootstrap resampling of P and N
            (App. A error bars; :func:`steerlib.vectors.concept_bootstrap_vectors` with seed 0).
        prompt_folder, source: the prompt-set files (default ``data/prompt_sets/``) and a name for them, recorded.
    """
    layers = list(dict.fromkeys(lm.check_layers(layers)))
    if resample is None:
        vectors = concept_vectors(lm, concept, setting, n_texts, activations_dir, layers=layers, progress=progress,
                                  prompt_folder=prompt_folder)
    else:
        vectors = concept_bootstrap_vectors(lm, concept, setting, n_texts, activations_dir, layers=layers,
                                            n_resamples=resample + 1, progress=progress,
                                            prompt_folder=prompt_folder)[resample]
    log_odds = concept_log_odds(lm, concept, setting, n_texts, activations_dir, progress, prompt_folder)
    parameters = {"concept": concept, "setting": setting, "n_texts": n_texts, "source": source,
                  "resample": resample, "first_position": "exclude"}
    grid = alpha_grid(alphas_relative)
    wanted = {"model": lm.name, "dtype": str(lm.dtype).replace("torch.", ""), "top_k": top_k,
              "keep_tokens": keep_tokens, **parameters}
    norms = {layer: float(vectors[layer].vector.norm()) for layer in layers}
    found = {}
    for path in sorted(Path(folder).glob(f"next-token-grid-{concept}-{setting}-*.npz")):
        saved = NextTokenGrid.load(path)
        if _same_grid(saved, wanted, list(prompts), grid, norms):
            found.update({int(layer): saved for layer in saved.layers if int(layer) in norms})
    missing = [layer for layer in layers if layer not in found]
    if missing:
        key = content_key(lm.name, str(lm.dtype), [vectors[layer] for layer in missing], list(prompts),
                          list(grid), top_k, keep_tokens, parameters)
        path = Path(folder) / f"next-token-grid-{concept}-{setting}-{key}.npz"
        computed = load_or_compute(path, lambda: run_grid(lm, {layer: vectors[layer] for layer in missing}, log_odds,
                                                          prompts, alphas_relative, top_k, keep_tokens,
                                                          alphas_per_forward, parameters, progress),
                                   NextTokenGrid, reuse_other_versions=True)
        found.update({int(layer): computed for layer in computed.layers})
    return join_blocks([found[layer].select_blocks([layer]) for layer in layers])


def _same_grid(saved: NextTokenGrid, wanted: dict, prompts: list, grid: np.ndarray, norms: dict) -> bool:
    """Whether ``saved`` was computed with the parameters ``wanted``, on ``prompts`` and ``grid``, with vectors of
    the norms ``norms`` at the blocks they share (a changed prompt set changes the norms)."""
    if any(saved.parameters.get(name) != value for name, value in wanted.items()):
        return False
    if saved.prompts != prompts or saved.alphas_relative.shape != grid.shape:
        return False
    if not np.allclose(saved.alphas_relative, grid, rtol=1e-9, atol=0.0):
        return False
    return all(np.isclose(norm, norms[int(layer)], rtol=1e-4)
               for layer, norm in zip(saved.layers, saved.vector_norms) if int(layer) in norms)


def join_blocks(grids: Sequence[NextTokenGrid]) -> NextTokenGrid:
    """One :class:`NextTokenGrid` of the blocks of ``grids`` (same concept, prompts and grid), in their order; the
    seconds recorded are those of the distinct runs, summed."""
    if not grids:
        raise ValueError("no grids to join: give at least one NextTokenGrid.")
    first = grids[0]
    runs = {id(g.parameters): g.parameters.get("seconds", 0.0) for g in grids}
    strings = {key: value for g in grids for key, value in g.token_strings.items()}
    joined = replace(first, **{name: np.concatenate([getattr(g, name) for g in grids]) for name in _PER_BLOCK_FIELDS},
                     token_strings=strings, parameters={**first.parameters, "seconds": round(sum(runs.values()), 1)})
    if len(set(joined.layers.tolist())) != joined.layers.size:
        raise ValueError(f"blocks {joined.layers.tolist()} repeat: join grids of distinct blocks.")
    return joined
