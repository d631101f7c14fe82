"""Unit tests of steerlib.ufm: every closed form against an independent evaluation, and every bad input."""

import numpy as np
import pytest
from scipy.special import logsumexp

from steerlib import ufm
from steerlib.ufm import (
    ConceptDataset,
    SteeringSets,
    app_b1_dataset,
    app_b3_dataset,
    bump_location,
    bump_locations,
    ce_quadratic_coefficient,
    classify_tokens,
    concept_case,
    concept_increase,
    concept_increase_tanh,
    concept_limits,
    concept_logit_at_zero,
    concept_nu,
    concept_probability,
    dataset_entropy,
    delta_ce,
    delta_ce_asymptotes,
    delta_ce_derivative,
    delta_ce_second_derivative,
    delta_p,
    delta_p_derivative,
    delta_p_limits,
    difference_of_means,
    distance_up_to_constant,
    eq2_dataset,
    eq2_steering_sets,
    general_dataset,
    log_odds,
    log_odds_sign_separation,
    max_log_odds_tokens,
    min_log_odds_tokens,
    min_target_bump_outside,
    remark_3_4_bound,
    select_steering_sets,
    steered_log_probs,
    steered_probs,
    steering_sets,
    tilted_mean,
    tilted_variance,
    train_ufm,
    ufm_cross_entropy,
    ufm_log_odds,
    ufm_loss_and_gradients,
    ufm_steered_probs,
)


@pytest.fixture(scope="module")
def data():
    return eq2_dataset()


@pytest.fixture(scope="module", params=["contrastive", "random"])
def setting(request, data):
    sets = eq2_steering_sets(data, request.param)
    return data, sets, data.log_odds(sets)


@pytest.fixture(scope="module")
def trained():
    data = eq2_dataset(0.05, gamma=None, omega=None)
    return data, train_ufm(data.rows, data.pi, tol=1e-9)


# --- datasets -------------------------------------------------------------------------------------------

def test_eq2_dataset_layout(data):
    assert data.token_names == ("a", "b", "c", "A", "B", "C", "α", "β", "γ")
    assert (data.V, data.G, data.m) == (9, 3, len(ufm.EQ2_CONTEXTS))
    np.testing.assert_allclose(data.rows.sum(axis=1), 1.0, atol=1e-12)
    j = data.context_index("aab")
    assert data.context_concepts[j] == 0
    assert data.context_concepts[data.context_index("ABB")] == 1
    assert data.context_concepts[data.context_index("αβγ")] == 2
    # Assumption 1: a_z where the concepts agree, b_z elsewhere.
    np.testing.assert_allclose(data.rows[j, :3], data.a[:3])
    np.testing.assert_allclose(data.rows[j, 3:], data.b[3:])
    assert np.all(data.a > data.b)
    assert data.opposite == {0: 1, 1: 0}


def test_app_b3_form():
    eps = 0.1
    data = eq2_dataset(eps)
    np.testing.assert_allclose(data.a, (1 - eps) * np.tile([0.45, 0.35, 0.2], 3))
    np.testing.assert_allclose(data.b, eps * np.tile([0.2, 0.35, 0.45], 3) / 2)


def test_app_b1_entropy_matches_formula():
    eps, G, s = 0.05, 3, 3
    a, b = (1 - eps) / s, eps / ((G - 1) * s)
    expected = -(s * a * np.log(a) + (G - 1) * s * b * np.log(b))
    assert eq2_dataset(eps, gamma=None, omega=None).entropy == pytest.approx(expected, rel=1e-14)
    assert app_b1_dataset(G, s, eps).entropy == pytest.approx(expected, rel=1e-14)
    assert ufm.app_b1_entropy(G, s, eps) == pytest.approx(expected, rel=1e-14)
    # The paper's "≈ 1.3317" (truncated) and "≈ 1.3318" (rounded) both read this value.
    assert 1.33175 < expected < 1.3318


