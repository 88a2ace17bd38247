"""The engine's lean Llama-family forward (r1core.engine.fast_forward) against the modules' own
forward: bitwise the same hidden states and outputs on random tiny Llama, Qwen2, Qwen3 and Mistral
models (bias and no bias, GQA, Qwen3's per-head norms), and a fall-back where it would not be exact."""

from __future__ import annotations

import pytest
import torch
from _engine_models import random_prompts, tiny_model
from torch import nn

from r1core.engine import Engine, SamplingParams
from r1core.engine.fast_forward import unsupported_reason

ARCHS = ["llama", "qwen2", "qwen3", "mistral"]


def capture_hidden(engine, prompts, params):
    """The outputs and every step's hidden states [T, H], from whichever forward the engine ran."""
    runner = engine.model_runner
    seen = []
    base_forward, select = runner.base.forward, runner.select_forward

    def record_base(*a, **kw):
        out = base_forward(*a, **kw)
        seen.append(out.last_hidden_state[0].clone())
        return out

    def record_lean(lean):
        def run(ids, pos, meta):
            h = lean(ids, pos, meta)
            seen.append(h[0].clone())
            return h
        return run

    def select_and_record():
        select()
        if runner.lean is not None:
            runner.lean = record_lean(runner.lean)

    runner.base.forward, runner.select_forward = record_base, select_and_record
    try:
        outs = engine.generate(prompts, params)
    finally:
        del runner.base.forward, runner.select_forward
    return outs, seen


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bias", [False, True])
def test_lean_forward_is_bitwise_the_modules_forward(arch, bias):
    overrides = {"attention_bias": bias} if arch in ("llama", "qwen3") else {}
    if arch == "llama" and bias:
        overrides["mlp_bias"] = True
    model = tiny_model(arch, **overrides)
    assert unsupported_reason(model.model) is None
    prompts = random_prompts([1, 7, 19])
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=3, logprobs=True)
    outs = {}
    for fast in (True, False):
        engine = Engine(model, block_size=4, num_blocks=64, fast_forward=fast)
        engine.model_runner.skinny_linear = False  # BLAS for every matmul, as the modules do: bitwise
        outs[fast] = capture_hidden(engine, prompts, params)
        assert (engine.model_runner.lean is not None) == fast
    (o_fast, h_fast), (o_slow, h_slow) = outs[True], outs[False]
    assert len(h_fast) == len(h_slow) > 1
    for a, b in zip(h_fast, h_slow):
        assert torch.equal(a, b)
    for a, b in zip(o_fast, o_slow):
        for x, y in zip(a.outputs, b.outputs):
            assert x.token_ids == y.token_ids and x.logprobs == y.logprobs


def _assert_same_to_rounding(h_a, h_b, o_a, o_b):
    """Two generations' per-step hidden states equal to float32 rounding, and the same tokens with
    log-probs equal to rounding."""
    for a, b in zip(h_a, h_b):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(o_a, o_b):
        for x, y in zip(a.outputs, b.outputs):
            assert x.token_ids == y.token_ids
            torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_skinny_linear_steps_match_blas_to_rounding(arch):
    from r1kernels._library import has_cpp_kernel

    if not has_cpp_kernel("skinny_linear"):
        pytest.skip("r1kernels._C is not built: no skinny kernel to compare")
    model = tiny_model(arch, attention_bias=True) if arch == "qwen3" else tiny_model(arch)
    prompts = random_prompts([1, 9, 30])  # 40 prompt tokens: a prefill on BLAS, then 3-row decode steps
    params = SamplingParams(n=2, temperature=0, max_new_tokens=8, ignore_eos=True, logprobs=True)
    runs = {}
    for skinny in (True, False):
        engine = Engine(model, block_size=4, num_blocks=64)
        engine.model_runner.skinny_linear = skinny
        runs[skinny] = capture_hidden(engine, prompts, params)
        assert engine.model_runner._lean_linear.__self__.skinny == skinny
    (o_sk, h_sk), (o_blas, h_blas) = runs[True], runs[False]
    assert len(h_sk) == len(h_blas) > 2
    assert torch.equal(h_sk[0], h_blas[0])  # the prefill step (40 rows) stays on BLAS
    assert any(not torch.equal(a, b) for a, b in zip(h_sk[1:], h_blas[1:]))  # the decode steps did not
    _assert_same_to_rounding(h_sk, h_blas, o_sk, o_blas)


