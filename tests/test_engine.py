"""r1core.engine end to end on tiny random models: greedy equals model.generate, log-probs equal a
full forward, seeds, groups sharing their prompt's blocks, preemption, chunked prefill, the prefix
cache and its weight version, stops, and input validation."""

import math
import os

import pytest
import torch
from _engine_models import char_tokenizer, full_forward_logprobs, hf_greedy, random_prompts, tiny_model
from conftest import requires_cuda

from r1core.engine import Engine, SamplingParams


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_greedy_matches_generate(arch):
    model = tiny_model(arch)
    prompts = random_prompts([1, 5, 13, 16, 29])
    engine = Engine(model, block_size=4, num_blocks=128)
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=20))
    for p, o in zip(prompts, outs):
        ref = hf_greedy(model, p, 20)
        assert o.prompt_token_ids == p
        assert o.outputs[0].token_ids == ref
        assert o.outputs[0].finish_reason == ("stop" if ref[-1] == 1 and len(ref) <= 20 and 1 in ref else "length")
    assert engine.block_manager.num_used_blocks == 0  # everything freed
    assert model.config._attn_implementation == "sdpa"  # the trainer's forward is unchanged


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 2e-4, 1e-4), (torch.bfloat16, 0.1, 0.05)])
def test_sampling_logprobs_equal_full_forward(dtype, atol, rtol):
    model = tiny_model("qwen2", dtype=dtype)
    prompts = random_prompts([3, 17])
    params = SamplingParams(n=3, temperature=0.8, top_k=40, top_p=0.9, max_new_tokens=15, ignore_eos=True, seed=7)
    outs = Engine(model, block_size=4, num_blocks=64).generate(prompts, params)
    for p, o in zip(prompts, outs):
        assert len(o.outputs) == 3
        for c in o.outputs:
            assert len(c.token_ids) == 15 and len(c.logprobs) == 15 and c.finish_reason == "length"
            ref = full_forward_logprobs(model, p, c.token_ids, 0.8)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=atol, rtol=rtol)


def test_greedy_logprobs_use_temperature_one():
    model = tiny_model("llama")
    (p,) = random_prompts([9])
    (o,) = Engine(model, block_size=4, num_blocks=32).generate([p], SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True))
    ref = full_forward_logprobs(model, p, o.outputs[0].token_ids, 1.0)
    torch.testing.assert_close(torch.tensor(o.outputs[0].logprobs), ref, atol=2e-4, rtol=1e-4)


def test_same_seed_same_samples_alone_or_batched():
    model = tiny_model("qwen2")
    target, *others = random_prompts([11, 4, 23, 7])
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=12, ignore_eos=True, seed=1234)
    engine = Engine(model, block_size=4, num_blocks=128)
    alone = engine.generate([target], params)[0]
    mixed = engine.generate(others[:1] + [target] + others[1:], [SamplingParams(n=2, seed=5, max_new_tokens=9), params,
                                                                  SamplingParams(temperature=0.5, max_new_tokens=30),
                                                                  SamplingParams(n=3, temperature=0)])[1]
    assert [c.token_ids for c in alone.outputs] == [c.token_ids for c in mixed.outputs]
    # the 4 samples are not all one sample
    assert len({tuple(c.token_ids) for c in alone.outputs}) > 1
    other_seed = engine.generate([target], SamplingParams(n=4, max_new_tokens=12, ignore_eos=True, seed=99))[0]
    assert [c.token_ids for c in other_seed.outputs] != [c.token_ids for c in alone.outputs]


def test_group_prompt_prefilled_once_and_stored_once():
    model = tiny_model("qwen2")
    G, bs, P = 6, 4, 14  # 3 full prompt blocks + a partly filled one
    (p,) = random_prompts([P])
    engine = Engine(model, block_size=bs, num_blocks=64)
    bm = engine.block_manager
    engine.add_request(p, SamplingParams(n=G, max_new_tokens=5, ignore_eos=True, seed=3))
    batch = engine.scheduler.schedule()
    assert [s.num_tokens for s in batch.seqs] == [P] and batch.num_new_tokens == [P]  # one prefill of the prompt
    with engine.session():
        engine._postprocess(batch, engine.model_runner.run(batch))
    seqs = engine.scheduler.running
    assert len(seqs) == G
    assert bm.num_used_blocks == math.ceil(P / bs)  # stored once
    assert all(s.block_table == seqs[0].block_table for s in seqs)
    assert all(bm.ref_count(b) == G for b in seqs[0].block_table)  # partly filled last block shared too
    batch = engine.scheduler.schedule()  # first decode: each child writes into the shared last block
    assert len(batch.copies) == G - 1  # copy-on-write for all but the last writer
    full = P // bs
    assert bm.num_used_blocks == full + G
    assert all(bm.ref_count(b) == G for b in seqs[0].block_table[:full])
    with engine.session():
        engine._postprocess(batch, engine.model_runner.run(batch))
        while engine.scheduler.has_unfinished():
            engine._step()
    assert bm.num_used_blocks == 0


