"""Engine branches (r1core.engine.branches) on tiny random models: step-by-step greedy extension
equals one greedy generation, log-probs equal a full forward, forks share blocks and copy on write,
release returns every block, stop strings end a step, generate runs beside open branches, and bad
input / a stale or full cache get clear errors."""

from __future__ import annotations

import random

import pytest
import torch
from _engine_models import char_tokenizer, full_forward_logprobs, hf_greedy, random_prompts, tiny_model

from r1core.engine import CacheFull, Engine, SamplingParams


def greedy(n, **kw):
    return SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True, **kw)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("plen", [1, 6, 9])
def test_greedy_steps_equal_one_generation(arch, plen):
    model = tiny_model(arch, eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=64)
    prompt = random_prompts([plen])[0]
    steps = [random.randint(1, 6) for _ in range(5)]
    branch = engine.open_branch(prompt)
    got = []
    for n in steps:
        (step,) = engine.extend([branch], greedy(n))
        assert len(step.token_ids) == n and step.finish_reason == "length"
        got += step.token_ids
        assert branch.token_ids == prompt + got
        # every token but the last has its KV in the cache, nothing more
        assert branch.seq.num_computed_tokens == branch.num_tokens - 1
    assert got == hf_greedy(model, prompt, sum(steps))
    engine.release(branch)
    assert engine.block_manager.num_used_blocks == 0 and engine.num_open_branches == 0


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-4, 1e-4), (torch.bfloat16, 6e-2, 2e-2)])
def test_logprobs_equal_a_full_forward(dtype, atol, rtol):
    model = tiny_model("qwen2", dtype=dtype, eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=64)
    prompt = random_prompts([7])[0]
    temp = 0.7
    root = engine.open_branch(prompt)
    (kid,) = engine.fork_branch(root, 1)
    tokens, lps = [], []
    for n in (3, 1, 5):
        (step,) = engine.extend([kid], SamplingParams(temperature=temp, max_new_tokens=n, seed=random.randrange(1000)))
        tokens += step.token_ids
        lps += step.logprobs
        assert step.logprob == pytest.approx(sum(step.logprobs))
    ref = full_forward_logprobs(model, prompt, tokens, temp)
    torch.testing.assert_close(torch.tensor(lps), ref, atol=atol, rtol=rtol)


def test_fork_shares_blocks_and_copies_on_write(monkeypatch):
    model = tiny_model("llama", eos_token_id=None)
    bs = 4
    engine = Engine(model, block_size=bs, num_blocks=64, enable_prefix_caching=False)
    computed = []
    real_run = engine.model_runner.run
    monkeypatch.setattr(engine.model_runner, "run", lambda batch: computed.append(batch.num_tokens) or real_run(batch))
    bm = engine.block_manager
    prompt = random_prompts([10])[0]  # 9 tokens prefilled: blocks 0, 1 full, block 2 partly filled
    root = engine.open_branch(prompt)
    table = root.block_table
    assert len(table) == 3 and bm.num_used_blocks == 3
    kids = engine.fork_branch(root, 3)
    assert bm.num_used_blocks == 3  # no block copied by the fork itself
    assert all(k.block_table == table for k in kids) and all(bm.ref_count(b) == 4 for b in table)
    seed = random.randrange(1000)
    params = SamplingParams(temperature=1.0, max_new_tokens=5, ignore_eos=True, seed=seed)
    computed.clear()
    steps = engine.extend(kids, params)
    assert sum(computed) == 1 + 3 * 4  # the parent's pending token once, then 4 tokens per kid
    # each kid copied the shared partly filled block once (and grew one block of its own);
    # the full blocks are still the parent's, shared by all four
    assert bm.num_used_blocks == 3 + 3 * 2
    for k in kids:
        assert k.block_table[:2] == table[:2] and k.block_table[2] != table[2]
    assert all(bm.ref_count(b) == 4 for b in table[:2]) and bm.ref_count(table[2]) == 1
    # the kids draw samples 0, 1, 2 of a request with that seed: what generate(n=3) draws
    want = engine.generate([prompt], SamplingParams(n=3, temperature=1.0, max_new_tokens=5, ignore_eos=True, seed=seed))
    assert [s.token_ids for s in steps] == [c.token_ids for c in want[0].outputs]
    assert len({tuple(s.token_ids) for s in steps}) > 1, "three samples of 5 tokens all equal"
    # one request split over two calls draws the same samples when told their indices
    split = engine.fork_branch(root, 3)
    got = engine.extend(split[:1], params, sample_indices=[0]) + engine.extend(split[1:], params, sample_indices=[1, 2])
    assert [s.token_ids for s in got] == [s.token_ids for s in steps]
    for b in split:
        engine.release(b)
    # independent continuations: each kid's greedy continuation is that of its own tokens
    more = engine.extend(kids + [root], greedy(4))
    for b, s in zip(kids + [root], more):
        assert s.token_ids == hf_greedy(model, b.token_ids[:-4], 4)
    for b in kids + [root]:
        engine.release(b)
    assert bm.num_used_blocks == 0


