"""The decode-step ops (skinny_linear, the two halves of a Llama-family decoder layer) against the
reference and PyTorch's own F.linear, and the engine's decode step against transformers' generate
on the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _shapes import ATTN_SHAPES, MODELS, params

import r1kernels
from r1kernels import reference

ROWS = [1, 16]  # one sequence, and the 16 samples of a GRPO group


def w(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) / shape[-1] ** 0.5


@pytest.mark.parametrize("impl", ["r1kernels", "reference", "F.linear"])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_skinny_linear(benchmark, shape, rows, impl):
    m = MODELS[shape[0]]
    x, weight = w(rows, m.hidden, seed=1), w(m.intermediate, m.hidden)
    f = {"r1kernels": r1kernels.skinny_linear, "reference": reference.skinny_linear, "F.linear": F.linear}[impl]
    benchmark.group = f"skinny_linear/rows={rows}"
    with torch.no_grad():
        benchmark(lambda: f(x, weight))


def layer(m, rows):
    D = m.head_dim
    return dict(
        h=w(rows, m.hidden, seed=1),
        norm_weight=torch.ones(m.hidden),
        eps=1e-6,
        wq=w(m.heads * D, m.hidden),
        bq=torch.zeros(m.heads * D),
        wk=w(m.kv_heads * D, m.hidden, seed=2),
        bk=torch.zeros(m.kv_heads * D),
        wv=w(m.kv_heads * D, m.hidden, seed=3),
        bv=torch.zeros(m.kv_heads * D),
        cos=torch.ones(rows, D),
        sin=torch.zeros(rows, D),
        head_dim=D,
        attn=w(rows, m.heads * D, seed=4),
        wo=w(m.hidden, m.heads * D, seed=5),
        w_gate=w(m.intermediate, m.hidden, seed=6),
        w_up=w(m.intermediate, m.hidden, seed=7),
        w_down=w(m.hidden, m.intermediate, seed=8),
    )


@pytest.mark.parametrize("impl", ["r1kernels", "reference"])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_rmsnorm_qkv_rope(benchmark, shape, rows, impl):
    a = layer(MODELS[shape[0]], rows)
    benchmark.group = f"rmsnorm_qkv_rope/rows={rows}"
    with torch.no_grad():
        if impl == "r1kernels":
            benchmark(
                lambda: r1kernels.rmsnorm_qkv_rope(
                    a["h"],
                    a["norm_weight"],
                    a["eps"],
                    a["wq"],
                    a["wk"],
                    a["wv"],
                    a["cos"],
                    a["sin"],
                    a["head_dim"],
                    bq=a["bq"],
                    bk=a["bk"],
                    bv=a["bv"],
                )
            )
        else:
            benchmark(
                lambda: reference.rmsnorm_qkv_rope(
                    a["h"],
                    a["norm_weight"],
                    a["eps"],
                    a["wq"],
                    a["bq"],
                    a["wk"],
                    a["bk"],
                    a["wv"],
                    a["bv"],
                    None,
                    None,
                    0.0,
                    a["cos"],
                    a["sin"],
                    a["head_dim"],
                )
            )


@pytest.mark.parametrize("impl", ["r1kernels", "reference"])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_oproj_mlp(benchmark, shape, rows, impl):
    a = layer(MODELS[shape[0]], rows)
    benchmark.group = f"oproj_mlp/rows={rows}"
    with torch.no_grad():
        if impl == "r1kernels":
            benchmark(
                lambda: r1kernels.oproj_mlp(
                    a["h"], a["attn"], a["wo"], a["norm_weight"], a["eps"], a["w_gate"], a["w_up"], a["w_down"]
                )
            )
        else:
            benchmark(
                lambda: reference.oproj_mlp(
                    a["h"],
                    a["attn"],
                    a["wo"],
                    None,
                    a["norm_weight"],
                    a["eps"],
                    a["w_gate"],
                    None,
                    a["w_up"],
                    None,
                    a["w_down"],
                    None,
                )
            )


# --- the engine's decode step ---------------------------------------------------------------------
DECODE_STEPS = 16  # timed rounds (one decode step each; the cache grows by one token per round)


def qwen2(m, layers=4):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=m.vocab,
        hidden_size=m.hidden,
        intermediate_size=m.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("impl", ["r1core", "transformers"])
@pytest.mark.parametrize("shape", params(ATTN_SHAPES))
def bench_engine_decode(benchmark, shape, impl):
    """One decode step of `seqs` sequences at a `ctx`-token context: the engine's forward of one new
    token per resident sequence (as its beam search steps), against the model's own forward with
    transformers' KV cache. The prefill runs once, outside the timing; each round adds a token."""
    name, seqs, ctx = shape
    m = MODELS[name]
    model = qwen2(m)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, m.vocab, (seqs, ctx), generator=g)
    benchmark.group = "engine_decode_step"
    with torch.no_grad():
        if impl == "r1core":
            from r1core.engine import Engine

            engine = Engine(
                model, num_blocks=seqs * (-(-(ctx + DECODE_STEPS + 1) // 16)) + 8, enable_prefix_caching=False
            )
            residents = [engine.add_resident(p) for p in prompts.tolist()]
            engine.forward(residents)

            def step():
                for s in residents:
                    s.token_ids.append(5)
                return engine.forward(residents)
        else:
            from transformers import DynamicCache

            cache = DynamicCache()
            model(input_ids=prompts, cache=cache, use_cache=True)
            token = torch.full((seqs, 1), 5)

            def step():
                return model(input_ids=token, cache=cache, use_cache=True).logits

        benchmark.pedantic(step, rounds=DECODE_STEPS, iterations=1, warmup_rounds=1)
