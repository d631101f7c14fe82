"""Architecture discovery on tiny randomly initialised models of every supported family (offline).

``tiny_lm`` and ``CharTokenizer`` are also imported by the steering, vector and sweep tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import transformers
from torch import nn

from steerlib.models import (LoadedModel, _converted_smollm2_folder, load_model, check_dtype, check_transformers, early_middle_last, find_blocks, find_final_norm,
                             find_parts, find_unembedding, residual_norm_profile)
from steerlib.steering import block_hidden
from damage import damage
from float32 import assert_float32_close
from steerlib.store import folder_problem

VOCABULARY = 64
FAMILIES = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "gemma3", "gemma3-multimodal")


class CharTokenizer:
    """A byte-level stand-in for a tokenizer: one token per character (code point mod the vocabulary)."""

    pad_token_id = 0
    pad_token = "<pad>"
    eos_token = "<pad>"

    def __call__(self, text: str, return_tensors: str | None = None):
        ids = [1 + ord(char) % (VOCABULARY - 1) for char in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}

    def decode(self, ids) -> str:
        return "".join(chr(96 + int(i) % 26) for i in ids)


def _config(family: str):
    common = dict(vocab_size=VOCABULARY, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    gemma_text = dict(common, head_dim=8, sliding_window=4, final_logit_softcapping=1.0,
                      layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    if family == "gpt2":
        return transformers.GPT2LMHeadModel, transformers.GPT2Config(
            vocab_size=VOCABULARY, n_embd=32, n_layer=4, n_head=4, n_positions=128, initializer_range=0.2,
            bos_token_id=None, eos_token_id=None)
    if family == "llama":
        return transformers.LlamaForCausalLM, transformers.LlamaConfig(**common)
    if family == "qwen2":
        return transformers.Qwen2ForCausalLM, transformers.Qwen2Config(**common)
    if family == "qwen3":
        return transformers.Qwen3ForCausalLM, transformers.Qwen3Config(**common, head_dim=8)
    if family == "mistral":
        return transformers.MistralForCausalLM, transformers.MistralConfig(**common, sliding_window=4)
    if family == "gemma3":
        return transformers.Gemma3ForCausalLM, transformers.Gemma3TextConfig(**gemma_text)
    if family == "gemma3-multimodal":
        vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=28, patch_size=14)
        text = transformers.Gemma3TextConfig(**gemma_text)
        return transformers.Gemma3ForConditionalGeneration, transformers.Gemma3Config(
            text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)
    raise ValueError(family)


_CACHE: dict[tuple[str, torch.dtype], LoadedModel] = {}


def tiny_lm(family: str = "llama", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A 4-block randomly initialised model of ``family`` (seed 0), wrapped with a character tokenizer."""
    key = (family, dtype)
    if key not in _CACHE:
        model_class, config = _config(family)
        torch.manual_seed(0)
        model = model_class(config).to(dtype)
        _CACHE[key] = find_parts(model, CharTokenizer(), f"tiny-{family}")
    return _CACHE[key]


@pytest.mark.parametrize("family", FAMILIES)
def test_discovery_finds_blocks_norm_and_unembedding(family):
    lm = tiny_lm(family)
    assert lm.n_layers == 4
    assert lm.hidden_size == 32
    assert all(type(block).__name__.endswith(("Block", "DecoderLayer")) for block in lm.blocks)
    assert "Norm" in type(lm.final_norm).__name__
    assert isinstance(lm.unembedding, nn.Linear) and lm.unembedding.weight.shape == (VOCABULARY, 32)
    assert not lm.model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_from_last_block_equal_model_logits(family):
    """``lm.logits(h^(L))`` (final norm, unembedding, softcapping where the model applies it) = the model's logits."""
    lm = tiny_lm(family)
    ids = torch.randint(1, VOCABULARY, (2, 9), generator=torch.Generator().manual_seed(1))
    recorded = {}
    handle = lm.blocks[-1].register_forward_hook(lambda m, a, out: recorded.setdefault("h", block_hidden(out)))
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
    handle.remove()
    with torch.no_grad():
        ours = lm.logits(recorded["h"])
    assert_float32_close(ours, logits)


def test_gemma_softcapping_is_read_as_the_model_applies_it():
    assert tiny_lm("gemma3").final_logit_softcapping == 1.0
    assert tiny_lm("gemma3-multimodal").final_logit_softcapping is None  # its forward never caps
    assert tiny_lm("llama").final_logit_softcapping is None


def test_multimodal_gemma_uses_its_language_model():
    lm = tiny_lm("gemma3-multimodal")
    assert lm.blocks is lm.model.model.language_model.layers
    assert lm.final_norm is lm.model.model.language_model.norm


def test_unknown_architecture_names_the_override():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.ModuleList([nn.Linear(4, 4)])
            self.head = nn.Linear(4, 8)
            self.final = nn.LayerNorm(4)

    model = Odd()
    with pytest.raises(ValueError, match="blocks_path="):
        find_blocks(model)
    with pytest.raises(ValueError, match="final_norm_path="):
        find_final_norm(model)
    with pytest.raises(ValueError, match="unembedding_path="):
        find_unembedding(model)
    lm = find_parts(model, None, "odd", blocks_path="trunk", final_norm_path="final", unembedding_path="head")
    assert lm.n_layers == 1 and lm.hidden_size == 4
    with pytest.raises(ValueError, match="no attribute path"):
        find_blocks(model, "missing.path")


def test_check_layer_range():
    lm = tiny_lm("llama")
    assert lm.check_layer(3) == 3
    for bad in (-1, 4, 1.5):
        with pytest.raises(ValueError, match="0..3"):
            lm.check_layer(bad)


