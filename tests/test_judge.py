"""Tests of steerlib.judge: reply parsing, log-prob decision, agreement scores, calibration, our labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerlib.judge import (
    INVALID,
    JUDGE_TEMPLATE,
    GenerationJudge,
    LogProbJudge,
    agreement,
    calibrate_threshold,
    judge_question,
    load_judge_labels,
    parse_judge_reply,
)
from float32 import assert_float32_close


@pytest.mark.parametrize("reply, expected", [
    ("1", 1), ("0", 0), ("1.", 1), (" Yes, 1", 1), ("0 - no", 0), ("Answer: 1", 1), ("answer:0", 0),
    ("No.", 0), ("yes", 1), ("1\n\nThe text mentions happiness, 0 doubt.", 1), (" 0\n1", 0),
])
def test_parse_valid(reply, expected):
    assert parse_judge_reply(reply) == expected


@pytest.mark.parametrize("reply", ["", "   \n ", "Maybe", "1 or 0", "Yes, 0", "10", "0.5", "The text is nice",
                                   "No, 1", "2", "-1", "+1", "-0"])
def test_parse_invalid(reply):
    assert parse_judge_reply(reply) is None


@settings(deadline=None)
@given(st.text(max_size=40))
def test_parse_never_crashes(reply):
    assert parse_judge_reply(reply) in (0, 1, None)


def test_question_is_the_papers():
    question = judge_question("I am happy.", "joy")
    assert question.startswith("Text:\nI am happy.\n\nDoes the text above express the concept joy (")
    assert question.endswith("Reply with 1 for yes and 0 for no.\nAnswer:")
    assert JUDGE_TEMPLATE.count("{completion}") == 1
    with pytest.raises(ValueError):
        judge_question("text", " ")


def test_log_prob_decision_matches_manual_computation(tiny_chat_lm):
    texts = ["I am so happy!", "The train leaves at noon.", "Whatever."]
    result = LogProbJudge(tiny_chat_lm, batch_size=2)(texts, "joy")
    again = LogProbJudge(tiny_chat_lm, batch_size=3)(texts, "joy")
    assert_float32_close(result.margins, again.margins)  # left padding does not matter
    tokenizer = tiny_chat_lm.tokenizer

    def single_tokens(answer):
        encodings = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in (answer, " " + answer)]
        return [ids[0] for ids in encodings if len(ids) == 1]

    ones, zeros = single_tokens("1"), single_tokens("0")
    for text, margin, label in zip(texts, result.margins, result.labels):
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": "You are an assistant."},
             {"role": "user", "content": judge_question(text, "joy")}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_p = tiny_chat_lm.model(ids).logits[0, -1].log_softmax(-1)
        expected = float(torch.logsumexp(log_p[sorted(set(ones))], 0) - torch.logsumexp(log_p[sorted(set(zeros))], 0))
        assert margin == pytest.approx(expected, abs=1e-4)
        assert label == int(expected > 0)
    assert result.n_invalid == 0
    shifted = LogProbJudge(tiny_chat_lm, threshold=float(result.margins.max()) + 1)(texts, "joy")
    assert shifted.labels.sum() == 0


def test_generation_judge_counts_invalid(tiny_chat_lm):
    result = GenerationJudge(tiny_chat_lm, max_new_tokens=3)(["I am so happy!", "Whatever."], "joy")
    assert len(result.replies) == 2
    parsed = [parse_judge_reply(r) for r in result.replies]
    assert result.n_invalid == sum(p is None for p in parsed)
    assert all((label == INVALID) == (p is None) for label, p in zip(result.labels, parsed))


def test_agreement_rates():
    scores = agreement(np.array([1, 1, 0, INVALID]), np.array([1, 0, 0, 1]))
    assert scores["accuracy"] == 0.5
    assert scores["true_positive_rate"] == 0.5
    assert scores["true_negative_rate"] == 0.5
    assert scores["n_invalid"] == 1
    with pytest.raises(ValueError):
        agreement(np.array([1]), np.array([1, 0]))


@settings(deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=30), st.floats(-4, 4))
def test_calibration_separates_separable_data(margins, cut):
    margins = np.array(margins)
    labels = (margins > cut).astype(int)
    if labels.min() == labels.max():
        return
    threshold = calibrate_threshold(margins, labels)
    assert ((margins > threshold).astype(int) == labels).all()


def test_committed_labels_are_balanced():
    records = load_judge_labels()
    labels = np.array([r["label"] for r in records])
    assert 60 <= len(records) <= 120
    assert 0.35 <= labels.mean() <= 0.65
