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
import time
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
                       layers=None, contrastive_layers=None,
                       resample_layers=("early", "middle", "last"), n_resamples: int = 3,
                       prompt_folder: str | os.PathLike | None = None, source: str = "generated",
                       alphas_per_forward: int | None = None, progress: bool = True) -> list:
    """Every concept of the next-token grid into ``folder/next_token/``, resumable block by block
    (:func:`steerlib.experiments.next_token.load_or_run_concept_grid`).

    Args:
        lm: the model.
        concepts: e.g. :data:`steerlib.prompts.CONCEPTS`.
        folder: e.g. :func:`results_folder` of the model.
        prompts: the evaluation prompts.
        alphas_relative: the relative grid (:func:`steerlib.experiments.next_token.run_grid`).
        n_texts, activations_dir, prompt_folder, source: the prompt sets (see
            :func:`steerlib.vectors.concept_vectors`).
        layers: blocks steered with the N random vector (``None``: every block).
        contrastive_layers: blocks steered with the N contrastive vector (``None``: those of ``layers``; ``()``
            for none).
        resample_layers: blocks where the vectors of ``n_resamples`` bootstrap resamplings of P and N random are
            steered too (``()`` for none).
        alphas_per_forward: α values per forward pass (memory).
        progress: progress bars.
    """
    from tqdm.auto import tqdm

    from steerlib.experiments import next_token

    folder = Path(folder) / "next_token"
    layers = lm.check_layers(layers)
    contrastive_layers = layers if contrastive_layers is None else contrastive_layers
    jobs = [(concept, "random", layers, None) for concept in concepts]
    if len(contrastive_layers):
        jobs += [(concept, "contrastive", contrastive_layers, None) for concept in concepts]
    if resample_layers:
        jobs += [(concept, "random", resample_layers, r) for concept in concepts for r in range(n_resamples)]
    grids = []
    for concept, setting, blocks, resample in tqdm(jobs, desc="next-token grid", disable=not progress):
        grids.append(next_token.load_or_run_concept_grid(
            lm, concept, setting, n_texts, activations_dir, folder, prompts, alphas_relative, blocks, resample,
            prompt_folder, source, alphas_per_forward=alphas_per_forward, progress=False))
    return grids


def _vectors_and_units(lm, concept, setting, n_texts, activations_dir, layers, prompts, prompt_folder):
    from steerlib.models import mean_residual_norm
    from steerlib.vectors import concept_vectors

    vectors = concept_vectors(lm, concept, setting, n_texts, activations_dir, layers=layers, progress=False,
                              prompt_folder=prompt_folder)
    return {layer: (v, mean_residual_norm(lm, prompts, layer) / v.norm) for layer, v in vectors.items()}