def test_release_returns_every_block_and_prunes_only_its_own():
    model = tiny_model("qwen2")
    engine = Engine(model, block_size=4, num_blocks=64)
    bm = engine.block_manager
    before = bm.num_used_blocks
    root = engine.open_branch(random_prompts([13])[0])
    kids = engine.fork_branch(root, 4)
    engine.extend(kids, SamplingParams(temperature=1.0, max_new_tokens=6, ignore_eos=True))
    grand = engine.fork_branch(kids[0], 2)
    engine.extend(grand, greedy(3))
    used = bm.num_used_blocks
    own = [b for b in kids[1].block_table if bm.ref_count(b) == 1]
    engine.release(kids[1])
    assert bm.num_used_blocks == used - len(own) and all(bm.ref_count(b) == 0 for b in own)
    shared = kids[0].block_table
    engine.release(kids[0])  # its blocks live on in its children
    assert all(bm.ref_count(b) >= 1 for b in shared[:-1])
    for b in [root, kids[2], kids[3], *grand]:
        engine.release(b)
    assert bm.num_used_blocks == before and engine.num_open_branches == 0


def test_stop_string_ends_the_step():
    model, tok = tiny_model("qwen2", eos_token_id=None), char_tokenizer()
    engine = Engine(model, tokenizer=tok, block_size=4, num_blocks=64)
    root = engine.open_branch("step one:")
    (probe,) = engine.fork_branch(root, 1)
    (free,) = engine.extend([probe], greedy(16))
    # a character the greedy continuation writes (its first occurrence may come earlier); ids 0, 1 are
    # "<pad>" (5 characters) and "<eos>" (no text)
    stop = tok.decode([next(t for t in free.token_ids[5:] if t >= 2)])
    cut = next(j + 1 for j in range(16) if stop in tok.decode(free.token_ids[: j + 1], skip_special_tokens=True))
    (kid,) = engine.fork_branch(root, 1)
    (step,) = engine.extend([kid], greedy(16, stop=[stop]))
    assert step.finish_reason == "stop"
    assert step.token_ids == free.token_ids[:cut] and step.text.endswith(stop) and step.text.count(stop) == 1
    # the next step starts after the delimiter
    (nxt,) = engine.extend([kid], greedy(16 - cut))
    assert step.token_ids + nxt.token_ids == free.token_ids


def test_generate_between_extends_uses_what_is_left():
    model = tiny_model("llama", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=16, max_num_batched_tokens=16)
    bm = engine.block_manager
    prompt = random_prompts([9])[0]
    root = engine.open_branch(prompt)
    kids = engine.fork_branch(root, 3)
    engine.extend(kids, greedy(8))
    tables = [k.block_table for k in kids]
    refs = {b: bm.ref_count(b) for t in tables for b in t}
    held = bm.num_used_blocks
    other = random_prompts([5, 11])
    outs = engine.generate(other, greedy(12))  # needs more blocks than are free at once: preemption, no eviction
    for p, o in zip(other, outs):
        assert o.outputs[0].token_ids == hf_greedy(model, p, 12)
    assert engine.scheduler.num_preemptions > 0  # the blocks the branches left were too few for both at once
    assert [k.block_table for k in kids] == tables and {b: bm.ref_count(b) for b in refs} == refs
    assert bm.num_used_blocks == held
    steps = engine.extend(kids, greedy(4))
    assert all(k.token_ids[len(prompt):] == hf_greedy(model, prompt, 12) for k in kids)
    assert all(s.token_ids == kids[0].token_ids[-4:] for s in steps)


def test_generate_refuses_what_the_blocks_left_by_branches_cannot_hold():
    model = tiny_model("qwen2", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=12)
    root = engine.open_branch(random_prompts([20])[0])  # 19 tokens prefilled: 5 blocks held
    with pytest.raises(ValueError, match="5 of them held by open branches"):
        engine.generate([[5, 6, 7]], greedy(26))  # 29 tokens: 8 blocks, 7 left
    out = engine.generate([[5, 6, 7]], greedy(25))  # 7 blocks: fits
    assert out[0].outputs[0].token_ids == hf_greedy(model, [5, 6, 7], 25)
    with pytest.raises(ValueError, match="5 held by open branches"):
        engine.beam_search([[5, 6, 7]], beam_width=2, max_new_tokens=10)  # 2 beams x 4 blocks, 7 left
    out = engine.beam_search([[5, 6, 7], [8, 9]], beam_width=2, max_new_tokens=6, eos_token_id=[])  # in waves
    assert [o.hypotheses[0].token_ids for o in out] == [
        model.generate(torch.tensor([p]), num_beams=2, do_sample=False, max_new_tokens=6, eos_token_id=None,
                       pad_token_id=0)[0, len(p):].tolist() for p in ([5, 6, 7], [8, 9])]
    assert engine.block_manager.num_used_blocks == 5
    engine.release(root)
    engine.generate([[5, 6, 7]], greedy(26))


