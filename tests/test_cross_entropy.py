"""ΔCE(α) on a corpus: the chunked α-batched path equals a hooked full forward; limits, derivatives, reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from float32 import assert_float32_close
from steerlib.experiments import cross_entropy
from steerlib.experiments.cross_entropy import CrossEntropyParameters, CrossEntropySweep, derivative_statistics
from steerlib.models import LoadedModel, block_hidden, load_model
from steerlib.steering import limit_target_log_probs, steer, steered_target_log_probs
from test_models import VOCABULARY, tiny_lm

ALPHAS = torch.tensor([-40.0, -3.0, 0.0, 0.7, 9.0, 120.0])


def corpus_blocks(seed: int = 1, shape: tuple[int, int] = (3, 12)) -> torch.Tensor:
    return torch.randint(0, VOCABULARY, shape, generator=torch.Generator().manual_seed(seed))


def direction(lm, seed: int = 2) -> torch.Tensor:
    return torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed))


def direct_target_log_probs(lm, ids, v, alphas, layer) -> torch.Tensor:
    """The reference: the model's own forward under :func:`steer` (one α per row), all logits at once."""
    alphas = torch.as_tensor(alphas, dtype=torch.float32)
    batch = ids.shape[0]
    with torch.no_grad(), steer(lm, v, alphas.repeat_interleave(batch), layer=layer):
        log_probs = lm.model(input_ids=ids.repeat(len(alphas), 1)).logits.float().log_softmax(dim=-1)
    targets = ids[:, 1:].repeat(len(alphas), 1)
    return log_probs[:, :-1].gather(-1, targets[..., None])[..., 0].reshape(len(alphas), batch, -1)


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "gemma3-multimodal"])
def test_chunked_path_equals_the_hooked_full_forward(family):
    lm = tiny_lm(family)
    ids, v = corpus_blocks(), direction(lm)
    for layer in (0, 2, lm.n_layers - 1):
        reference = direct_target_log_probs(lm, ids, v, ALPHAS, layer)
        ours = steered_target_log_probs(lm, ids, v, ALPHAS, layer=layer, alphas_per_forward=4, logit_chunk=7)
        assert ours.shape == (len(ALPHAS), 3, 11)
        assert_float32_close(ours, reference)
        assert (reference[-1] - reference[2]).abs().max() > 1e-2  # steering does change the scores


def test_sweep_delta_ce_equals_the_direct_computation():
    lm = tiny_lm("llama")
    ids, v = corpus_blocks(shape=(5, 9)), direction(lm)
    sweep = cross_entropy.run(lm, ids, v, CrossEntropyParameters(ALPHAS.numpy(), layer=1, batch_size=2),
                              logit_chunk=5, progress=False)
    reference = -direct_target_log_probs(lm, ids, v, sweep.alphas, 1).double().mean(dim=(1, 2)).numpy()
    assert_float32_close(sweep.ce, reference)
    assert_float32_close(sweep.delta_ce, reference - reference[sweep.alphas == 0], scale=reference.max())
    assert sweep.n_tokens == 5 * 8
    assert sweep.delta_ce[sweep.alphas == 0] == 0.0


def test_a_relative_grid_is_kept_exactly():
    """``α_rel · unit / unit`` misses ``α_rel`` by one rounding for some units: a window such as
    ``|α_rel| <= 0.1`` would then take or drop its edge points by chance (it did, between two CPUs)."""
    lm = tiny_lm("llama")
    grid = np.round(np.linspace(-0.5, 0.5, 21), 2)
    for scale in (1.0, 6.886049004789857, 0.77):
        params = CrossEntropyParameters(grid, layer=1, alpha_scale="relative", derivative_step=None)
        sweep = cross_entropy.run(lm, corpus_blocks()[:1], scale * direction(lm), params, progress=False)
        assert list(sweep.alphas_relative) == list(np.unique(grid))


