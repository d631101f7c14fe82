"""Tests of steerlib.limits: the Prop. 4.1 limit logits and the distances used to watch the convergence."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from steerlib.limits import (
    js_divergence,
    kl_divergence,
    limit_logits,
    loglog_slope,
    max_pairwise_distance,
    total_variation,
)
from steerlib.models import find_parts


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return find_parts(LlamaForCausalLM(config), tokenizer=None, name="tiny-llama")


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


def test_limit_logits_are_scale_invariant_and_flip_with_the_sign(tiny_lm):
    v = torch.randn(16)
    plus = limit_logits(tiny_lm, v, +1)
    assert plus.shape == (64,)
    assert torch.allclose(plus, limit_logits(tiny_lm, 100.0 * v, +1), atol=1e-5)
    assert torch.allclose(limit_logits(tiny_lm, v, -1), limit_logits(tiny_lm, -v, +1), atol=1e-6)
    assert not torch.allclose(plus, limit_logits(tiny_lm, v, -1))


def test_limit_logits_equal_the_model_output_when_the_residual_is_dominated_by_v(tiny_lm):
    """LN(h + αv)Wᵀ -> LN(v)Wᵀ: the final norm alone already forgets h at large α."""
    h, v = torch.randn(16), torch.randn(16)
    with torch.no_grad():
        far = tiny_lm.unembedding(tiny_lm.final_norm(h + 1e6 * v))
    assert float(kl_divergence(far, limit_logits(tiny_lm, v, +1))) < 1e-8


def test_limit_logits_reject_bad_vectors(tiny_lm):
    with pytest.raises(ValueError, match="shape"):
        limit_logits(tiny_lm, torch.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        limit_logits(tiny_lm, torch.zeros(16))
    with pytest.raises(ValueError, match="sign"):
        limit_logits(tiny_lm, torch.ones(16), sign=2)


def test_loglog_slope_recovers_a_power_law():
    alphas = np.array([10.0, 100.0, 1000.0, 10000.0])
    assert loglog_slope(alphas, 3.0 * alphas**-2.0) == pytest.approx(-2.0)
    assert loglog_slope(-alphas, 3.0 * alphas**-1.0, tail=4) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="positive"):
        loglog_slope(alphas, np.zeros(4))


def test_large_alpha_sweep_converges_to_the_limit_on_a_tiny_model(tmp_path):
    from test_models import tiny_lm

    from steerlib.limits import LimitSweep, large_alpha_sweep, limit_cross_entropy, steered_cross_entropy

    lm = tiny_lm("llama")
    torch.manual_seed(1)
    v = torch.randn(lm.hidden_size)
    sweep = large_alpha_sweep(lm, {1: v, 3: v}, ["hello there", "a cat sat"], [1.0, 1e2, 1e4, 1e6],
                              progress=False)
    assert sweep.kl.shape == (2, 2, 2, 4) and sweep.pairwise_tv.shape == (2, 2, 4)
    assert np.all(sweep.mean_kl()[..., -1] < 1e-6)
    assert np.all(sweep.pairwise_tv[..., -1] < 1e-3)
    assert np.all(sweep.mean_kl()[..., -1] < sweep.mean_kl()[..., 0])
    loaded = LimitSweep.load(sweep.save(tmp_path / "limit.npz"))
    assert np.array_equal(loaded.kl, sweep.kl) and loaded.prompts == sweep.prompts
    ce = steered_cross_entropy(lm, ["hello there"], v, [1e6, -1e6], layer=2)
    assert ce[0] == pytest.approx(limit_cross_entropy(lm, ["hello there"], v, +1), rel=1e-3)
    assert ce[1] == pytest.approx(limit_cross_entropy(lm, ["hello there"], v, -1), rel=1e-3)
    with pytest.raises(ValueError, match="two prompts"):
        large_alpha_sweep(lm, {1: v}, ["only one"], [1.0])
