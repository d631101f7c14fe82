"""Difference-of-means vectors (Eq. (3)): padding masked, all layers in one pass, metadata that travels."""

from __future__ import annotations

import pytest
import torch

from steerlib.vectors import (SteeringVector, bootstrap_vectors, load_steering_vectors, save_steering_vectors,
                              steering_vectors, token_mean_activations, token_norms, vectors_from_activations)
from test_models import FAMILIES, VOCABULARY, tiny_lm

POSITIVE = ["a joyful day", "so happy!", "what a wonderful, bright morning it is"]
NEGATIVE = ["tables", "the meeting is at three o'clock", "wood and metal"]


def one_text_means(lm, text: str, first_position: str) -> torch.Tensor:
    """Per-layer token means of one unpadded text, read from every block's output."""
    ids = torch.tensor([[1 + ord(c) % (VOCABULARY - 1) for c in text]])
    outputs = []
    handles = [block.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
               for block in lm.blocks]
    with torch.no_grad():
        lm.model(input_ids=ids)
    for handle in handles:
        handle.remove()
    start = 1 if first_position == "exclude" else 0
    return torch.stack([h[0, start:].float().mean(dim=0) for h in outputs])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batched_padded_means_equal_one_text_at_a_time(family, padding_side):
    lm = tiny_lm(family)
    batched = token_mean_activations(lm, POSITIVE, batch_size=3, padding_side=padding_side, progress=False)
    assert batched.shape == (3, lm.n_layers, lm.hidden_size)
    for row, text in enumerate(POSITIVE):
        torch.testing.assert_close(batched[row], one_text_means(lm, text, "exclude"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("first_position", ["exclude", "include"])
def test_difference_of_means_is_eq_3(first_position):
    lm = tiny_lm("llama")
    vectors = steering_vectors(lm, POSITIVE, NEGATIVE, concept="joy", setting="random",
                               first_position=first_position, batch_size=2, progress=False)
    assert sorted(vectors) == list(range(lm.n_layers))
    positive = torch.stack([one_text_means(lm, t, first_position) for t in POSITIVE]).mean(dim=0)
    negative = torch.stack([one_text_means(lm, t, first_position) for t in NEGATIVE]).mean(dim=0)
    for layer, vector in vectors.items():
        torch.testing.assert_close(vector.vector, positive[layer] - negative[layer], rtol=0, atol=1e-5)
        assert (vector.model_name, vector.layer, vector.hidden_size) == (lm.name, layer, lm.hidden_size)
        assert (vector.n_pos, vector.n_neg, vector.first_position) == (3, 3, first_position)


def test_first_position_policy_changes_the_vector():
    lm = tiny_lm("llama")
    excluded = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "random", layers=[2], progress=False)[2]
    included = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "random", layers=[2], first_position="include",
                                progress=False)[2]
    assert (excluded.vector - included.vector).abs().max() > 1e-3


def test_selected_layers_and_normalisation():
    lm = tiny_lm("gpt2")
    vectors = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "contrastive", layers=[1, 3], normalise=True,
                               progress=False)
    plain = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "contrastive", layers=[3], progress=False)[3]
    assert sorted(vectors) == [1, 3]
    assert vectors[3].normalised and vectors[3].norm == pytest.approx(1.0, abs=1e-6)
    assert vectors[3].raw_norm == pytest.approx(plain.norm, rel=1e-6)
    torch.testing.assert_close(vectors[3].vector * plain.norm, plain.vector, rtol=0, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    lm = tiny_lm("llama")
    vectors = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "random", layers=[0, 2], progress=False)
    path = vectors[2].save(tmp_path / "joy.safetensors")
    loaded = SteeringVector.load(path)
    assert loaded.metadata() == vectors[2].metadata()
    assert torch.equal(loaded.vector, vectors[2].vector)
    save_steering_vectors(vectors, tmp_path / "all.safetensors")
    both = load_steering_vectors(tmp_path / "all.safetensors")
    assert sorted(both) == [0, 2] and torch.equal(both[0].vector, vectors[0].vector)
    with pytest.raises(ValueError, match="load_steering_vectors"):
        SteeringVector.load(tmp_path / "all.safetensors")
    with pytest.raises(ValueError, match="no steering vector file"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_vector_checks_its_model():
    lm = tiny_lm("llama")
    vector = SteeringVector(torch.ones(lm.hidden_size), lm.name, 1, "joy", "random", 1, 1)
    vector.check_model(lm)
    with pytest.raises(ValueError, match="computed on"):
        SteeringVector(torch.ones(lm.hidden_size), "gpt2", 1, "joy", "random", 1, 1).check_model(lm)
    with pytest.raises(ValueError, match="width"):
        SteeringVector(torch.ones(16), lm.name, 1, "joy", "random", 1, 1).check_model(lm)
    with pytest.raises(ValueError, match="out of range"):
        vector.check_model(lm, layer=9)


def test_bad_inputs_raise_value_errors():
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="empty"):
        steering_vectors(lm, [], NEGATIVE, "joy", "random", progress=False)
    with pytest.raises(ValueError, match="list of texts"):
        steering_vectors(lm, "one string", NEGATIVE, "joy", "random", progress=False)
    with pytest.raises(ValueError, match="'contrastive'"):
        steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "opposite", progress=False)
    with pytest.raises(ValueError, match="first_position"):
        steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "random", first_position="skip", progress=False)
    with pytest.raises(ValueError, match="no token left"):
        steering_vectors(lm, ["x"], NEGATIVE, "joy", "random", progress=False)
    with pytest.raises(ValueError, match="zero vector"):
        SteeringVector(torch.zeros(4), "m", 0, "joy", "random", 1, 1).normalise()
    with pytest.raises(ValueError, match="do not match"):
        vectors_from_activations(torch.zeros(2, 1, 4), torch.zeros(2, 1, 5), [0], "m", "joy", "random")


def test_bootstrap_resamples_texts():
    lm = tiny_lm("llama")
    positive = token_mean_activations(lm, POSITIVE, layers=[2], progress=False)
    negative = token_mean_activations(lm, NEGATIVE, layers=[2], progress=False)
    first = bootstrap_vectors(positive, negative, [2], lm.name, "joy", "random", n_resamples=5, seed=3)
    again = bootstrap_vectors(positive, negative, [2], lm.name, "joy", "random", n_resamples=5, seed=3)
    assert len(first) == 5
    assert all(torch.equal(a[2].vector, b[2].vector) for a, b in zip(first, again))
    assert len({tuple(r[2].vector[:4].tolist()) for r in first}) > 1


def test_token_norms_counts_kept_tokens():
    lm = tiny_lm("llama")
    assert token_norms(lm, ["abc", "de"], 1).shape == (3,)
    assert token_norms(lm, ["abc", "de"], 1, first_position="include").shape == (5,)
