"""A GRPO run that would learn nothing (issue 17, item 3): the dataset columns the rewards read are
checked before the first step; a step in which no sample is scorable is a loud warning, and the
run stops after collapse_patience such steps in a row."""

import pytest
import torch

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.rewards import accuracy_reward, countdown_reward, format_reward
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def make(tmp_path, reward_funcs, rows, **kw):
    tok = build_tokenizer()
    cfg = dict(num_generations=2, per_device_train_batch_size=4, max_completion_length=4, max_steps=6,
               output_dir=str(tmp_path / "out"), learning_rate=1e-3)
    cfg.update(kw)
    return GRPOTrainer(build_model(tok, TINY, seed=int(torch.randint(0, 10**6, ()))), tok, reward_funcs, rows, GRPOConfig(**cfg))


def _rows(n=8, drop=()):
    return [{k: v for k, v in r.items() if k not in drop} for r in generate("addition", "train", n, seed=4, digits=1)]


def test_missing_answer_column_is_refused_before_the_first_step(tmp_path):
    with pytest.raises(ValueError, match=r"'accuracy_reward' reads the column\(s\) \['answer'\], which train_dataset lacks"):
        make(tmp_path, [accuracy_reward], _rows(drop=("answer",)))
    with pytest.raises(ValueError, match=r"'countdown_reward' reads the column\(s\) \['numbers', 'target'\]"):
        make(tmp_path, [countdown_reward], _rows())
    # a reward that shares no column requirement trains on any dataset
    make(tmp_path, [format_reward], _rows(drop=("answer",)))


def test_undeclared_reward_columns_come_from_its_signature(tmp_path):
    def needs_gold(prompts, completions, gold, **kw):
        return [0.0] * len(completions)

    def keyword_only(prompts, completions, *, gold, completion_ids, **kw):
        return [0.0] * len(completions)

    def with_default(completions_first, texts, gold=None, **kw):  # positional names do not matter
        return [0.0] * len(texts)

    for f in (needs_gold, keyword_only):
        with pytest.raises(ValueError, match=rf"'{f.__name__}' reads the column\(s\) \['gold'\]"):
            make(tmp_path, [f], _rows())
    make(tmp_path, [with_default], _rows())
    make(tmp_path, [needs_gold], [{**r, "gold": r["answer"]} for r in _rows()])


def test_all_unscorable_steps_warn_and_stop_after_collapse_patience(tmp_path, capsys):
    def never(prompts, completions, **kw):
        return [None] * len(completions)

    tr = make(tmp_path, [never], _rows(), collapse_patience=3, save_steps=1)
    with pytest.warns(RuntimeWarning, match="NOTHING TO LEARN") as caught:
        tr.train(progress=False)
    assert tr.global_step == 3  # stopped, not max_steps=6
    assert any("stopping after collapse_patience=3" in str(w.message) for w in caught)
    assert "NOTHING TO LEARN at step 3" in capsys.readouterr().out  # the log's banner too
    # the count is part of the checkpoint: a resume does not start counting again
    tr2 = make(tmp_path, [never], _rows(), collapse_patience=3, save_steps=1, max_steps=6)
    with pytest.warns(RuntimeWarning, match="stopping"):
        tr2.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"), progress=False)
    assert tr2.global_step == 3


def test_a_reward_that_scores_nothing_is_named_while_others_score(tmp_path):
    def never(prompts, completions, **kw):
        return [None] * len(completions)

    def half(prompts, completions, **kw):
        return [float(i % 2) for i in range(len(completions))]

    tr = make(tmp_path, [half, never], _rows(), collapse_patience=1, max_steps=2)
    with pytest.warns(RuntimeWarning, match="reward function 'never' scored none of the step's samples"):
        tr.train(progress=False)
    assert tr.global_step == 2 and tr.unscorable_steps == 0  # the run goes on: 'half' scores every sample
