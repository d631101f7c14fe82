"""Evaluation and training text: real human-written English, read where a PyPI package installs it.

Nothing here is text typed by us. Offline, the default corpus is the Lee news corpus (Lee, Pincombe and
Welsh, 2005: 300 Australian news articles from the ABC), shipped in the test data of the PyPI wheel
``gensim``; with a reachable dataset hub, :func:`fineweb_texts` streams FineWeb (Penedo et al., 2024),
the corpus of the paper's cross-entropy experiments (Fig. 7 bottom, A.13) and of its 1-layer GPT
(Fig. A.4).

Taught in the chapters "a 1-layer GPT trained here" and "cross-entropy on a real corpus".

Example:
    >>> docs = load_corpus("lee_background")          # 300 news articles, one string each
    >>> passages = split_sentences(docs)             # their sentences
    >>> blocks = chunk_tokens(docs, tokenizer, 64)   # (n_blocks, 64) token ids for a language model
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from steerlib.store import wheel_file


@dataclass(frozen=True)
class PackagedCorpus:
    """A text file inside an installed PyPI package, one document per line.

    Args:
        package: the importable package name (found with ``importlib.util.find_spec``, never imported).
        pip_name: what to ``pip install`` to get it.
        relative_path: the file's path inside the package folder.
        description: where the text comes from, in a few words.
        encoding: the file's text encoding.
    """

    package: str
    pip_name: str
    relative_path: str
    description: str
    encoding: str = "utf-8"


CORPORA: dict[str, PackagedCorpus] = {
    "lee_background": PackagedCorpus(
        "gensim", "gensim", "test/test_data/lee_background.cor",
        "Lee news corpus, background set: 300 ABC news articles (Lee, Pincombe and Welsh, 2005)"),
    "lee": PackagedCorpus(
        "gensim", "gensim", "test/test_data/lee.cor",
        "Lee news corpus, test set: 50 ABC news articles (Lee, Pincombe and Welsh, 2005)", encoding="latin-1"),
}
"""The corpora :func:`load_corpus` knows, by name."""

FINEWEB = "HuggingFaceFW/fineweb"
"""Hub id of FineWeb, the web corpus of the paper's experiments."""

FINEWEB_CONFIG = "sample-10BT"
"""The FineWeb subset streamed by default (a 10B-token random sample)."""

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def corpus_path(name: str = "lee_background") -> Path:
    """Where the installed package keeps the corpus ``name`` (see :data:`CORPORA`).

    Raises:
        ValueError: unknown name, package not installed (says what to ``pip install``), or file missing.
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}: choose one of {sorted(CORPORA)}, "
                         f"or stream FineWeb with fineweb_texts(...).")
    corpus = CORPORA[name]
    return wheel_file(corpus.package, corpus.relative_path, wheel=corpus.pip_name, no_deps=False)


def load_corpus(name: str = "lee_background") -> list[str]:
    """The documents of the corpus ``name``, one string each, whitespace-normalised, empty lines dropped.

    Args:
        name: a key of :data:`CORPORA` (default: the 300 Lee background news articles, ~60k words).
    """
    text = corpus_path(name).read_text(encoding=CORPORA[name].encoding)
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(texts: Iterable[str], min_words: int = 5) -> list[str]:
    """The sentences of ``texts``: split at spaces after ``.``, ``!`` or ``?`` (and a closing quote or bracket)
    followed by a capital or a digit.

    A rule of thumb, not a parser: abbreviations such as "Mr. Smith" split too. Sentences shorter than
    ``min_words`` words are dropped (headings, fragments left by the rule).
    """
    if min_words < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words}.")
    sentences = []
    for text in texts:
        for sentence in _SENTENCE_END.split(text):
            sentence = sentence.strip()
            if len(sentence.split()) >= min_words:
                sentences.append(sentence)
    return sentences


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, for a ``transformers`` tokenizer or a raw ``tokenizers.Tokenizer``;
    with ``tokenizer=None``, one id (0) per whitespace-separated word (a token count before any tokenizer
    exists, e.g. to collect the text a tokenizer is then trained on)."""
    from transformers import PreTrainedTokenizerBase

    if tokenizer is None:
        return [0] * len(text.split())
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    encoding = tokenizer.encode(text)
    return list(encoding.ids if hasattr(encoding, "ids") else encoding)


def _separator_id(tokenizer) -> int | None:
    """The end-of-text id put between documents, when the tokenizer has one."""
    token_id = getattr(tokenizer, "eos_token_id", None)
    if token_id is None and hasattr(tokenizer, "token_to_id"):
        token_id = tokenizer.token_to_id("<|endoftext|>")
    return token_id


def token_stream(texts: Iterable[str], tokenizer, separate: bool = True) -> torch.Tensor:
    """All texts tokenised and concatenated into one 1-D ``LongTensor``.

    Args:
        texts: documents or passages.
        tokenizer: a ``transformers`` tokenizer or a ``tokenizers.Tokenizer``.
        separate: put the tokenizer's end-of-text token after each text (when it has one), so a model
            trained on the stream learns where documents end.
    """
    separator = _separator_id(tokenizer) if separate else None
    ids: list[int] = []
    for text in texts:
        ids.extend(_encode(tokenizer, text))
        if separator is not None:
            ids.append(separator)
    return torch.tensor(ids, dtype=torch.long)