def test_fork_and_cow_keep_every_sequence_kv_intact():
    # logprobs of each sample equal a full forward only if no sample's KV was overwritten by another
    model = tiny_model("llama")
    prompts = random_prompts([6, 9])  # prompts ending inside a block: shared partial blocks
    params = SamplingParams(n=5, temperature=1.5, max_new_tokens=13, ignore_eos=True)
    outs = Engine(model, block_size=4, num_blocks=96).generate(prompts, params)
    for p, o in zip(prompts, outs):
        for c in o.outputs:
            ref = full_forward_logprobs(model, p, c.token_ids, 1.5)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_cascade_decode_equals_plain_decode(arch):
    model = tiny_model(arch)
    prompts = random_prompts([13, 4, 21])  # 3 and 5 shared full blocks; one prompt inside a block
    params = [SamplingParams(n=4, temperature=1.0, max_new_tokens=11, ignore_eos=True, seed=s) for s in (1, 2, 3)]
    params[1] = SamplingParams(n=1, temperature=0, max_new_tokens=7)
    plain = Engine(model, block_size=4, num_blocks=128, cascade=False)
    casc = Engine(model, block_size=4, num_blocks=128, cascade=True)
    a, b = plain.generate(prompts, params), casc.generate(prompts, params)
    assert casc.model_runner.num_cascade_steps > 5 and plain.model_runner.num_cascade_steps == 0
    for p, oa, ob in zip(prompts, a, b):
        assert [c.token_ids for c in oa.outputs] == [c.token_ids for c in ob.outputs]
        for ca, cb in zip(oa.outputs, ob.outputs):
            torch.testing.assert_close(torch.tensor(cb.logprobs), torch.tensor(ca.logprobs), atol=1e-4, rtol=1e-4)
            ref = full_forward_logprobs(model, p, cb.token_ids, params[prompts.index(p)].temperature)
            torch.testing.assert_close(torch.tensor(cb.logprobs), ref, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("num_blocks, max_tokens", [(9, 2048), (12, 5), (64, 3)])
def test_small_budget_same_greedy_outputs(num_blocks, max_tokens):
    model = tiny_model("qwen2")
    prompts = random_prompts([5, 12, 3, 9, 17])
    params = SamplingParams(n=2, temperature=0, max_new_tokens=16, ignore_eos=True)
    ample = Engine(model, block_size=4, num_blocks=256).generate(prompts, params)
    tight = Engine(model, block_size=4, num_blocks=num_blocks, max_num_batched_tokens=max_tokens)
    outs = tight.generate(prompts, params)
    assert [[c.token_ids for c in o.outputs] for o in outs] == [[c.token_ids for c in o.outputs] for o in ample]
    if num_blocks < 16:
        assert tight.scheduler.num_preemptions > 0
    assert tight.block_manager.num_used_blocks == 0


def test_preempted_samples_keep_their_logprobs_and_seeds():
    model = tiny_model("qwen2")
    prompts = random_prompts([7, 10, 5])
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=14, ignore_eos=True, seed=11)
    ample = Engine(model, block_size=4, num_blocks=256).generate(prompts, params)
    tight_engine = Engine(model, block_size=4, num_blocks=14)
    tight = tight_engine.generate(prompts, params)
    assert tight_engine.scheduler.num_preemptions > 0
    for a, t in zip(ample, tight):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in t.outputs]
        for ca, ct in zip(a.outputs, t.outputs):
            torch.testing.assert_close(torch.tensor(ct.logprobs), torch.tensor(ca.logprobs), atol=2e-4, rtol=1e-4)


def test_requests_join_the_running_batch():
    model = tiny_model("llama", eos_token_id=None)  # no early eos: the first request is still running when the second comes
    p1, p2 = random_prompts([8, 5])
    engine = Engine(model, block_size=4, num_blocks=64)
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    r1 = engine.add_request(p1, greedy)
    finished = engine.step() + engine.step() + engine.step()
    r2 = engine.add_request(p2, greedy)
    batch_sizes = []
    while engine.scheduler.has_unfinished():
        batch_sizes.append(len(engine.scheduler.running))
        finished += engine.step()
    assert 2 in batch_sizes  # the new request ran beside the old one
    outs = {o.request_id: o.outputs[0].token_ids for o in finished}
    assert outs[r1] == hf_greedy(model, p1, 10) and outs[r2] == hf_greedy(model, p2, 10)


