"""The UFM's exact choice of α (chapter "Choosing α") against brute force on fine α grids, over random datasets
satisfying Assumption 1 (the strategy of tests/test_ufm_properties.py)."""

import numpy as np
import pytest
from hypothesis import given
from test_ufm_properties import (
    PROPERTY_SETTINGS,
    representative_contexts,
    steered_datasets,
)

from steerlib.ufm import (
    budget_alpha,
    concept_probability,
    delta_ce,
    delta_p,
    eq2_dataset,
    eq2_steering_sets,
    sweet_spot,
)


@PROPERTY_SETTINGS
@given(steered_datasets())
def test_sweet_spot_matches_grid_peaks(case):
    """lo and hi are the last off-target and first target grid argmax of Δp, within one grid step; lo < hi."""
    data, sets, M = case
    target = data.members(sets.target)
    for j in representative_contexts(data):
        lo, hi = sweet_spot(data.rows[j], M, target)
        assert lo < hi
        finite = [x for x in (lo, hi) if np.isfinite(x)]
        span = max(1.0, *np.abs(finite)) * 4
        alphas = np.linspace(-span, span, 40001)
        step = alphas[1] - alphas[0]
        curves = delta_p(data.rows[j], M, alphas)
        peaks = alphas[curves.argmax(axis=0)]
        interior = (peaks > alphas[0]) & (peaks < alphas[-1])
        in_target = np.isin(np.arange(data.V), target)
        off, on = peaks[interior & ~in_target], peaks[interior & in_target]
        assert (lo == -np.inf) == (off.size == 0)
        assert (hi == np.inf) == (on.size == 0)
        if off.size:
            assert abs(off.max() - lo) <= step
        if on.size:
            assert abs(on.min() - hi) <= step


@PROPERTY_SETTINGS
@given(steered_datasets())
def test_budget_alpha_is_the_best_grid_alpha_under_the_budget(case):
    """Among grid α within the ΔCE budget, the one with the largest target probability is budget_alpha, within a
    grid step, in every context; ΔCE at budget_alpha equals the budget."""
    data, sets, M = case
    target = data.members(sets.target)
    budget = 0.25 * np.log(data.V)
    best = budget_alpha(data.rows, data.pi, M, budget)
    assert delta_ce(data.rows, data.pi, M, best)[0] == pytest.approx(budget, rel=1e-9)
    alphas = np.linspace(-2 * best, 2 * best, 8001)
    step = alphas[1] - alphas[0]
    allowed = alphas[delta_ce(data.rows, data.pi, M, alphas) <= budget]
    for j in representative_contexts(data):
        gain = concept_probability(data.rows[j], M, target, allowed)
        assert abs(allowed[gain.argmax()] - best) <= step * (1 + 1e-9)


def test_sweet_spot_on_eq2():
    """Eq. (2), contrastive: in a context of the opposite concept the off-target tokens peak before the target ones."""
    data = eq2_dataset()
    sets = eq2_steering_sets(data)
    lo, hi = sweet_spot(data.rows[data.context_index("ABB")], data.log_odds(sets), data.members(sets.target))
    assert 0 < lo < hi


def test_errors():
    data = eq2_dataset()
    M = data.log_odds(eq2_steering_sets(data))
    with pytest.raises(ValueError, match="positive"):
        budget_alpha(data.rows, data.pi, M, 0.0)
    with pytest.raises(ValueError, match="constant"):
        budget_alpha(data.rows, data.pi, np.zeros(data.V), 1.0)
