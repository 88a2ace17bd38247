"""Checkpoints: round trip of weights, optimizer, scheduler and RNG; atomic writes; a GRPO run
killed after k steps and resumed ends where an uninterrupted run ends."""

import json
import os
import random

import numpy as np
import pytest
import torch

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer
from r1core.trainers import checkpoint as ckpt
from r1core.trainers.optim import build_optimizer, build_scheduler

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
TIMING = {"elapsed", "gen_seconds", "train_seconds", "step_seconds", "tokens_per_second", "gen_cpu_seconds", "step_cpu_seconds"}


def _model_and_opt():
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=int(torch.randint(0, 10**6, ())))
    opt = build_optimizer(model, 1e-3)
    sched = build_scheduler(opt, "linear", 2, 10)
    for _ in range(3):  # give the optimizer moments and the scheduler a position
        model(torch.randint(0, len(tok), (2, 7))).logits.square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return tok, model, opt, sched


def test_round_trip(tmp_path):
    tok, model, opt, sched = _model_and_opt()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(6)
    path = ckpt.save_checkpoint(str(tmp_path), 3, model, opt, sched, {"consumed": 48})
    expect = (torch.rand(3), random.random(), np.random.rand())
    assert sorted(os.listdir(path)) == ["config.json", "model.safetensors", "trainer_state.json", "trainer_state.safetensors"]
    with open(os.path.join(path, "trainer_state.json")) as f:
        json.load(f)  # plain JSON

    tok2, model2, opt2, sched2 = _model_and_opt()
    state = ckpt.load_checkpoint(path, model2, opt2, sched2)
    assert state["consumed"] == 48 and state["step"] == 3
    got = (torch.rand(3), random.random(), np.random.rand())
    torch.testing.assert_close(got[0], expect[0])
    assert got[1:] == expect[1:]
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # tied embeddings stay tied after loading
    assert model2.lm_head.weight.data_ptr() == model2.model.embed_tokens.weight.data_ptr()
    for (ka, a), (kb, b) in zip(opt.state_dict()["state"].items(), opt2.state_dict()["state"].items()):
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    assert sched2.state_dict()["last_epoch"] == sched.state_dict()["last_epoch"]
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_atomic_save_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    tok, model, opt, sched = _model_and_opt()
    ckpt.save_checkpoint(str(tmp_path), 1, model, opt, sched)

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(str(tmp_path), 2, model, opt, sched)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]  # no temp dir or half checkpoint left
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("checkpoint-1")


def test_save_total_limit_and_bad_path(tmp_path):
    tok, model, opt, sched = _model_and_opt()
    for s in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), s, model, opt, sched, save_total_limit=2)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [2, 3]
    with pytest.raises(ValueError, match="not a checkpoint"):
        ckpt.load_checkpoint(str(tmp_path), model)


def _trainer(out, seed, model_seed, rows):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=model_seed)
    cfg = GRPOConfig(num_generations=4, per_device_train_batch_size=8, max_completion_length=10, learning_rate=3e-3,
                     max_steps=4, save_steps=2, output_dir=str(out), seed=seed, lr_scheduler_type="linear", warmup_steps=1)

    def rand_reward(prompts, completions, **kw):  # a deterministic function of the text, with spread
        return [float(sum(map(ord, c)) % 3 == 0) for c in completions]

    return GRPOTrainer(model, tok, [rand_reward, accuracy_reward], rows, cfg)


def test_resume_equals_uninterrupted_run(tmp_path):
    seed, model_seed = int(torch.randint(0, 10**6, ())), int(torch.randint(0, 10**6, ()))
    rows = generate("addition", "train", 12, seed=seed)  # 2 prompts per step: the 2nd epoch starts mid-run
    full = _trainer(tmp_path / "full", seed, model_seed, rows)
    full.train(progress=False)

    killed = _trainer(tmp_path / "killed", seed, model_seed, rows)
    orig = killed.save_state

    def save_then_die():
        orig()
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    killed.save_state = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train(progress=False)
    torch.manual_seed(999)  # the resumed process starts from other RNG states
    resumed = _trainer(tmp_path / "killed", seed, model_seed + 1, rows)  # other initial weights too
    resumed.train(resume_from_checkpoint=True, progress=False)

    assert resumed.global_step == full.global_step == 4
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    def metrics(path):
        with open(os.path.join(path, "metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]

    want, got = metrics(tmp_path / "full"), metrics(tmp_path / "killed")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), k
            else:
                assert g[k] == w[k], k


def test_resume_names_a_checkpoint_of_another_trainer(tmp_path):
    rows = generate("addition", "train", 4, seed=0)
    tr = _trainer(tmp_path, 0, 0, rows)
    ckpt.save_checkpoint(str(tmp_path), 1, tr.model, tr.optimizer, tr.scheduler, {"global_step": 1, "data_rng": [3, [], None]})
    with pytest.raises(ValueError, match="holds no GRPO state"):
        tr.train(resume_from_checkpoint=True, progress=False)
