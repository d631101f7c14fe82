"""The 1-layer GPT: deterministic training that learns, checkpoints that round-trip, the uppercase prompt sets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from damage import DAMAGE, damage
from steerlib.corpora import split_sentences
from steerlib.models import load_model
from steerlib.tinygpt import (TinyGPTConfig, is_lowercase_word, is_uppercase_word, load_or_train, load_tiny_gpt,
                              prepare_texts, sentence_prefixes, split_documents, train_tiny_gpt, train_tokenizer,
                              unigram_cross_entropy, uppercase_contexts, uppercase_prompt_sets, uppercase_sentences)

TINY = TinyGPTConfig(corpus="lee", vocab_size=300, block_size=16, n_embd=32, n_head=2, steps=40, batch_size=8,
                     eval_every=20, learning_rate=1e-2, warmup_steps=5)


@pytest.fixture(scope="module")
def trained():
    return train_tiny_gpt(TINY, progress=False)


def test_training_loss_decreases(trained):
    lm, log = trained
    assert len(log.train_losses) == TINY.steps and log.eval_steps == [20, 40]
    first, last = sum(log.train_losses[:5]) / 5, sum(log.train_losses[-5:]) / 5
    assert last < first - 0.5
    assert log.val_losses[-1] < log.val_losses[0] or log.val_losses[-1] < first
    assert log.final_val_loss == log.val_losses[-1] and log.final_train_loss < first
    assert lm.n_layers == 1 and lm.hidden_size == 32 and not lm.model.training


def test_training_is_deterministic_and_leaves_global_state(trained):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    _, log = train_tiny_gpt(TINY, progress=False)
    assert torch.rand(1) == expected_next
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    assert log.train_losses == trained[1].train_losses
    assert log.final_val_loss == trained[1].final_val_loss


def test_checkpoint_round_trip_gives_the_same_logits(trained, tmp_path):
    lm, log = trained
    folder = tmp_path / "tiny"
    from steerlib.tinygpt import save_tiny_gpt

    save_tiny_gpt(lm, log, folder)
    loaded, loaded_log = load_tiny_gpt(folder)
    ids = lm.tokenizer("The fire burns NEAR THE TOWN", return_tensors="pt")["input_ids"][:, : TINY.block_size]
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, loaded.model(ids).logits)
    assert loaded_log == log
    assert loaded.tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    generic = load_model(str(folder), device="cpu")  # any steerlib tool loads it as a plain GPT-2 folder
    with torch.no_grad():
        assert torch.equal(generic.model(ids).logits, lm.model(ids).logits)


def test_load_or_train_loads_and_refuses_another_configuration(trained, tmp_path, monkeypatch):
    from steerlib import tinygpt
    from steerlib.tinygpt import save_tiny_gpt

    save_tiny_gpt(*trained, tmp_path / "tiny")
    monkeypatch.setattr(tinygpt, "train_tiny_gpt", lambda *a, **k: pytest.fail("should load, not train"))
    _, log = load_or_train(TINY, tmp_path / "tiny", use_shipped=False)
    assert log == trained[1]
    with pytest.raises(ValueError, match="steps"):
        load_or_train(dataclasses.replace(TINY, steps=41), tmp_path / "tiny")


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_checkpoint_is_set_aside_and_trained_again(trained, tmp_path, monkeypatch, how):
    from steerlib import tinygpt
    from steerlib.tinygpt import save_tiny_gpt

    save_tiny_gpt(*trained, tmp_path / "tiny")
    damage(tmp_path / "tiny" / "model.safetensors", how)
    monkeypatch.setattr(tinygpt, "train_tiny_gpt", lambda *a, **k: trained)
    with pytest.warns(UserWarning, match="not a usable 1-layer GPT checkpoint .model.safetensors was altered"):
        lm, log = load_or_train(TINY, tmp_path / "tiny", use_shipped=False)
    assert log == trained[1] and len(list(tmp_path.glob("tiny.*.unusable"))) == 1
    _, reloaded = load_tiny_gpt(tmp_path / "tiny")
    assert reloaded == trained[1]


def test_config_rejects_bad_values():
    for bad in ({"val_fraction": 0.0}, {"uppercase_share": 1.5}, {"n_embd": 30, "n_head": 4},
                {"vocab_size": 100}, {"steps": 0}, {"num_threads": 0}):
        with pytest.raises(ValueError):
            TinyGPTConfig(**bad)


def test_documents_split_without_overlap():
    documents = [f"document {i}" for i in range(50)]
    train, val = split_documents(documents, 0.1, seed=0)
    assert len(val) == 5 and sorted(train + val) == sorted(documents)
    assert split_documents(documents, 0.1, seed=0) == (train, val)


def test_uppercase_sentences_change_case_only():
    texts = prepare_texts(TINY)
    rewritten = uppercase_sentences(texts.val_original, 0.5, seed=0)
    assert [r.upper() for r in rewritten] == [" ".join(split_sentences([d], 1)).upper() for d in texts.val_original]
    sentences = split_sentences(rewritten, 1)
    upper = sum(s == s.upper() for s in sentences)
    assert 0.3 < upper / len(sentences) < 0.7
    assert uppercase_sentences(texts.val_original, 0.0, 0) == [" ".join(split_sentences([d], 1))
                                                              for d in texts.val_original]


def test_contrastive_prompt_sets_are_the_same_passages_uppercased():
    passages = split_sentences(prepare_texts(TINY).val_original)
    positive, negative = uppercase_prompt_sets(passages, 10, "contrastive", seed=1)
    assert len(positive) == len(negative) == 10
    assert positive == [n.upper() for n in negative]
    assert all(n in passages for n in negative) and all(p != n for p, n in zip(positive, negative))


def test_random_prompt_sets_use_other_passages():
    passages = split_sentences(prepare_texts(TINY).val_original)
    positive, negative = uppercase_prompt_sets(passages, 8, "random", seed=1)
    assert len(positive) == len(negative) == 8
    assert not {p.lower() for p in positive} & {n.lower() for n in negative}
    assert all(p == p.upper() for p in positive) and all(n in passages for n in negative)


def test_prompt_set_errors():
    with pytest.raises(ValueError, match="contrastive"):
        uppercase_prompt_sets(["a b c"], 1, "opposite")
    with pytest.raises(ValueError, match="lower q"):
        uppercase_prompt_sets(["a b c", "d e f"], 2, "random")


@given(st.lists(st.text(alphabet="abc XYZ", min_size=1, max_size=40), min_size=1, max_size=20),
       st.integers(1, 5), st.integers(0, 5))
def test_prefixes_are_word_prefixes(sentences, min_words, extra):
    prefixes = sentence_prefixes(sentences, min_words, min_words + extra, seed=0)
    for sentence, prefix in zip(sentences, prefixes):
        words, kept = sentence.split(), prefix.split()
        assert kept == words[: len(kept)]
        assert len(kept) == len(words) or min_words <= len(kept) <= min_words + extra


def test_uppercase_and_lowercase_words():
    assert all(is_uppercase_word(t) for t in (" THE", "NSW", "A", " ING", "US-"))
    assert not any(is_uppercase_word(t) for t in (" The", " the", ",", " 2001", "endoftext"))
    assert all(is_lowercase_word(t) for t in (" The", " the", "ing", "Mr"))
    assert not any(is_lowercase_word(t) for t in (" THE", ",", " 2001", " "))


def test_tokenizer_keeps_uppercase_words_representable():
    texts = prepare_texts(TINY)
    tokenizer = train_tokenizer(texts.train, 300)
    text = "FIREFIGHTERS SAY THE BLAZE IS CONTAINED."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_uppercase_contexts_keep_prompts_out_of_the_prompt_sets():
    texts = prepare_texts(TINY)
    positive, negative, prompts = uppercase_contexts(texts, q=5, setting="contrastive", n_prompts=2, seed=0)
    assert len(prompts) == 2 and len(positive) == len(negative) == 5
    assert not set(prompts) & set(negative)
    assert all(len(p.split()) <= 12 for p in prompts + negative)


def test_unigram_cross_entropy_of_a_uniform_stream():
    stream = torch.arange(8).repeat(10)
    assert unigram_cross_entropy(stream, stream, 8) == pytest.approx(np.log(8))
    assert unigram_cross_entropy(stream, stream, 16) > np.log(8)
