"""A 1-layer GPT trained here, to be steered toward uppercase words (the paper's Fig. A.4).

The paper trains a 1-layer GPT-style transformer on FineWeb and steers it toward the concept "uppercase
words" (Sec. 5, Fig. A.4, Table A.1). Offline we train the same kind of model on real English news (the
Lee corpus shipped by ``gensim``, see :mod:`steerlib.corpora`), in a few minutes on two CPU cores:

1. the documents are split into training and held-out documents (:func:`split_documents`);
2. a share of the sentences is rewritten in uppercase (:func:`uppercase_sentences`), so the concept exists in
   the training data (FineWeb has uppercase passages; clean news text almost none);
3. a small byte-level BPE tokenizer is trained on the training text (:func:`train_tokenizer`);
4. a ``transformers`` ``GPT2LMHeadModel`` with ``n_layer=1`` is trained by AdamW on random windows of the
   token stream (:func:`train_tiny_gpt`), deterministically, and saved with ``save_pretrained``.

Because it is a plain GPT-2 model in a folder, :func:`steerlib.models.load_model` loads it and every steerlib
tool (vectors, steering hooks, sweeps) works on it unchanged. The concept's prompt sets are held-out
sentences in uppercase (P) against the same sentences unchanged (N, contrastive) or other sentences
(N, random): :func:`uppercase_prompt_sets`.

Taught in the chapter "a 1-layer GPT trained here, steered toward uppercase words".

Example:
    >>> config = TinyGPTConfig()                           # the CPU default, ~1-2 minutes
    >>> lm, log = load_or_train(config, "results/one_layer_gpt/tinygpt")
    >>> log.val_losses[-1], lm.n_layers
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from steerlib.corpora import FINEWEB, fineweb_texts, load_corpus, split_sentences, token_stream
from steerlib.models import LoadedModel, find_parts
from steerlib.store import atomic_write, data_path, folder_problem, seal_folder, set_aside

END_OF_TEXT = "<|endoftext|>"
"""The one special token of the trained tokenizer: separates documents, pads batches."""

_LOG_FILE = "training_log.json"


@dataclass
class TinyGPTConfig:
    """Everything that defines a trained 1-layer GPT: data, tokenizer, architecture and optimisation.

    The defaults train on two CPU cores in about a minute (see the chapter for the measured time).

    Args:
        corpus: a corpus name of :data:`steerlib.corpora.CORPORA`, or ``"fineweb"`` (streams FineWeb from the
            hub; needs network and the package ``datasets``; meant for a GPU run).
        fineweb_words: with ``corpus="fineweb"``, how many words of FineWeb to collect.
        val_fraction: share of the documents held out for the validation loss and the prompt sets.
        uppercase_share: share of the sentences rewritten in uppercase, in training and held-out text alike.
        vocab_size: size of the byte-level BPE vocabulary trained on the training text.
        block_size: context length (``n_positions``) of the model and of the training windows.
        n_embd, n_head: width and attention heads of the single block.
        n_layer: number of blocks (1, as in the paper's Fig. A.4).
        dropout: dropout rate of embeddings, attention and residual branches during training.
        steps, batch_size: optimisation steps, windows per step.
        learning_rate, warmup_steps, weight_decay: AdamW with linear warm-up then cosine decay to 10%.
        eval_every: steps between two measurements of the validation loss.
        seed: seeds the document split, the uppercase sentences, the initialisation, batches and dropout.
        device: where to train (``"cpu"``, ``"cuda"``).
        num_threads: CPU threads used while training. One by default: on a small model a single thread is
            as fast as two (and much faster on a busy machine), and the result then does not depend on
            the machine's core count.
    """

    corpus: str = "lee_background"
    fineweb_words: int = 2_000_000
    val_fraction: float = 0.1
    uppercase_share: float = 0.2
    vocab_size: int = 2048
    block_size: int = 64
    n_embd: int = 128
    n_head: int = 4
    n_layer: int = 1
    dropout: float = 0.1
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 6e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    eval_every: int = 50
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 1

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
        if not 0 <= self.uppercase_share <= 1:
            raise ValueError(f"uppercase_share must be in [0, 1], got {self.uppercase_share}.")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}.")
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must exceed the 256 bytes of the byte-level BPE, got {self.vocab_size}.")
        if min(self.steps, self.batch_size, self.block_size, self.eval_every, self.n_layer, self.num_threads) < 1:
            raise ValueError("steps, batch_size, block_size, eval_every, n_layer and num_threads must be >= 1.")


@dataclass
class TrainingLog:
    """What training measured: the loss curve and the final losses.

    Args:
        config: the configuration trained (as a dict, as saved beside the checkpoint).
        train_losses: training loss of every step (with dropout, on that step's batch), nats per token.
        eval_steps: the steps at which the validation loss was measured.
        val_losses: validation loss at ``eval_steps`` (eval mode, all held-out tokens), nats per token.
        final_train_loss: loss on all training tokens after training (eval mode), nats per token.
        final_val_loss: loss on all held-out tokens after training (eval mode), nats per token.
        n_train_tokens, n_val_tokens: sizes of the two token streams.
        n_parameters: number of trainable parameters.
        seconds: wall-clock training time.
    """

    config: dict
    train_losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    final_train_loss: float = float("nan")
    final_val_loss: float = float("nan")
    n_train_tokens: int = 0
    n_val_tokens: int = 0
    n_parameters: int = 0
    seconds: float = float("nan")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TrainingLog:
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class TinyGPTTexts:
    """The texts of one configuration: held-out documents in their original case, and the two streams.

    Args:
        train: training documents, with ``uppercase_share`` of their sentences in uppercase.
        val: held-out documents, rewritten the same way (for the validation loss).
        val_original: held-out documents as written (the source of the concept's prompt sets).
    """

    train: list[str]
    val: list[str]
    val_original: list[str]


def split_documents(documents: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle ``documents`` with ``seed`` and hold out ``val_fraction`` of them (at least one each side)."""
    if len(documents) < 2:
        raise ValueError(f"need at least 2 documents to hold some out, got {len(documents)}.")
    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(documents))), len(documents) - 1)
    return [documents[i] for i in order[n_val:]], [documents[i] for i in order[:n_val]]


