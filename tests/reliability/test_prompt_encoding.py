"""One prompt encoding everywhere (issue 17, item 1): a string prompt given to the engine's
generate, beam_search and open_branch is encoded by `encode_prompt` (bos, no other special
tokens), as the trainers and eval encode it, so string and id prompts give the same completions."""

import pytest
import torch

from r1core.engine import Engine, SamplingParams
from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.tasks.tokenizer import build_tokenizer as build_char_tokenizer
from r1core.tasks.tokenizer import encode_prompt

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


@pytest.fixture(scope="module")
def engine():
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=3)
    with torch.no_grad():  # sharper logits than the init: greedy argmaxes far from ties
        model.get_output_embeddings().weight.mul_(8.0)
    return Engine(model, tokenizer=tok, block_size=8, num_blocks=128)


def _prompts(n=6):
    return [r["prompt"] for r in generate("addition", "test", n, seed=5)]


def test_encode_prompt_leads_with_bos():
    tok = build_tokenizer()
    ids = encode_prompt(tok, "12+34=")
    assert ids[0] == tok.bos_token_id and ids[1:] == tok("12+34=", add_special_tokens=False)["input_ids"]


def test_generate_string_equals_ids(engine):
    tok, texts = engine.tokenizer, _prompts()
    p = SamplingParams(n=2, temperature=0.0, max_new_tokens=10)
    by_text = engine.generate(texts, p)
    by_ids = engine.generate([encode_prompt(tok, t) for t in texts], p)
    for a, b, t in zip(by_text, by_ids, texts):
        assert a.prompt_token_ids == encode_prompt(tok, t)
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
    sampled = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=11)
    a, b = engine.generate(texts[0], sampled)[0], engine.generate(encode_prompt(tok, texts[0]), sampled)[0]
    assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]


def test_beam_search_string_equals_ids(engine):
    tok, texts = engine.tokenizer, _prompts(3)
    by_text = engine.beam_search(texts, beam_width=3, max_new_tokens=6, num_return_sequences=2)
    by_ids = engine.beam_search([encode_prompt(tok, t) for t in texts], beam_width=3, max_new_tokens=6, num_return_sequences=2)
    for a, b, t in zip(by_text, by_ids, texts):
        assert a.prompt_token_ids == encode_prompt(tok, t)
        assert [h.token_ids for h in a.hypotheses] == [h.token_ids for h in b.hypotheses]


def test_open_branch_string_equals_ids(engine):
    tok, text = engine.tokenizer, _prompts(1)[0]
    p = SamplingParams(temperature=0.0, max_new_tokens=8)
    a = engine.open_branch(text)
    b = engine.open_branch(encode_prompt(tok, text))
    try:
        sa, sb = engine.extend([a, b], p)
        assert sa.token_ids == sb.token_ids
    finally:
        engine.release(a)
        engine.release(b)


def test_unknown_characters_are_named(engine):
    # the task tokenizer has no space, no letters but T and A: they would all become <unk>
    with pytest.raises(ValueError, match=r"request 0: prompt: .*does not know \(' '\)"):
        engine.generate("12 + 3=", SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="does not know"):
        encode_prompt(engine.tokenizer, "what is 1+1?")
    # a prompt that spells out the unknown token itself is taken at its word
    tok = build_char_tokenizer()
    assert tok.unk_token_id in encode_prompt(tok, "x<unk>")
    with pytest.raises(ValueError, match="text: expected a string"):
        encode_prompt(tok, 5)
