"""Inputs that were accepted without complaint (issue 17, item 7; the engine's are in
test_engine_pressure.py, the rewards' in test_reward_time_bounds.py)."""

import warnings

import pytest

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.tasks.arithmetic import distinct_problems
from r1core.trainers import GRPOConfig, SFTConfig, SFTTrainer

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                     max_position_embeddings=24)


def test_epsilon_high_below_epsilon_is_refused():
    with pytest.raises(ValueError, match=r"GRPOConfig.epsilon_high must be >= epsilon \(0.2\) with loss_type 'dapo', got 0.1"):
        GRPOConfig(epsilon=0.2, epsilon_high=0.1)
    with pytest.raises(ValueError, match="GRPOConfig.epsilon_high"):
        GRPOConfig(epsilon=0.3, epsilon_high=0.28, loss_type="grpo")
    assert GRPOConfig(epsilon=0.2, epsilon_high=0.28).epsilon_high == 0.28  # DAPO's clip-higher
    assert GRPOConfig(epsilon=0.2, epsilon_high=0.1, loss_type="cispo").epsilon_high == 0.1  # cispo reads only the cap
    assert GRPOConfig(epsilon=0.2).epsilon_high == 0.2  # None: = epsilon


def test_sft_rows_longer_than_the_models_context_are_refused(tmp_path):
    tok = build_tokenizer()
    model = build_model(tok, TINY)
    rows = [{"prompt": "12+34=", "completion": "46"}, {"prompt": "1" * 30 + "+1=", "completion": "2"}]
    with pytest.raises(ValueError, match="train_dataset row 1 has 36 tokens, more than the model's 24 positions"):
        SFTTrainer(model, tok, rows, SFTConfig(output_dir=str(tmp_path), max_seq_length=512))
    SFTTrainer(model, tok, rows[:1], SFTConfig(output_dir=str(tmp_path)))


def test_more_rows_than_distinct_problems_says_so():
    assert distinct_problems("test", 1) == 9 and distinct_problems("train", 1) == 91
    with pytest.warns(RuntimeWarning, match=r"n=1000 rows drawn with replacement from the 9 distinct 'test' problems of digits=1"):
        rows = generate("addition", "test", 1000, digits=1)
    assert len(rows) == 1000 and len({r["prompt"] for r in rows}) == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate("addition", "test", 9, digits=1)  # no more than exist: quiet
        generate("addition", "train", 1000, digits=3)  # not counted above 2 digits (10**6 keys)