def compute_concept_probability(lm, concepts: Sequence[str], folder: str | os.PathLike, prompts: Sequence[str],
                                alphas_relative: Sequence[float], n_texts: int, activations_dir: str | os.PathLike,
                                setting: str = "contrastive", layers=("early", "middle", "last"), n_samples: int = 4,
                                max_new_tokens: int = 24, judge=None, seed: int = 0,
                                prompt_folder: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Concept probability (Sec. 5, Figs. A.11, A.12) of every concept at a few blocks, into ``folder``.

    The grid is relative, ``α = α_rel · mean‖h^(ℓ)‖ / ‖v^(ℓ)‖`` (the mean over ``prompts``), so that one grid fits
    every block; each sweep is a :class:`steerlib.experiments.concept_probability.ConceptSweep` (completions kept,
    judged by ``judge``: default the embedding judge calibrated on our labels), saved under
    ``folder/concept_probability/``. Returns ``{(concept, block): sweep}``.
    """
    from tqdm.auto import tqdm

    from steerlib.experiments import concept_probability
    from steerlib.judge import calibrated_embedding_judge

    judge = judge if judge is not None else calibrated_embedding_judge()
    out = Path(folder) / "concept_probability"
    layers = lm.check_layers(list(layers))
    grid = np.asarray(alphas_relative, dtype=float)
    sweeps = {}
    for concept in tqdm(concepts, desc="concept probability", disable=not progress):
        for layer, (v, unit) in _vectors_and_units(lm, concept, setting, n_texts, activations_dir, layers, prompts,
                                                   prompt_folder).items():
            params = concept_probability.ConceptParameters(prompts, grid * unit, n_samples, max_new_tokens, seed)
            sweeps[concept, layer] = concept_probability.load_or_run(lm, v, judge, params, out, progress=False)
    return sweeps


def compute_cross_entropy(lm, concepts: Sequence[str], folder: str | os.PathLike, blocks,
                          alphas_relative: Sequence[float], n_texts: int, activations_dir: str | os.PathLike,
                          setting: str = "random", layers=("early", "middle", "last"), corpus: str = "",
                          prompt_folder: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """``ΔCE(α)`` (Th. 3.8, Fig. A.13) of every concept at a few blocks, on the corpus ``blocks``, into
    ``folder/cross_entropy/`` (:class:`steerlib.experiments.cross_entropy.CrossEntropySweep`, relative α: the unit
    is measured on the scored tokens). Returns ``{(concept, block): sweep}``."""
    from tqdm.auto import tqdm

    from steerlib.experiments import cross_entropy
    from steerlib.vectors import concept_log_odds, concept_vectors

    out = Path(folder) / "cross_entropy"
    layers = lm.check_layers(list(layers))
    sweeps = {}
    for concept in tqdm(concepts, desc="cross-entropy", disable=not progress):
        vectors = concept_vectors(lm, concept, setting, n_texts, activations_dir, layers=layers, progress=False,
                                  prompt_folder=prompt_folder)
        log_odds = concept_log_odds(lm, concept, setting, n_texts, activations_dir, False, prompt_folder)
        for layer in layers:
            params = cross_entropy.CrossEntropyParameters(alphas_relative, layer=layer, alpha_scale="relative",
                                                          corpus=corpus)
            sweeps[concept, layer] = cross_entropy.load_or_run(lm, blocks, vectors[layer], params, out,
                                                               log_odds=log_odds, progress=False)
    return sweeps


def first_position_comparison(lm, concepts: Sequence[str], n_texts: int, activations_dir: str | os.PathLike,
                              layer: int, prompts: Sequence[str], alpha: float, setting: str = "random",
                              top_k: int = 8, prompt_folder: str | os.PathLike | None = None) -> pd.DataFrame:
    """The authors' vector (first position of every text kept in the means) beside the book's (left out), per
    concept at one block: cosine, norms, and how many of the ``top_k`` tokens winning at ``α`` (absolute, the
    same for both) they share, averaged over ``prompts``."""
    from steerlib.steering import steered_next_token_log_probs
    from steerlib.vectors import concept_vectors

    rows = []
    for concept in concepts:
        pair = {first: concept_vectors(lm, concept, setting, n_texts, activations_dir, layers=[layer],
                                       first_position=first, progress=False, prompt_folder=prompt_folder)[layer]
                for first in ("include", "exclude")}
        shared = []
        for prompt in prompts:
            tops = [set(steered_next_token_log_probs(lm, prompt, v, [alpha], layer)[0].topk(top_k).indices.tolist())
                    for v in pair.values()]
            shared.append(len(tops[0] & tops[1]))
        include, exclude = pair["include"].vector.double(), pair["exclude"].vector.double()
        rows.append({"concept": concept, "block": layer, "alpha": alpha,
                     "cosine": float(include @ exclude / (include.norm() * exclude.norm())),
                     "norm_authors": float(include.norm()), "norm_book": float(exclude.norm()),
                     "shared_top_tokens": float(np.mean(shared)), "top_k": top_k})
    return pd.DataFrame(rows)


def joined_labels(sweep, judge) -> np.ndarray:
    """The authors' concept probability: each (α, prompt) labelled once over its ``K`` completions joined ("any of
    K"), where the paper's text averages per-completion labels (:attr:`ConceptSweep.probability`). Returns the
    share of prompts labelled 1 at each α."""
    texts = [" ".join(samples) for per_alpha in sweep.completions for samples in per_alpha]
    labels = np.asarray(judge(texts, sweep.parameters["concept"]).labels, dtype=float)
    return labels.reshape(len(sweep.completions), -1).mean(axis=1)


def load_results(folder: str | os.PathLike, kind: str) -> list:
    """Every saved sweep of ``kind`` (``"concept_probability"`` or ``"cross_entropy"``) under ``folder/<kind>/``."""
    from steerlib.experiments import concept_probability, cross_entropy

    types = {"concept_probability": concept_probability.ConceptSweep,
             "cross_entropy": cross_entropy.CrossEntropySweep}
    if kind not in types:
        raise ValueError(f"kind={kind!r}: use one of {', '.join(types)}.")
    paths = sorted((Path(folder) / kind).glob("*.npz"))
    if not paths:
        raise ValueError(f"no {kind} results in {Path(folder) / kind}: compute them first (steerlib.grid, or the "
                         "grid chapter with compute=True).")
    return [types[kind].load(path) for path in paths]


MANIFEST = "manifest.json"


def record_run(folder: str | os.PathLike, part: str, concept: str, seconds: float, sizes: dict, machine: dict,
               cpu_seconds: float | None = None) -> None:
    """Add one computed (part, concept) to ``folder/manifest.json``: wall seconds, CPU seconds of the process (all
    threads; on a machine shared with other work, ``cpu_seconds / torch_threads`` is the wall time it would have
    taken alone), sizes and machine, so the grid chapter says what produced every figure. A (part, concept) computed
    again (a resumed or widened grid) adds its seconds to those recorded and counts the ``runs``; the sizes and machine
    are the last run's. Safe when several runner jobs write at once (a file lock)."""
    import json

    from filelock import FileLock

    from steerlib.store import atomic_write

    path = Path(folder) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        manifest = json.loads(path.read_text()) if path.exists() else {}
        before = manifest.setdefault(part, {}).get(concept, {})
        if before.get("cpu_seconds") is not None and cpu_seconds is not None:
            cpu_seconds += before["cpu_seconds"]
        elif before:
            cpu_seconds = None
        manifest[part][concept] = {"seconds": round(float(seconds) + before.get("seconds", 0.0), 1), "sizes": sizes,
                                   "machine": machine, "runs": before.get("runs", 1 if before else 0) + 1,
                                   "cpu_seconds": None if cpu_seconds is None else round(cpu_seconds, 1)}
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n"))


def read_manifest(folder: str | os.PathLike) -> dict:
    """``folder/manifest.json`` (:func:`record_run`), or an empty dict when the folder has none."""
    import json

    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def compute_model_grid(lm, concepts: Sequence[str], folder: str | os.PathLike, sizes: dict,
                       activations_dir: str | os.PathLike, parts: Sequence[str] = ("next_token", "concept_probability",
                                                                                   "cross_entropy", "authors"),
                       prompt_folder: str | os.PathLike | None = None, source: str = "generated",
                       progress: bool = True) -> None:
    """The whole grid of one model for ``concepts``, part by part, each (part, concept) timed into the manifest.

    ``sizes`` holds what the parts need: ``prompts``, ``n_texts``, ``next_token_alphas`` (relative), ``layers``
    (N random next-token blocks, ``None``: every block), ``contrastive_layers`` (``None``: those of ``layers``),
    ``resample_layers``, ``n_resamples``, ``figure_layers`` (blocks of the concept-probability and ΔCE parts),
    ``concept_alphas`` and ``n_samples``, ``max_new_tokens``, ``cp_prompts`` (concept probability), ``ce_alphas``,
    ``ce_blocks`` (token ids) and ``corpus`` (ΔCE), ``authors_layer`` and ``authors_alpha`` (the authors' choices).
    """
    from steerlib.judge import calibrated_embedding_judge
    from steerlib.store import atomic_write, machine_description

    machine = machine_description(lm.device)
    recorded = {key: (np.asarray(value).tolist() if key in ("next_token_alphas", "concept_alphas", "ce_alphas")
                      else value) for key, value in sizes.items() if key != "ce_blocks"}
    judge = calibrated_embedding_judge() if {"concept_probability", "authors"} & set(parts) else None
    for concept in concepts:
        for part in parts:
            started, cpu_started = time.perf_counter(), time.process_time()
            if part == "next_token":
                compute_next_token(lm, [concept], folder, sizes["prompts"], sizes["next_token_alphas"],
                                   sizes["n_texts"], activations_dir, layers=sizes["layers"],
                                   contrastive_layers=sizes["contrastive_layers"],
                                   resample_layers=sizes["resample_layers"], n_resamples=sizes["n_resamples"],
                                   prompt_folder=prompt_folder, source=source, progress=progress)
            elif part == "concept_probability":
                compute_concept_probability(lm, [concept], folder, sizes["cp_prompts"], sizes["concept_alphas"],
                                            sizes["n_texts"], activations_dir, layers=sizes["figure_layers"],
                                            n_samples=sizes["n_samples"], max_new_tokens=sizes["max_new_tokens"],
                                            judge=judge, prompt_folder=prompt_folder, progress=False)
            elif part == "cross_entropy":
                compute_cross_entropy(lm, [concept], folder, sizes["ce_blocks"], sizes["ce_alphas"], sizes["n_texts"],
                                      activations_dir, layers=sizes["figure_layers"], corpus=sizes["corpus"],
                                      prompt_folder=prompt_folder, progress=False)
            elif part == "authors":
                table = first_position_comparison(lm, [concept], sizes["n_texts"], activations_dir,
                                                  sizes["authors_layer"], sizes["prompts"], sizes["authors_alpha"],
                                                  prompt_folder=prompt_folder)
                sweeps = compute_concept_probability(lm, [concept], folder, sizes["cp_prompts"],
                                                     sizes["concept_alphas"], sizes["n_texts"], activations_dir,
                                                     layers=sizes["figure_layers"], n_samples=sizes["n_samples"],
                                                     max_new_tokens=sizes["max_new_tokens"], judge=judge,
                                                     prompt_folder=prompt_folder, progress=False)
                joined = pd.DataFrame([{"concept": c, "block": layer, "alpha": alpha, "per_completion": p, "joined": j}
                                       for (c, layer), sweep in sweeps.items()
                                       for alpha, p, j in zip(sweep.alphas, sweep.probability,
                                                              joined_labels(sweep, judge))])
                out = Path(folder) / "authors"
                out.mkdir(parents=True, exist_ok=True)
                atomic_write(out / f"first-position-{concept}.csv", lambda tmp: table.to_csv(tmp, index=False))
                atomic_write(out / f"joined-labels-{concept}.csv", lambda tmp: joined.to_csv(tmp, index=False))
            else:
                raise ValueError(f"unknown part {part!r}: use next_token, concept_probability, cross_entropy, authors.")
            record_run(folder, part, concept, time.perf_counter() - started, recorded, machine,
                       time.process_time() - cpu_started)


def load_next_token_grids(folder: str | os.PathLike, concepts: Sequence[str] | None = None) -> list:
    """Every :class:`~steerlib.experiments.next_token.NextTokenGrid` saved under ``folder/next_token/`` (of
    ``concepts`` only, when given)."""
    from steerlib.experiments.next_token import NextTokenGrid

    paths = sorted((Path(folder) / "next_token").glob("next-token-grid-*.npz"))
    grids = [NextTokenGrid.load(path) for path in paths]
    grids = [g for g in grids if concepts is None or g.parameters["concept"] in concepts]
    if not grids:
        raise ValueError(f"no next-token grid results{'' if concepts is None else f' for {list(concepts)}'} in "
                         f"{Path(folder) / 'next_token'}: compute them first (steerlib.grid.compute_next_token, or the "
                         "grid chapter with compute=True).")
    return grids


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
            if p["concept"] not in concept_words:
                raise ValueError(f"no concept words given for {p['concept']!r}: pass a list for every concept of the "
                                 "grids (steerlib.prompts.load_concept_words).")
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
           n_boot: int = 1000, level: float = 0.95, seed: int = 0, unit: str = "prompt") -> pd.DataFrame:
    """Share of ``column`` per group, with a bootstrap interval over prompts (or over another ``unit``).

    ``total=None``: the mean of a boolean column (e.g. ``bump``); otherwise ``sum(column) / sum(total)`` (e.g.
    ``ordered`` over ``pairs``). The interval resamples the values of ``unit`` with replacement (the evaluation
    prompts by default; ``"concept"`` for a share pooled over concepts, whose curves at large α differ more between
    concepts than between prompts) with the same draw for every group, so groups stay comparable, and takes the
    ``level`` percentile interval of the share.

    Returns:
        a frame indexed by ``by`` with columns ``share``, ``low``, ``high``, ``n`` (rows or total).
    """
    by = list(by)
    units = np.sort(table[unit].unique())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(units), size=(n_boot, len(units)))
    rows = []
    for key, group in table.groupby(by, sort=True):
        per_unit = group.groupby(unit)
        numerator = per_unit[column].sum().reindex(units, fill_value=0).to_numpy(float)
        denominator = (per_unit[total].sum() if total else per_unit[column].size()).reindex(
            units, fill_value=0).to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = numerator[draws].sum(axis=1) / denominator[draws].sum(axis=1)
        low, high = np.nanpercentile(boot, [50 * (1 - level), 50 * (1 + level)]) if np.isfinite(boot).any() \
            else (np.nan, np.nan)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, _ratio(group, column, total), low, high, denominator.sum()))
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
