"""Tests of steerlib.activations: cached per-text means of the prompt sets and the vectors built from them."""

import json

import numpy as np

import pytest
import torch
from test_models import tiny_lm

from steerlib.activations import activations_path, concept_bootstrap_vectors, concept_vectors, prompt_set_activations
from steerlib.vectors import steering_vectors
from float32 import assert_float32_close

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
    path = activations_path(tmp_path, lm.name, "joy", "positive", 2)
    assert path.exists() and first.shape == (2, lm.n_layers, lm.hidden_size)
    (prompt_folder / "joy.jsonl").unlink()  # the cache must not need the texts any more
    again = prompt_set_activations(lm, "joy", "positive", 2, tmp_path, progress=False, prompt_folder=prompt_folder)
    assert torch.equal(first, again)


def test_bootstrap_vectors_differ_between_resamplings(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    resampled = concept_bootstrap_vectors(lm, "joy", "random", 4, tmp_path, layers=[2], n_resamples=3,
                                          progress=False, prompt_folder=prompt_folder)
    assert len(resampled) == 3
    assert not torch.allclose(resampled[0][2].vector, resampled[1][2].vector)


def test_bad_requests_say_what_to_do(prompt_folder, tmp_path):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="lower n_texts"):
        prompt_set_activations(lm, "joy", "positive", 10, tmp_path, progress=False, prompt_folder=prompt_folder)
    with pytest.raises(ValueError, match="setting"):
        concept_vectors(lm, "joy", "opposite", 2, tmp_path, prompt_folder=prompt_folder)


def test_early_middle_last_are_distinct_blocks():
    from steerlib.activations import early_middle_last

    assert early_middle_last(30) == [6, 15, 29]
    assert early_middle_last(12) == [2, 6, 11]
    with pytest.raises(ValueError, match="at least 3"):
        early_middle_last(2)


def test_residual_norm_profile_matches_the_hidden_states():
    from steerlib.activations import residual_norm_profile

    lm = tiny_lm("llama")
    texts = ["hello there", "a cat"]
    profile = residual_norm_profile(lm, texts, progress=False)
    with torch.no_grad():
        hidden = [lm.model(torch.tensor([lm.tokenizer(t)["input_ids"]]), output_hidden_states=True).hidden_states
                  for t in texts]
    layer = 1  # output of block 1 = hidden_states[2] (the last entry is after the final norm)
    norms = [h[layer + 1][0].norm(dim=-1) for h in hidden]
    assert profile["first"][layer] == pytest.approx(float(sum(n[0] for n in norms)) / 2, rel=1e-5)
    assert profile["others"][layer] == pytest.approx(float(torch.cat([n[1:] for n in norms]).mean()), rel=1e-5)
    assert profile["first"].shape == (lm.n_layers,)


def test_cosine_similarity_matrix():
    from steerlib.activations import cosine_similarity_matrix

    matrix = cosine_similarity_matrix([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([-2.0, 0.0])])
    assert matrix[0, 1] == pytest.approx(2 ** -0.5) and matrix[0, 2] == pytest.approx(-1.0)
    assert np.allclose(np.diag(matrix), 1.0)
    with pytest.raises(ValueError, match="zero"):
        cosine_similarity_matrix([torch.zeros(2)])


def test_last_log_probs_match_the_engine_and_the_log_odds(prompt_folder, tmp_path):
    from steerlib.activations import prompt_set_last_log_probs
    from steerlib.curves import concept_log_odds
    from steerlib.sweeps import last_position_log_probs, log_odds

    lm = tiny_lm("llama")
    cached = prompt_set_last_log_probs(lm, "joy", "positive", 3, tmp_path, progress=False, prompt_folder=prompt_folder)
    assert_float32_close(cached, last_position_log_probs(lm, TEXTS["positive"][:3]))
    with pytest.raises(ValueError):  # concept_log_odds reads data/prompt_sets: the tiny file is elsewhere
        concept_log_odds(lm, "no-such-concept", "random", 3, tmp_path)
    prompt_set_last_log_probs(lm, "joy", "negative_random", 3, tmp_path, progress=False, prompt_folder=prompt_folder)
    expected = log_odds(lm, TEXTS["positive"][:3], TEXTS["negative_random"][:3])
    assert np.allclose(concept_log_odds(lm, "joy", "random", 3, tmp_path), expected, atol=1e-5)


def test_both_first_position_policies_come_from_one_pass(prompt_folder, tmp_path):
    from steerlib.vectors import token_mean_activations

    lm = tiny_lm("llama")
    for policy in ("exclude", "include"):
        cached = prompt_set_activations(lm, "joy", "negative_random", 4, tmp_path, policy, progress=False,
                                        prompt_folder=prompt_folder)
        direct = token_mean_activations(lm, TEXTS["negative_random"], first_position=policy, progress=False)
        assert_float32_close(cached, direct)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
