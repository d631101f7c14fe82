"""The paper's grid on one model — blocks × concepts × prompts — computed once, shipped, and read back.

Taught in the chapter "The paper's grid" (``book/llm/grid.md``). The LLM chapters each steer a slice (one model,
a few concepts, one to three blocks, one prompt); this module computes the whole grid of one model into
``data/results/<model>/`` and reads it back as tables, so the grid chapter renders any model's results (the
embedded one shipped here, a GPU run dropped into the folder later) with no model call.

- :func:`compute_next_token` writes one :class:`steerlib.experiments.next_token.NextTokenGrid` per (concept,
  setting) with every block steered, and bootstrap resamplings of P and N at a few blocks (App. A error bars).
- :func:`next_token_table` reads them into one row per curve; :func:`shares` turns a boolean column into a share
  per (block, concept) with a bootstrap interval over prompts; :func:`resampling_spread` gives the interval over
  resampled prompt sets.

Example:
    >>> table = next_token_table(load_next_token_grids(results_folder("SmolLM2-135M-Instruct")))
    >>> shares(table[table.sign == "+"], "bump")            # share of curves that bump, per block and concept
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from steerlib.store import data_path

RESULTS = "results"


def results_folder(model_name: str, root: str | os.PathLike | None = None) -> Path:
    """``data/results/<model>/`` (or ``<root>/<model>/``), where a model's grid results live."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in model_name)
    return (Path(root) if root is not None else data_path(RESULTS)) / safe


def compute_next_token(lm, concepts: Sequence[str], folder: str | os.PathLike, prompts: Sequence[str],
                       alphas_relative: Sequence[float], n_texts: int, activations_dir: str | os.PathLike,
                       settings: Sequence[str] = ("random", "contrastive"), layers=None,
                       resample_layers=("early", "middle", "last"), n_resamples: int = 4,
                       prompt_folder: str | os.PathLike | None = None, source: str = "generated",
                       alphas_per_forward: int | None = None, progress: bool = True) -> list:
    """Every (concept, setting) of the next-token grid into ``folder``, resumable file by file.

    Args:
        lm: the model.
        concepts: e.g. :data:`steerlib.prompts.CONCEPTS`.
        folder: e.g. :func:`results_folder` of the model (``next_token/`` is added).
        prompts: the evaluation prompts.
        alphas_relative: the relative grid (:func:`steerlib.experiments.next_token.run_grid`).
        n_texts, activations_dir, prompt_folder, source: the prompt sets (see
            :func:`steerlib.vectors.concept_vectors`).
        settings: ``"random"`` and/or ``"contrastive"`` N.
        layers: blocks steered (default every block).
        resample_layers: blocks where the vector of ``n_resamples`` bootstrap resamplings of P and N is steered too
            (first setting only); ``()`` for none.
        n_resamples: resamplings per concept.
        alphas_per_forward: α values per forward pass (memory).
        progress: progress bars.
    """
    from tqdm.auto import tqdm

    from steerlib.experiments import next_token

    folder = Path(folder) / "next_token"
    jobs = [(concept, setting, layers, None) for concept in concepts for setting in settings]
    if resample_layers:
        jobs += [(concept, settings[0], resample_layers, r) for concept in concepts for r in range(n_resamples)]
    grids = []
    for concept, setting, blocks, resample in tqdm(jobs, desc="next-token grid", disable=not progress):
        grids.append(next_token.load_or_run_concept_grid(
            lm, concept, setting, n_texts, activations_dir, folder, prompts, alphas_relative, blocks, resample,
            prompt_folder, source, alphas_per_forward=alphas_per_forward, progress=False))
    return grids


def load_next_token_grids(folder: str | os.PathLike) -> list:
    """Every :class:`~steerlib.experiments.next_token.NextTokenGrid` saved under ``folder/next_token/``."""
    from steerlib.experiments.next_token import NextTokenGrid

    paths = sorted((Path(folder) / "next_token").glob("next-token-grid-*.npz"))
    if not paths:
        raise ValueError(f"no next-token grid results in {Path(folder) / 'next_token'}: compute them first "
                         "(steerlib.grid.compute_next_token, or the grid chapter with compute=True).")
    return [NextTokenGrid.load(path) for path in paths]


