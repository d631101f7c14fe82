"""Every experiment through the one store: a damaged saved result is set aside and computed again, equal to a clean
run; a folder that cannot be written is refused before the model computes anything; concept sweeps resume per
prompt."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from damage import DAMAGE, damage, unwritable_folder
from steerlib.experiments import concept_probability, cross_entropy, large_alpha, mmlu, next_token
from steerlib.experiments.concept_probability import ConceptParameters, ConceptSweep
from steerlib.experiments.cross_entropy import CrossEntropyParameters
from steerlib.experiments.large_alpha import LargeAlphaParameters
from steerlib.experiments.mmlu import MMLUParameters, load_mmlu
from steerlib.experiments.next_token import NextTokenParameters
from steerlib.judge import JudgeResult
from test_models import VOCABULARY, tiny_lm
from test_mmlu import FIXTURE


def parity_judge(texts, concept):
    return JudgeResult(labels=np.array([int(len(t) % 2 == 0) for t in texts]), margins=np.zeros(len(texts)))


parity_judge.name = "parity"


def direction(lm) -> torch.Tensor:
    return 3 * torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))


def run_next_token(folder, lm):
    sweep = next_token.load_or_run(lm, direction(lm), NextTokenParameters("steer me", [-5.0, 5.0], layer=1), folder)
    return sweep.delta_p


def run_cross_entropy(folder, lm):
    blocks = torch.randint(0, VOCABULARY, (2, 10), generator=torch.Generator().manual_seed(1))
    sweep = cross_entropy.load_or_run(lm, blocks, direction(lm), CrossEntropyParameters([-2.0, 2.0], layer=1),
                                      folder, progress=False)
    return sweep.ce


def run_large_alpha(folder, lm):
    v = direction(lm)
    params = LargeAlphaParameters(["hello there", "a cat sat"], [1.0, 1e3], ce_layer=2, ce_alphas=[1e3])
    return large_alpha.load_or_run(lm, {2: v}, params, folder, progress=False).kl


def run_mmlu(folder, lm):
    sweep = mmlu.load_or_run(lm, direction(lm), load_mmlu(FIXTURE)[:3], MMLUParameters([-8.0, 8.0], layer=1), folder,
                             progress=False)
    return sweep.letter_mass


def run_concept(folder, lm):
    params = ConceptParameters(["I think", "Today"], [-1.0, 1.0], n_samples=2, max_new_tokens=3, seed=0, layer=1,
                               concept="joy")
    return concept_probability.load_or_run(lm, direction(lm), parity_judge, params, folder, progress=False).labels


@pytest.fixture(params=["next_token", "cross_entropy", "large_alpha", "mmlu", "concept"])
def experiment(request):
    """``(run, lm)``: the experiment's load-or-run on ``(folder, lm)`` returning its main array, and its model (a
    tiny Llama; with SmolLM2's tokenizer and chat template for sampling)."""
    lm = request.getfixturevalue("tiny_chat_lm") if request.param == "concept" else tiny_lm("llama")
    return globals()[f"run_{request.param}"], lm


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_result_of_every_experiment_is_computed_again(experiment, tmp_path, how):
    run, lm = experiment
    clean = run(tmp_path, lm)
    (path,) = tmp_path.glob("*.npz")
    damage(path, how)
    with pytest.warns(UserWarning, match="cannot be used.*computed again"):
        healed = run(tmp_path, lm)
    np.testing.assert_array_equal(healed, clean)
    assert len(list(tmp_path.glob("*.unusable"))) == 1


class ForwardCalled(AssertionError):
    pass


@contextmanager
def refusing_forwards(lm, seconds: int = 60):
    """Any forward of ``lm`` raises; the block must end within ``seconds`` (nothing hangs)."""
    def refuse(module, args, kwargs):
        raise ForwardCalled("the model computed before the results folder was checked")

    def too_long(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    handle = lm.model.register_forward_pre_hook(refuse, with_kwargs=True)
    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        handle.remove()


def test_an_unwritable_folder_is_refused_before_any_forward(experiment, tmp_path):
    run, lm = experiment
    folder = unwritable_folder(tmp_path)
    with refusing_forwards(lm), pytest.raises(ValueError, match=f"cannot write results to {folder}"):
        run(folder, lm)


def test_an_interrupted_concept_sweep_resumes_at_its_first_prompt_not_done(tiny_chat_lm, tmp_path):
    params = ConceptParameters(["I think", "Today", "My friend", "The sky"], [-1.0, 1.0], n_samples=2,
                               max_new_tokens=3, seed=0, layer=1, concept="joy")
    v = direction(tiny_chat_lm)
    reference = concept_probability.run(tiny_chat_lm, v, parity_judge, params, progress=False)
    judged = []

    def judge_then_stop(texts, concept):
        if len(judged) == 3:
            raise KeyboardInterrupt
        judged.append(len(texts))
        return parity_judge(texts, concept)

    judge_then_stop.name = "parity"
    with pytest.raises(KeyboardInterrupt):
        concept_probability.load_or_run(tiny_chat_lm, v, judge_then_stop, params, tmp_path, progress=False)
    (path,) = tmp_path.glob("concept-*.npz")
    partial = ConceptSweep.load(path)
    assert partial.n_done == 3 and not partial.complete
    judged.clear()

    def judge_counting(texts, concept):
        judged.append(len(texts))
        return parity_judge(texts, concept)

    judge_counting.name = "parity"
    resumed = concept_probability.load_or_run(tiny_chat_lm, v, judge_counting, params, tmp_path, progress=False)
    assert judged == [2 * 2]  # only the fourth prompt: 2 α × 2 samples
    np.testing.assert_array_equal(resumed.labels, reference.labels)
    assert resumed.completions == reference.completions and resumed.complete
