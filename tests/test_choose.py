"""choose_alpha and the rule on one α-batched sweep; the regret of the validation (chapter "Choosing α")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_models import tiny_lm

from steerlib import choose
from steerlib.choose import GroundTruth, SweepDiagnostics, choose_alpha, rule_alpha
from steerlib.steering import steered_next_token_log_probs
from steerlib.vectors import SteeringVector

PROMPTS = ["steer me", "and then"]


def vector(lm, layer: int = 1, model_name: str | None = None) -> SteeringVector:
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))
    return SteeringVector(v, model_name or lm.name, layer, "joy", "random", 4, 4)


def diagnostics(kl, share) -> SweepDiagnostics:
    alphas = np.arange(len(kl), dtype=float)
    limit_kl = 1.0 - np.asarray(share, float)
    return SweepDiagnostics("p", alphas, np.asarray(kl, float), limit_kl, np.zeros(0, int), np.zeros((len(kl), 0)))


def test_rule_takes_the_budget_crossing_or_the_collapse_whichever_comes_first():
    d = diagnostics([0, 0.5, 1.0, 3.0, 5.0], [0, 0.1, 0.2, 0.3, 0.9])
    alpha, alpha_budget, alpha_collapse = rule_alpha(d, budget=2.0, collapse=0.5)
    assert alpha_budget == pytest.approx(2.5) and alpha_collapse == pytest.approx(3 + 0.2 / 0.6)
    assert alpha == pytest.approx(2.5)
    assert rule_alpha(d, budget=4.5, collapse=0.5)[0] == pytest.approx(3 + 0.2 / 0.6)
    assert rule_alpha(d, budget=100.0, collapse=1.0) == (4.0, np.inf, np.inf)


def test_choose_alpha_reads_one_sweep_per_prompt():
    lm = tiny_lm("llama")
    v = vector(lm)
    grid = np.linspace(0, 40, 21)
    choice = choose_alpha(lm, v, PROMPTS, budget=0.05, alphas=grid)
    assert len(choice.per_prompt) == 2 and len(choice.diagnostics) == 2
    assert choice.alpha == pytest.approx(float(np.median(choice.per_prompt["alpha"])))
    assert choice.alpha_range[0] <= choice.alpha_range[1] == choice.alpha
    d = choice.diagnostics[0]
    log_probs = steered_next_token_log_probs(lm, PROMPTS[0], v, grid).double()
    expected_kl = (log_probs[0].exp() * (log_probs[0] - log_probs)).sum(-1).numpy()
    np.testing.assert_allclose(d.kl, expected_kl, atol=1e-6)
    assert d.kl[0] == pytest.approx(0, abs=1e-9) and d.limit_share[0] == pytest.approx(0)
    row = choice.per_prompt.iloc[0]
    assert row["kl_at_alpha"] <= 0.05 + 1e-9 or row["alpha"] == grid[-1]
    one = choose_alpha(lm, v, PROMPTS[0], budget=0.05, alphas=grid)
    assert one.alpha == pytest.approx(row["alpha"])
    assert choose_alpha(lm, v, PROMPTS[0], budget=1e-6, alphas=grid).alpha < one.alpha


def test_default_grid_starts_at_zero():
    lm = tiny_lm("llama")
    choice = choose_alpha(lm, vector(lm), PROMPTS[0])
    assert choice.diagnostics[0].alphas[0] == 0 and choice.diagnostics[0].alphas.size == 41


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": 0.0}, "positive"), ({"budget": -1.0}, "positive"), ({"budget": float("inf")}, "positive"),
    ({"collapse": 0.0}, r"\(0, 1\]"), ({"collapse": 1.5}, r"\(0, 1\]"),
    ({"alphas": [1.0, 2.0]}, "starting at 0"), ({"alphas": [0.0, 2.0, 1.0]}, "increasing"),
])
def test_errors_say_what_to_give(kwargs, match):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match=match):
        choose_alpha(lm, vector(lm), PROMPTS, **kwargs)


def test_errors_for_empty_prompts_and_another_models_vector():
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="prompts is empty"):
        choose_alpha(lm, vector(lm), [])
    with pytest.raises(ValueError, match="non-empty string"):
        choose_alpha(lm, vector(lm), ["ok", " "])
    with pytest.raises(ValueError, match="computed on 'gpt2'"):
        choose_alpha(lm, vector(lm, model_name="gpt2"), PROMPTS)


def truth(probability, kl_rows, delta_ce=None) -> GroundTruth:
    """A ground truth on the grid 0..A-1 whose sweeps are on the same grid."""
    probability = np.asarray(probability, float)
    n_alphas, n_prompts = probability.shape
    labels = (np.arange(4)[None, None, :] < np.rint(probability * 4)[:, :, None]).astype(int)
    alphas = np.arange(n_alphas, dtype=float)
    kl = np.asarray(kl_rows, float)
    return GroundTruth(alphas, labels, np.asarray(delta_ce if delta_ce is not None else alphas ** 2, float), alphas,
                       kl, np.ones_like(kl), [[""] * n_prompts] * n_alphas, [f"p{m}" for m in range(n_prompts)],
                       {"concept": "joy", "layer": 1})


def test_regret_against_the_best_grid_alpha_and_no_peeking():
    probability = np.array([[0, 0, 0], [0.5, 0.25, 1.0], [1.0, 0.5, 0.25], [0.25, 1.0, 0.0]])
    kl = np.tile(np.arange(4.0), (3, 1))
    t = truth(probability, kl)
    rows = choose.regret_rows([t], budget=2.0, budgets=[1.0, 2.0, 3.0], collapse=1.0)
    rule = rows[rows.method == "rule"]
    assert list(rule["alpha"]) == [2.0, 2.0, 2.0]
    np.testing.assert_allclose(rule["concept_lost"], [0.0, 0.5, 0.75])
    np.testing.assert_allclose(rule["delta_ce_added"], [0.0, 4 - 9, 4 - 1])
    fixed = rows[rows.method == "fixed α"]
    assert list(fixed["alpha"]) == list(t.alphas[choose.leave_one_out_fixed(probability)])
    changed = probability.copy()
    changed[:, 0] = [0, 0, 0, 1.0]
    assert choose.leave_one_out_fixed(changed)[0] == choose.leave_one_out_fixed(probability)[0]
    table = choose.regret_table(rows, n_boot=200)
    assert table.loc["rule", "concept lost"] == pytest.approx(0.25 * 5 / 3)
    assert table.loc["rule", "lost low"] <= table.loc["rule", "concept lost"] <= table.loc["rule", "lost high"]


def test_bootstrap_resamples_prompts():
    mean, low, high = choose.bootstrap_mean(np.array([1.0, 1.0, 3.0, 3.0]), np.array(["a", "a", "b", "b"]), 500)
    assert mean == 2.0 and 1.0 <= low < 2.0 < high <= 3.0
    assert choose.bootstrap_mean(np.ones(4), np.arange(4))[1:] == (1.0, 1.0)


def test_ground_truth_saves_and_loads(tmp_path):
    t = truth(np.full((3, 2), 0.5), np.zeros((2, 3)))
    t.save(tmp_path / "ground-truth-joy-1.npz")
    loaded = choose.load_ground_truths(tmp_path)
    assert len(loaded) == 1 and isinstance(loaded[0].per_prompt_probability, np.ndarray)
    np.testing.assert_array_equal(loaded[0].per_prompt_probability, 0.5)
    assert isinstance(choose.regret_rows(loaded), pd.DataFrame)
