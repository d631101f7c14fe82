"""Corpora: the packaged Lee news corpus, sentences, token chunks, and the FineWeb streaming path on a local file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib import corpora
from steerlib.corpora import (CORPORA, chunk_tokens, corpus_path, fineweb_texts, iter_texts, load_corpus,
                              split_sentences, token_stream)

FIXTURE = Path(__file__).parent / "fixtures" / "fineweb_sample.jsonl"


class WordTokenizer:
    """A stand-in tokenizer: one id per whitespace-separated word (by first appearance), ``eos_token_id`` 0."""

    eos_token_id = 0

    def __init__(self):
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [self.ids.setdefault(word, len(self.ids) + 1) for word in text.split()]


def test_lee_background_is_300_real_news_articles():
    documents = load_corpus("lee_background")
    assert len(documents) == 300
    assert 55_000 < sum(len(d.split()) for d in documents) < 65_000
    assert documents[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert all(d == " ".join(d.split()) and d for d in documents)


def test_latin1_corpus_loads():
    assert len(load_corpus("lee")) == 50


def test_corpus_path_is_inside_the_installed_package():
    spec = importlib.util.find_spec("gensim")
    assert str(corpus_path()).startswith(list(spec.submodule_search_locations)[0])


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match="lee_background"):
        load_corpus("shakespeare")


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install gensim"):
        load_corpus("lee_background")


def test_split_sentences_cuts_after_full_stops_and_drops_fragments():
    text = 'Fires burn near Sydney. "It is bad," he said. Ok. 20 homes were lost in the fire!'
    assert split_sentences([text], min_words=3) == ["Fires burn near Sydney.", '"It is bad," he said.',
                                                    "20 homes were lost in the fire!"]
    assert split_sentences([text], min_words=1)[2] == "Ok."
    with pytest.raises(ValueError):
        split_sentences([text], min_words=0)


def test_sentences_of_the_corpus_keep_every_word():
    documents = load_corpus()[:20]
    sentences = split_sentences(documents, min_words=1)
    assert " ".join(sentences).split() == " ".join(documents).split()


def test_token_stream_separates_texts_with_end_of_text():
    tokenizer = WordTokenizer()
    stream = token_stream(["a b", "c"], tokenizer)
    assert stream.tolist() == [1, 2, 0, 3, 0]
    assert token_stream(["a b", "c"], tokenizer, separate=False).tolist() == [1, 2, 3]


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=50))
def test_chunks_are_the_stream_cut_in_full_blocks(block_size):
    texts = load_corpus()[:3]
    stream = token_stream(texts, WordTokenizer())
    blocks = chunk_tokens(texts, WordTokenizer(), block_size)
    assert blocks.shape == (len(stream) // block_size, block_size)
    assert torch.equal(blocks.flatten(), stream[: blocks.numel()])


def test_chunks_work_with_a_transformers_tokenizer():
    from steerlib.tinygpt import train_tokenizer

    texts = load_corpus()[:10]
    tokenizer = train_tokenizer(texts, 300)
    blocks = chunk_tokens(texts, tokenizer, 32)
    assert blocks.shape[1] == 32
    assert tokenizer.decode(blocks[0]).startswith(texts[0][:40])


def test_chunk_errors():
    with pytest.raises(ValueError, match="block_size"):
        chunk_tokens(["a b"], WordTokenizer(), 0)
    with pytest.raises(ValueError, match="fewer than one block"):
        chunk_tokens(["a b"], WordTokenizer(), 10)


def test_fineweb_path_streams_a_local_file_of_the_same_format():
    texts = list(iter_texts(str(FIXTURE)))
    assert len(texts) == 6 and texts[0].startswith("The national executive")
    collected = fineweb_texts(300, WordTokenizer(), source=str(FIXTURE))
    words = [len(t.split()) for t in collected]
    assert sum(words) >= 300 and sum(words[:-1]) < 300
    assert collected == texts[: len(collected)]
    assert fineweb_texts(10, None, source=str(FIXTURE)) == texts[:1]


def test_fineweb_path_errors(tmp_path):
    with pytest.raises(ValueError, match="fewer than"):
        fineweb_texts(10**7, None, source=str(FIXTURE))
    with pytest.raises(ValueError, match="no column"):
        fineweb_texts(10, None, source=str(FIXTURE), text_column="content")
    with pytest.raises(ValueError, match="n_tokens"):
        fineweb_texts(0, None, source=str(FIXTURE))
    odd = tmp_path / "corpus.xyz"
    odd.write_text("text")
    with pytest.raises(ValueError, match="ending in one of"):
        fineweb_texts(10, None, source=str(odd))


def test_every_registered_corpus_loads():
    for name in CORPORA:
        assert load_corpus(name)
