"""The default run's tiny base model: a Qwen2 (hidden 128, 4 layers, 4 heads, ~1M parameters,
tied embeddings) over the character tokenizer of `r1core.tasks`, pretrained by SFT on zero-padded
3-digit addition with the scratchpad (`989+796=` -> `T9+6+0=15,8+9+1=18,9+7+1=17;A1785`) only
until its greedy held-out accuracy reaches a target (0.30, checked every 10 steps: the accuracy
jumps suddenly, so checking often keeps the base weak, as an R1-Zero base should be).

`load_model` is every command's loader: "tiny" (this architecture, random weights) or a saved folder.

    python -m r1core.recipes.cli sft --help
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


@dataclass
class BaseModelSpec:
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 64


def build_tokenizer():
    from r1core.tasks.tokenizer import TASK_ALPHABET
    from r1core.tasks.tokenizer import build_tokenizer as _build

    return _build(TASK_ALPHABET)


def build_model(tokenizer, spec: BaseModelSpec | None = None, seed: int = 0, dtype=torch.float32):
    """A randomly initialised Qwen2ForCausalLM sized by spec, over tokenizer's vocabulary."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = spec or BaseModelSpec()
    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    return model


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def load_model(path: str, seed: int = 0):
    """(model, tokenizer): "tiny" is this architecture with random weights (seeded); a folder is loaded
    with from_pretrained, with its tokenizer if one was saved there, else the task tokenizer."""
    if path == "tiny":
        tok = build_tokenizer()
        return build_model(tok, seed=seed), tok
    if not os.path.isdir(path):
        raise ValueError(f"model {path!r} is not a folder (write one with `r1core sft --save DIR`; 'tiny' for random weights)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1core.tasks.tokenizer import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")  # in eval mode
    has_tok = any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "tokenizer_config.json"))
    if not has_tok:
        return model, build_tokenizer()
    return model, (load_tokenizer(path) if _saved_as_plain_fast(path) else AutoTokenizer.from_pretrained(path))


def _saved_as_plain_fast(path: str) -> bool:
    """True for a tokenizer saved as a plain fast tokenizer (r1core's own): AutoTokenizer would
    rebuild it as the model type's class (Qwen2Tokenizer for a qwen2 config), whose byte-level
    pre-tokenizer silently drops characters outside its alphabet (the two-script task's digits)."""
    try:
        with open(os.path.join(path, "tokenizer_config.json")) as f:
            cls = json.load(f).get("tokenizer_class")
    except (OSError, ValueError):
        return False
    return os.path.exists(os.path.join(path, "tokenizer.json")) and cls in ("TokenizersBackend", "PreTrainedTokenizerFast")