def test_relative_alphas_are_in_units_of_the_residual_norm():
    lm = tiny_lm("llama")
    ids, v = corpus_blocks(), direction(lm)
    params = CrossEntropyParameters([-1.0, 0.5], layer=1, alpha_scale="relative", derivative_step=None)
    sweep = cross_entropy.run(lm, ids, v, params, progress=False)
    assert sweep.parameters["mean_residual_norm"] / float(v.norm()) == pytest.approx(sweep.unit)
    assert list(sweep.alphas_relative) == [-1.0, 0.0, 0.5]  # exactly: windows on the grid must not hang on a rounding
    np.testing.assert_allclose(sweep.alphas, np.array([-1.0, 0.0, 0.5]) * sweep.unit)


def test_delta_ce_reaches_the_prop_4_1_plateau():
    lm = tiny_lm("llama")
    ids, v = corpus_blocks(), direction(lm)
    sweep = cross_entropy.run(lm, ids, v, CrossEntropyParameters([-1e5, 1e5], layer=1, derivative_step=None),
                              progress=False)
    np.testing.assert_allclose(sweep.delta_ce[[-1, 0]], sweep.delta_ce_limit, rtol=0, atol=1e-4)
    assert sweep.delta_ce_limit.max() > 0.1  # the plateau is far from 0: reaching it is not trivial
    expected_plus = -limit_target_log_probs(lm, ids, v, 1).mean().item()
    assert sweep.limit_ce[0] == pytest.approx(expected_plus)


@pytest.mark.slow
def test_chunked_path_on_smollm2_with_a_short_text():
    lm = load_model()
    ids = lm.tokenizer("The river rose overnight and the town council met at dawn to plan.",
                       return_tensors="pt")["input_ids"]
    v = direction(lm)
    v = 3.0 * v / v.norm()
    alphas = torch.tensor([-20.0, 0.0, 5.0])
    reference = direct_target_log_probs(lm, ids, v, alphas, 15)
    ours = steered_target_log_probs(lm, ids, v, alphas, layer=15, logit_chunk=4)
    assert_float32_close(ours, reference)


def linear_readout_lm() -> LoadedModel:
    """A tiny model whose ``lm.logits`` is the bare unembedding, so steering the last block is linear in α."""
    lm = tiny_lm("llama")
    return LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name="tiny-llama-linear-readout", blocks=lm.blocks,
                       final_norm=nn.Identity(), unembedding=lm.unembedding)


def test_derivatives_match_th_3_8_when_logits_are_linear_in_alpha():
    lm = linear_readout_lm()
    ids, v = corpus_blocks(), direction(lm)
    layer = lm.n_layers - 1
    stats = derivative_statistics(lm, ids, v, step=1.0, layer=layer)  # differences are exact for a linear map
    n = stats["n_tokens"]
    assert stats["nonlinear_terms"] / n == pytest.approx(0.0, abs=1e-3)
    # d = W v at every position: the variance term is Var_{p_t}(W v) exactly.
    captured = {}
    handle = lm.blocks[layer].register_forward_hook(lambda module, args, output: captured.update(h=block_hidden(output)))
    with torch.no_grad():
        lm.model(input_ids=ids)
    handle.remove()
    hidden = captured["h"]
    with torch.no_grad():
        p = lm.unembedding(hidden[:, :-1]).double().softmax(-1)
        d = lm.unembedding.weight.double() @ v.double()
    variance = (p * d**2).sum(-1) - (p * d).sum(-1) ** 2
    assert stats["variance_d"] / n == pytest.approx(float(variance.mean()), rel=1e-3)


def test_derivative_statistics_add_up_to_the_finite_difference_curvature():
    lm = tiny_lm("qwen3")
    ids, v = corpus_blocks(), direction(lm)
    M = np.linspace(-1.0, 1.0, VOCABULARY)
    step = 2e-2
    stats = derivative_statistics(lm, ids, v, step=step, layer=1, log_odds=M)
    n = stats["n_tokens"]
    curvature = (stats["ce_plus"] + stats["ce_minus"] - 2 * stats["ce_zero"]) / (n * step**2)
    # Both terms are large and nearly cancel on this random model: the identity needs both.
    assert curvature == pytest.approx((stats["variance_d"] + stats["nonlinear_terms"]) / n, rel=3e-2)
    slope = (stats["ce_plus"] - stats["ce_minus"]) / (2 * step * n)
    assert slope == pytest.approx(stats["slope_terms"] / n, rel=2e-2, abs=1e-4)
    assert stats["variance_log_odds"] > 0
    assert stats["covariance_d_log_odds"] ** 2 <= stats["variance_d"] * stats["variance_log_odds"]
    with pytest.raises(ValueError, match="log_odds"):
        derivative_statistics(lm, ids, v, step=5e-2, layer=1, log_odds=M[:-1])


