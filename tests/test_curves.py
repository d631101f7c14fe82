"""Tests of steerlib.curves: target tokens by log-odds sign, bump share, Th. 3.3's peak order on curves."""

import numpy as np
import pytest

from steerlib.curves import bump_share, is_target_token, peak_order
from steerlib.sweeps import CurveShape, classify_curve

# token ids 0..5; M > 0 for tokens 0, 1, 2 (targets), M <= 0 for 3, 4, 5
LOG_ODDS = np.array([2.0, 1.0, 0.5, -0.1, -1.0, 0.0])


def shape(token, kind, peak, rise=0.1):
    return CurveShape(token, f"t{token}", kind, peak, rise)


def test_target_tokens_are_those_of_positive_log_odds():
    assert is_target_token(LOG_ODDS, [0, 3, 5, 2]).tolist() == [True, False, False, True]


def test_bump_share():
    assert bump_share([shape(0, "bump", 5), shape(1, "increasing", 10)]) == 0.5
    with pytest.raises(ValueError):
        bump_share([])


def test_off_target_peaking_first_is_ordered():
    shapes = [shape(3, "bump", 20.0), shape(4, "bump", 40.0), shape(1, "bump", 80.0), shape(0, "increasing", 200.0)]
    order = peak_order(shapes, LOG_ODDS, alpha_end=200.0)
    assert (order.n_pairs, order.n_ordered) == (4, 4)
    assert order.share_ordered == 1.0
    assert order.median_off_target_peak == 30.0


def test_off_target_still_rising_at_the_end_violates_the_order():
    shapes = [shape(3, "increasing", 200.0), shape(1, "bump", 80.0), shape(0, "increasing", 200.0),
              shape(4, "bump", 120.0)]
    order = peak_order(shapes, LOG_ODDS, alpha_end=200.0)
    # pairs: (3,1) violated, (3,0) undecided, (4,1) violated (120 > 80), (4,0) ordered
    assert (order.n_pairs, order.n_ordered) == (3, 1)


def test_negative_alphas_count_from_zero_outwards():
    shapes = [shape(1, "bump", -20.0), shape(4, "bump", -60.0), shape(5, "decreasing", -200.0)]
    order = peak_order(shapes, LOG_ODDS, alpha_end=-200.0)
    # for α < 0 the roles flip in Th. 3.3, but the function only reports which kind peaks first in |α|:
    # off-target 4 (|α| 60) and 5 (beyond 200) peak after target 1 (|α| 20)
    assert (order.n_pairs, order.n_ordered) == (2, 0)


def test_flat_and_falling_curves_are_left_out():
    shapes = [shape(3, "decreasing", 0.0), shape(1, "bump", 50.0, rise=1e-6), shape(0, "bump", 10.0)]
    order = peak_order(shapes, LOG_ODDS, alpha_end=200.0)
    assert order.n_pairs == 0 and np.isnan(order.share_ordered)


def test_classified_tilting_curves_follow_the_theorem():
    """On exact tilting curves (Lemma B.3) with Lemma B.4's signs, every decided pair is ordered."""
    p = np.array([0.05, 0.05, 0.05, 0.15, 0.6, 0.1])  # E_p[M] < 0: off-target tokens 3, 5 bump at α > 0
    alphas = np.linspace(0, 20, 401)
    logits = np.log(p)[None] + alphas[:, None] * LOG_ODDS[None]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    delta_p = probs - p
    shapes = []
    for token in range(6):
        kind, peak = classify_curve(alphas, delta_p[:, token])
        shapes.append(CurveShape(token, str(token), kind, peak, float(delta_p[:, token].max())))
    order = peak_order(shapes, LOG_ODDS, alpha_end=20.0)
    assert order.n_pairs > 0 and order.share_ordered == 1.0


def test_log_odds_ranks_count_from_either_end():
    from steerlib.curves import log_odds_ranks

    assert log_odds_ranks(LOG_ODDS, [0, 4, 5]).tolist() == [1, 6, 4]
    assert log_odds_ranks(LOG_ODDS, [0, 4, 5], side="min").tolist() == [6, 1, 3]
    with pytest.raises(ValueError, match="side"):
        log_odds_ranks(LOG_ODDS, [0], side="top")