def test_a_full_cache_is_a_clear_error_and_rolls_back():
    model = tiny_model("qwen2", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=8, enable_prefix_caching=False)
    bm = engine.block_manager
    root = engine.open_branch(random_prompts([7])[0])
    kids = engine.fork_branch(root, 4)
    before = [k.token_ids for k in kids]
    with pytest.raises(CacheFull, match="free blocks"):
        engine.extend(kids, greedy(12))
    # back to their tokens; a kid may keep its copy of the shared last block (same KV), nothing more
    assert [k.token_ids for k in kids] == before and bm.num_used_blocks <= 2 + len(kids)
    assert all(len(k.block_table) == 2 and k.seq.num_computed_tokens == k.num_tokens - 1 for k in kids)
    # with fewer branches it fits, and the result is right
    for k in kids[1:]:
        engine.release(k)
    (step,) = engine.extend(kids[:1], greedy(12))
    assert step.token_ids == hf_greedy(model, root.token_ids, 12)
    with pytest.raises(CacheFull, match="free blocks"):
        engine.open_branch(random_prompts([30])[0])
    assert bm.num_used_blocks == len(set(root.block_table) | set(kids[0].block_table))  # the failed prefill kept none


def test_stale_weights_are_an_error():
    model = tiny_model("qwen2", eos_token_id=None)  # compared with generate, which would stop at an eos
    engine = Engine(model, block_size=4, num_blocks=32)
    branch = engine.open_branch([5, 6, 7, 8, 9])
    engine.extend([branch], greedy(2))
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    with pytest.raises(RuntimeError, match="stale"):
        engine.extend([branch], greedy(2))
    (kid,) = engine.fork_branch(branch, 1)  # a fork of a stale branch is stale too
    with pytest.raises(RuntimeError, match="stale"):
        engine.extend([kid], greedy(2))
    engine.release(branch)
    engine.release(kid)
    fresh = engine.open_branch([5, 6, 7, 8, 9])
    (step,) = engine.extend([fresh], greedy(3))
    assert step.token_ids == hf_greedy(model, [5, 6, 7, 8, 9], 3)


def test_bad_input():
    model = tiny_model("qwen2")
    engine = Engine(model, block_size=4, num_blocks=32)
    other = Engine(model, block_size=4, num_blocks=32)
    branch = engine.open_branch([5, 6, 7])
    for n in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n: expected an int >= 1"):
            engine.fork_branch(branch, n)
    with pytest.raises(ValueError, match="another Engine"):
        other.extend([branch], greedy(2))
    with pytest.raises(ValueError, match="another Engine"):
        other.fork_branch(branch, 2)
    with pytest.raises(ValueError, match="another Engine"):
        other.release(branch)
    with pytest.raises(ValueError, match="expected a Branch"):
        engine.extend([[5, 6, 7]], greedy(2))
    with pytest.raises(ValueError, match="params\\[0\\].n"):
        engine.extend([branch], SamplingParams(n=2))
    with pytest.raises(ValueError, match="params: got 2"):
        engine.extend([branch], [greedy(2), greedy(2)])
    with pytest.raises(ValueError, match="twice"):
        engine.extend([branch, branch], greedy(2))
    with pytest.raises(ValueError, match="sample_indices"):
        engine.extend([branch], greedy(2), sample_indices=[-1])
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        engine.extend([branch], greedy(2, stop=","))
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.open_branch([])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        engine.open_branch([5] * 256)
    engine.release(branch)
    for call in (lambda: engine.extend([branch], greedy(2)), lambda: engine.fork_branch(branch, 2),
                 lambda: engine.release(branch)):
        with pytest.raises(ValueError, match="released"):
            call()
    assert engine.block_manager.num_used_blocks == 0


@pytest.mark.parametrize("num_blocks", range(4, 9))
def test_a_step_that_runs_out_of_blocks_leaves_every_fork_valid(num_blocks):
    # forks of a prompt whose last block is partly filled: their first tokens copy it on write.
    # Where the cache runs out in the middle of a step, the forks scheduled before the one that did
    # not fit already point at their copies: those must hold the prompt's KV when the error comes.
    model = tiny_model("qwen2", eos_token_id=None)
    engine = Engine(model, block_size=4, num_blocks=num_blocks, enable_prefix_caching=False)
    root = engine.open_branch(random_prompts([7])[0])
    kids = engine.fork_branch(root, 6)
    try:
        steps = engine.extend(kids, greedy(5))
    except CacheFull:
        steps = None
    want = hf_greedy(model, root.token_ids, 5)
    if steps is not None:
        assert all(s.token_ids == want for s in steps)
        return
    for k in kids[1:]:
        engine.release(k)
    for k in kids[:1]:  # each survivor continues from the KV it holds
        (step,) = engine.extend([k], greedy(5))
        assert step.token_ids == want
