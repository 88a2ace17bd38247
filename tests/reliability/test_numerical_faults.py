"""Numerical faults (issue 17): a NaN or inf loss or gradient in a GRPO or SFT step is detected,
the update skipped with a warning and counted (weights and AdamW untouched), and after
max_bad_steps in a row the run stops (NumericalFault) with the last good checkpoint intact."""

import math

import pytest
import torch

import r1core.trainers.sft as sft_module
from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer, NumericalFault, SFTConfig, SFTTrainer
from r1core.trainers.checkpoint import list_checkpoints, read_state

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
ROWS = [{"prompt": r["prompt"], "completion": r["solution"]} for r in generate("addition", "train", 16, seed=2, digits=2)]


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def sft(tmp_path, **kw):
    tok = build_tokenizer()
    cfg = dict(per_device_train_batch_size=4, max_steps=6, output_dir=str(tmp_path), logging_steps=1, save_steps=1)
    cfg.update(kw)
    return SFTTrainer(build_model(tok, TINY, seed=1), tok, ROWS, SFTConfig(**cfg))


def poison_sft(monkeypatch, tr, bad_steps, value=math.nan):
    """The SFT loss is `value` at the steps (1-based) in bad_steps."""
    real = sft_module.completion_logprobs

    def fake(*args, **kw):
        out = real(*args, **kw)
        return out * value if tr.global_step + 1 in bad_steps else out

    monkeypatch.setattr(sft_module, "completion_logprobs", fake)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_sft_bad_step_is_skipped_warned_and_counted(tmp_path, monkeypatch, value):
    tr = sft(tmp_path, max_steps=4)
    poison_sft(monkeypatch, tr, {2}, value)
    seen = {}
    orig = tr.training_step

    def step():
        before = _weights(tr.model)
        info = orig()
        seen[tr.global_step] = (all(torch.equal(a, b) for a, b in zip(before, _weights(tr.model))), info)
        return info

    tr.training_step = step
    with pytest.warns(RuntimeWarning, match=r"step 2: loss is (nan|inf|-inf): update skipped \(1 in a row, 1 in the run\)"):
        records = tr.train(progress=False)
    assert tr.global_step == 4 and tr.bad_steps == 1
    assert seen[2][0] and not seen[3][0]  # the bad step left the weights alone; the next good one moved them
    assert [r.get("skipped_steps", 0) for r in records] == [0, 1, 0, 0]
    assert all(math.isfinite(x) for p in tr.model.parameters() for x in p.detach().flatten()[:50].tolist())
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [3, 4]  # none right after the bad step 2
    assert read_state(str(tmp_path / "checkpoint-4"))["bad_steps"] == 1


def test_sft_stops_after_max_bad_steps_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    tr = sft(tmp_path, max_steps=10, max_bad_steps=3, save_total_limit=1)
    poison_sft(monkeypatch, tr, {3, 4, 5, 6, 7})
    with pytest.warns(RuntimeWarning), pytest.raises(NumericalFault, match=r"3 optimizer steps in a row \(up to step 5\).*"
                                                                         r"max_bad_steps=3.*last good checkpoint is '.*checkpoint-2'"):
        tr.train(progress=False)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2]  # save_total_limit=1 never rotated it out
    monkeypatch.undo()
    good = sft(tmp_path / "again", max_steps=2)
    good.train(progress=False)
    resumed = sft(tmp_path, max_steps=2)
    resumed.train(resume_from_checkpoint=True, progress=False)
    for a, b in zip(_weights(good.model), _weights(resumed.model)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_grpo_nan_gradient_is_skipped_and_stops(tmp_path, monkeypatch):
    tok = build_tokenizer()
    rows = generate("addition", "train", 8, seed=1, digits=1)

    def reward(prompts, completions, **kw):
        return [float(i % 2) for i in range(len(completions))]

    cfg = GRPOConfig(num_generations=2, per_device_train_batch_size=4, max_completion_length=4, max_steps=8, save_steps=1,
                     output_dir=str(tmp_path), learning_rate=1e-3, max_bad_steps=2)
    tr = GRPOTrainer(build_model(tok, TINY, seed=2), tok, [reward], rows, cfg)
    real = tr.accumulate_gradients

    def poisoned(batch):
        out = real(batch)
        if tr.global_step + 1 >= 3:  # from step 3 on, a NaN gradient (the loss itself stays finite)
            next(tr.model.parameters()).grad.view(-1)[0] = math.nan
        return out

    tr.accumulate_gradients = poisoned
    with pytest.warns(RuntimeWarning, match="gradient norm is nan: update skipped"), \
            pytest.raises(NumericalFault, match=r"2 optimizer steps in a row \(up to step 4\).*checkpoint-2"):
        tr.train(progress=False)
    assert [s for s, _ in list_checkpoints(str(tmp_path))][-1] == 2
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_the_fault_is_reported_as_a_value_error():
    # the command line turns ValueErrors into one line (`error: ...`), not a traceback
    assert issubclass(NumericalFault, ValueError) and issubclass(NumericalFault, RuntimeError)


def test_max_bad_steps_is_checked():
    with pytest.raises(ValueError, match="GRPOConfig.max_bad_steps"):
        GRPOConfig(max_bad_steps=0)
    with pytest.raises(ValueError, match="SFTConfig.max_bad_steps"):
        SFTConfig(max_bad_steps=0)