def test_prefix_cache_and_weight_version():
    model = tiny_model("qwen2")
    (p,) = random_prompts([21])
    params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
    engine = Engine(model, block_size=4, num_blocks=64)
    bm = engine.block_manager
    first = engine.generate([p], params)[0].outputs[0].token_ids
    hits = bm.prefix_hits
    assert engine.generate([p], params)[0].outputs[0].token_ids == first
    assert bm.prefix_hits - hits == (21 - 1) // 4  # every full prompt block came from the cache
    # an optimizer-like in-place update: detected from the parameters' version counters
    with torch.no_grad():
        for q in model.parameters():
            q.add_(torch.randn_like(q) * 0.05)
    hits = bm.prefix_hits
    second = engine.generate([p], params)[0].outputs[0].token_ids
    assert bm.prefix_hits == hits  # nothing reused across the weight change
    assert second == hf_greedy(model, p, 6, ignore_eos=True)  # the live weights are used
    # explicit announcement by a trainer
    version = bm.weight_version
    engine.weights_updated()
    assert bm.weight_version == version + 1
    engine.generate([p], params)
    assert bm.prefix_hits == hits


def test_model_training_mode_restored():
    model = tiny_model("qwen3").train()
    engine = Engine(model, block_size=4, num_blocks=32)
    engine.generate([[3, 4, 5]], SamplingParams(max_new_tokens=3))
    assert model.training and model.config._attn_implementation == "sdpa"


def test_length_at_the_models_last_position():
    engine = Engine(tiny_model("llama"), block_size=16, num_blocks=64)
    out = engine.generate([[5] * 250], SamplingParams(max_new_tokens=100, ignore_eos=True))[0].outputs[0]
    assert len(out.token_ids) == 6 and out.finish_reason == "length"


def test_stop_strings_and_stop_tokens():
    model = tiny_model("qwen2")
    with torch.no_grad():  # "<eos>" scores 0 against ~250 random logits: never picked, so the text has 24 tokens' worth
        model.lm_head.weight[1] = 0
    tok = char_tokenizer()
    engine = Engine(model, tokenizer=tok, block_size=4, num_blocks=64)
    prompt = "What is 2+2? "
    free = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True))[0].outputs[0]
    assert free.text == tok.decode(free.token_ids, skip_special_tokens=True) and len(free.token_ids) == 24
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    cut = free.text.find(stop)
    out = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True, stop=[stop, "\x7f\x7f"]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.text == free.text[:cut]
    # token ids up to and including the token that completed the stop string
    m = next(m for m in range(1, 25) if stop in tok.decode(free.token_ids[:m], skip_special_tokens=True))
    assert out.token_ids == free.token_ids[:m]
    stop_id = free.token_ids[5]
    stop_at = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True, stop_token_ids=[stop_id])
    out = engine.generate([tok(prompt)["input_ids"]], stop_at)[0].outputs[0]
    first = free.token_ids.index(stop_id)
    assert out.finish_reason == "stop" and out.token_ids == free.token_ids[: first + 1]


def test_eos_stops_unless_ignored():
    model = tiny_model("llama")
    (p,) = random_prompts([5])
    engine = Engine(model, block_size=4, num_blocks=64)
    free = engine.generate([p], SamplingParams(temperature=0, max_new_tokens=30, ignore_eos=True))[0].outputs[0]
    engine.stop_checker.eos_token_ids = {free.token_ids[3]}
    out = engine.generate([p], SamplingParams(temperature=0, max_new_tokens=30))[0].outputs[0]
    assert out.finish_reason == "stop" and out.token_ids == free.token_ids[: free.token_ids.index(free.token_ids[3]) + 1]


def test_top_k_one_is_greedy_and_min_p_one_is_greedy():
    model = tiny_model("qwen2")
    prompts = random_prompts([4, 8])
    engine = Engine(model, block_size=4, num_blocks=64)
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8, ignore_eos=True))
    for params in (SamplingParams(temperature=1.3, top_k=1, max_new_tokens=8, ignore_eos=True),
                   SamplingParams(temperature=1.3, min_p=1.0, max_new_tokens=8, ignore_eos=True),
                   SamplingParams(temperature=1.3, top_p=1e-6, max_new_tokens=8, ignore_eos=True)):
        outs = engine.generate(prompts, params)
        assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in greedy]


