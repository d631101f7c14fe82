"""Measured curves held against Th. 3.3: curve shapes, target tokens by log-odds sign, bump share, peak order,
the token-by-token agreement on exact exponential tilting (a perfectly trained UFM), and the per-block words of
the chapters' prose."""

import dataclasses

import numpy as np
import pytest

from steerlib import ufm
from steerlib.experiments.next_token import NextTokenSweep
from steerlib.tinygpt import is_lowercase_word, is_uppercase_word
from steerlib.theory_checks import (CurveShape, block_words, bump_share, classify_curve, is_target_token,
                                    log_odds_ranks, majority_words, peak_order, per_block_words,
                                    theorem_3_3_agreement)

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
    assert log_odds_ranks(LOG_ODDS, [0, 4, 5]).tolist() == [1, 6, 4]
    assert log_odds_ranks(LOG_ODDS, [0, 4, 5], side="min").tolist() == [6, 1, 3]
    with pytest.raises(ValueError, match="side"):
        log_odds_ranks(LOG_ODDS, [0], side="top")


def test_classify_curve_shapes():
    alphas = np.linspace(-10, 10, 21)
    bump = np.exp(-((alphas - 3) ** 2) / 4) - np.exp(-9 / 4)
    assert classify_curve(alphas, bump) == ("bump", 3.0)
    assert classify_curve(alphas, np.tanh(alphas))[0] == "increasing"
    assert classify_curve(alphas, -np.tanh(alphas)) == ("decreasing", -10.0)
    assert classify_curve(alphas, np.zeros(21))[0] == "flat"
    nearly_monotone = np.tanh(alphas) - 0.001 * (alphas == 10)  # a dip below 5 % of the range is not a bump
    assert classify_curve(alphas, nearly_monotone)[0] == "increasing"


UPPERCASE = (is_uppercase_word, is_lowercase_word, ("uppercase", "lowercase"))


def tilted_sweep(p0: np.ndarray, M: np.ndarray, tokens: list[str], alphas: np.ndarray) -> NextTokenSweep:
    """A sweep whose curves are the exact exponential tilting of Lemma B.3 (a perfectly trained UFM)."""
    delta_p = ufm.delta_p(p0, M, alphas)
    final = p0 + delta_p[-1]
    return NextTokenSweep(alphas=alphas, alphas_relative=alphas, reference_norm=1.0,
                          token_ids=np.arange(len(M)), tokens=tokens, p0=p0, delta_p=delta_p,
                          top_at_max=np.argsort(-final, kind="stable")[:4],
                          top_at_min=np.argsort(-(p0 + delta_p[0]), kind="stable")[:4], parameters={})


def test_agreement_is_perfect_on_exact_tilting():
    tokens = [" THE", " SAID", "ING", " IS", " the", ",", ".", " said", " is", "ing"]
    M = np.array([3.0, 2.2, 1.6, 1.1, -0.4, -0.8, -1.3, -2.0, -2.6, -3.1])
    rng = np.random.default_rng(0)
    sweeps = [tilted_sweep(rng.dirichlet(np.ones(len(M))), M, tokens, np.linspace(0, 60, 1201))
              for _ in range(3)]
    # tiny early bumps (Δp ~ 1e-3 before a fall to -p) need a small tolerance to be seen as bumps
    agreement = theorem_3_3_agreement(sweeps, M, *UPPERCASE, top_k=4, rising_k=6, tolerance=1e-4)
    for name, (agree, cases) in agreement.agreements.items():
        assert cases > 0 and agree == cases, (name, agree, cases)
    assert agreement.overall_rate == 1.0 and agreement.target_share == 1.0
    assert "uppercase peaks after other tokens" in agreement.agreements


def test_agreement_counts_disagreements_and_needs_the_whole_vocabulary():
    tokens = [" THE", " SAID", ",", "."]
    M = np.array([2.0, 1.0, -1.0, -2.0])
    p0 = np.full(4, 0.25)
    sweep = tilted_sweep(p0, M, tokens, np.linspace(0, 30, 301))
    flipped = theorem_3_3_agreement([sweep], M[::-1].copy(), *UPPERCASE, top_k=2, rising_k=2)  # M in reverse
    assert flipped.rate("max-M token increases throughout") == 0.0
    assert flipped.overall_rate < 1.0
    short = dataclasses.replace(sweep, token_ids=sweep.token_ids[:3], p0=p0[:3], delta_p=sweep.delta_p[:, :3])
    with pytest.raises(ValueError, match="keep_tokens=None"):
        theorem_3_3_agreement([short], M, *UPPERCASE)