def test_dataset_entropy_direct_sum(data):
    direct = -sum(w * sum(p * np.log(p) for p in row) for w, row in zip(data.pi, data.rows))
    assert dataset_entropy(data.rows, data.pi) == pytest.approx(direct, rel=1e-13)


def test_general_dataset_and_default_contexts():
    a = np.array([0.5, 0.3, 0.5, 0.3])
    b = np.array([0.1, 0.1, 0.1, 0.1])
    data = general_dataset(a, b, [0, 0, 1, 1], contexts_per_concept=2, context_length=2)
    assert data.m == 4
    assert data.token_names == ("A0", "A1", "B0", "B1")
    np.testing.assert_allclose(data.rows.sum(axis=1), 1.0)


def test_bad_dataset_inputs():
    names, concepts = ("x", "y", "u", "w"), [0, 0, 1, 1]
    a, b = [0.5, 0.3, 0.5, 0.3], [0.1, 0.1, 0.1, 0.1]
    contexts = [("x", "y"), ("u", "w")]
    with pytest.raises(ValueError, match="a_z > b_z"):
        ConceptDataset(names, concepts, [0.5, 0.3, 0.1, 0.6], [0.1, 0.1, 0.1, 0.1], contexts)
    with pytest.raises(ValueError, match="sum to 1"):
        ConceptDataset(names, concepts, [0.5, 0.4, 0.4, 0.3], b, contexts)
    with pytest.raises(ValueError, match="unknown token"):
        ConceptDataset(names, concepts, a, b, [("x", "q")])
    with pytest.raises(ValueError, match="mixes concepts"):
        ConceptDataset(names, concepts, a, b, [("x", "u")])
    with pytest.raises(ValueError, match="one entry per token"):
        ConceptDataset(names, concepts, a[:3], b, contexts)
    with pytest.raises(ValueError, match="at least two concepts"):
        ConceptDataset(("x", "y"), [0, 0], [0.5, 0.5], [0.1, 0.1], [("x",)])
    with pytest.raises(ValueError, match="unique"):
        ConceptDataset(("x", "x", "u", "w"), concepts, a, b, contexts)
    with pytest.raises(ValueError, match="pi_j"):
        ConceptDataset(names, concepts, a, b, contexts, pi=[0.7, 0.7])
    with pytest.raises(ValueError, match="epsilon"):
        app_b1_dataset(3, 3, 0.7)
    with pytest.raises(ValueError, match="inside every concept"):
        app_b3_dataset([0.5, 0.4, 0.5, 0.5], [0.5] * 4, 0.1, token_concepts=concepts)
    with pytest.raises(ValueError, match="a_z > b_z"):
        app_b3_dataset([0.9, 0.1, 0.5, 0.5], [0.1, 0.9, 0.5, 0.5], 0.6, token_concepts=concepts)
    data = eq2_dataset()
    with pytest.raises(ValueError, match="unknown token name"):
        data.token_index("z")
    with pytest.raises(ValueError, match="unknown context"):
        data.context_index("abc")


# --- steering sets ---------------------------------------------------------------------------------------

def test_eq2_steering_sets(data):
    sets = eq2_steering_sets(data, "contrastive")
    assert [data.context_names[j] for j in sets.positive] == ["aab", "bba", "acc", "cca"]
    assert [data.context_names[j] for j in sets.negative] == ["ABB", "AAB", "CAC", "CBA"]
    rand = eq2_steering_sets(data, "random")
    assert [data.context_names[j] for j in rand.negative] == ["ABB", "αβγ", "γβγ", "BAB"]
    assert sets.target == rand.target == 0 and sets.q == 4


def test_select_steering_sets_is_seeded(data):
    first = select_steering_sets(data, 1, 3, "contrastive", seed=3)
    assert first == select_steering_sets(data, 1, 3, "contrastive", seed=3)
    assert all(data.context_concepts[j] == 1 for j in first.positive)
    assert all(data.context_concepts[j] == 0 for j in first.negative)
    rand = select_steering_sets(data, 2, 3, "random", seed=0)
    assert all(data.context_concepts[j] != 2 for j in rand.negative)