def uppercase_sentences(documents: list[str], share: float, seed: int) -> list[str]:
    """Each document with each of its sentences rewritten in uppercase with probability ``share``.

    Sentences are cut by :func:`steerlib.corpora.split_sentences` (every sentence kept) and joined back by
    one space, so the result reads like the original with some sentences in capitals.
    """
    rng = random.Random(seed)
    rewritten = []
    for document in documents:
        sentences = split_sentences([document], min_words=1)
        rewritten.append(" ".join(s.upper() if rng.random() < share else s for s in sentences))
    return rewritten


def prepare_texts(config: TinyGPTConfig) -> TinyGPTTexts:
    """Load the corpus of ``config``, split it, and rewrite ``uppercase_share`` of the sentences in uppercase."""
    if config.corpus == "fineweb":
        documents = fineweb_texts(config.fineweb_words, None, source=FINEWEB)
    else:
        documents = load_corpus(config.corpus)
    train, val = split_documents(documents, config.val_fraction, config.seed)
    return TinyGPTTexts(
        train=uppercase_sentences(train, config.uppercase_share, config.seed),
        val=uppercase_sentences(val, config.uppercase_share, config.seed + 1),
        val_original=val,
    )


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's scheme) trained on ``texts``, as a ``transformers`` fast tokenizer.

    Byte-level BPE can write any string, so uppercase words stay representable even when rare; with
    uppercase sentences in the training text, frequent uppercase words get tokens of their own.
    Its one special token :data:`END_OF_TEXT` is the end-of-text, padding and unknown token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def build_model(config: TinyGPTConfig, vocab_size: int):
    """A freshly initialised ``GPT2LMHeadModel`` of ``config`` (tied input and output embeddings)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2_config = GPT2Config(
        vocab_size=vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
        attn_pdrop=config.dropout, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return GPT2LMHeadModel(gpt2_config)


def language_model_loss(model, stream: torch.Tensor, block_size: int, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per predicted token) of ``model`` on ``stream``, in eval mode.

    The stream is cut into consecutive windows of ``block_size + 1`` tokens overlapping by one token, so
    every token after the first is predicted once (the tail shorter than a window is dropped).
    """
    device = next(model.parameters()).device
    n_windows = (len(stream) - 1) // block_size
    if n_windows < 1:
        raise ValueError(f"the stream has {len(stream)} tokens, fewer than one window of {block_size + 1}.")
    starts = torch.arange(n_windows) * block_size
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in starts.split(batch_size):
            windows = torch.stack([stream[s: s + block_size + 1] for s in batch.tolist()]).to(device)
            logits = model(windows[:, :-1]).logits
            losses = F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten(), reduction="sum")
            total += losses.item()
            count += windows[:, 1:].numel()
    model.train(was_training)
    return total / count


