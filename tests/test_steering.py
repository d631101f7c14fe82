"""Steering by hooks and by the α-batched engine: equal to a hooked full forward, safe at huge α; the α grid and
the large-α limit LN(±v)Wᵀ (Prop. 4.1)."""

from __future__ import annotations

import copy
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from float32 import assert_float32_close
from steerlib.models import block_hidden, find_parts, mean_residual_norm
from steerlib.stats import kl_divergence
from steerlib.steering import alpha_grid, limit_logits, symmetric_alpha_grid, steer, steered_log_probs, steered_next_token_log_probs
from steerlib.vectors import SteeringVector
from test_models import FAMILIES, VOCABULARY, tiny_lm

PROMPT = torch.tensor([5, 17, 33, 2, 40, 41, 9, 12, 60, 3])  # 10 tokens: longer than the sliding windows (4)
ALPHAS = torch.tensor([-30.0, -4.0, 0.0, 1.5, 8.0, 60.0])


def direction(lm, seed: int = 0) -> torch.Tensor:
    return torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed))


def hooked_full_forward(lm, ids, v, alphas, layer, positions) -> torch.Tensor:
    """The reference: the model's own forward on the α-batch with :func:`steer`, all logits of all positions."""
    with torch.no_grad(), steer(lm, v, alphas, layer=layer, positions=positions):
        logits = lm.model(input_ids=ids[None].expand(len(alphas), -1)).logits
    return logits.float().log_softmax(dim=-1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("positions", ["all", "last"])
def test_batched_forward_equals_hooked_full_forward(family, positions):
    lm = tiny_lm(family)
    v = direction(lm)
    for layer in (0, 2, lm.n_layers - 1):
        reference = hooked_full_forward(lm, PROMPT, v, ALPHAS, layer, positions)[:, -1].exp()
        ours = steered_next_token_log_probs(lm, PROMPT, v, ALPHAS, layer=layer, positions=positions).exp()
        assert_float32_close(ours, reference)
        assert (reference[-1] - reference[2]).abs().max() > 1e-2  # steering does move the distribution


@pytest.mark.parametrize("positions", ["all", "last"])
def test_alpha_batch_equals_one_alpha_at_a_time(positions):
    """Each row of the α-batched forward is what a forward with that single α gives (no cross-talk)."""
    lm = tiny_lm("llama")
    v = direction(lm)
    batched = steered_next_token_log_probs(lm, PROMPT, v, ALPHAS, layer=1, positions=positions).exp()
    for row, alpha in zip(batched, ALPHAS):
        alone = steered_next_token_log_probs(lm, PROMPT, v, alpha[None], layer=1, positions=positions).exp()
        assert_float32_close(row, alone[0])


def test_batched_forward_other_positions_and_chunks():
    lm = tiny_lm("llama")
    v = direction(lm)
    reference = hooked_full_forward(lm, PROMPT, v, ALPHAS, 1, "all")[:, [0, 4, -1]].exp()
    ours = steered_log_probs(lm, PROMPT, v, ALPHAS, layer=1, logit_positions=(0, 4, -1), alphas_per_forward=4).exp()
    assert_float32_close(ours, reference)
    with pytest.raises(ValueError, match="logit_positions"):
        steered_log_probs(lm, PROMPT, v, ALPHAS, layer=1, positions="last", logit_positions=(3,))
    with pytest.raises(ValueError, match="logit_positions"):
        steered_log_probs(lm, PROMPT, v, ALPHAS, layer=1, logit_positions=(10,))


def test_last_position_steering_leaves_earlier_positions_alone():
    lm = tiny_lm("qwen2")
    v = direction(lm)
    steered = hooked_full_forward(lm, PROMPT, v, ALPHAS, 1, "last")
    plain = hooked_full_forward(lm, PROMPT, v, torch.zeros(len(ALPHAS)), 1, "all")
    assert_float32_close(steered[:, :-1], plain[:, :-1])
    assert (steered[:, -1] - plain[:, -1]).abs().max() > 1e-2


def test_one_token_prompt_last_equals_all():
    lm = tiny_lm("llama")
    v = direction(lm)
    last = steered_next_token_log_probs(lm, PROMPT[:1], v, ALPHAS, layer=1, positions="last")
    every = steered_next_token_log_probs(lm, PROMPT[:1], v, ALPHAS, layer=1, positions="all")
    assert_float32_close(last, every)


def test_steer_removes_its_hook_and_never_changes_the_model():
    lm = tiny_lm("gpt2")
    v = direction(lm)
    before = {name: p.clone() for name, p in lm.model.state_dict().items()}
    with torch.no_grad():
        plain = lm.model(input_ids=PROMPT[None]).logits
    with pytest.raises(RuntimeError, match="boom"):
        with steer(lm, v, 5.0, layer=1):
            assert len(lm.blocks[1]._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(lm.blocks[1]._forward_hooks) == 0
    with torch.no_grad():
        with steer(lm, v, 5.0, layer=1):
            steered = lm.model(input_ids=PROMPT[None]).logits
        after = lm.model(input_ids=PROMPT[None]).logits
    assert (steered - plain).abs().max() > 1e-2
    torch.testing.assert_close(after, plain, rtol=0, atol=0)
    for name, p in lm.model.state_dict().items():
        assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("positions", ["all", "last"])
def test_the_block_output_moves_by_exactly_alpha_v(positions):
    """The definition of steering (Sec. 4): h <- h + α v, checked against the unsteered block output by hand."""
    lm = tiny_lm("llama")
    v, alphas = direction(lm), torch.tensor([-3.0, 0.0, 2.5])
    outputs = []
    handle = lm.blocks[1].register_forward_hook(lambda module, args, output: outputs.append(block_hidden(output)))
    ids = PROMPT[None].expand(len(alphas), -1)
    with torch.no_grad():
        lm.model(input_ids=ids)
        with steer(lm, v, alphas, layer=1, positions=positions):
            handle.remove()  # the steering hook runs after this one: record once more, after it
            handle = lm.blocks[1].register_forward_hook(lambda module, args, output: outputs.append(block_hidden(output)))
            lm.model(input_ids=ids)
    handle.remove()
    plain, steered = outputs
    expected = plain.clone()
    rows = slice(None) if positions == "all" else slice(-1, None)
    expected[:, rows] += alphas[:, None, None] * v
    torch.testing.assert_close(steered, expected, rtol=0, atol=1e-6)


def test_steer_with_alpha_zero_is_the_plain_model():
    lm = tiny_lm("mistral")
    with torch.no_grad():
        plain = lm.model(input_ids=PROMPT[None]).logits
        with steer(lm, direction(lm), 0.0, layer=2, positions="all"):
            steered = lm.model(input_ids=PROMPT[None]).logits
    torch.testing.assert_close(steered, plain, rtol=0, atol=0)


def test_bad_arguments_raise_value_errors():
    lm = tiny_lm("llama")
    v = direction(lm)
    with pytest.raises(ValueError, match="'all'"):
        with steer(lm, v, 1.0, layer=1, positions="first"):
            pass
    with pytest.raises(ValueError, match="layer=..."):
        with steer(lm, v, 1.0):
            pass
    with pytest.raises(ValueError, match="hidden size"):
        steered_next_token_log_probs(lm, PROMPT, torch.ones(7), ALPHAS, layer=1)
    with pytest.raises(ValueError, match="out of range"):
        steered_next_token_log_probs(lm, PROMPT, v, ALPHAS, layer=4)
    with pytest.raises(ValueError, match="one per batch row"):
        with torch.no_grad(), steer(lm, v, [1.0, 2.0, 3.0], layer=1):
            lm.model(input_ids=PROMPT[None].expand(2, -1))
    with pytest.raises(ValueError, match="empty"):
        steered_next_token_log_probs(lm, PROMPT, v, [], layer=1)
    with pytest.raises(ValueError, match="non-empty"):
        steered_next_token_log_probs(lm, torch.tensor([], dtype=torch.long), v, ALPHAS, layer=1)


def test_nan_vectors_and_alphas_are_refused_by_name():
    lm = tiny_lm("llama")
    v = direction(lm)
    broken = v.clone()
    broken[3] = float("nan")
    with pytest.raises(ValueError, match="steering vector has NaN or infinite entries"):
        steered_next_token_log_probs(lm, PROMPT, broken, ALPHAS, layer=1)
    with pytest.raises(ValueError, match="steering vector has NaN"):
        with steer(lm, broken, 1.0, layer=1):
            pass
    with pytest.raises(ValueError, match="alpha must be finite, got nan"):
        with steer(lm, v, float("nan"), layer=1):
            pass
    with pytest.raises(ValueError, match="alphas must be finite"):
        steered_next_token_log_probs(lm, PROMPT, v, [0.0, float("inf")], layer=1)


def test_vector_of_another_model_or_width_is_refused():
    lm = tiny_lm("llama")
    foreign = SteeringVector(direction(lm), "another-model", 1, "joy", "random", 2, 2)
    with pytest.raises(ValueError, match="another-model"):
        steered_next_token_log_probs(lm, PROMPT, foreign, ALPHAS)
    wide = SteeringVector(torch.ones(48), lm.name, 1, "joy", "random", 2, 2)
    with pytest.raises(ValueError, match="width"):
        with steer(lm, wide, 1.0):
            pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_extreme_alpha_stays_finite(dtype, positions):
    lm = tiny_lm("llama", dtype)
    v = direction(lm) * 10  # ‖α v‖ ≈ 5.7e5 at α = 1e4: beyond fp16's 65504
    alphas = torch.tensor([-1e4, -1e3, 0.0, 1e3, 1e4])
    log_probs = steered_next_token_log_probs(lm, PROMPT, v, alphas, layer=1, positions=positions)
    assert log_probs.dtype == torch.float32
    assert torch.isfinite(log_probs).all()
    torch.testing.assert_close(log_probs.exp().sum(dim=-1), torch.ones(len(alphas)), rtol=0, atol=1e-5)
    reference = steered_next_token_log_probs(tiny_lm("llama"), PROMPT, v, alphas, layer=1, positions=positions)
    tolerance = 1e-6 if dtype == torch.float32 else 0.05  # 8-bit (bf16) and 11-bit (fp16) mantissas
    assert (log_probs.exp() - reference.exp()).abs().max() < tolerance


def massive_first_position(lm):
    """A copy of ``lm`` whose first prompt token carries a massive activation (about 2e4, as SmolLM2's first
    position does from its middle blocks on): large in fp16, still far from its 65504 limit."""
    lm = copy.deepcopy(lm)
    embeddings = lm.model.get_input_embeddings()
    scale = float(getattr(embeddings, "embed_scale", 1.0))  # Gemma multiplies embeddings by sqrt(d)
    with torch.no_grad():
        embeddings.weight[int(PROMPT[0])] = embeddings.weight[int(PROMPT[0])].sign() * 1e4 / scale
    return lm


def total_variation(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows_equal_the_models_own_forward(family, dtype):
    """Wherever the model's own half-precision forward under :func:`steer` stays finite, the α-batched engine gives
    the same next-token distribution, at α = 0 and beyond, early, middle and last blocks, with a massive
    first-position activation in the residual stream: steering all positions, to the rounding of another batch
    shape; steering the last one, to the size of the dtype's own rounding (the prompt's prefix goes through a KV
    cache once, as in ``generate``, so the sums are taken in another order; in fp32 the two agree to 1e-6)."""
    lm = massive_first_position(tiny_lm(family, dtype))
    v = direction(lm) * 50
    alphas = torch.tensor([0.0, 3.0, -20.0, 200.0])
    for layer in (0, 1, lm.n_layers - 1):
        for positions in ("all", "last"):
            reference = hooked_full_forward(lm, PROMPT, v, alphas, layer, positions)[:, -1]
            assert torch.isfinite(reference).all()
            ours = steered_next_token_log_probs(lm, PROMPT, v, alphas, layer=layer, positions=positions)
            tolerance = 1e-3 if positions == "all" else 2e-2
            assert total_variation(ours, reference).max() < tolerance, (layer, positions)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_fp16_rows_that_overflow_stay_finite_and_close_to_float32(family):
    """Where the model's own fp16 forward overflows (|α v| beyond 65504), the engine recomputes those rows in
    float32: finite, and close to the float32 model."""
    lm16, lm32 = tiny_lm(family, torch.float16), tiny_lm(family)
    v = direction(lm16) * 10  # ‖α v‖ ≈ 5.7e5 at α = 1e4
    alphas = torch.tensor([0.0, 2e3, 1e4, -1e4])
    for positions in ("all", "last"):
        with pytest.raises(ValueError, match="overflows"), torch.no_grad(), steer(lm16, v, 1e4, layer=1):
            lm16.model(input_ids=PROMPT[None])  # the model's own forward cannot
        ours = steered_next_token_log_probs(lm16, PROMPT, v, alphas, layer=1, positions=positions)
        reference = steered_next_token_log_probs(lm32, PROMPT, v, alphas, layer=1, positions=positions)
        assert torch.isfinite(ours).all()
        assert total_variation(ours, reference).max() < 2e-2


def test_hook_refuses_to_overflow_fp16():
    lm = tiny_lm("llama", torch.float16)
    with pytest.raises(ValueError, match="overflows"):
        with torch.no_grad(), steer(lm, direction(lm) * 10, 1e4, layer=1):
            lm.model(input_ids=PROMPT[None])


def test_mean_residual_norm_matches_manual_mean():
    lm = tiny_lm("llama")
    ids = [1 + ord(c) % (VOCABULARY - 1) for c in "hello there"]
    recorded = {}
    handle = lm.blocks[2].register_forward_hook(lambda m, a, out: recorded.setdefault("h", out))
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([ids]))
    handle.remove()
    norms = recorded["h"][0].norm(dim=-1)
    assert mean_residual_norm(lm, "hello there", 2) == pytest.approx(float(norms[1:].mean()), rel=1e-6)
    assert mean_residual_norm(lm, ["hello there"], 2, "include") == pytest.approx(float(norms.mean()), rel=1e-6)


def test_smollm2_batched_forward_equals_hooked_full_forward():
    """The embedded model (30 blocks, massive first-position activation), middle layer, both modes."""
    pytest.importorskip("gguf")
    from steerlib.models import load_model, smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except ValueError as error:
        pytest.skip(str(error))
    lm = load_model()
    ids = lm.tokenizer("Today I feel that the weather", return_tensors="pt")["input_ids"][0]
    v = direction(lm)
    alphas = torch.tensor([-40.0, 0.0, 10.0, 80.0])
    for positions in ("all", "last"):
        reference = hooked_full_forward(lm, ids, v, alphas, 15, positions)[:, -1].exp()
        ours = steered_next_token_log_probs(lm, ids, v, alphas, layer=15, positions=positions).exp()
        assert_float32_close(ours, reference)
        assert (reference[-1] - reference[1]).abs().max() > 1e-2


@pytest.fixture(scope="module")
def small_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return find_parts(LlamaForCausalLM(config), tokenizer=None, name="tiny-llama")


def test_limit_logits_are_scale_invariant_and_flip_with_the_sign(small_llama):
    v = torch.randn(16)
    plus = limit_logits(small_llama, v, +1)
    assert plus.shape == (64,)
    assert torch.allclose(plus, limit_logits(small_llama, 100.0 * v, +1), atol=1e-5)
    assert torch.allclose(limit_logits(small_llama, v, -1), limit_logits(small_llama, -v, +1), atol=1e-6)
    assert not torch.allclose(plus, limit_logits(small_llama, v, -1))


def test_limit_logits_equal_the_model_output_when_the_residual_is_dominated_by_v(small_llama):
    """LN(h + αv)Wᵀ -> LN(v)Wᵀ: the final norm alone already forgets h at large α."""
    h, v = torch.randn(16), torch.randn(16)
    with torch.no_grad():
        far = small_llama.unembedding(small_llama.final_norm(h + 1e6 * v))
    assert float(kl_divergence(far, limit_logits(small_llama, v, +1))) < 1e-8


def test_limit_logits_reject_bad_vectors(small_llama):
    with pytest.raises(ValueError, match="shape"):
        limit_logits(small_llama, torch.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        limit_logits(small_llama, torch.zeros(16))
    with pytest.raises(ValueError, match="sign"):
        limit_logits(small_llama, torch.ones(16), sign=2)


@given(st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=30))
def test_alpha_grid_is_sorted_unique_and_contains_zero(values):
    grid = alpha_grid(values)
    assert 0.0 in grid
    assert np.all(np.diff(grid) > 0)
    assert set(np.asarray(values, dtype=np.float64)) <= set(grid)


def test_symmetric_grid_is_the_chapters_linear_and_log_grids():
    assert np.array_equal(symmetric_alpha_grid(16.0, 4), np.linspace(-16, 16, 9))
    assert np.array_equal(symmetric_alpha_grid(200.0, 20), np.linspace(-200, 200, 41))
    assert np.array_equal(symmetric_alpha_grid(40.0, 4, "log", 5.0), [-40, -20, -10, -5, 0, 5, 10, 20, 40])
    assert np.array_equal(symmetric_alpha_grid(3.0, 3, "linear", 1.0), [-3, -2, -1, 0, 1, 2, 3])
    log = symmetric_alpha_grid(1e5, 11, "log", 1.0)
    assert log.size == 23 and np.allclose(log[12:], np.logspace(0, 5, 11), rtol=1e-12)


@pytest.mark.parametrize("arguments, message", [
    ((10.0, 3, "log"), "needs alpha_min"), ((10.0, 3, "cubic"), "'linear' or 'log'"), ((10.0, 0), "n_alphas"),
    ((-1.0, 3), "alpha_max"), ((10.0, 3, "log", 20.0), "at most alpha_max"), ((float("nan"), 3), "alpha_max")])
def test_symmetric_grid_refuses_what_it_cannot_build(arguments, message):
    with pytest.raises(ValueError, match=message):
        symmetric_alpha_grid(*arguments)


def test_alpha_grid_rejects_empty_and_non_finite():
    with pytest.raises(ValueError, match="empty"):
        alpha_grid([])
    with pytest.raises(ValueError, match="finite"):
        alpha_grid([1.0, float("inf")])