def test_falls_back_where_it_would_not_be_exact():
    model = tiny_model("qwen2")
    handle = model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: o * 2)
    assert "hook" in unsupported_reason(model.model)
    engine = Engine(model, block_size=4, num_blocks=64)
    prompts = random_prompts([5])
    hooked = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=5))
    assert engine.model_runner.lean is None  # the hook ran: the modules' own forward
    want = model.generate(torch.tensor(prompts), attention_mask=torch.ones(1, 5, dtype=torch.long), do_sample=False,
                          max_new_tokens=5, pad_token_id=0)[0, 5:].tolist()
    assert hooked[0].outputs[0].token_ids[: len(want)] == want[: len(hooked[0].outputs[0].token_ids)]
    with pytest.raises(ValueError, match="fast_forward=True.*hook"):
        Engine(model, block_size=4, num_blocks=64, fast_forward=True).generate(prompts, SamplingParams(max_new_tokens=2))
    handle.remove()
    engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=2))
    assert engine.model_runner.lean is not None  # chosen again per call once the hook is gone

    wrapped = tiny_model("llama")
    wrapped.model.layers[0].self_attn.q_proj = nn.Sequential(wrapped.model.layers[0].self_attn.q_proj)
    assert "nn.Linear" in unsupported_reason(wrapped.model)


def test_bad_fast_forward_value():
    with pytest.raises(ValueError, match="fast_forward"):
        Engine(tiny_model("qwen2"), block_size=4, num_blocks=16, fast_forward="yes")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n", [2, 5, 12])  # 6, 15 and 36 rows per decode step (36: BLAS inside the fused calls)
def test_fused_decode_layers_match_the_lean_forward_to_rounding(arch, bias, n):
    from r1kernels._library import has_cpp_kernel

    if not has_cpp_kernel("rmsnorm_qkv_rope"):
        pytest.skip("r1kernels._C is not built: no fused decoder-layer kernels")
    overrides = {"attention_bias": bias} if arch in ("llama", "qwen3") else {}
    if arch == "llama" and bias:
        overrides["mlp_bias"] = True
    model = tiny_model(arch, **overrides)
    prompts = random_prompts([1, 6, 21])
    params = SamplingParams(n=n, temperature=0, max_new_tokens=7, ignore_eos=True, logprobs=True)
    runs, fused_calls = {}, {}
    for fused in (True, False):
        engine = Engine(model, block_size=4, num_blocks=256)
        engine.model_runner.fused_layers = fused
        calls = []
        from r1core.engine import fast_forward

        orig = fast_forward.LeanForward._fused_layers

        def counting(self, *a, _orig=orig, _calls=calls):
            _calls.append(1)
            return _orig(self, *a)

        fast_forward.LeanForward._fused_layers = counting
        try:
            runs[fused] = capture_hidden(engine, prompts, params)
        finally:
            fast_forward.LeanForward._fused_layers = orig
        fused_calls[fused] = len(calls)
    assert fused_calls[False] == 0 and fused_calls[True] >= 6  # every decode step took the fused layers
    (o_f, h_f), (o_l, h_l) = runs[True], runs[False]
    assert len(h_f) == len(h_l) > 2 and torch.equal(h_f[0], h_l[0])  # the 28-token prefill is not fused
    _assert_same_to_rounding(h_f, h_l, o_f, o_l)
