"""Next-token sweeps (Def. 3.1, Th. 3.3): the α grid, curve shapes, saved results, log-odds (App. A)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from steerlib.steering import mean_residual_norm, steered_next_token_log_probs
from steerlib.sweeps import (NextTokenSweep, alpha_grid, classify_curve, last_position_log_probs,
                             load_or_compute_sweep, log_odds, log_odds_report, next_token_sweep, resampled_sweeps)
from steerlib.vectors import SteeringVector
from test_models import VOCABULARY, tiny_lm
from float32 import assert_float32_close

PROMPT = "steer me"


def vector(lm, layer: int = 1, seed: int = 0) -> SteeringVector:
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed))
    return SteeringVector(v, lm.name, layer, "joy", "random", 4, 4)


@given(st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=30))
def test_alpha_grid_is_sorted_unique_and_contains_zero(values):
    grid = alpha_grid(values)
    assert 0.0 in grid
    assert np.all(np.diff(grid) > 0)
    assert set(np.asarray(values, dtype=np.float64)) <= set(grid)


def test_alpha_grid_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="empty"):
        alpha_grid([])
    with pytest.raises(ValueError, match="finite"):
        alpha_grid([1.0, float("inf")])


def test_classify_curve_shapes():
    alphas = np.linspace(-10, 10, 21)
    bump = np.exp(-((alphas - 3) ** 2) / 4) - np.exp(-9 / 4)
    assert classify_curve(alphas, bump) == ("bump", 3.0)
    assert classify_curve(alphas, np.tanh(alphas))[0] == "increasing"
    assert classify_curve(alphas, -np.tanh(alphas)) == ("decreasing", -10.0)
    assert classify_curve(alphas, np.zeros(21))[0] == "flat"
    nearly_monotone = np.tanh(alphas) - 0.001 * (alphas == 10)  # a dip below 5 % of the range is not a bump
    assert classify_curve(alphas, nearly_monotone)[0] == "increasing"


def test_sweep_matches_the_batched_forward_and_inserts_zero():
    lm = tiny_lm("llama")
    v = vector(lm)
    sweep = next_token_sweep(lm, PROMPT, v, [-50, -5, 5, 50], keep_tokens=None)
    assert list(sweep.alphas) == [-50, -5, 0, 5, 50]
    assert sweep.delta_p.shape == (5, VOCABULARY)
    np.testing.assert_array_equal(sweep.delta_p[2], 0.0)
    np.testing.assert_allclose(sweep.delta_p.sum(axis=1), 0.0, atol=1e-6)
    probabilities = steered_next_token_log_probs(lm, PROMPT, v, sweep.alphas).exp().numpy()
    assert_float32_close(sweep.probabilities, probabilities)
    np.testing.assert_array_equal(sweep.top_tokens("max"), np.argsort(-probabilities[-1])[:8])
    np.testing.assert_array_equal(sweep.top_tokens("min", k=3), np.argsort(-probabilities[0])[:3])
    assert sweep.tokens[5] == lm.tokenizer.decode([5])
    assert sweep.parameters["layer"] == 1 and sweep.parameters["vector"]["concept"] == "joy"
    shapes = sweep.classify()
    assert len(shapes) == 8 and {s.shape for s in shapes} <= {"bump", "increasing", "decreasing", "flat"}


def test_kept_tokens_include_top_tokens_and_requested_ones():
    lm = tiny_lm("gpt2")
    sweep = next_token_sweep(lm, PROMPT, vector(lm), np.linspace(-40, 40, 9), keep_tokens=10, top_k=3,
                             token_ids=[7])
    assert sweep.token_ids[0] == 7
    assert set(sweep.top_tokens("max")) | set(sweep.top_tokens("min")) <= set(sweep.token_ids)
    assert 10 <= len(sweep.token_ids) <= 10 + 3 * 3 + 1
    with pytest.raises(ValueError, match="token_ids="):
        sweep.curve(int(np.setdiff1d(np.arange(VOCABULARY), sweep.token_ids)[0]))


def test_relative_alphas_use_the_mean_residual_norm():
    lm = tiny_lm("llama")
    v = vector(lm, layer=2)
    relative = next_token_sweep(lm, PROMPT, v, [-1, 1], alpha_scale="relative", positions="last")
    unit = mean_residual_norm(lm, PROMPT, 2) / v.norm
    assert relative.reference_norm == pytest.approx(mean_residual_norm(lm, PROMPT, 2))
    np.testing.assert_allclose(relative.alphas, [-unit, 0, unit], rtol=1e-9)
    assert list(relative.alphas_relative) == [-1, 0, 1]  # exactly: windows on the grid must not hang on a rounding
    absolute = next_token_sweep(lm, PROMPT, v, [-unit, unit], positions="last")
    assert_float32_close(absolute.delta_p[:, :4], relative.delta_p[:, :4], scale=1.0)
    with pytest.raises(ValueError, match="'relative'"):
        next_token_sweep(lm, PROMPT, v, [1], alpha_scale="percent")


def test_save_load_and_load_or_compute(tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    v = vector(lm)
    sweep = next_token_sweep(lm, PROMPT, v, [-10, 10])
    loaded = NextTokenSweep.load(sweep.save(tmp_path / "sweep.npz"))
    for name in ("alphas", "alphas_relative", "token_ids", "p0", "delta_p", "top_at_max", "top_at_min"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(sweep, name))
    assert loaded.tokens == sweep.tokens and loaded.parameters == sweep.parameters
    assert loaded.reference_norm == sweep.reference_norm
    with pytest.raises(ValueError, match="no sweep file"):
        NextTokenSweep.load(tmp_path / "missing.npz")

    first = load_or_compute_sweep(tmp_path, lm, PROMPT, v, [-10, 10])
    import steerlib.sweeps as sweeps

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed a saved sweep")

    monkeypatch.setattr(sweeps, "next_token_sweep", no_recompute)
    again = load_or_compute_sweep(tmp_path, lm, PROMPT, v, [10, -10, 0])
    np.testing.assert_array_equal(again.delta_p, first.delta_p)
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_compute_sweep(tmp_path, lm, "another prompt", v, [-10, 10])


def test_log_odds_is_definition_3_2():
    lm = tiny_lm("llama")
    positive, negative = ["happy day", "joy!"], ["tables", "wood and metal"]
    values = log_odds(lm, positive, negative)
    manual = (last_position_log_probs(lm, positive).double().mean(0)
              - last_position_log_probs(lm, negative).double().mean(0)).numpy()
    np.testing.assert_allclose(values, manual)
    ids = torch.tensor([[1 + ord(c) % (VOCABULARY - 1) for c in "joy!"]])
    with torch.no_grad():
        direct = lm.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    assert_float32_close(last_position_log_probs(lm, ["joy!"])[0], direct)
    assert np.abs(log_odds(lm, positive, positive)).max() < 1e-6
    lens = last_position_log_probs(lm, ["joy!"], layer=1)
    assert lens.shape == (1, VOCABULARY) and (lens[0] - direct).abs().max() > 1e-3

    report = log_odds_report(values, [int(np.argmax(values)), int(np.argmin(values))])
    assert report.percentiles[0] == 1.0 and report.percentiles[1] == pytest.approx(1 / VOCABULARY)
    assert list(report.extremal(0.05, "max")) == [True, False]
    assert list(report.extremal(0.05, "min")) == [False, True]


def test_resampled_sweeps_mean_and_std():
    lm = tiny_lm("llama")
    vectors = [vector(lm, seed=seed) for seed in range(3)]
    alphas, mean, std = resampled_sweeps(lm, PROMPT, vectors, [-20, 20], token_ids=[3, 4])
    assert mean.shape == std.shape == (3, 2)
    sweeps = [next_token_sweep(lm, PROMPT, v, [-20, 20]) for v in vectors]
    curves = np.stack([np.stack([sweep.curve(3), sweep.curve(4)], axis=1) for sweep in sweeps])
    np.testing.assert_allclose(mean, curves.mean(axis=0), atol=1e-12)
    assert std.max() > 0