def test_bad_steering_sets(data):
    with pytest.raises(ValueError, match=r"\|P\| = 2 but \|N\| = 1"):
        SteeringSets(0, (0, 1), (4,))
    with pytest.raises(ValueError, match="overlap"):
        SteeringSets(0, (0, 4), (4, 5))
    with pytest.raises(ValueError, match="not in the target"):
        steering_sets(data, ["aab", "ABB"], ["CAC", "CBA"])
    with pytest.raises(ValueError, match="lie in the target"):
        steering_sets(data, ["aab", "bba"], ["acc", "ABB"])
    with pytest.raises(ValueError, match="no opposite"):
        select_steering_sets(data, 2, 1, "contrastive")
    with pytest.raises(ValueError, match="only"):
        select_steering_sets(data, 0, 5, "random")
    with pytest.raises(ValueError, match="setting"):
        eq2_steering_sets(data, "other")


# --- log-odds (Def. 3.2, Lemma B.4) -----------------------------------------------------------------------

def test_log_odds_direct(setting):
    data, sets, M = setting
    for z in range(data.V):
        num = np.prod([data.rows[i, z] for i in sets.positive])
        den = np.prod([data.rows[i, z] for i in sets.negative])
        assert M[z] == pytest.approx(np.log(num / den) / sets.q, rel=1e-12, abs=1e-14)


def test_lemma_b4_sign_separation(setting):
    data, sets, M = setting
    ratio = np.log(data.a / data.b)
    for z in range(data.V):
        if data.token_concepts[z] == sets.target:
            assert M[z] == pytest.approx(ratio[z], rel=1e-12)
        else:
            q_z = sum(data.context_concepts[i] == data.token_concepts[z] for i in sets.negative)
            assert M[z] == pytest.approx(-q_z / sets.q * ratio[z], rel=1e-12, abs=1e-14)
    assert log_odds_sign_separation(M, data.members(sets.target)) > 0
    np.testing.assert_allclose(ufm.lemma_b4_log_odds(data, sets), M, rtol=1e-12, atol=1e-14)


def test_log_odds_bad_inputs(data):
    rows = data.rows[:4]
    with pytest.raises(ValueError, match="sums to"):
        log_odds(rows * 1.1, rows)
    with pytest.raises(ValueError, match=r"\|P\| = 4 but \|N\| = 3"):
        log_odds(rows, data.rows[4:7])
    with pytest.raises(ValueError, match="vocabulary size"):
        log_odds(rows, np.full((4, 3), 1 / 3))
    with pytest.raises(ValueError, match="2-d"):
        log_odds(rows[0], rows[0])


# --- exponential tilting (Lemma B.3), Lemma B.5, Prop. B.1 ---------------------------------------------------

def test_steered_probs_direct_formula(setting):
    data, _, M = setting
    p = data.rows[data.context_index("ABB")]
    for alpha in (-3.0, 0.0, 0.7, 4.0):
        direct = p * np.exp(alpha * M) / np.sum(p * np.exp(alpha * M))
        np.testing.assert_allclose(steered_probs(p, M, alpha)[0], direct, rtol=1e-12)
    np.testing.assert_allclose(delta_p(p, M, 0.0)[0], 0.0, atol=1e-15)


def test_stable_and_limits_at_large_alpha(setting):
    data, _, M = setting
    for j in range(data.m):
        p = data.rows[j]
        probs = steered_probs(p, M, [-1e4, 1e4])
        assert np.all(np.isfinite(probs))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
        limit_plus, limit_minus = delta_p_limits(p, M)
        np.testing.assert_allclose(delta_p(p, M, 1e4)[0], limit_plus, atol=1e-12)
        np.testing.assert_allclose(delta_p(p, M, -1e4)[0], limit_minus, atol=1e-12)
        assert np.all(np.isfinite(tilted_variance(p, M, [-1e4, 1e4])))
        assert np.all(np.isfinite(concept_increase(p, M, data.members(0), [-1e4, 1e4])))


