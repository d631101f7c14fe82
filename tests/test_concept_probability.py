"""Concept probability: steered sampling, judged sweeps that save, load and reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlib.experiments.concept_probability import (ConceptParameters, ConceptSweep, judge_completions,
                                                      load_or_run, sample_steered_completions)
from steerlib.judge import INVALID, JudgeResult


def _sweep(n_alpha=5) -> ConceptSweep:
    alphas = np.linspace(-2, 2, n_alpha)
    labels = np.stack([np.full((2, 3), int(a > 0)) for a in alphas])
    labels[0, 0, 0] = INVALID
    completions = [[[f"text {i} {m} {k}" for k in range(3)] for m in range(2)] for i in range(n_alpha)]
    return ConceptSweep(alphas, labels, np.zeros(labels.shape), completions, ["a", "b"], {"concept": "joy"})


def test_sweep_probability_skips_invalid_and_round_trips(tmp_path):
    sweep = _sweep()
    np.testing.assert_allclose(sweep.probability, [0, 0, 0, 1, 1])
    assert sweep.n_invalid == 1 and sweep.spearman() > 0.8
    path = sweep.save(tmp_path / "s.npz")
    again = ConceptSweep.load(path)
    np.testing.assert_array_equal(again.labels, sweep.labels)
    assert again.completions == sweep.completions and again.parameters == sweep.parameters



def test_positive_peak_ignores_a_fall_from_alpha_zero():
    """A curve highest at α = 0 (steering only lowers p̂) peaks, over α > 0, at the first positive α."""
    sweep = _sweep()
    assert sweep.positive_peak() == 3
    falling = ConceptSweep(sweep.alphas, np.stack([np.full((2, 3), int(i <= 2 or i == 4)) for i in range(5)]),
                           sweep.margins, sweep.completions, sweep.prompts, sweep.parameters)
    assert falling.probability.argmax() == 0 and falling.positive_peak() == 4
    negative = ConceptSweep(-np.abs(sweep.alphas), sweep.labels, sweep.margins, sweep.completions, sweep.prompts,
                            sweep.parameters)
    with pytest.raises(ValueError, match="no α > 0"):
        negative.positive_peak()

def test_steered_sampling_shapes_seeds_and_steering(tiny_chat_lm):
    v = torch.randn(16)
    args = dict(prompts=["I think that", "Today I feel"], alphas=[0.0, 1e4], n_samples=3, max_new_tokens=5,
                seed=7, layer=0, progress=False)
    texts = sample_steered_completions(tiny_chat_lm, v, **args)
    assert len(texts) == 2 and len(texts[0]) == 2 and len(texts[0][0]) == 3
    assert sample_steered_completions(tiny_chat_lm, v, **args) == texts
    chunked = sample_steered_completions(tiny_chat_lm, v, **dict(args, max_batch=4))
    assert [[len(p) for p in a] for a in chunked] == [[3, 3], [3, 3]]
    # Near-greedy sampling: α = 0 rows are the unsteered greedy completion; α = 1e4 rows repeat the argmax of
    # LN(v)Wᵀ (Prop. 4.1), since the steered residual stream is dominated by α v at every position.
    cold = sample_steered_completions(tiny_chat_lm, v, **dict(args, temperature=1e-5))
    tokenizer = tiny_chat_lm.tokenizer
    ids = tokenizer("I think that", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = tiny_chat_lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                        pad_token_id=2)
        limit_token = int(tiny_chat_lm.unembedding(tiny_chat_lm.final_norm(v[None])).argmax())
    assert cold[0][0] == [tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)] * 3
    assert cold[1][0][0] == tokenizer.decode([limit_token] * 5, skip_special_tokens=True)


def test_load_or_run_reuses(tiny_chat_lm, tmp_path):
    calls = []

    def judge(texts, concept):
        calls.append(len(texts))
        return JudgeResult(labels=np.array([int(len(t) % 2 == 0) for t in texts]), margins=np.zeros(len(texts)))

    judge.name = "parity"
    v = torch.randn(16)
    kwargs = dict(n_samples=2, max_new_tokens=3, seed=0, layer=1, concept="joy")
    params = ConceptParameters(["I think"], [-1.0, 0.0, 1.0], **kwargs)
    first = load_or_run(tiny_chat_lm, v, judge, params, tmp_path, progress=False)
    second = load_or_run(tiny_chat_lm, v, judge, params, tmp_path, progress=False)
    assert calls == [6]
    assert first.labels.shape == (3, 1, 2)
    np.testing.assert_array_equal(first.labels, second.labels)
    load_or_run(tiny_chat_lm, v, judge, ConceptParameters(["I think"], [-1.0, 1.0], **kwargs), tmp_path,
                progress=False)
    assert calls == [6, 4]


def test_labels_a_judge_cannot_give_are_refused():
    """A custom judge returning 2 would make a concept probability of 2; one label short would misalign texts."""
    completions = [[["a", "bb"]], [["ccc", "d"]]]

    def judge(labels):
        return lambda texts, concept: JudgeResult(labels=np.array(labels), margins=np.zeros(len(labels)))

    labels, _ = judge_completions(judge([1, 0, INVALID, 1]), completions, "joy")
    assert labels.shape == (2, 1, 2) and labels[1, 0, 0] == INVALID
    with pytest.raises(ValueError, match=r"labels \[2\]: labels must be 1 .concept present., 0 .absent. or"):
        judge_completions(judge([1, 0, 2, 1]), completions, "joy")
    with pytest.raises(ValueError, match="one label and one margin per text"):
        judge_completions(judge([1, 0, 1]), completions, "joy")
