"""Difference-of-means vectors (Eq. (3)): padding masked, all layers in one pass, metadata that travels; vectors and
log-odds from saved prompt sets, cached per model, dtype and texts."""

from __future__ import annotations

import pytest
import torch

import copy
import json

import numpy as np

from damage import DAMAGE, damage
from float32 import assert_float32_close
from steerlib.models import last_position_log_probs, token_norms
from steerlib.vectors import (PromptSetActivations, SteeringVector, bootstrap_vectors, concept_bootstrap_vectors,
                              concept_log_odds, concept_vectors, load_steering_vectors, log_odds,
                              prompt_set_activations, save_steering_vectors, steering_vectors, token_mean_activations,
                              vectors_from_activations)
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


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_vector_file_is_refused_not_read(tmp_path, how):
    lm = tiny_lm("llama")
    path = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "random", layers=[2], progress=False)[2].save(
        tmp_path / "joy.safetensors")
    damage(path, how)
    with pytest.raises(ValueError, match="(not a readable steering-vector file|no longer matches its checksum)"):
        SteeringVector.load(path)


def test_a_vector_whose_numbers_changed_fails_its_checksum(tmp_path):
    """Zeroed bytes inside the tensor leave a readable file with another vector: the checksum tells."""
    lm = tiny_lm("llama")
    path = steering_vectors(lm, POSITIVE, NEGATIVE, "joy", "random", layers=[2], progress=False)[2].save(
        tmp_path / "joy.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-16] + bytes(16))  # the last four fp32 entries of the vector
    with pytest.raises(ValueError, match="vector of layer 2 no longer matches its checksum"):
        SteeringVector.load(path)


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


TEXTS = {
    "positive": ["I am so happy today", "what a joyful morning", "laughing with friends", "sunny and glad"],
    "negative_random": ["the table has four legs", "stock prices fell", "a list of numbers", "rain in May"],
    "negative_contrastive": ["I am so sad today", "what a gloomy morning", "crying alone", "grey and low"],
}


@pytest.fixture()
def prompt_folder(tmp_path):
    folder = tmp_path / "prompt_sets"
    folder.mkdir()
    records = [{"concept": "joy", "kind": kind, "text": text} for kind, texts in TEXTS.items() for text in texts]
    (folder / "joy.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return folder


def test_concept_vectors_equal_eq3_on_the_same_texts(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    for setting, kind in (("random", "negative_random"), ("contrastive", "negative_contrastive")):
        cached = concept_vectors(lm, "joy", setting, 3, tmp_path / "cache", layers=[1, 3], progress=False,
                                 prompt_folder=prompt_folder)
        direct = steering_vectors(lm, TEXTS["positive"][:3], TEXTS[kind][:3], "joy", setting, layers=[1, 3],
                                  progress=False)
        assert sorted(cached) == [1, 3]
        for layer in (1, 3):
            assert_float32_close(cached[layer].vector, direct[layer].vector)
            assert cached[layer].setting == setting and cached[layer].n_pos == 3


def test_activations_are_cached_and_reused(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    first = prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    assert first.means().shape == (2, lm.n_layers, lm.hidden_size)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    again = prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    assert torch.equal(first.means(), again.means())


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_cached_activations_are_computed_again(prompt_folder, tmp_path, how):
    lm = tiny_lm("llama")
    clean = prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    (path,) = tmp_path.glob("*.npz")
    damage(path, how)
    with pytest.warns(UserWarning, match="cannot be used"):
        healed = prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False,
                                        prompt_folder=prompt_folder)
    assert torch.equal(healed.means(), clean.means())
    assert len(list(tmp_path.glob("*.unusable"))) == 1


def test_the_cache_is_keyed_by_the_texts_and_the_dtype(prompt_folder, tmp_path):
    """An edited prompt set or another dtype must not silently reuse activations computed from the old ones."""
    lm = tiny_lm("llama")
    prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    records = [json.loads(line) for line in (prompt_folder / "joy.jsonl").read_text().splitlines()]
    records[0]["text"] = "I am so very happy today"
    (prompt_folder / "joy.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    lm = copy.deepcopy(lm)  # the cached tiny model is shared by other tests
    lm.model.to(torch.float64)
    prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_bootstrap_vectors_differ_between_resamplings(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    resampled = concept_bootstrap_vectors(lm, "joy", "random", 4, tmp_path, layers=[2], n_resamples=3,
                                          progress=False, prompt_folder=prompt_folder)
    assert len(resampled) == 3
    assert not torch.allclose(resampled[0][2].vector, resampled[1][2].vector)


def test_bad_prompt_set_requests_say_what_to_do(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="lower n_texts"):
        prompt_set_activations(lm, "joy", "positive", 10, tmp_path, progress=False, prompt_folder=prompt_folder)
    with pytest.raises(ValueError, match="setting"):
        concept_vectors(lm, "joy", "opposite", 2, tmp_path, prompt_folder=prompt_folder)


def test_last_log_probs_match_the_model_and_give_the_log_odds(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    cached = prompt_set_activations(lm, "joy", "positive", 3, tmp_path, progress=False, prompt_folder=prompt_folder)
    assert cached.mean_last_log_probs.shape == (VOCABULARY,) and cached.mean_last_log_probs.dtype == np.float64
    assert_float32_close(cached.mean_last_log_probs,
                         last_position_log_probs(lm, TEXTS["positive"][:3]).double().mean(dim=0))
    expected = log_odds(lm, TEXTS["positive"][:3], TEXTS["negative_random"][:3])
    assert_float32_close(concept_log_odds(lm, "joy", "random", 3, tmp_path, progress=False,
                                          prompt_folder=prompt_folder), expected,
                         scale=np.abs(cached.mean_last_log_probs).max())


def test_texts_longer_than_the_context_are_cut_with_a_warning():
    """The 1-layer GPT reads 64 positions: a longer text is cut to its first 64 tokens, and said so, rather than
    failing inside torch with 'index out of range'. A steered prompt is never cut: it is refused."""
    lm = copy.deepcopy(tiny_lm("gpt2"))
    lm.model.config.n_positions = 16
    long_text, short_text, short_negative = "x" * 40, "a joyful day", ["tables", "wood and metal"]
    with pytest.warns(UserWarning, match="1 of 2 texts are longer than tiny-gpt2's context of 16 tokens .up to 40"):
        means = steering_vectors(lm, [long_text, short_text], short_negative, "joy", "random", layers=[1],
                                 progress=False)
    assert torch.isfinite(means[1].vector).all()
    cut = steering_vectors(lm, ["x" * 16, short_text], short_negative, "joy", "random", layers=[1], progress=False)
    assert_float32_close(cut[1].vector, means[1].vector)  # only the first 16 tokens were read
    from steerlib.steering import steered_next_token_log_probs

    with pytest.raises(ValueError, match="the prompt has 40 tokens but tiny-gpt2 reads at most 16"):
        steered_next_token_log_probs(lm, long_text, means[1], [0.0, 1.0])


def test_both_first_position_policies_come_from_one_pass(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    activations = prompt_set_activations(lm, "joy", "negative_random", 4, tmp_path, progress=False,
                                         prompt_folder=prompt_folder)
    for policy in ("exclude", "include"):
        direct = token_mean_activations(lm, TEXTS["negative_random"], first_position=policy, progress=False)
        assert_float32_close(activations.means(policy), direct)
    assert isinstance(PromptSetActivations.load(next(tmp_path.glob("*.npz"))), PromptSetActivations)


def test_log_odds_is_definition_3_2():
    lm = tiny_lm("llama")
    positive, negative = ["happy day", "joy!"], ["tables", "wood and metal"]
    values = log_odds(lm, positive, negative)
    manual = (last_position_log_probs(lm, positive).double().mean(0)
              - last_position_log_probs(lm, negative).double().mean(0)).numpy()
    np.testing.assert_allclose(values, manual)
    ids = torch.tensor([[1 + ord(c) % (VOCABULARY - 1) for c in "joy!"]])
    with torch.no_grad():
        direct = lm.model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
    assert_float32_close(last_position_log_probs(lm, ["joy!"])[0], direct)
    assert np.abs(log_odds(lm, positive, positive)).max() < 1e-6
    lens = last_position_log_probs(lm, ["joy!"], layer=1)
    assert lens.shape == (1, VOCABULARY) and (lens[0] - direct).abs().max() > 1e-3


def test_all_positions_log_odds_average_every_prefix():
    """positions="all": the log-probabilities after every prefix of a text, averaged over its positions, then over
    the texts (padding in a batch changes nothing); the last position alone is the book's M."""
    lm = tiny_lm("llama")
    positive, negative = ["happy day", "joy!"], ["tables", "wood and metal"]

    def one_text(text):
        ids = torch.tensor([[1 + ord(c) % (VOCABULARY - 1) for c in text]])
        with torch.no_grad():
            return lm.model(input_ids=ids).logits[0].float().log_softmax(-1).double().mean(0)

    manual = (torch.stack([one_text(t) for t in positive]).mean(0)
              - torch.stack([one_text(t) for t in negative]).mean(0)).numpy()
    values = log_odds(lm, positive, negative, positions="all")
    assert values.dtype == np.float64 and values.shape == (VOCABULARY,)
    assert_float32_close(values, manual, scale=np.abs(manual).max())
    assert np.abs(values - log_odds(lm, positive, negative)).max() > 1e-3
    with pytest.raises(ValueError, match="positions"):
        log_odds(lm, positive, negative, positions="first")


def test_concept_log_odds_over_all_positions_is_cached(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    values = concept_log_odds(lm, "joy", "random", 3, tmp_path, progress=False, prompt_folder=prompt_folder,
                              positions="all")
    expected = log_odds(lm, TEXTS["positive"][:3], TEXTS["negative_random"][:3], positions="all")
    assert_float32_close(values, expected, scale=np.abs(expected).max())
    saved = sorted(tmp_path.glob("*all-positions*.npz"))
    assert len(saved) == 2
    np.testing.assert_array_equal(concept_log_odds(lm, "joy", "random", 3, tmp_path, progress=False,
                                                   prompt_folder=prompt_folder, positions="all"), values)
    with pytest.raises(ValueError, match="positions"):
        concept_log_odds(lm, "joy", "random", 3, tmp_path, prompt_folder=prompt_folder, positions="first")
