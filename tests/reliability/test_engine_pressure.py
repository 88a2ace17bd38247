"""The engine under pressure and bad input (issue 17's suite): two thousand requests with mixed
lengths and n on a cache so small that sequences are preempted again and again all finish, with the
greedy outputs of an unpressured run and every block back on the free list; a bad request fails
alone with a named error while the others complete; stop strings across tokens, prompts at the
context limit; the engine's own arguments checked."""

import random

import pytest
import torch
from _engine_models import VOCAB, char_tokenizer, tiny_model

from r1core.engine import Engine, SamplingParams


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2", eos_token_id=None)  # no eos: every completion runs its full length


def _requests(n: int, seed: int):
    rng = random.Random(seed)
    prompts = [[rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 32))] for _ in range(n)]
    params = [SamplingParams(n=rng.choice([1, 1, 2, 3]), temperature=0.0, max_new_tokens=rng.randint(1, 8), logprobs=False)
              for _ in range(n)]
    return prompts, params


def test_thousands_of_requests_under_block_pressure(model):
    prompts, params = _requests(2000, seed=int(torch.randint(0, 10**6, ())))
    roomy = Engine(model, block_size=4, num_blocks=4096, max_num_seqs=256)
    want = roomy.generate(prompts, params)
    # 32 blocks of 4 tokens: room for about 4 of the longest requests at once, 256 seats
    tight = Engine(model, block_size=4, num_blocks=32, max_num_seqs=256)
    free_at_start = tight.block_manager.num_free_blocks
    got = tight.generate(prompts, params)
    assert tight.scheduler.num_preemptions > 100  # repeatedly, not once
    for w, g, p in zip(want, got, params):
        assert len(g.outputs) == p.n
        assert [c.token_ids for c in g.outputs] == [c.token_ids for c in w.outputs]
        assert all(len(c.token_ids) == p.max_new_tokens and c.finish_reason == "length" for c in g.outputs)
    assert tight.block_manager.num_free_blocks == free_at_start  # no block leaked
    assert not tight.scheduler.has_unfinished() and not tight._groups


def test_a_bad_request_fails_alone(model):
    engine = Engine(model, block_size=4, num_blocks=48)  # less than one request of the model's 256 positions
    prompts, params = _requests(6, seed=1)
    ids = [engine.add_request(p, q) for p, q in zip(prompts[:3], params[:3])]
    bad = [([], SamplingParams(), "prompt is empty"), ([VOCAB + 5], SamplingParams(), r"token ids outside \[0, 128\)"),
           ([3] * 300, SamplingParams(), "more than the model's 256 positions"),
           ([3, 4], SamplingParams(stop_token_ids=[VOCAB]), r"stop_token_ids \[128\] are outside the model's vocabulary"),
           ([3, 4], SamplingParams(max_new_tokens=400), "do not fit in the KV cache")]
    for prompt, p, msg in bad:
        with pytest.raises(ValueError, match=f"request 0: .*{msg}"):
            engine.add_request(prompt, p)
    ids += [engine.add_request(p, q) for p, q in zip(prompts[3:], params[3:])]
    done = {}
    while engine.scheduler.has_unfinished():
        done.update((o.request_id, o) for o in engine.step())
    assert sorted(done) == sorted(ids)
    want = Engine(model, block_size=4, num_blocks=256).generate(prompts, params)
    assert [[c.token_ids for c in done[i].outputs] for i in ids] == [[c.token_ids for c in w.outputs] for w in want]
    # in generate, the whole call is refused before any work, naming the request
    with pytest.raises(ValueError, match="request 2: prompt is empty"):
        engine.generate([[3], [4], []], SamplingParams(max_new_tokens=2))


def test_stop_strings_across_tokens_empty_and_overlong_prompts():
    tok = char_tokenizer()
    model = tiny_model("qwen2", eos_token_id=None)
    with torch.no_grad():  # "<pad>" and "<eos>" score 0 against ~250 random logits: never the greedy pick, so the
        model.lm_head.weight[:2] = 0  # output runs all 30 tokens and each token is one character of its text
    engine = Engine(model, tokenizer=tok, block_size=4, num_blocks=256)
    free = engine.model_runner.lm_head.out_features
    full = engine.generate("abc", SamplingParams(temperature=0.0, max_new_tokens=30))[0].outputs[0]
    text = full.text
    stop = text[5:8]  # three characters: three tokens of the character tokenizer
    first = text.find(stop)
    out = engine.generate("abc", SamplingParams(temperature=0.0, max_new_tokens=30, stop=stop))[0].outputs[0]
    assert out.finish_reason == "stop" and out.text == text[:first]  # cut before the stop string, as vLLM
    assert out.token_ids == full.token_ids[:first + len(stop)]
    with pytest.raises(ValueError, match="request 0: prompt is empty"):
        engine.generate("", SamplingParams())
    with pytest.raises(ValueError, match="request 0: prompt has 256 tokens, more than the model's 256 positions"):
        engine.generate([[5] * 256], SamplingParams())
    at_limit = engine.generate([[5] * 255], SamplingParams(max_new_tokens=10, ignore_eos=True))[0].outputs[0]
    assert len(at_limit.token_ids) == 1 and at_limit.finish_reason == "length"
    assert free == VOCAB


@pytest.mark.parametrize("kwargs,msg", [
    (dict(block_size=0), "block_size must be an int >= 1, got 0"), (dict(block_size=2.5), "block_size must be an int >= 1"),
    (dict(num_blocks=0), "num_blocks must be an int >= 1 or None, got 0"), (dict(num_blocks=-3), "num_blocks"),
    (dict(max_num_seqs=0), "max_num_seqs must be an int >= 1"), (dict(max_num_batched_tokens=0), "max_num_batched_tokens"),
    (dict(memory_budget_bytes=0), "memory_budget_bytes must be an int >= 1 or None"),
    (dict(enable_prefix_caching="no"), "enable_prefix_caching must be True or False"),
    (dict(cascade="x"), "cascade must be"), (dict(fast_forward="x"), "fast_forward must be"),
])
def test_engine_arguments_are_checked(model, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Engine(model, **kwargs)
