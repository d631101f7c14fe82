"""The large-α limit measured (Prop. 4.1): KL to σ(LN(±v)Wᵀ) and the prompts' spread fall, ΔCE reaches its
predicted plateaus."""

import numpy as np
import pytest
import torch

from steerlib.experiments.large_alpha import LargeAlphaParameters, LargeAlphaSweep, run, texts_cross_entropy
from steerlib.steering import steer
from test_models import tiny_lm


def test_large_alpha_sweep_converges_to_the_limit_on_a_tiny_model(tmp_path):
    lm = tiny_lm("llama")
    torch.manual_seed(1)
    v = torch.randn(lm.hidden_size)
    params = LargeAlphaParameters(["hello there", "a cat sat"], [1.0, 1e2, 1e4, 1e6], ce_layer=2,
                                  ce_alphas=[1e6])
    sweep = run(lm, {1: v, 2: v, 3: v}, params, progress=False)
    assert sweep.kl.shape == (2, 3, 2, 4) and sweep.pairwise_tv.shape == (2, 3, 4)
    assert np.all(sweep.mean_kl()[..., -1] < 1e-6)
    assert np.all(sweep.pairwise_tv[..., -1] < 1e-3)
    assert np.all(sweep.mean_kl()[..., -1] < sweep.mean_kl()[..., 0])
    loaded = LargeAlphaSweep.load(sweep.save(tmp_path / "limit.npz"))
    assert np.array_equal(loaded.kl, sweep.kl) and loaded.parameters == sweep.parameters
    assert list(sweep.ce_alphas) == [-1e6, 0.0, 1e6]
    np.testing.assert_allclose(sweep.delta_ce[[-1, 0]], sweep.plateau, rtol=1e-3)
    assert sweep.kl_slopes(tail=2).shape == (2, 3)
    split = run(lm, {1: v, 2: v, 3: v}, params, progress=False, alphas_per_forward=3)
    np.testing.assert_allclose(split.kl, sweep.kl, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(split.ce, sweep.ce, rtol=1e-5)
    with pytest.raises(ValueError, match="two prompts"):
        LargeAlphaParameters(["only one"], [1.0])
    with pytest.raises(ValueError, match="ce_layer"):
        LargeAlphaParameters(["a b", "c d"], [1.0], ce_alphas=[10.0])


def test_texts_cross_entropy_equals_a_hooked_forward_and_its_limit():
    lm = tiny_lm("gpt2")
    torch.manual_seed(2)
    v = torch.randn(lm.hidden_size)
    texts = ["hello there", "a cat sat on the mat"]
    ce, limit_ce = texts_cross_entropy(lm, texts, v, [-3.0, 0.0, 2.0], layer=1)
    for index, alpha in enumerate((-3.0, 0.0, 2.0)):
        total = count = 0
        for text in texts:
            ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
            with torch.no_grad(), steer(lm, v, alpha, layer=1):
                log_probs = lm.model(input_ids=ids).logits.float().log_softmax(-1)[0, :-1]
            total -= float(log_probs.gather(-1, ids[0, 1:, None]).sum())
            count += ids.shape[1] - 1
        assert ce[index] == pytest.approx(total / count, rel=1e-5)
    far, _ = texts_cross_entropy(lm, texts, v, [1e7, -1e7], layer=1)
    np.testing.assert_allclose(far, limit_ce, rtol=1e-3)
