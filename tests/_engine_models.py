"""Tiny random-initialised causal LMs and a local character tokenizer for the engine tests."""

from __future__ import annotations

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 128
_COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=VOCAB, max_position_embeddings=256, eos_token_id=1, bos_token_id=None, pad_token_id=0)

ARCHS = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
}


def tiny_model(arch: str = "qwen2", dtype=torch.float32, **overrides):
    cfg_cls, model_cls, extra = ARCHS[arch]
    cfg = cfg_cls(**{**_COMMON, **extra, **overrides})
    model = model_cls(cfg).to(dtype).eval()
    # sharper logits than the default init, so greedy argmaxes are far from ties and eos shows up
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = [chr(c) for c in range(32, 127)] + [chr(c) for c in range(161, 161 + VOCAB - 2 - 95)]
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")  # "<pad>" stays text: one token, 5 chars


def random_prompts(lengths, low: int = 2):
    return [torch.randint(low, VOCAB, (n,)).tolist() for n in lengths]


def hf_greedy(model, prompt: list[int], max_new_tokens: int, ignore_eos: bool = False) -> list[int]:
    if ignore_eos:  # generate() always stops at the config's eos; the engine's ignore_eos does not
        ids, out = torch.tensor([prompt]), []
        with torch.no_grad():
            for _ in range(max_new_tokens):
                out.append(int(model(ids).logits[0, -1].argmax()))
                ids = torch.cat([ids, torch.tensor([[out[-1]]])], 1)
        return out
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def full_forward_logprobs(model, prompt: list[int], completion: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # [C, V]
    t = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / t, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