def test_per_block_prose_for_one_block_or_many():
    assert block_words([15]) == "block 15" and block_words([6, 15, 29]) == "blocks 6, 15 and 29"
    assert per_block_words({15: 0.4167}) == "42% at block 15"
    assert per_block_words({6: 0.583, 15: 0.417, 29: 0.458}) == "58% at block 6, 42% at block 15 and 46% at block 29"
    assert per_block_words({6: 242.0, 15: 12.4}, "{:.0f}") == "242 at block 6 and 12 at block 15"
    assert majority_words({15: 0.75}) == "more than half at block 15"
    assert majority_words({15: 0.5}) == "not more than half at block 15"
    assert majority_words({6: 0.6, 15: 0.9}) == "more than half at every block"
    assert majority_words({6: 0.6, 15: 0.4, 29: 0.7}) == "more than half at blocks 6 and 29 only"
    assert majority_words({6: 0.1, 15: 0.4}) == "not more than half at any block"
    with pytest.raises(ValueError, match="no blocks"):
        per_block_words({})


def test_pooled_peak_order_sums_counts_and_skips_missing_medians():
    from steerlib.theory_checks import PeakOrder, pooled_peak_order

    pooled = pooled_peak_order([PeakOrder(4, 3, 2, 2, 10.0, 5.0), PeakOrder(0, 0, 3, 0, 20.0, float("nan"))])
    assert (pooled.n_pairs, pooled.n_ordered, pooled.n_target, pooled.n_off_target) == (4, 3, 5, 2)
    assert pooled.median_target_peak == 15.0 and pooled.median_off_target_peak == 5.0
    empty = pooled_peak_order([PeakOrder(0, 0, 1, 0, 1.0, float("nan"))])
    assert np.isnan(empty.median_off_target_peak)
    with pytest.raises(ValueError):
        pooled_peak_order([])


def test_poisson_binomial_tail_is_the_exact_law():
    from scipy.stats import binom

    from steerlib.theory_checks import poisson_binomial_tail

    assert poisson_binomial_tail([0.3] * 10, 4) == pytest.approx(binom.sf(3, 10, 0.3))
    assert poisson_binomial_tail([0.5, 1.0], 0) == pytest.approx(1.0)
    assert poisson_binomial_tail([0.5, 1.0], 2) == pytest.approx(0.5)
    assert poisson_binomial_tail([0.5], 3) == 0.0
    with pytest.raises(ValueError):
        poisson_binomial_tail([1.5], 1)


def test_base_rate_test_compares_with_the_vocabulary():
    from steerlib.theory_checks import base_rate_test

    # 90 % of the vocabulary has M > 0: eight tokens with M > 0 are no evidence; eight with M <= 0 are.
    values = np.where(np.arange(100) < 90, 1.0, -1.0)
    common = base_rate_test([values], [list(range(8))])
    assert (common.n_tokens, common.n_hits, common.share) == (8, 8, 1.0)
    assert common.base_rate == pytest.approx(0.9) and common.p_value == pytest.approx(0.9 ** 8)
    assert common.p_value > 0.05  # above one half, yet not above the base rate
    rare = base_rate_test([values], [list(range(90, 98))], side="nonpositive")
    assert rare.share == 1.0 and rare.base_rate == pytest.approx(0.1) and rare.p_value < 1e-6
    pooled = base_rate_test([values, -values], [[0, 1], [0, 1]])
    assert pooled.n_hits == 2 and pooled.base_rate == pytest.approx(0.5)
    with pytest.raises(ValueError):
        base_rate_test([values], [[0]], side="up")
    with pytest.raises(ValueError):
        base_rate_test([values], [[0], [1]])


def test_word_token_ids_keep_single_token_words():
    from steerlib.theory_checks import word_token_ids

    vocabulary = {"sad": 1, " sad": 2, " Sad": 3, " joy": 4}

    def words(text, add_special_tokens=False):
        return {"input_ids": [vocabulary[text]] if text in vocabulary else [9, 9]}

    assert word_token_ids(words, ["sad", "joy", "gloom"]) == {"sad": 1, " sad": 2, " Sad": 3, " joy": 4}


def test_quadratic_zone_ends_where_the_parabola_misses():
    from steerlib.theory_checks import quadratic_zone

    alphas = np.array([-1.0, -0.3, -0.1, 0.0, 0.1, 0.3, 1.0])
    exact = 0.5 * alphas + 2.0 * alphas**2
    assert quadratic_zone(alphas, exact, 0.5, 2.0) == 1.0
    bent = np.where(np.abs(alphas) > 0.2, 0.5 * exact, exact)  # leaves the parabola beyond |α| = 0.1
    assert quadratic_zone(alphas, bent, 0.5, 2.0) == 0.1
    assert quadratic_zone(alphas, -exact, 0.5, 2.0) == 0.0
    crossing = np.array([-0.3, -0.25, 0.0, 0.25])  # ΔCE = α + 4α² is 0 at α = -0.25: no relative error there
    assert quadratic_zone(crossing, crossing + 4 * crossing**2 + 1e-3, 1.0, 4.0) == 0.3
    with pytest.raises(ValueError):
        quadratic_zone(alphas, exact[:3], 0.5, 2.0)
