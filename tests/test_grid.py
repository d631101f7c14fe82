"""The paper's grid (steerlib.grid and next_token.run_grid): each summary equals the single sweep it comes from,
tables and shares read back what was stored, bootstrap intervals cover the share, concept words match."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from steerlib import grid as grid_module
from steerlib.experiments import next_token
from steerlib.experiments.next_token import SHAPES, NextTokenGrid, NextTokenParameters, run, run_grid
from steerlib.prompts import is_concept_word
from steerlib.steering import symmetric_alpha_grid
from steerlib.theory_checks import classify_curve, peak_order, classify
from steerlib.vectors import SteeringVector
from test_models import VOCABULARY, tiny_lm

PROMPTS = ["steer me", "a b c d", "once upon"]
GRID = symmetric_alpha_grid(8, 6, "log", 0.05)


def vectors(lm, layers=(1, 2)) -> dict[int, SteeringVector]:
    out = {}
    for layer in layers:
        v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(layer))
        out[layer] = SteeringVector(v, lm.name, layer, "joy", "random", 4, 4)
    return out


@pytest.fixture(scope="module")
def computed():
    lm = tiny_lm("llama")
    log_odds = np.random.default_rng(0).normal(size=VOCABULARY)
    vs = vectors(lm)
    result = run_grid(lm, vs, log_odds, PROMPTS, GRID, top_k=3, keep_tokens=12,
                      parameters={"concept": "joy", "setting": "random", "resample": None}, progress=False)
    return lm, vs, log_odds, result


def test_each_summary_is_the_sweep_it_comes_from(computed):
    lm, vs, log_odds, result = computed
    assert result.top_ids.shape == (2, 3, 2, 3)
    i, j, layer = 1, 2, 2
    unit = result.units[i]
    params = NextTokenParameters(PROMPTS[j], GRID, layer=layer, alpha_scale="relative", top_k=3, keep_tokens=12,
                                 reference_texts=tuple(PROMPTS))
    sweep = run(lm, vs[layer], params)
    assert sweep.reference_norm / vs[layer].norm == pytest.approx(unit)
    for s, (at, inside) in enumerate((("max", sweep.alphas >= 0), ("min", sweep.alphas <= 0))):
        top = sweep.top_tokens(at, 3)
        np.testing.assert_array_equal(result.top_ids[i, j, s], top)
        for r, token in enumerate(top):
            shape, peak = classify_curve(sweep.alphas[inside], sweep.curve(int(token))[inside])
            assert SHAPES[result.top_shapes[i, j, s, r]] == shape
            assert result.top_peaks[i, j, s, r] == pytest.approx(peak / unit, rel=1e-5)
            assert result.top_log_odds[i, j, s, r] == pytest.approx(log_odds[token], rel=1e-6)
        ends = (0, np.inf) if at == "max" else (-np.inf, 0)
        order = peak_order(classify(sweep, sweep.token_ids, alpha_range=ends), log_odds,
                           alpha_end=float(sweep.alphas[inside][-1 if at == "max" else 0]))
        assert (result.pairs[i, j, s], result.ordered[i, j, s]) == (order.n_pairs, order.n_ordered)
    assert result.target_base_rate == pytest.approx(np.mean(log_odds > 0))


def test_grid_must_be_symmetric_with_an_even_count_per_side(computed):
    lm, vs, log_odds, _ = computed
    with pytest.raises(ValueError, match="even number"):
        run_grid(lm, vs, log_odds, PROMPTS, symmetric_alpha_grid(8, 5), progress=False)
    with pytest.raises(ValueError, match="symmetric"):
        run_grid(lm, vs, log_odds, PROMPTS, [0, 1, 2, 3, 4], progress=False)


def test_saved_grid_reads_back_into_tables(computed, tmp_path):
    _, _, _, result = computed
    result.save(tmp_path / "next_token" / "next-token-grid-joy-random-x.npz")
    grids = grid_module.load_next_token_grids(tmp_path)
    table = grid_module.next_token_table(grids, {"joy": [t.strip().lower() for t in result.token_strings.values()]})
    assert len(table) == result.top_ids.size
    assert table["bump"].sum() == (result.top_shapes == SHAPES.index("bump")).sum()
    assert table["target"].sum() == (result.top_log_odds > 0).sum()
    assert set(table["sign"]) == {"+", "-"} and table["resample"].eq(-1).all()
    alphabetic = [t.strip().isalpha() for t in table["token"]]
    np.testing.assert_array_equal(table["concept_word"], alphabetic)
    order = grid_module.peak_order_table(grids)
    assert order["pairs"].sum() == result.pairs.sum() and order["ordered"].sum() == result.ordered.sum()
    with pytest.raises(ValueError, match="compute them first"):
        grid_module.load_next_token_grids(tmp_path / "empty")


def test_shares_and_their_bootstrap_interval():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"block": np.repeat([1, 2], 80), "concept": "joy",
                          "prompt": np.tile(np.repeat(range(8), 10), 2),
                          "bump": np.r_[rng.random(80) < 0.8, rng.random(80) < 0.2]})
    result = grid_module.shares(table, "bump")
    for block in (1, 2):
        row = result.loc[(block, "joy")]
        assert row["share"] == pytest.approx(table[table.block == block]["bump"].mean())
        assert row["low"] <= row["share"] <= row["high"] and row["n"] == 80
    assert result.loc[(1, "joy"), "low"] > result.loc[(2, "joy"), "high"]
    counts = pd.DataFrame({"block": 1, "concept": "joy", "prompt": range(4), "ordered": [1, 2, 0, 3],
                           "pairs": [2, 2, 0, 4]})
    assert grid_module.shares(counts, "ordered", total="pairs").loc[(1, "joy"), "share"] == pytest.approx(0.75)


def test_resampling_spread_needs_resampled_rows():
    table = pd.DataFrame({"block": 1, "concept": "joy", "prompt": 0, "resample": [0, 0, 1, 1, -1],
                          "bump": [True, True, False, True, False]})
    spread = grid_module.resampling_spread(table, "bump", level=1.0)
    assert spread.loc[(1, "joy"), "low"] == 0.5 and spread.loc[(1, "joy"), "high"] == 1.0
    with pytest.raises(ValueError, match="resample_layers"):
        grid_module.resampling_spread(table[table["resample"] < 0], "bump")


@pytest.mark.parametrize("token, expected", [(" evil", True), ("Evil", True), (" depress", True), (" the", False),
                                             (" hat", False), (" hatre", True), (" with", False), (" withd", False),
                                             ("\n", False), (" evil!", False)])
def test_concept_words(token, expected):
    assert is_concept_word(token, ["evil", "depression", "hatred", "withdrawn"]) is expected


def test_results_folder_names_the_model(tmp_path):
    assert grid_module.results_folder("Qwen/Qwen3-0.6B", tmp_path) == tmp_path / "Qwen_Qwen3-0.6B"


def test_grid_result_round_trips(computed, tmp_path):
    _, _, _, result = computed
    back = NextTokenGrid.load(result.save(tmp_path / "g.npz"))
    np.testing.assert_array_equal(back.top_shapes, result.top_shapes)
    assert back.token_strings == result.token_strings and back.parameters["concept"] == "joy"
    assert next_token.SIGNS == ("+", "-")


def test_grid_chapter_computes_a_stand_in_through_the_runner_and_reads_it_back(tmp_path):
    """The experimenter's path: steerlib-run over the grid chapter with compute=True writes a model's results, and
    the chapter (compute=False) renders them with no model call."""
    from pathlib import Path

    from stand_ins import save_stand_in
    from steerlib.runs import collect, grid_jobs, run_grid as run_chapters

    model = str(save_stand_in("qwen3", tmp_path / "qwen3"))
    chapter = str(Path(__file__).resolve().parents[1] / "book" / "llm" / "grid.md")
    small = {"model": model, "concepts": ["evil"], "n_texts": 4, "layers": [1, 2], "n_alphas": 4, "alpha_min": 0.1,
             "n_resamples": 2, "cp_n_alphas": 1, "cp_prompts": 1, "n_samples": 2, "max_new_tokens": 4,
             "ce_n_alphas": 2, "n_tokens": 62, "block_length": 32}
    out = tmp_path / "runs-True"
    for compute in (True, False):
        jobs = grid_jobs([chapter], {key: [value] for key, value in {**small, "compute": compute}.items()})
        outcomes = run_chapters(jobs, out, progress=False)
        failed = jobs[0].folder(out) / "failed.json"
        assert outcomes.get("done") == jobs, failed.read_text() if failed.exists() else outcomes
    folder = grid_module.results_folder(model, tmp_path / "runs-True" / "results")
    manifest = grid_module.read_manifest(folder)
    assert set(manifest) == {"next_token", "concept_probability", "cross_entropy", "authors"}
    assert all(run["seconds"] > 0 for part in manifest.values() for run in part.values())
    grids = grid_module.load_next_token_grids(folder)
    assert {tuple(g.layers) for g in grids} == {(1, 2), (0, 2, 3)}
    assert len(grids) == 2 + 2  # two settings, two resamplings
    rows = collect(out)
    assert (rows["compute"] == False).sum() >= 9  # noqa: E712 (a column of booleans)


def test_grid_plots_draw_shares_and_marks():
    import matplotlib

    matplotlib.use("Agg")
    from steerlib import plots

    table = pd.DataFrame({"block": np.repeat([0, 1], 40), "concept": np.tile(np.repeat(["evil", "joy"], 20), 2),
                          "prompt": np.tile(np.arange(20), 4), "bump": np.r_[np.ones(20), np.zeros(60)].astype(bool)})
    shares = grid_module.shares(table, "bump")
    ax = plots.plot_share_heatmap(shares, reference=0.5, title="bumps")
    marks = [t.get_text() for t in ax.texts]
    assert marks == ["+", "−", "−", "−"] and ax.get_title() == "bumps"
    ax = plots.plot_share_heatmap(shares, reference={"evil": 0.5, "joy": -0.1})  # one reference per concept
    assert [t.get_text() for t in ax.texts] == ["+", "+", "−", "+"]
    ax = plots.plot_share_by_block({"bump": grid_module.shares(table, "bump", by=["block"])}, reference=0.5)
    assert len(ax.lines) == 2 and list(ax.lines[0].get_ydata()) == [0.5, 0.0]


def test_shares_resample_the_unit_asked_for():
    table = pd.DataFrame({"block": 1, "concept": np.repeat(["evil", "joy"], 8), "prompt": np.tile(range(8), 2),
                          "bump": np.repeat([True, False], 8)})
    by_prompt = grid_module.shares(table.assign(all="all"), "bump", by=["all"]).iloc[0]
    by_concept = grid_module.shares(table.assign(all="all"), "bump", by=["all"], unit="concept").iloc[0]
    assert by_prompt["low"] == by_prompt["high"] == 0.5  # every prompt has one curve of each concept
    assert by_concept["low"] == 0.0 and by_concept["high"] == 1.0


def test_loading_grids_of_some_concepts(computed, tmp_path):
    _, _, _, result = computed
    result.save(tmp_path / "next_token" / "next-token-grid-joy-random-x.npz")
    assert len(grid_module.load_next_token_grids(tmp_path, ["joy", "evil"])) == 1
    with pytest.raises(ValueError, match=r"for \['evil'\]"):
        grid_module.load_next_token_grids(tmp_path, ["evil"])


def test_widening_the_blocks_steers_only_the_new_ones(tmp_path):
    """A grid asked again with more blocks reads the blocks it has (from any file of the same run) and steers only
    the others; a change of prompts is another run."""
    from stand_ins import save_stand_in
    from steerlib.models import load_model

    lm = load_model(str(save_stand_in("qwen3", tmp_path / "qwen3")), device="cpu")
    folder = tmp_path / "next_token"

    def grid(layers, prompts=PROMPTS):
        return next_token.load_or_run_concept_grid(lm, "evil", "random", 4, tmp_path / "activations", folder,
                                                   prompts, GRID, layers, top_k=3, keep_tokens=12, progress=False)

    first = grid([1, 2])
    widened = grid([3, 1, 2])
    files = sorted(folder.glob("next-token-grid-evil-random-*.npz"))
    assert len(files) == 2 and sorted(NextTokenGrid.load(f).layers.tolist() for f in files) == [[1, 2], [3]]
    assert widened.layers.tolist() == [3, 1, 2]
    for name in ("top_ids", "top_shapes", "pairs", "units"):
        np.testing.assert_array_equal(getattr(widened.select_blocks([1, 2]), name), getattr(first, name))
    assert grid([2, 3]).layers.tolist() == [2, 3] and len(list(folder.glob("*.npz"))) == 2
    other = grid([1], PROMPTS[:2])
    assert len(other.prompts) == 2 and len(list(folder.glob("*.npz"))) == 3
    with pytest.raises(ValueError, match="not in this grid"):
        first.select_blocks([0])
    with pytest.raises(ValueError, match="repeat"):
        next_token.join_blocks([first, first])


def test_manifest_adds_up_the_runs_of_a_part(tmp_path):
    machine = {"cores": 2}
    grid_module.record_run(tmp_path, "next_token", "evil", 10.0, {"layers": [1]}, machine, 20.0)
    grid_module.record_run(tmp_path, "next_token", "evil", 5.0, {"layers": [1, 2]}, machine, 8.0)
    run = grid_module.read_manifest(tmp_path)["next_token"]["evil"]
    assert (run["seconds"], run["cpu_seconds"], run["runs"], run["sizes"]) == (15.0, 28.0, 2, {"layers": [1, 2]})