@pytest.mark.parametrize("prompts, params, match", [
    ([[5, 6], []], SamplingParams(), r"request 1: prompt is empty"),
    ([[5] * 300], SamplingParams(), r"request 0: prompt has 300 tokens.*max_position"),
    ([[5, 6], [7, 500]], SamplingParams(), r"request 1: prompt has token ids outside"),
    (["text"], SamplingParams(), r"request 0: prompt is a string but the Engine has no tokenizer"),
])
def test_bad_prompts(prompts, params, match):
    engine = Engine(tiny_model("qwen2"), block_size=4, num_blocks=256)
    with pytest.raises(ValueError, match=match):
        engine.generate(prompts, params)
    assert not engine.scheduler.has_unfinished()  # nothing was queued


@pytest.mark.parametrize("field, value, match", [
    ("n", 0, "n must be"), ("temperature", -0.5, "temperature must be"), ("top_p", 0.0, "top_p must be"),
    ("top_p", 1.5, "top_p must be"), ("top_k", -3, "top_k must be"), ("min_p", 2.0, "min_p must be"),
    ("max_new_tokens", 0, "max_new_tokens must be"), ("stop", [""], "stop must be"), ("stop_token_ids", [-1], "stop_token_ids must be"),
])
def test_bad_sampling_params(field, value, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**{field: value})
    ok = SamplingParams(max_new_tokens=8)
    setattr(ok, field, value)  # mutated after construction: generate names the request
    engine = Engine(tiny_model("llama"), block_size=4, num_blocks=128)
    with pytest.raises(ValueError, match=f"request 1: {match}"):
        engine.generate([[3, 4], [5, 6]], [SamplingParams(max_new_tokens=8), ok])


@pytest.mark.parametrize("cache_dtype, atol, rtol", [(torch.bfloat16, 0.1, 0.05), (torch.float16, 0.02, 0.01)])
def test_low_precision_cache(cache_dtype, atol, rtol):
    model = tiny_model("qwen2")
    prompts = random_prompts([6, 19])
    engine = Engine(model, block_size=4, num_blocks=64, cache_dtype=cache_dtype)
    assert engine.model_runner.kv_cache.dtype == cache_dtype
    outs = engine.generate(prompts, SamplingParams(n=2, max_new_tokens=10, ignore_eos=True))
    for p, o in zip(prompts, outs):
        for c in o.outputs:
            ref = full_forward_logprobs(model, p, c.token_ids, 1.0)
            torch.testing.assert_close(torch.tensor(c.logprobs), ref, atol=atol, rtol=rtol)


@requires_cuda
def test_cuda_greedy_and_logprobs():
    model = tiny_model("qwen2").cuda()
    prompts = random_prompts([5, 18])
    engine = Engine(model, block_size=16, num_blocks=64)
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_new_tokens=12))
    for p, o in zip(prompts, outs):
        ref = model.generate(torch.tensor([p], device="cuda"), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(p):]
        assert o.outputs[0].token_ids == ref.tolist()
    outs = engine.generate(prompts, SamplingParams(n=3, max_new_tokens=8, ignore_eos=True, seed=1))
    for p, o in zip(prompts, outs):
        for c in o.outputs:
            ids = torch.tensor([p + c.token_ids], device="cuda")
            with torch.no_grad():
                logits = model(ids).logits[0, len(p) - 1 : -1].float()
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids, device="cuda")[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(c.logprobs), ref.cpu(), atol=2e-3, rtol=1e-3)


def test_num_blocks_none_sizes_the_cache_from_the_memory_budget():
    model = tiny_model("qwen2")
    probe = Engine(model, block_size=4, num_blocks=1)
    block_bytes = probe.model_runner.block_bytes
    engine = Engine(model, block_size=4, memory_budget_bytes=37 * block_bytes + block_bytes // 2)
    assert engine.model_runner.num_blocks == 37 == engine.block_manager.num_blocks
    assert engine.model_runner.kv_cache_bytes == 37 * block_bytes
    out = engine.generate(random_prompts([5]), SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    default = Engine(model, block_size=4)  # no budget given: a share of the memory available now
    assert default.model_runner.num_blocks >= 1
    assert default.model_runner.kv_cache_bytes <= 0.2 * 1.05 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with pytest.raises(ValueError, match="holds no block"):
        Engine(model, block_size=4, memory_budget_bytes=block_bytes - 1)


def test_eos_comes_from_the_generation_config():
    model = tiny_model("qwen2")
    prompt = random_prompts([6])
    free = Engine(model, block_size=4, num_blocks=64).generate(prompt, SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True))
    ids = free[0].outputs[0].token_ids
    stop_at = ids[3]
    first = ids.index(stop_at)
    model.generation_config.eos_token_id = stop_at  # the config's eos, not the tokenizer's
    model.config.eos_token_id = None
    out = Engine(model, block_size=4, num_blocks=64).generate(prompt, SamplingParams(temperature=0, max_new_tokens=12))
    assert out[0].outputs[0].token_ids == ids[: first + 1] and out[0].outputs[0].finish_reason == "stop"
