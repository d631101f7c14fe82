"""Statistics: binomial and bootstrap bands, the logistic (Th. 3.6) and quadratic (Th. 3.8) fits, divergences,
log-log slopes, cosines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib.stats import (bootstrap_band, cosine_similarity_matrix, fit_sigmoid, js_divergence, kl_divergence,
                            logistic4, loglog_slope, max_pairwise_distance, quadratic_fit, spearman,
                            total_variation, wilson_interval)


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
    labels[0, 0, 0] = -1
    low, high = bootstrap_band(labels, n_boot=200, invalid=-1)
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


logit_rows = st.lists(st.floats(-20, 20), min_size=5, max_size=5).map(lambda xs: torch.tensor(xs, dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(logit_rows, logit_rows)
def test_divergences_are_bounded_and_vanish_on_equal_inputs(p, q):
    assert float(kl_divergence(p, q)) >= 0.0
    assert 0.0 <= float(total_variation(p, q)) <= 1.0 + 1e-12
    assert 0.0 <= float(js_divergence(p, q)) <= math.log(2) + 1e-12
    assert float(js_divergence(p, q)) == pytest.approx(float(js_divergence(q, p)), abs=1e-12)
    assert float(kl_divergence(p, p)) == pytest.approx(0.0, abs=1e-12)
    assert float(total_variation(p, p + 3.0)) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_a_hand_computed_value():
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64).log(), torch.tensor([0.9, 0.1], dtype=torch.float64).log()
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert float(kl_divergence(p, q)) == pytest.approx(expected, rel=1e-10)


def test_max_pairwise_distance_picks_the_farthest_pair():
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.6, 0.4], [0.9, 0.1]]))
    assert max_pairwise_distance(logits, "tv") == pytest.approx(0.4)
    assert max_pairwise_distance(torch.zeros(3, 4), "js") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="n_prompts >= 2"):
        max_pairwise_distance(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="unknown distance"):
        max_pairwise_distance(torch.zeros(2, 4), "hellinger")


def test_loglog_slope_recovers_a_power_law():
    alphas = np.array([10.0, 100.0, 1000.0, 10000.0])
    assert loglog_slope(alphas, 3.0 * alphas**-2.0) == pytest.approx(-2.0)
    assert loglog_slope(-alphas, 3.0 * alphas**-1.0, tail=4) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope(alphas, np.zeros(4))


def test_cosine_similarity_matrix():
    matrix = cosine_similarity_matrix([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([-2.0, 0.0])])
    assert matrix[0, 1] == pytest.approx(2 ** -0.5) and matrix[0, 2] == pytest.approx(-1.0)
    assert np.allclose(np.diag(matrix), 1.0)
    with pytest.raises(ValueError, match="zero"):
        cosine_similarity_matrix([torch.zeros(2)])


def test_spearman_reads_a_trend_and_a_flat_curve():
    assert spearman([0, 1, 2, 3], [0.1, 0.2, 0.5, 0.9]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [0.9, 0.5, 0.2, np.nan]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [0.5, 0.5, 0.5]) == 0.0


@settings(max_examples=30, deadline=None)
@given(slope=st.floats(-3, 3), curvature=st.floats(0, 10), window=st.floats(0.25, 2.0))
def test_quadratic_fit_recovers_an_exact_local_law(slope, curvature, window):
    alphas = np.linspace(-5, 5, 101)
    delta_ce = slope * alphas + curvature * alphas**2 + 0.3 * np.where(np.abs(alphas) > window, alphas**4, 0.0)
    fit = quadratic_fit(alphas, delta_ce, window)
    assert fit.slope == pytest.approx(slope, abs=1e-8)
    assert fit.curvature == pytest.approx(curvature, abs=1e-8)
    np.testing.assert_allclose(fit(alphas[np.abs(alphas) <= window]), delta_ce[np.abs(alphas) <= window], atol=1e-8)


def test_quadratic_fit_sees_curvature_outside_the_window():
    alphas = np.linspace(-1, 1, 21)
    fit = quadratic_fit(alphas, alphas**2 + alphas**4, 1.0)
    assert fit.curvature > 1.0 and fit.relative_residual > 1e-3
    with pytest.raises(ValueError, match="widen"):
        quadratic_fit(alphas, alphas**2, 0.05)