def test_lemma_b5_derivatives_by_finite_differences(setting):
    data, _, M = setting
    h = 1e-5
    alphas = np.array([-2.0, -0.3, 0.0, 0.5, 1.7])
    for j in (0, 4, 9):
        p = data.rows[j]
        fd = (delta_p(p, M, alphas + h) - delta_p(p, M, alphas - h)) / (2 * h)
        np.testing.assert_allclose(delta_p_derivative(p, M, alphas), fd, atol=1e-8)
        fd_mean = (tilted_mean(p, M, alphas + h) - tilted_mean(p, M, alphas - h)) / (2 * h)
        np.testing.assert_allclose(tilted_variance(p, M, alphas), fd_mean, rtol=1e-6)


def test_extreme_sets_and_classification(setting):
    data, sets, M = setting
    top, bottom = max_log_odds_tokens(M), min_log_odds_tokens(M)
    assert set(top) <= set(data.members(sets.target))
    assert not set(bottom) & set(data.members(sets.target))
    labels = classify_tokens(M)
    assert set(labels[top]) == {"increasing"} and set(labels[bottom]) == {"decreasing"}
    assert labels[data.token_index("b")] == "bump"


def test_bump_location_solves_mean_equation_and_is_the_peak(setting):
    data, _, M = setting
    labels = classify_tokens(M)
    for j in range(data.m):
        p = data.rows[j]
        for z in np.flatnonzero(labels == "bump"):
            alpha_star = bump_location(p, M, z)
            assert tilted_mean(p, M, alpha_star)[0] == pytest.approx(M[z], abs=1e-10)
            grid = alpha_star + np.linspace(-2, 2, 4001)
            peak = grid[np.argmax(delta_p(p, M, grid)[:, z])]
            assert abs(peak - alpha_star) <= 1e-3
    p = data.rows[0]
    locations = bump_locations(p, M)
    assert np.all(locations[max_log_odds_tokens(M)] == np.inf)
    assert np.all(locations[min_log_odds_tokens(M)] == -np.inf)


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 0.3, 0.47])
def test_remark_3_4_bound_is_the_papers_formula(epsilon):
    data = eq2_dataset(epsilon)
    target = data.members(0)
    M = data.log_odds(eq2_steering_sets(data))           # M(z) = log(a_z / b_z) on T for either N
    G = data.G
    paper = M[target].min() - epsilon / (G - 1) * np.log((1 - epsilon) * (G - 1) / epsilon)
    assert remark_3_4_bound(data, 0) == pytest.approx(paper, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("epsilon", [0.01, 0.2, 0.47])
def test_remark_3_4_bound_and_earliest_target_bump(epsilon):
    data = eq2_dataset(epsilon)
    target = data.members(0)
    outside = np.flatnonzero(data.context_concepts != 0)
    bound = remark_3_4_bound(data, 0)
    for name in ("contrastive", "random"):
        sets = eq2_steering_sets(data, name)
        M = data.log_odds(sets)
        m_z1 = M[target].min()
        # The proof's inequality: M(z_1) - E_p[M] >= F for every context outside T.
        assert np.all(m_z1 - data.rows[outside] @ M >= bound - 1e-12)
        earliest = min_target_bump_outside(data, sets)
        # At the earliest target bump, the context whose tilted mean is largest reaches M(z_1) (Th. 3.3).
        means = [tilted_mean(data.rows[j], M, earliest)[0] for j in outside]
        assert max(means) == pytest.approx(m_z1, abs=1e-9)
        assert (earliest > 0) == bool(np.all(data.rows[outside] @ M < m_z1))
        if bound > 0:
            assert earliest > 0


def test_remark_3_4_needs_contexts_outside_target():
    data = eq2_dataset(contexts=("aab", "bba"))
    sets = SteeringSets(0, (0,), (1,))
    with pytest.raises(ValueError):
        min_target_bump_outside(data, sets)


def test_bump_location_bad_token(data):
    sets = eq2_steering_sets(data)
    with pytest.raises(ValueError, match="token index"):
        bump_location(data.rows[0], data.log_odds(sets), 9)


def test_steered_probs_bad_inputs(data):
    M = data.log_odds(eq2_steering_sets(data))
    with pytest.raises(ValueError, match="sums to"):
        steered_probs(data.rows[0] * 2, M, 1.0)
    with pytest.raises(ValueError, match="shape"):
        steered_probs(data.rows[0], M[:5], 1.0)
    with pytest.raises(ValueError, match="finite"):
        steered_probs(data.rows[0], M, np.nan)


# --- concept probability (Def. 3.5, Th. 3.6) ------------------------------------------------------------------

def test_concept_increase_direct_sum_and_tanh(setting):
    data, sets, M = setting
    alphas = np.array([-30.0, -5.0, -1.0, 0.0, 0.4, 2.0, 12.0])
    for j in (0, 4, 10):
        p = data.rows[j]
        for k in range(data.G):
            members = data.members(k)
            direct = np.array([sum(steered_probs(p, M, a)[0][z] - p[z] for z in members) / len(members)
                               for a in alphas])
            np.testing.assert_allclose(concept_increase(p, M, members, alphas), direct, atol=1e-14)
            np.testing.assert_allclose(concept_increase_tanh(p, M, members, alphas), direct, atol=1e-10)


def test_nu_by_quadrature_equals_logit_difference(setting):
    data, sets, M = setting
    alphas = np.array([-8.0, -1.0, 0.3, 3.0, 25.0])
    for k in range(data.G):
        p, members = data.rows[5], data.members(k)
        outside = np.setdiff1d(np.arange(data.V), members)
        log_probs = steered_log_probs(p, M, alphas)
        logit_F = logsumexp(log_probs[:, members], axis=1) - logsumexp(log_probs[:, outside], axis=1)
        nu = concept_nu(p, M, members, alphas)
        np.testing.assert_allclose(nu, logit_F - concept_logit_at_zero(p, members), atol=1e-9)
        F = concept_probability(p, M, members, alphas)
        np.testing.assert_allclose(F, np.exp(log_probs[:, members]).sum(axis=1), rtol=1e-12)
        assert np.all(np.abs(nu) <= np.ptp(M) * np.abs(alphas) + 1e-12)


def test_concept_case_on_constructed_log_odds():
    M = np.array([2.0, 1.0, 0.5, -0.5, -1.0, -2.0, 0.0])
    assert concept_case(M, [0, 1], is_target=True) == "target: increasing"
    assert concept_case(M, [4, 5]) == "decreasing"
    assert concept_case(M, [5]) == "decreasing"
    assert concept_case(M, [2, 6]) == "common limit at ±∞"
    assert concept_case(M, [1, 2, 3]) == "common limit at ±∞"
    assert concept_case(M, [3, 5]) == "not covered"          # holds min M, but -0.5 > -1.0 outside
    assert concept_case(M, [0, 2]) == "not covered"          # holds max M, not a target
    ties = np.array([1.0, 0.0, -1.0, -1.0])
    assert concept_case(ties, [2]) == "decreasing"           # max_C M <= min_{C^c} M is not strict
    assert concept_case(ties, [1]) == "common limit at ±∞"
    near_tie = np.array([1.0, 0.0, -1.0, -1.0 + 1e-13])
    assert concept_case(near_tie, [3]) == "not covered"      # an extreme token (within TIE_TOLERANCE)
    with pytest.raises(ValueError, match="whole vocabulary"):
        concept_case(M, range(7))
    with pytest.raises(ValueError, match="empty"):
        concept_case(M, [])


def test_concept_case_predicts_the_curves(setting):
    data, sets, M = setting
    cases = [concept_case(M, data.members(k), is_target=k == sets.target) for k in range(data.G)]
    expected = {"contrastive": ["target: increasing", "decreasing", "common limit at ±∞"],
                "random": ["target: increasing", "not covered", "not covered"]}
    assert cases == expected[sets.setting]
    alphas = np.linspace(-20, 20, 801)
    for p in np.unique(data.rows, axis=0):
        for k, case in enumerate(cases):
            members = data.members(k)
            curve = concept_increase(p, M, members, alphas)
            if case == "target: increasing":                  # saturates at ±20: rounding noise only
                assert np.all(np.diff(curve) >= -1e-12) and curve[-1] - curve[0] > 0.1
            elif case == "decreasing":
                assert np.all(np.diff(curve) <= 1e-12)
            elif case == "common limit at ±∞":
                far = concept_increase(p, M, members, [1e4, -1e4])
                np.testing.assert_allclose(far, -p[members].mean(), atol=1e-12)


def test_concept_limits_at_huge_alpha(setting):
    data, _, M = setting
    for p in np.unique(data.rows, axis=0):
        for k in range(data.G):
            members = data.members(k)
            plus, minus = concept_limits(p, M, members)
            far = concept_increase(p, M, members, [1e4, -1e4])
            np.testing.assert_allclose([plus, minus], far, atol=1e-12)
    # Each limit of Δp(C) is the mass the steered row puts on C, minus p(C), over |C|: they sum to zero.
    p = data.rows[0]
    limits = np.array([concept_limits(p, M, data.members(k)) for k in range(data.G)])
    sizes = np.array([data.members(k).size for k in range(data.G)])
    np.testing.assert_allclose(sizes @ limits, 0.0, atol=1e-12)


# --- cross-entropy (Def. 3.7, Th. 3.8) ---------------------------------------------------------------------------

def test_delta_ce_direct(setting):
    data, _, M = setting
    for alpha in (-4.0, 0.0, 0.25, 6.0):
        ce_alpha = -sum(w * np.sum(row * np.log(steered_probs(row, M, alpha)[0]))
                        for w, row in zip(data.pi, data.rows))
        ce_zero = dataset_entropy(data.rows, data.pi)
        assert delta_ce(data.rows, data.pi, M, alpha)[0] == pytest.approx(ce_alpha - ce_zero, abs=1e-12)
    assert np.all(np.isfinite(delta_ce(data.rows, data.pi, M, [-1e4, 1e4])))


def test_theorem_3_8_coefficient_and_derivatives(setting):
    data, _, M = setting
    rows, pi = data.rows, data.pi
    h = 1e-3
    second = (delta_ce(rows, pi, M, h)[0] - 2 * delta_ce(rows, pi, M, 0.0)[0] + delta_ce(rows, pi, M, -h)[0]) / h**2
    coefficient = ce_quadratic_coefficient(rows, pi, M)
    assert second == pytest.approx(2 * coefficient, rel=1e-5)
    direct = 0.5 * sum(w * (row @ M**2 - (row @ M) ** 2) for w, row in zip(pi, rows))
    assert coefficient == pytest.approx(direct, rel=1e-12)
    alphas = np.array([-3.0, 0.5, 2.0])
    fd1 = (delta_ce(rows, pi, M, alphas + 1e-5) - delta_ce(rows, pi, M, alphas - 1e-5)) / 2e-5
    np.testing.assert_allclose(delta_ce_derivative(rows, pi, M, alphas), fd1, rtol=1e-6, atol=1e-9)
    fd2 = (delta_ce_derivative(rows, pi, M, alphas + 1e-5) - delta_ce_derivative(rows, pi, M, alphas - 1e-5)) / 2e-5
    np.testing.assert_allclose(delta_ce_second_derivative(rows, pi, M, alphas), fd2, rtol=1e-6, atol=1e-9)


def test_delta_ce_asymptotes_far_out(setting):
    data, _, M = setting
    rows, pi = data.rows, data.pi
    (s_plus, b_plus), (s_minus, b_minus) = delta_ce_asymptotes(rows, pi, M)
    far = 1e3
    for sign, slope, intercept in ((1.0, s_plus, b_plus), (-1.0, s_minus, b_minus)):
        values = delta_ce(rows, pi, M, [sign * far, 2 * sign * far])
        numeric_slope = (values[1] - values[0]) / (sign * far)
        assert slope == pytest.approx(numeric_slope, rel=1e-10)
        assert intercept == pytest.approx(values[0] - numeric_slope * sign * far, abs=1e-8)
    assert s_plus > 0 > s_minus
    np.testing.assert_allclose(delta_ce_derivative(rows, pi, M, [1e3, -1e3]), [s_plus, s_minus], atol=1e-12)


def test_delta_ce_asymptotes_bad_rows():
    rows = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    with pytest.raises(ValueError, match="no mass"):
        delta_ce_asymptotes(rows, [0.5, 0.5], [0.0, 0.5, 1.0])


def test_delta_ce_bad_weights(data):
    M = data.log_odds(eq2_steering_sets(data))
    with pytest.raises(ValueError, match="sum to 1"):
        delta_ce(data.rows, np.ones(data.m), M, 1.0)
    with pytest.raises(ValueError, match="shape"):
        delta_ce(data.rows, np.ones(3) / 3, M, 1.0)


# --- the UFM (Def. 2.2, Eq. (3), Lemma B.2) -----------------------------------------------------------------------

def test_gradients_match_torch_autograd(data):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    W, H = rng.standard_normal((data.V, 5)), rng.standard_normal((5, data.m))
    loss, _, grad_W, grad_H = ufm_loss_and_gradients(W, H, data.rows, data.pi)
    Wt = torch.tensor(W, requires_grad=True)
    Ht = torch.tensor(H, requires_grad=True)
    loss_t = -(torch.tensor(data.pi) * (torch.tensor(data.rows) * torch.log_softmax((Wt @ Ht).T, 1)).sum(1)).sum()
    loss_t.backward()
    assert loss == pytest.approx(loss_t.item(), rel=1e-13)
    np.testing.assert_allclose(grad_W, Wt.grad.numpy(), atol=1e-13)
    np.testing.assert_allclose(grad_H, Ht.grad.numpy(), atol=1e-13)
    assert ufm_cross_entropy((W @ H).T, data.rows, data.pi) == pytest.approx(loss, rel=1e-14)


def test_training_reaches_entropy_bound(trained):
    data, model = trained
    assert model.converged and model.max_prob_error <= 1e-9
    assert np.abs(model.probs() - data.rows).max() <= 1e-9
    assert -1e-14 <= model.final_loss - data.entropy < 1e-12
    assert model.losses[0] > model.final_loss


def test_lemma_b2_and_b3_on_the_trained_ufm(trained):
    data, model = trained
    sets = eq2_steering_sets(data, "random")
    v = model.steering_vector(sets)
    np.testing.assert_allclose(v, difference_of_means(model.H, sets.positive, sets.negative))
    logits = model.logits()
    lemma_b2 = (logits[list(sets.positive)].sum(0) - logits[list(sets.negative)].sum(0)) / sets.q
    np.testing.assert_allclose(ufm_log_odds(model.W, v), lemma_b2, atol=1e-12)
    M = data.log_odds(sets)
    assert distance_up_to_constant(ufm_log_odds(model.W, v), M) < 1e-6
    alphas = np.linspace(-10, 10, 41)
    for j in range(data.m):
        np.testing.assert_allclose(model.steered_probs(j, v, alphas), steered_probs(data.rows[j], M, alphas),
                                   atol=1e-6)
        np.testing.assert_allclose(ufm_steered_probs(model.W, model.H, v, j, 0.0)[0], data.rows[j], atol=1e-9)


def test_training_bad_inputs(data):
    with pytest.raises(ValueError, match="sums to"):
        train_ufm(data.rows * 0.5, data.pi)
    with pytest.raises(ValueError, match="diverged"):
        train_ufm(data.rows, data.pi, learning_rate=1e6, max_steps=50)
    with pytest.raises(ValueError, match="dim"):
        train_ufm(data.rows, data.pi, dim=0)