def _learning_rate(step: int, config: TinyGPTConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 10% of the peak at the last step."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_tiny_gpt(config: TinyGPTConfig, texts: TinyGPTTexts | None = None,
                   progress: bool = True) -> tuple[LoadedModel, TrainingLog]:
    """Train the 1-layer GPT of ``config`` and return it (as a :class:`~steerlib.models.LoadedModel`) with its log.

    Deterministic on the CPU: every random choice is seeded by ``config.seed`` and deterministic algorithms
    are enforced during training, so two runs with the same configuration, library versions, hardware and
    thread count give the same weights bit for bit (measured: the final losses of two runs are equal). On a
    GPU, kernels without a deterministic version only warn. The global torch random state, thread count and
    deterministic-algorithms flag are left as they were.

    Args:
        config: what to train.
        texts: the prepared texts (default: :func:`prepare_texts` of ``config``).
        progress: show a ``tqdm`` bar.
    """
    texts = texts if texts is not None else prepare_texts(config)
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts.train, config.vocab_size)
    train_stream = token_stream(texts.train, tokenizer)
    val_stream = token_stream(texts.val, tokenizer)
    if len(train_stream) <= config.block_size + 1 or len(val_stream) <= config.block_size + 1:
        raise ValueError(f"{config.corpus!r} gives {len(train_stream)} training and {len(val_stream)} held-out "
                         f"tokens, too few for block_size={config.block_size}: use a larger corpus or block.")
    device = torch.device(config.device)
    deterministic_before, threads_before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    # on a GPU some kernels (cuBLAS without CUBLAS_WORKSPACE_CONFIG) have no deterministic version: warn there
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            model = build_model(config, len(tokenizer)).to(device)
            log = TrainingLog(config=asdict(config), n_train_tokens=len(train_stream),
                              n_val_tokens=len(val_stream),
                              n_parameters=sum(p.numel() for p in model.parameters()))
            decay = [p for p in model.parameters() if p.dim() >= 2]
            no_decay = [p for p in model.parameters() if p.dim() < 2]
            optimizer = torch.optim.AdamW(
                [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                lr=config.learning_rate, betas=(0.9, 0.95))
            batches = torch.Generator().manual_seed(config.seed)
            offsets = torch.arange(config.block_size + 1)
            model.train()
            for step in tqdm(range(config.steps), desc="training the 1-layer GPT", disable=not progress):
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(step, config)
                starts = torch.randint(len(train_stream) - config.block_size - 1, (config.batch_size,),
                                       generator=batches)
                windows = train_stream[starts[:, None] + offsets].to(device)
                logits = model(windows[:, :-1]).logits
                loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                log.train_losses.append(loss.item())
                if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                    log.eval_steps.append(step + 1)
                    log.val_losses.append(language_model_loss(model, val_stream, config.block_size))
            log.final_train_loss = language_model_loss(model, train_stream, config.block_size)
            log.final_val_loss = log.val_losses[-1]
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)
    log.seconds = time.perf_counter() - start
    model.eval()
    return find_parts(model, tokenizer, f"tinygpt-{config.corpus}"), log