def chunk_tokens(texts: Iterable[str], tokenizer, block_size: int, separate: bool = True) -> torch.Tensor:
    """Cut the token stream of ``texts`` into consecutive blocks of ``block_size`` tokens.

    The stream (:func:`token_stream`) is cut into ``n = len(stream) // block_size`` blocks; the last
    ``len(stream) % block_size`` tokens are dropped, so every block is full (no padding to mask).

    Returns:
        A ``LongTensor`` of shape ``(n, block_size)``.

    Raises:
        ValueError: ``block_size < 1``, or fewer than ``block_size`` tokens in all.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    stream = token_stream(texts, tokenizer, separate=separate)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"the texts give {len(stream)} tokens, fewer than one block of {block_size}: "
                         f"give more text or a smaller block_size.")
    return stream[: n_blocks * block_size].view(n_blocks, block_size)


def open_dataset(source: str, config: str | None, split: str):
    """A streaming ``datasets`` iterable over ``source``: a local file (by extension) or a hub id."""
    try:
        import datasets
    except ImportError as error:
        raise ValueError("streaming a corpus needs the package datasets: run `pip install datasets`.") from error
    path = Path(source)
    if path.exists():
        builder = _LOCAL_FORMATS.get(path.suffix)
        if builder is None:
            raise ValueError(f"cannot read {path}: give a file ending in one of {sorted(_LOCAL_FORMATS)}.")
        return datasets.load_dataset(builder, data_files=str(path), split=split, streaming=True)
    try:
        return datasets.load_dataset(source, name=config, split=split, streaming=True)
    except Exception as error:  # the hub raises many kinds (connection, missing repo, gated dataset)
        raise ValueError(
            f"could not stream {source!r} (config {config!r}) from the dataset hub: {error}. With no network, "
            f"use load_corpus('lee_background') instead, or give a local .jsonl/.parquet file with a "
            f"'text' column as source."
        ) from error


def iter_texts(source: str = FINEWEB, config: str | None = FINEWEB_CONFIG, split: str = "train",
               text_column: str = "text") -> Iterator[str]:
    """Stream the ``text_column`` of a dataset, row by row, without downloading it whole.

    Args:
        source: a hub dataset id (default FineWeb) or a local ``.jsonl``/``.json``/``.parquet``/``.csv``
            file with the same ``text`` column (read through the same ``datasets`` streaming code).
        config: the hub configuration (ignored for a local file).
        split: the split to stream.
        text_column: the column that holds the text.
    """
    for row in open_dataset(source, config, split):
        if text_column not in row:
            raise ValueError(f"{source!r} has no column {text_column!r}: its columns are {sorted(row)}; "
                             f"pass text_column=...")
        yield row[text_column]


def fineweb_texts(n_tokens: int, tokenizer=None, source: str = FINEWEB, config: str | None = FINEWEB_CONFIG,
                  split: str = "train", text_column: str = "text") -> list[str]:
    """The first documents of FineWeb (or of ``source``) holding at least ``n_tokens`` tokens in all.

    The paper measures cross-entropy on 10^6 FineWeb tokens (Fig. 7 bottom, A.13) and trains its 1-layer
    GPT on FineWeb (Fig. A.4). Documents are taken in the dataset's order, so the selection is
    reproducible; the last one is kept whole, so the total may exceed ``n_tokens`` by one document.

    Args:
        n_tokens: how many tokens to collect (counted with ``tokenizer``, without special tokens).
        tokenizer: a ``transformers`` tokenizer or a ``tokenizers.Tokenizer``; ``None`` counts words.
        source, config, split, text_column: see :func:`iter_texts`.

    Raises:
        ValueError: ``n_tokens < 1``; the hub unreachable (says what to use instead); the source holds
            fewer than ``n_tokens`` tokens.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}.")
    texts, total = [], 0
    for text in iter_texts(source, config, split, text_column):
        texts.append(text)
        total += len(_encode(tokenizer, text))
        if total >= n_tokens:
            return texts
    raise ValueError(f"{source!r} holds only {total} tokens, fewer than the {n_tokens} asked for: "
                     f"ask for fewer tokens or give a larger source.")


def corpus_blocks(tokenizer, corpus: str = "lee_background", n_tokens: int = 512, block_length: int = 64,
                  seed: int = 0) -> torch.Tensor:
    """Blocks of ``block_length`` token ids holding at least ``n_tokens`` scored tokens, from a real corpus.

    The corpus's token stream (documents separated by the end-of-text token) is cut into consecutive blocks
    (:func:`steerlib.corpora.chunk_tokens`) and ``ceil(n_tokens / (block_length - 1))`` of them are drawn
    without replacement (seeded), kept in corpus order.

    Args:
        tokenizer: the model's tokenizer.
        corpus: a name of :data:`steerlib.corpora.CORPORA` (default the Lee news articles shipped by gensim),
            ``"fineweb"`` (streams FineWeb, needs the dataset hub), or a local ``.jsonl``/``.parquet`` file
            with a ``text`` column.
        n_tokens: scored tokens wanted (the paper: 10^6 of FineWeb).
        block_length: tokens per block ``T``; each block scores ``T - 1`` next-token predictions.
        seed: which blocks are drawn.
    """
    if block_length < 2 or n_tokens < 1:
        raise ValueError(f"need block_length >= 2 and n_tokens >= 1, got {block_length} and {n_tokens}.")
    n_blocks = -(-n_tokens // (block_length - 1))
    if corpus in CORPORA:
        texts = load_corpus(corpus)
    else:
        source = FINEWEB if corpus == "fineweb" else corpus
        texts = fineweb_texts(n_blocks * block_length, tokenizer, source=source)
    blocks = chunk_tokens(texts, tokenizer, block_length)
    if blocks.shape[0] < n_blocks:
        raise ValueError(f"{corpus!r} gives {blocks.shape[0]} blocks of {block_length} tokens, fewer than the "
                         f"{n_blocks} needed for {n_tokens} tokens: lower n_tokens or give a larger corpus.")
    chosen = np.sort(np.random.default_rng(seed).choice(blocks.shape[0], n_blocks, replace=False))
    return blocks[torch.as_tensor(chosen)]
