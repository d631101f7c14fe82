"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_chat_lm():
    """A 2-block random Llama with SmolLM2's tokenizer and chat template (offline, instantaneous)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from steerlib.models import _converted_smollm2_folder, find_parts

    tokenizer = AutoTokenizer.from_pretrained(_converted_smollm2_folder())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    return find_parts(LlamaForCausalLM(config), tokenizer, "tiny-llama")