@pytest.mark.parametrize("version", ["4.46.3", "5.10.0", "5.2.0.dev0"])
def test_a_transformers_too_old_for_the_embedded_model_says_what_to_upgrade(version):
    with pytest.raises(RuntimeError, match=r"pip install -U 'transformers>=5\.11'"):
        check_transformers(version)


@pytest.mark.parametrize("version", ["5.11.0", "5.24.0", "6.0.0rc1", "5.12.0+local"])
def test_recent_transformers_pass(version):
    assert check_transformers(version) == version


def test_layers_are_checked_once_at_the_boundary():
    lm = tiny_lm("llama")
    assert lm.check_layers([np.int64(1), 3]) == [1, 3] and all(type(x) is int for x in lm.check_layers([np.int64(1)]))
    assert lm.check_layers(None) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="0..3"):
        lm.check_layers([4])
    with pytest.raises(ValueError, match="list of block indices"):
        lm.check_layers("middle")
    with pytest.raises(ValueError, match="empty"):
        lm.check_layers([])


def test_layers_by_name_and_the_chapter_default():
    """The chapters' one form: indices and the names early/middle/last mixed; None is the chapter's default."""
    lm = tiny_lm("llama")
    assert lm.check_layers(["early", "middle", "last"]) == [0, 2, 3]
    assert lm.check_layers(["middle", 1]) == [2, 1]
    assert lm.check_layers(None, default=["last"]) == [3]
    assert lm.check_layers([0], default=["last"]) == [0]
    with pytest.raises(ValueError, match="0..3"):
        lm.check_layers(["first"])


def test_dtype_is_read_from_its_name():
    assert check_dtype("bfloat16") is torch.bfloat16 and check_dtype("torch.float16") is torch.float16
    assert check_dtype(None) is None and check_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        check_dtype("fp8")


def test_early_middle_last_are_distinct_blocks():
    assert early_middle_last(30) == [6, 15, 29]
    assert early_middle_last(12) == [2, 6, 11]
    with pytest.raises(ValueError, match="at least 3"):
        early_middle_last(2)


def test_residual_norm_profile_matches_the_hidden_states():
    lm = tiny_lm("llama")
    texts = ["hello there", "a cat"]
    profile = residual_norm_profile(lm, texts, progress=False)
    with torch.no_grad():
        hidden = [lm.model(torch.tensor([lm.tokenizer(t)["input_ids"]]), output_hidden_states=True).hidden_states
                  for t in texts]
    layer = 1  # output of block 1 = hidden_states[2] (the last entry is after the final norm)
    norms = [h[layer + 1][0].norm(dim=-1) for h in hidden]
    assert profile["first"][layer] == pytest.approx(float(sum(n[0] for n in norms)) / 2, rel=1e-5)
    assert profile["others"][layer] == pytest.approx(float(torch.cat([n[1:] for n in norms]).mean()), rel=1e-5)
    assert profile["first"].shape == (lm.n_layers,)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_offers_device_none():
    with pytest.raises(ValueError, match="CUDA is not available here.*pass device=None"):
        load_model(device="cuda")


def test_a_folder_without_a_model_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match=f"no such folder: {tmp_path / 'nowhere'}"):
        load_model(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"has no weights \(model.safetensors.*no tokenizer files"):
        load_model(str(tmp_path))
    model_class, config = _config("llama")
    model_class(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has no tokenizer files") as raised:
        load_model(str(tmp_path))
    assert "weights" not in str(raised.value)


def test_an_unreachable_hub_fails_at_once_with_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: connection refused
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="the hub cannot be reached from here, and it is not in the local hub cache"):
        load_model("some-org/some-model")
    assert time.perf_counter() - start < 20


_LOAD = """
import torch
from steerlib.models import load_model
lm = load_model()
ids = lm.tokenizer("The cat sat on the", return_tensors="pt")["input_ids"]
with torch.no_grad():
    print(repr(lm.model(input_ids=ids).logits[0, -1].double().sum().item()))
"""


def test_three_processes_converting_the_embedded_model_at_once_all_succeed(tmp_path, monkeypatch):
    """An empty cache and three processes loading the embedded model together: the conversion happens once, under
    a lock, and all three read the same logits. Then a damaged copy is set aside and made again."""
    environment = dict(os.environ, STEERLIB_CACHE=str(tmp_path))
    runs = [subprocess.Popen([sys.executable, "-c", _LOAD], env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder_problem(folder) is None
    damage(folder / "model.safetensors", "truncated")
    monkeypatch.setenv("STEERLIB_CACHE", str(tmp_path))
    with pytest.warns(UserWarning, match="not a usable copy of the embedded model .model.safetensors was altered"):
        assert _converted_smollm2_folder() == folder
    assert folder_problem(folder) is None and len(list(tmp_path.glob("*.unusable"))) == 1


def test_device_map_and_quantization_reach_transformers_or_say_what_is_missing():
    from steerlib.models import default_dtype
    from steerlib.store import data_path

    folder = str(data_path("tinygpt", "lee_background"))  # a small GPT-2 folder with its tokenizer
    placed, moved = load_model(folder, device_map="cpu"), load_model(folder, device="cpu")
    ids = moved.tokenizer("The fire burns", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(placed.model(ids).logits, moved.model(ids).logits)
    assert default_dtype(torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError, match="use '8bit', '4bit' or None"):
        load_model(folder, quantization="3bit")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA GPU"):
            load_model(folder, quantization="4bit")
