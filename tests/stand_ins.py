"""Local stand-ins of hub models: small random models of a family's real architecture, saved as a hub folder.

Each folder holds ``config.json``, ``model.safetensors`` and SmolLM2's tokenizer (its vocabulary sizes the
embedding), so ``load_model(folder)`` and the chapters read it exactly as they read a downloaded checkpoint.

    python tests/stand_ins.py FOLDER            # writes FOLDER/gpt2, FOLDER/qwen3, FOLDER/gemma3
"""

from __future__ import annotations

import sys
from pathlib import Path

FAMILIES = ("gpt2", "qwen3", "gemma3")


def stand_in_config(family: str, vocab_size: int):
    """A 4-block, 64-wide configuration of ``family`` (GPT-2, Qwen 3, Gemma 3 text)."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1,
                  eos_token_id=2, pad_token_id=2)
    if family == "gpt2":
        return transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=vocab_size, n_embd=64, n_layer=4, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2)
    if family == "qwen3":
        return transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**common, head_dim=16)
    if family == "gemma3":
        return transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(
            **common, head_dim=16, sliding_window=32,
            layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"])
    raise ValueError(f"no stand-in for {family!r}: choose one of {', '.join(FAMILIES)}.")


def save_stand_in(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a random ``family`` model with SmolLM2's tokenizer to ``folder`` (skipped if already there)."""
    import torch
    from transformers import AutoTokenizer

    from steerlib.models import _converted_smollm2_folder

    folder = Path(folder)
    if (folder / "model.safetensors").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(_converted_smollm2_folder())
    model_class, config = stand_in_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


if __name__ == "__main__":
    for name in FAMILIES:
        print(save_stand_in(name, Path(sys.argv[1]) / name))