def next_token_table(grids: Sequence, concept_words: dict[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """One row per curve of the grids: where it was measured and what it did.

    Columns: ``concept, setting, resample`` (-1 for all texts), ``block, depth`` (block / (n_blocks − 1) is not
    known here, so ``depth`` is the block's rank among those steered, 0 to 1), ``prompt`` (index), ``sign``
    (``+``/``-``), ``rank`` (1 = most probable at the end of the half-line), ``token``, ``shape``, ``bump``,
    ``bump_coarse`` (the verdict on every other grid point), ``peak`` (``α_rel``), ``log_odds``, ``target``
    (``M > 0``), ``base_rate`` (share of the vocabulary with ``M > 0``) and, given ``concept_words``,
    ``concept_word`` (:func:`steerlib.prompts.is_concept_word`).
    """
    from steerlib.experiments.next_token import SHAPES, SIGNS
    from steerlib.prompts import is_concept_word

    frames = []
    for grid in grids:
        n_layers, n_prompts, n_signs, k = grid.top_ids.shape
        index = np.indices(grid.top_ids.shape).reshape(4, -1)
        p = grid.parameters
        resample = -1 if p.get("resample") is None else int(p["resample"])
        tokens = [grid.token_strings[str(t)] for t in grid.top_ids.reshape(-1)]
        frame = pd.DataFrame({
            "model": p["model"], "concept": p["concept"], "setting": p["setting"], "source": p.get("source", ""),
            "resample": resample, "block": grid.layers[index[0]], "prompt": index[1],
            "sign": np.asarray(SIGNS)[index[2]], "rank": index[3] + 1, "token": tokens,
            "shape": np.asarray(SHAPES)[grid.top_shapes.reshape(-1)],
            "bump": grid.top_shapes.reshape(-1) == SHAPES.index("bump"),
            "bump_coarse": grid.top_shapes_coarse.reshape(-1) == SHAPES.index("bump"),
            "peak": grid.top_peaks.reshape(-1).astype(float), "log_odds": grid.top_log_odds.reshape(-1).astype(float),
            "base_rate": grid.target_base_rate,
        })
        frame["target"] = frame["log_odds"] > 0
        if concept_words is not None:
            words = concept_words[p["concept"]]
            frame["concept_word"] = [is_concept_word(token, words) for token in tokens]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def peak_order_table(grids: Sequence) -> pd.DataFrame:
    """Th. 3.3's peak-order counts per (concept, setting, resample, block, prompt, sign): ``pairs`` of (off-target,
    target) rising curves decided on the grid and ``ordered``, those where the off-target token peaks first."""
    from steerlib.experiments.next_token import SIGNS

    frames = []
    for grid in grids:
        index = np.indices(grid.pairs.shape).reshape(3, -1)
        p = grid.parameters
        frames.append(pd.DataFrame({
            "concept": p["concept"], "setting": p["setting"],
            "resample": -1 if p.get("resample") is None else int(p["resample"]),
            "block": grid.layers[index[0]], "prompt": index[1], "sign": np.asarray(SIGNS)[index[2]],
            "pairs": grid.pairs.reshape(-1), "ordered": grid.ordered.reshape(-1)}))
    return pd.concat(frames, ignore_index=True)


def _ratio(frame: pd.DataFrame, column: str, total: str | None) -> float:
    if total is None:
        return float(frame[column].mean()) if len(frame) else float("nan")
    denominator = frame[total].sum()
    return float(frame[column].sum() / denominator) if denominator else float("nan")


def shares(table: pd.DataFrame, column: str, by: Sequence[str] = ("block", "concept"), total: str | None = None,
           n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Share of ``column`` per group, with a bootstrap interval over prompts.

    ``total=None``: the mean of a boolean column (e.g. ``bump``); otherwise ``sum(column) / sum(total)`` (e.g.
    ``ordered`` over ``pairs``). The interval resamples the evaluation prompts with replacement (the same draw for
    every group, so groups stay comparable) and takes the ``level`` percentile interval of the share.

    Returns:
        a frame indexed by ``by`` with columns ``share``, ``low``, ``high``, ``n`` (rows or total).
    """
    by = list(by)
    prompts = np.sort(table["prompt"].unique())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(prompts), size=(n_boot, len(prompts)))
    rows = []
    for key, group in table.groupby(by, sort=True):
        per_prompt = group.groupby("prompt")
        numerator = per_prompt[column].sum().reindex(prompts, fill_value=0).to_numpy(float)
        denominator = (per_prompt[total].sum() if total else per_prompt[column].size()).reindex(
            prompts, fill_value=0).to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = numerator[draws].sum(axis=1) / denominator[draws].sum(axis=1)
        low, high = np.nanpercentile(boot, [50 * (1 - level), 50 * (1 + level)]) if np.isfinite(boot).any() \
            else (np.nan, np.nan)
        rows.append((*(key if isinstance(key, tuple) else (key,)), _ratio(group, column, total), low, high, denominator.sum()))
    return pd.DataFrame(rows, columns=[*by, "share", "low", "high", "n"]).set_index(by)


def resampling_spread(table: pd.DataFrame, column: str, by: Sequence[str] = ("block", "concept"),
                      total: str | None = None, level: float = 0.95) -> pd.DataFrame:
    """Share of ``column`` per group for each bootstrap resampling of P and N (``resample >= 0`` rows), and the
    ``level`` percentile interval over resamplings: how much the verdict moves when the prompt sets are redrawn."""
    resampled = table[table["resample"] >= 0]
    if resampled.empty:
        raise ValueError("no resampled vectors in this table: compute the grid with resample_layers.")
    per_resample = resampled.groupby([*by, "resample"]).apply(
        lambda group: _ratio(group, column, total), include_groups=False)
    grouped = per_resample.groupby(level=list(range(len(by))))
    return pd.DataFrame({"low": grouped.quantile(0.5 * (1 - level)), "high": grouped.quantile(0.5 * (1 + level)),
                         "n_resamples": grouped.size()})
