"""The shipped base model's folder holds its tokenizer (issue 17, item 2): AutoTokenizer on it
encoded everything to [] before; now it round-trips the task tokenizer, and load_model and the
engine (string prompts, item 1) agree with the ids the trainers and eval use."""

import pytest
from transformers import AutoTokenizer

from r1core.engine import Engine, SamplingParams
from r1core.recipes.base_model import build_tokenizer, load_model
from r1core.recipes.r1_zero import SHIPPED_BASE
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.tasks.tokenizer import encode_prompt


@pytest.fixture(scope="module")
def rows():
    return generate("addition", "test", 16, seed=0)


def test_auto_tokenizer_round_trips_the_task_tokenizer(rows):
    loaded, built = AutoTokenizer.from_pretrained(SHIPPED_BASE), build_tokenizer()
    assert loaded.get_vocab() == built.get_vocab()
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (
        built.bos_token_id, built.eos_token_id, built.pad_token_id, built.unk_token_id)
    texts = [r["prompt"] for r in rows] + [r["solution"] for r in rows] + ["<think>1+2=3</think><answer>3</answer>"]
    for text in texts:
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids and ids == built(text, add_special_tokens=False)["input_ids"]
        assert encode_prompt(loaded, text) == encode_prompt(built, text)
        assert loaded.decode(ids) == text


def test_string_and_id_prompts_score_the_same_on_the_shipped_base(rows):
    model, tok = load_model(SHIPPED_BASE)
    engine = Engine(model, tokenizer=tok, block_size=16, num_blocks=64)
    p = SamplingParams(temperature=0.0, max_new_tokens=40)
    texts = [r["prompt"] for r in rows]
    by_text = [o.outputs[0].text for o in engine.generate(texts, p)]
    by_ids = [o.outputs[0].text for o in engine.generate([encode_prompt(tok, t) for t in texts], p)]
    assert by_text == by_ids
    # the base learnt something: on strings it scores as on ids (0.0 against 0.375 before)
    assert sum(accuracy_reward(texts, by_text, answer=[r["answer"] for r in rows])) > 0


def test_load_model_keeps_every_character_of_a_saved_plain_tokenizer():
    # AutoTokenizer rebuilds a qwen2 folder's plain fast tokenizer as Qwen2Tokenizer, whose byte-level
    # pre-tokenizer dropped the two-script task's Arabic-Indic digits without a trace
    from r1core.recipes.r1 import SHIPPED_BASE as TWO_SCRIPT_BASE
    from r1core.tasks.tokenizer import load_tokenizer

    _, tok = load_model(TWO_SCRIPT_BASE)
    text = "T\u0663+\u0664=\u0667,A7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == load_tokenizer(TWO_SCRIPT_BASE)(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