def save_tiny_gpt(lm: LoadedModel, log: TrainingLog, folder: str | Path) -> Path:
    """Write model, tokenizer and training log to ``folder`` atomically (a temporary folder, then a rename), sealed
with a manifest of checksums (:func:`steerlib.store.seal_folder`) that :func:`load_or_train` checks."""
    def write(tmp: Path) -> None:
        lm.model.save_pretrained(tmp)
        lm.tokenizer.save_pretrained(tmp)
        log.save(tmp / _LOG_FILE)
        seal_folder(tmp)

    return atomic_write(folder, write)


def load_tiny_gpt(folder: str | Path, device: str | torch.device = "cpu") -> tuple[LoadedModel, TrainingLog]:
    """Load a 1-layer GPT saved by :func:`save_tiny_gpt` (fp32, eval mode) and its training log."""
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = Path(folder)
    if not (folder / _LOG_FILE).exists():
        raise ValueError(f"{folder} holds no trained 1-layer GPT (no {_LOG_FILE}): train one with "
                         f"load_or_train(config, folder).")
    log = TrainingLog.load(folder / _LOG_FILE)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).to(device)
    return find_parts(model, tokenizer, f"tinygpt-{log.config['corpus']}"), log


def shipped_checkpoint(config: TinyGPTConfig) -> Path | None:
    """The checkpoint shipped in ``data/tinygpt/<corpus>`` when it was trained with exactly ``config``, else ``None``.

    The repository ships the default model (a few MB), so the chapter loads in seconds and prints the same
    numbers on every machine; :func:`train_tiny_gpt` with the default configuration reproduces it.
    """
    try:
        folder = data_path("tinygpt", config.corpus)
    except ValueError:
        return None
    if not (folder / _LOG_FILE).exists() or TrainingLog.load(folder / _LOG_FILE).config != asdict(config):
        return None
    return folder


def load_or_train(config: TinyGPTConfig, folder: str | Path, retrain: bool = False, progress: bool = True,
                  use_shipped: bool = True) -> tuple[LoadedModel, TrainingLog]:
    """The 1-layer GPT of ``config``: loaded when it was trained before, else trained and saved to ``folder``.

    Looks in ``folder`` first, then (with ``use_shipped``) in the checkpoint shipped with the repository
    (:func:`shipped_checkpoint`); trains only when neither holds a model of this configuration, or when
    ``retrain`` is set. A trained model is always written to ``folder``, never into ``data/``. A checkpoint in
    ``folder`` that is incomplete or altered (its manifest of checksums does not match) is moved aside with a
    one-line warning and not used.

    Args:
        config: what to train.
        folder: the checkpoint folder (``save_pretrained`` layout plus ``training_log.json``).
        retrain: train again even when a checkpoint exists.
        progress: show a ``tqdm`` bar while training.
        use_shipped: allow loading the checkpoint shipped in ``data/tinygpt``.

    Raises:
        ValueError: ``folder`` holds a model trained with another configuration (pass ``retrain=True`` or
            another folder).
    """
    folder = Path(folder)
    if folder.exists() and not retrain:
        problem = folder_problem(folder)
        if problem is not None:
            set_aside(folder, f"is not a usable 1-layer GPT checkpoint ({problem})")
    if not retrain:
        if (folder / _LOG_FILE).exists():
            saved, wanted = TrainingLog.load(folder / _LOG_FILE).config, asdict(config)
            if saved != wanted:
                changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
                raise ValueError(f"{folder} holds a 1-layer GPT trained with another configuration (differs in "
                                 f"{', '.join(changed)}): pass retrain=True to overwrite it, or another folder.")
            return load_tiny_gpt(folder, config.device)
        shipped = shipped_checkpoint(config) if use_shipped else None
        if shipped is not None:
            return load_tiny_gpt(shipped, config.device)
    lm, log = train_tiny_gpt(config, progress=progress)
    save_tiny_gpt(lm, log, folder)
    return lm, log


