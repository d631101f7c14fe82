"""Tests of steerlib.prompts: template, negation parsing, file round trip, committed data."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib import prompts
from steerlib.prompts import (
    CONCEPTS,
    KINDS,
    chat_messages,
    clean_negation,
    load_eval_prompts,
    load_prompt_records,
    load_prompt_set,
)


def _records(concept: str) -> list[dict]:
    return [dict(concept=concept, kind=kind, index=i, text=f"{kind} text {i} ✓ \"quoted\"\nnew line",
                 model="tiny", seed=3, top_p=0.9, temperature=1.0, max_new_tokens=8, negated_concept="sorrow",
                 negation_fallback=False)
            for kind in KINDS for i in range(3)]


def test_round_trip(tmp_path):
    records = _records("joy")
    prompts._write_jsonl(tmp_path / "joy.jsonl", records)
    assert load_prompt_records("joy", folder=tmp_path) == records
    for kind in KINDS:
        assert load_prompt_set("joy", kind, folder=tmp_path) == [r["text"] for r in records if r["kind"] == kind]
    assert not (tmp_path / "joy.jsonl.tmp").exists()


def test_missing_file_says_how_to_regenerate(tmp_path):
    with pytest.raises(ValueError, match="generate_prompt_sets"):
        load_prompt_set("joy", "positive", folder=tmp_path)


def test_unknown_kind():
    with pytest.raises(ValueError, match="negative_random"):
        load_prompt_set("joy", "negative")


def test_template_is_the_papers():
    messages = chat_messages("joy")
    assert messages[0] == {"role": "system", "content": "You are an assistant."}
    user = messages[1]["content"]
    assert user.startswith("Describe the concept: joy. Begin with a one-sentence definition.")
    assert "Do not use third-person references. Do not explain anything." in user
    with pytest.raises(ValueError):
        chat_messages("  ")


@pytest.mark.parametrize("reply, concept, expected", [
    ("The opposite of joy is sorrow.", "joy", "sorrow"),
    ('The opposite of "evil" is "good" or "', "evil", "good"),
    ("Opposite: honesty", "lying", "honesty"),
    ("Polite", "impolite", "polite"),
    ('The opposite of "humorous" is "humor"', "humorous", None),
    ('The opposite of "optimistic" is "optimistic-', "optimistic", None),
    ("", "joy", None),
    ("I think it depends on many different things in life", "joy", None),
])
def test_clean_negation(reply, concept, expected):
    assert clean_negation(reply, concept) == expected


@settings(deadline=None)
@given(st.text(max_size=60))
def test_clean_negation_is_short_or_none(reply):
    cleaned = clean_negation(reply, "joy")
    assert cleaned is None or 1 <= len(cleaned.split()) <= 3


def test_committed_prompt_sets():
    for concept in CONCEPTS:
        records = load_prompt_records(concept)
        assert {r["kind"] for r in records} == set(KINDS)
        assert all(r["concept"] == concept and isinstance(r["text"], str) for r in records)
        assert not any("<|im_start|>" in r["text"] or "<|im_end|>" in r["text"] for r in records)
        for key in ("seed", "top_p", "temperature", "max_new_tokens", "negated_concept", "model"):
            assert all(key in r for r in records)


def test_eval_prompts(tmp_path):
    assert len(load_eval_prompts()) >= 10
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([]))
    with pytest.raises(ValueError, match="non-empty"):
        load_eval_prompts(path)


def test_generate_prompt_sets_end_to_end(tiny_chat_lm, tmp_path):
    paths = prompts.generate_prompt_sets(tiny_chat_lm, ["joy", "evil"], n_per_kind=3, max_new_tokens=4, seed=1,
                                         batch_size=2, folder=tmp_path)
    assert set(paths) == {"joy", "evil"}
    records = load_prompt_records("joy", folder=tmp_path)
    assert [r["kind"] for r in records] == ["positive"] * 3 + ["negative_contrastive"] * 3 + ["negative_random"] * 3
    random_records = [r for r in records if r["kind"] == "negative_random"]
    assert all(r["begin_token_id"] == 1 for r in random_records)
    assert load_prompt_set("evil", "negative_random", folder=tmp_path) == [r["text"] for r in random_records]
    negation = records[3]
    assert negation["negation_fallback"] == (negation["negated_concept"] == "not joy")
    again = prompts.generate_prompt_sets(tiny_chat_lm, ["joy"], n_per_kind=3, max_new_tokens=4, seed=1, batch_size=2,
                                         folder=tmp_path / "again")
    assert load_prompt_records("joy", folder=tmp_path / "again") == records
    assert again["joy"].exists()


def test_written_prompt_sets_pair_p_and_n_on_the_same_situation():
    folder = prompts.prompt_sets_folder("written")
    for concept in CONCEPTS:
        records = load_prompt_records(concept, folder=folder)
        by_kind = {kind: [r for r in records if r["kind"] == kind] for kind in KINDS}
        positive, negative = by_kind["positive"], by_kind["negative_contrastive"]
        assert len(positive) == len(negative) == 64 and len(by_kind["negative_random"]) == 32
        assert [r["index"] for r in positive] == list(range(64)) == [r["index"] for r in negative]
        assert all(p["situation"] == n["situation"] and p["source"] == n["source"] == "written"
                   for p, n in zip(positive, negative))
        assert all(r["source"] == "generated" for r in by_kind["negative_random"])
        assert len({r["text"] for r in positive + negative}) == 128
        words = prompts.load_concept_words(concept)

        def word_count(texts):
            return sum(prompts.is_concept_word(token, words) for text in texts
                       for token in text.replace(",", " ").replace(".", " ").split())

        in_p, in_n = word_count(r["text"] for r in positive), word_count(r["text"] for r in negative)
        assert in_p >= 5 and 5 * in_n <= in_p, (concept, in_p, in_n)
    assert len(load_eval_prompts()) >= 16
    with pytest.raises(ValueError, match="written"):
        prompts.prompt_sets_folder("hand-made")
    with pytest.raises(ValueError, match="no word list"):
        prompts.load_concept_words("boredom")
