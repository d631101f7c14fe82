"""Tests of steerlib.concept: confidence bands, sigmoid fit, steered sampling, load-or-compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib.concept import (
    ConceptSweep,
    bootstrap_band,
    fit_sigmoid,
    load_or_compute,
    load_or_compute_concept_sweep,
    logistic4,
    sample_steered_completions,
    wilson_interval,
)
from steerlib.judge import INVALID, JudgeResult


@settings(deadline=None)
@given(st.integers(0, 200), st.integers(1, 200), st.floats(0.5, 0.99))
def test_wilson_contains_estimate_and_stays_in_unit_interval(successes, trials, level):
    successes = min(successes, trials)
    low, high = wilson_interval(np.array([successes]), np.array([trials]), level)
    p = successes / trials
    assert 0 <= low[0] <= p + 1e-12 and p - 1e-12 <= high[0] <= 1


def test_wilson_narrows_with_trials_and_widens_with_level():
    low_small, high_small = wilson_interval(np.array([5]), np.array([10]))
    low_big, high_big = wilson_interval(np.array([500]), np.array([1000]))
    assert high_big - low_big < high_small - low_small
    low_99, high_99 = wilson_interval(np.array([5]), np.array([10]), level=0.99)
    assert high_99 - low_99 > high_small - low_small
    low, high = wilson_interval(np.array([0]), np.array([0]))
    assert (low[0], high[0]) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(np.array([3]), np.array([2]))


def test_wilson_coverage_by_simulation():
    rng = np.random.default_rng(0)
    trials, p = 48, 0.3
    successes = rng.binomial(trials, p, size=4000)
    low, high = wilson_interval(successes, np.full(4000, trials))
    coverage = ((low <= p) & (p <= high)).mean()
    assert 0.92 <= coverage <= 0.98


def test_bootstrap_band_ignores_invalid_and_is_degenerate_when_constant():
    labels = np.ones((3, 4, 5), dtype=int)
    labels[0, 0, 0] = INVALID
    low, high = bootstrap_band(labels, n_boot=200)
    np.testing.assert_allclose(low, 1.0)
    np.testing.assert_allclose(high, 1.0)
    rng = np.random.default_rng(1)
    mixed = rng.integers(0, 2, size=(2, 6, 8))
    low, high = bootstrap_band(mixed, n_boot=300)
    mean = mixed.mean((1, 2))
    assert np.all(low <= mean) and np.all(mean <= high) and np.all(high > low)


@settings(max_examples=25, deadline=None)
@given(st.floats(0.0, 0.3), st.floats(0.7, 1.0), st.floats(-10, 10), st.floats(0.3, 2.0))
def test_sigmoid_fit_recovers_parameters(bottom, top, midpoint, slope):
    alphas = np.linspace(-40, 40, 41)
    fit = fit_sigmoid(alphas, logistic4(alphas, bottom, top, midpoint, slope))
    assert fit.r2 > 0.9999 and fit.rmse < 1e-3
    np.testing.assert_allclose([fit.bottom, fit.top, fit.midpoint], [bottom, top, midpoint], atol=0.02)
    assert fit.slope == pytest.approx(slope, rel=0.05)


def test_sigmoid_fit_finds_decreasing_trend_and_rejects_short_input():
    alphas = np.linspace(-20, 20, 21)
    fit = fit_sigmoid(alphas, logistic4(alphas, 0.1, 0.8, 3.0, -0.5))
    assert fit.r2 > 0.999 and fit(-20.0) > fit(20.0)
    with pytest.raises(ValueError):
        fit_sigmoid([0, 1, 2], [0.1, 0.2, 0.3])


def _sweep(n_alpha=5) -> ConceptSweep:
    alphas = np.linspace(-2, 2, n_alpha)
    labels = np.stack([np.full((2, 3), int(a > 0)) for a in alphas])
    labels[0, 0, 0] = INVALID
    completions = [[[f"text {i} {m} {k}" for k in range(3)] for m in range(2)] for i in range(n_alpha)]
    return ConceptSweep(alphas, labels, np.zeros(labels.shape), completions, ["a", "b"], {"concept": "joy"})


def test_sweep_probability_skips_invalid_and_round_trips(tmp_path):
    sweep = _sweep()
    np.testing.assert_allclose(sweep.probability, [0, 0, 0, 1, 1])
    assert sweep.n_invalid == 1 and sweep.spearman() > 0.8
    path = sweep.save(tmp_path / "s.npz")
    again = ConceptSweep.load(path)
    np.testing.assert_array_equal(again.labels, sweep.labels)
    assert again.completions == sweep.completions and again.parameters == sweep.parameters


def test_load_or_compute_calls_compute_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return _sweep()

    first = load_or_compute(tmp_path / "x.npz", compute)
    second = load_or_compute(tmp_path / "x.npz", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.labels, second.labels)


def test_steered_sampling_shapes_seeds_and_steering(tiny_chat_lm):
    v = torch.randn(16)
    args = dict(prompts=["I think that", "Today I feel"], alphas=[0.0, 1e4], n_samples=3, max_new_tokens=5,
                seed=7, layer=0, progress=False)
    texts = sample_steered_completions(tiny_chat_lm, v, **args)
    assert len(texts) == 2 and len(texts[0]) == 2 and len(texts[0][0]) == 3
    assert sample_steered_completions(tiny_chat_lm, v, **args) == texts
    chunked = sample_steered_completions(tiny_chat_lm, v, **dict(args, max_batch=4))
    assert [[len(p) for p in a] for a in chunked] == [[3, 3], [3, 3]]
    # Near-greedy sampling: α = 0 rows are the unsteered greedy completion; α = 1e4 rows repeat the argmax of
    # LN(v)Wᵀ (Prop. 4.1), since the steered residual stream is dominated by α v at every position.
    cold = sample_steered_completions(tiny_chat_lm, v, **dict(args, temperature=1e-5))
    tokenizer = tiny_chat_lm.tokenizer
    ids = tokenizer("I think that", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = tiny_chat_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                        pad_token_id=2)
        limit_token = int(tiny_chat_lm.unembedding(tiny_chat_lm.final_norm(v[None])).argmax())
    assert cold[0][0] == [tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)] * 3
    assert cold[1][0][0] == tokenizer.decode([limit_token] * 5, skip_special_tokens=True)


def test_load_or_compute_concept_sweep_reuses(tiny_chat_lm, tmp_path):
    calls = []

    def judge(texts, concept):
        calls.append(len(texts))
        return JudgeResult(labels=np.array([int(len(t) % 2 == 0) for t in texts]), margins=np.zeros(len(texts)))

    judge.name = "parity"
    v = torch.randn(16)
    kwargs = dict(n_samples=2, max_new_tokens=3, seed=0, layer=1, concept="joy", progress=False)
    first = load_or_compute_concept_sweep(tmp_path, tiny_chat_lm, v, ["I think"], [-1.0, 0.0, 1.0], judge, **kwargs)
    second = load_or_compute_concept_sweep(tmp_path, tiny_chat_lm, v, ["I think"], [-1.0, 0.0, 1.0], judge, **kwargs)
    assert calls == [6]
    assert first.labels.shape == (3, 1, 2)
    np.testing.assert_array_equal(first.labels, second.labels)
    load_or_compute_concept_sweep(tmp_path, tiny_chat_lm, v, ["I think"], [-1.0, 1.0], judge, **kwargs)
    assert calls == [6, 4]
