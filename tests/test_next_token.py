"""Next-token sweeps (Def. 3.1, Th. 3.3): equal to the batched engine, kept tokens, relative α, saved results,
App. A error bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from float32 import assert_float32_close
from steerlib.experiments import next_token
from steerlib.experiments.next_token import NextTokenParameters, NextTokenSweep, load_or_run, resampled_sweeps, run
from steerlib.models import mean_residual_norm
from steerlib.steering import steered_next_token_log_probs
from steerlib.theory_checks import classify
from steerlib.vectors import SteeringVector
from test_models import VOCABULARY, tiny_lm

PROMPT = "steer me"


def vector(lm, layer: int = 1, seed: int = 0) -> SteeringVector:
    v = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed))
    return SteeringVector(v, lm.name, layer, "joy", "random", 4, 4)


def test_sweep_matches_the_batched_forward_and_inserts_zero():
    lm = tiny_lm("llama")
    v = vector(lm)
    sweep = run(lm, v, NextTokenParameters(PROMPT, [-50, -5, 5, 50], keep_tokens=None))
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
    shapes = classify(sweep)
    assert len(shapes) == 8 and {s.shape for s in shapes} <= {"bump", "increasing", "decreasing", "flat"}


def test_kept_tokens_include_top_tokens_and_requested_ones():
    lm = tiny_lm("gpt2")
    sweep = run(lm, vector(lm), NextTokenParameters(PROMPT, np.linspace(-40, 40, 9), keep_tokens=10, top_k=3,
                                                    token_ids=[7]))
    assert sweep.token_ids[0] == 7
    assert set(sweep.top_tokens("max")) | set(sweep.top_tokens("min")) <= set(sweep.token_ids)
    assert 10 <= len(sweep.token_ids) <= 10 + 3 * 3 + 1
    with pytest.raises(ValueError, match="token_ids="):
        sweep.curve(int(np.setdiff1d(np.arange(VOCABULARY), sweep.token_ids)[0]))


def test_relative_alphas_use_the_mean_residual_norm():
    lm = tiny_lm("llama")
    v = vector(lm, layer=2)
    relative = run(lm, v, NextTokenParameters(PROMPT, [-1, 1], alpha_scale="relative", positions="last"))
    unit = mean_residual_norm(lm, PROMPT, 2) / v.norm
    assert relative.reference_norm == pytest.approx(mean_residual_norm(lm, PROMPT, 2))
    np.testing.assert_allclose(relative.alphas, [-unit, 0, unit], rtol=1e-9)
    assert list(relative.alphas_relative) == [-1, 0, 1]  # exactly: windows on the grid must not hang on a rounding
    absolute = run(lm, v, NextTokenParameters(PROMPT, [-unit, unit], positions="last"))
    assert_float32_close(absolute.delta_p[:, :4], relative.delta_p[:, :4], scale=1.0)
    with pytest.raises(ValueError, match="'relative'"):
        NextTokenParameters(PROMPT, [1], alpha_scale="percent")


def test_save_load_and_load_or_run(tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    v = vector(lm)
    sweep = run(lm, v, NextTokenParameters(PROMPT, [-10, 10]))
    loaded = NextTokenSweep.load(sweep.save(tmp_path / "sweep.npz"))
    for name in ("alphas", "alphas_relative", "token_ids", "p0", "delta_p", "top_at_max", "top_at_min"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(sweep, name))
    assert loaded.tokens == sweep.tokens and loaded.parameters == sweep.parameters
    assert loaded.reference_norm == sweep.reference_norm
    with pytest.raises(ValueError, match="no saved NextTokenSweep"):
        NextTokenSweep.load(tmp_path / "missing.npz")

    first = load_or_run(lm, v, NextTokenParameters(PROMPT, [-10, 10]), tmp_path)

    def no_recompute(*args, **kwargs):
        raise AssertionError("recomputed a saved sweep")

    monkeypatch.setattr(next_token, "run", no_recompute)
    again = load_or_run(lm, v, NextTokenParameters(PROMPT, [-10, 10]), tmp_path)
    np.testing.assert_array_equal(again.delta_p, first.delta_p)
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_run(lm, v, NextTokenParameters("another prompt", [-10, 10]), tmp_path)


def test_resampled_sweeps_mean_and_std():
    lm = tiny_lm("llama")
    vectors = [vector(lm, seed=seed) for seed in range(3)]
    alphas, mean, std = resampled_sweeps(lm, vectors, NextTokenParameters(PROMPT, [-20, 20]), token_ids=[3, 4])
    assert mean.shape == std.shape == (3, 2)
    sweeps = [run(lm, v, NextTokenParameters(PROMPT, [-20, 20])) for v in vectors]
    curves = np.stack([np.stack([sweep.curve(3), sweep.curve(4)], axis=1) for sweep in sweeps])
    np.testing.assert_allclose(mean, curves.mean(axis=0), atol=1e-12)
    assert std.max() > 0
    one_at_a_time = resampled_sweeps(lm, vectors, NextTokenParameters(PROMPT, [-20, 20]), [3, 4], alphas_per_forward=1)
    assert_float32_close(one_at_a_time[1], mean, scale=1.0)  # Δp: differences of probabilities