def test_bad_blocks_are_rejected_with_advice():
    lm = tiny_lm("llama")
    v = direction(lm)
    with pytest.raises(ValueError, match="chunk_tokens"):
        steered_target_log_probs(lm, torch.tensor([1, 2, 3]), v, [1.0], layer=1)
    with pytest.raises(ValueError, match="tokenise"):
        steered_target_log_probs(lm, torch.full((1, 4), VOCABULARY), v, [1.0], layer=1)
    with pytest.raises(ValueError, match="alpha_scale"):
        CrossEntropyParameters([1.0], layer=1, alpha_scale="percent")


def test_save_load_and_load_or_run_reuse(tmp_path, monkeypatch):
    lm = tiny_lm("gpt2")
    ids, v = corpus_blocks(), direction(lm)
    params = CrossEntropyParameters([-2.0, 2.0], layer=1)
    first = cross_entropy.load_or_run(lm, ids, v, params, tmp_path, progress=False)
    saved = list(tmp_path.glob("cross-entropy-*.npz"))
    assert len(saved) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed a sweep that was saved")

    monkeypatch.setattr(cross_entropy, "run", refuse)
    again = cross_entropy.load_or_run(lm, ids, v, params, tmp_path, progress=False)
    np.testing.assert_array_equal(again.ce, first.ce)
    np.testing.assert_array_equal(again.limit_ce, first.limit_ce)
    assert again.statistics == first.statistics and again.parameters == first.parameters
    with pytest.raises(AssertionError, match="recomputed"):  # another grid is another result
        cross_entropy.load_or_run(lm, ids, v, CrossEntropyParameters([-3.0, 2.0], layer=1), tmp_path, progress=False)
    loaded = CrossEntropySweep.load(saved[0])
    assert loaded.n_tokens == first.n_tokens and loaded.unit == first.unit
    with pytest.raises(ValueError, match="no saved CrossEntropySweep"):
        CrossEntropySweep.load(tmp_path / "missing.npz")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_fp16_corpus_scores_equal_the_models_own_fp16_forward(family):
    """In fp16 the corpus engine equals the model's own fp16 forward under steer (a massive first-position
    activation included), and stays finite where that forward overflows."""
    lm = tiny_lm(family, torch.float16)
    ids = corpus_blocks()
    embeddings = lm.model.get_input_embeddings()
    lm = LoadedModel(model=lm.model, tokenizer=lm.tokenizer, name=lm.name, blocks=lm.blocks,
                     final_norm=lm.final_norm, unembedding=lm.unembedding)
    original = embeddings.weight[int(ids[0, 0])].clone()
    with torch.no_grad():
        # 1e4, as SmolLM2's first position; GPT-2's LayerNorm squares its input in fp16 and overflows beyond ~200
        massive = 100.0 if family == "gpt2" else 1e4
        embeddings.weight[int(ids[0, 0])] = original.sign() * massive / float(getattr(embeddings, "embed_scale", 1.0))
    try:
        v = direction(lm) * 50
        alphas = torch.tensor([0.0, 2.0, -30.0])
        for layer in (0, lm.n_layers - 1):
            reference = direct_target_log_probs(lm, ids, v, alphas, layer)
            ours = steered_target_log_probs(lm, ids, v, alphas, layer=layer)
            assert torch.isfinite(reference).all()
            assert (ours - reference).abs().max() < 0.05 * reference.abs().max()
        far = steered_target_log_probs(lm, ids, v, torch.tensor([1e4, -1e4]), layer=1)
        assert torch.isfinite(far).all()
    finally:
        with torch.no_grad():
            embeddings.weight[int(ids[0, 0])] = original