def sentence_prefixes(sentences: list[str], min_words: int = 4, max_words: int = 12, seed: int = 0) -> list[str]:
    """Each sentence cut after a random number of words in ``[min_words, max_words]`` (fewer if it is shorter).

    A cut sentence is a context whose next token continues the sentence in the same case, so the model's
    next-token distribution after an uppercase prefix differs from the one after the prefix as written:
    that difference is what the log-odds ``M`` of Def. 3.2 measures. Uppercase text takes about three
    times as many tokens as the same text as written, so ``max_words`` keeps prefixes within the context.
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words} and {max_words}.")
    rng = random.Random(seed)
    prefixes = []
    for sentence in sentences:
        words = sentence.split()
        cut = rng.randint(min_words, max_words)
        prefixes.append(" ".join(words[: min(cut, len(words))]))
    return prefixes


def uppercase_prompt_sets(passages: list[str], q: int, setting: str = "contrastive",
                          seed: int = 0) -> tuple[list[str], list[str]]:
    """The prompt sets of the concept "uppercase words": ``P`` in uppercase, ``N`` as written (Sec. 2.2).

    Args:
        passages: real passages in their original case (e.g. held-out sentences).
        q: size of each set, ``|P| = |N| = q``.
        setting: ``"contrastive"``: ``N`` holds the same passages as ``P``, unchanged, so ``v`` of Eq. (3)
            isolates the change of case; ``"random"``: ``N`` holds ``q`` other passages, unchanged.
        seed: which passages are drawn.
    """
    if setting not in ("contrastive", "random"):
        raise ValueError(f"setting must be 'contrastive' or 'random', got {setting!r}.")
    passages = [p for p in passages if p != p.upper()]
    needed = q if setting == "contrastive" else 2 * q
    if q < 1 or len(passages) < needed:
        raise ValueError(f"the {setting} setting with q={q} needs {needed} passages with lowercase letters, "
                         f"got {len(passages)}: lower q or give more passages.")
    drawn = random.Random(seed).sample(passages, needed)
    positives = [p.upper() for p in drawn[:q]]
    negatives = drawn[:q] if setting == "contrastive" else drawn[q:]
    return positives, negatives


def is_lowercase_word(token: str) -> bool:
    """Whether a decoded token has a lowercase letter: the complement of the concept among tokens with letters.

    ``" the"`` and ``" The"`` are; ``" THE"``, ``","`` and ``" 2001"`` are not.
    """
    return token != token.upper()


def is_uppercase_word(token: str) -> bool:
    """Whether a decoded token is (a piece of) an uppercase word: it has a cased letter and no lowercase one.

    ``" THE"``, ``"NSW"`` and ``"A"`` are; ``" The"``, ``" the"``, ``","`` and ``" 2001"`` are not.
    """
    return token != token.lower() and token == token.upper()


def uppercase_contexts(texts: TinyGPTTexts, q: int, setting: str = "contrastive", n_prompts: int = 4,
                       seed: int = 0, max_words: int = 12) -> tuple[list[str], list[str], list[str]]:
    """P, N and the prompts to steer, all cut from held-out sentences the model never trained on.

    The held-out sentences (as written) are cut by :func:`sentence_prefixes`; the first ``n_prompts``
    prefixes are the fixed contexts ``c`` of the next-token sweeps, the others feed
    :func:`uppercase_prompt_sets`, so no prompt is in P or N.

    Returns:
        ``(P, N, prompts)``.
    """
    prefixes = sentence_prefixes(split_sentences(texts.val_original), max_words=max_words, seed=seed)
    if n_prompts < 1 or len(prefixes) <= n_prompts:
        raise ValueError(f"n_prompts={n_prompts} must be >= 1 and below the {len(prefixes)} held-out sentences.")
    positives, negatives = uppercase_prompt_sets(prefixes[n_prompts:], q, setting, seed)
    return positives, negatives, prefixes[:n_prompts]


def unigram_cross_entropy(train_stream: torch.Tensor, val_stream: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats per token) on ``val_stream`` of the unigram model fitted on ``train_stream``.

    The baseline a language model must beat to have learned anything from context: token frequencies of
    the training stream with add-one smoothing, ``p(z) = (n_z + 1) / (n + V)``.
    """
    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1.0
    log_p = (counts / counts.sum()).log()
    return float(-log_p[val_stream].mean())
