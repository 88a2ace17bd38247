"""SFTTrainer: the loss covers completion tokens only and equals the full-logits reference;
packing changes nothing per example; the model learns; a stopped run resumed from its checkpoint
ends where an uninterrupted one ends; the progress bar counts seconds under a time budget; bad
input is named."""

import io
import json
import os
import re

import pytest
import torch

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.trainers import SFTConfig, SFTTrainer
from r1core.trainers.metrics import MetricsLogger
from r1core.trainers.sft import collate, completion_logprobs, tokenize_example

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def _setup(n=6):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=int(torch.randint(0, 10**6, ())))
    rows = generate("addition", "train", n, seed=int(torch.randint(0, 10**6, ())), digits=int(torch.randint(1, 4, ())))
    rows[0] = {**rows[0], "solution": rows[0]["solution"][:3]}  # examples of different lengths
    return tok, model, rows


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)])
def test_loss_is_completion_only_and_matches_reference(dtype, atol, rtol):
    tok, model, rows = _setup()
    model = model.to(dtype)
    ex = [tokenize_example(tok, r["prompt"], r["solution"]) for r in rows]
    ids, pos, mask, attn = collate(ex, tok.pad_token_id, packing=False, max_len=128)
    got = completion_logprobs(model, ids, pos, mask, attn)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits.float()  # [R, T, V]
    logp_all = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [R, T-1]
    want = logp_all[mask[:, 1:]]
    # the targets are exactly the completion tokens plus eos
    n_completion = sum(len(tok(r["solution"], add_special_tokens=False)["input_ids"]) + 1 for r in rows)
    assert got.numel() == n_completion
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    assert mask[:, 0].sum() == 0 and (ids[mask] != tok.pad_token_id).all()


def test_packing_keeps_examples_apart():
    tok, model, rows = _setup(8)
    ex = [tokenize_example(tok, r["prompt"], r["solution"]) for r in rows]
    plain = completion_logprobs(model, *collate(ex, tok.pad_token_id, packing=False, max_len=128))
    ids, pos, mask, attn = collate(ex, tok.pad_token_id, packing=True, max_len=64)
    assert attn is None and ids.shape[0] < len(ex)  # several examples per row
    packed = completion_logprobs(model, ids, pos, mask, None)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)


def test_sft_learns(tmp_path):
    tok, model, rows = _setup(4)
    tr = SFTTrainer(model, tok, rows, SFTConfig(learning_rate=3e-3, per_device_train_batch_size=4, max_steps=40,
                                                 completion_field="solution", logging_steps=1, output_dir=str(tmp_path), packing=True))
    recs = tr.train(progress=False)
    assert recs[-1]["loss"] < 0.5 * recs[0]["loss"]
    assert (tmp_path / "sft_metrics.jsonl").exists()


def test_stop_rule_and_callback(tmp_path):
    tok, model, rows = _setup(4)
    cfg = SFTConfig(max_steps=50, per_device_train_batch_size=2, completion_field="solution", output_dir=str(tmp_path))
    tr = SFTTrainer(model, tok, rows, cfg)
    calls = []
    tr.train(callback=lambda s: calls.append(s) or {"greedy_accuracy": 0.1 * len(calls)}, every=5, progress=False,
             stop=lambda rec: rec["greedy_accuracy"] >= 0.3)
    assert calls == [5, 10, 15] and tr.step == 15


def test_bad_input(tmp_path):
    tok, model, rows = _setup(2)
    with pytest.raises(ValueError, match="train_dataset is empty"):
        SFTTrainer(model, tok, [], SFTConfig())
    with pytest.raises(ValueError, match="no 'completion' column"):
        SFTTrainer(model, tok, rows, SFTConfig())
    with pytest.raises(ValueError, match="more than max_seq_length=8"):
        SFTTrainer(model, tok, rows, SFTConfig(completion_field="solution", max_seq_length=8))
    with pytest.raises(ValueError, match="row 1: 'solution' must be a string, got NoneType"):
        SFTTrainer(model, tok, [rows[0], {"prompt": rows[1]["prompt"]}], SFTConfig(completion_field="solution"))
    with pytest.raises(ValueError, match="completion: .*characters the tokenizer does not know"):
        SFTTrainer(model, tok, [{**rows[0], "solution": rows[0]["solution"] + "\u00e9"}], SFTConfig(completion_field="solution"))
    with pytest.raises(ValueError, match="row 0: the completion is empty and add_eos is False"):
        SFTTrainer(model, tok, [{**rows[0], "solution": ""}], SFTConfig(completion_field="solution", add_eos=False))
    for field, value in (("learning_rate", -1.0), ("max_steps", 0), ("lr_scheduler_type", "step"), ("max_grad_norm", 0.0),
                         ("max_grad_norm", "big"), ("weight_decay", -0.1), ("save_steps", 0), ("save_total_limit", 0),
                         ("warmup_steps", True),
                         ("packing", "yes"), ("seed", 0.5), ("max_seconds", float("nan")), ("completion_field", ""), ("max_seq_length", 0)):
        with pytest.raises(ValueError, match=f"SFTConfig.{field}"):
            SFTConfig(**{field: value})


def _resumable(out, seed, model_seed, rows):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=model_seed)
    cfg = SFTConfig(learning_rate=3e-3, per_device_train_batch_size=4, max_steps=6, save_steps=3, logging_steps=1,
                    completion_field="solution", output_dir=str(out), seed=seed, lr_scheduler_type="linear", warmup_steps=2)
    return SFTTrainer(model, tok, rows, cfg)


def test_resume_equals_uninterrupted_run(tmp_path):
    seed, model_seed = int(torch.randint(0, 10**6, ())), int(torch.randint(0, 10**6, ()))
    # 5 examples, 4 a step: the checkpoint after step 3 falls inside the third epoch's order
    rows = generate("addition", "train", 5, seed=seed)
    full = _resumable(tmp_path / "full", seed, model_seed, rows)
    full.train(progress=False)

    killed = _resumable(tmp_path / "killed", seed, model_seed, rows)
    orig = killed.save_state

    def save_then_die():
        orig()
        raise KeyboardInterrupt  # stopped right after the step-3 checkpoint

    killed.save_state = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train(progress=False)
    assert killed.step == 3 and os.path.isdir(tmp_path / "killed" / "checkpoint-3")
    torch.manual_seed(999)  # the resumed process starts from other RNG states
    resumed = _resumable(tmp_path / "killed", seed, model_seed + 1, rows)  # other initial weights too
    resumed.train(resume_from_checkpoint=True, progress=False)

    assert resumed.step == full.step == 6
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    def metrics(path):
        with open(os.path.join(path, "sft_metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(line).items() if k != "elapsed"} for line in f]

    want, got = metrics(tmp_path / "full"), metrics(tmp_path / "killed")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4, 5, 6]
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-6), (g["step"], k)
    # resuming a run written for other data is named, not silently continued
    other = _resumable(tmp_path / "killed", seed, model_seed, rows[:4])
    with pytest.raises(ValueError, match="written for 5 training examples; this run has 4"):
        other.train(resume_from_checkpoint=True, progress=False)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        _resumable(tmp_path / "empty", seed, model_seed, rows).train(resume_from_checkpoint=True, progress=False)


def test_time_budget_counts_the_seconds_before_a_resume(tmp_path):
    seed = int(torch.randint(0, 10**6, ()))
    rows = generate("addition", "train", 5, seed=seed)
    first = _resumable(tmp_path, seed, 0, rows)
    first.train(progress=False)  # checkpoints at steps 3 and 6
    state = tmp_path / "checkpoint-6" / "trainer_state.json"
    js = json.loads(state.read_text())
    assert 0 < js["elapsed"] == pytest.approx(first.elapsed, abs=0.5)
    state.write_text(json.dumps({**js, "elapsed": 1000.0}))  # as if the first six steps had taken 1000 s
    tok = build_tokenizer()
    cfg = {**first.config.to_dict(), "max_steps": 50, "max_seconds": 500.0}
    resumed = SFTTrainer(build_model(tok, TINY, seed=0), tok, rows, SFTConfig(**cfg))
    resumed.train(resume_from_checkpoint=True, progress=False)
    assert resumed.step == 7 and resumed.elapsed > 1000.0  # one step, then the spent budget stops it


def test_progress_bar_counts_seconds_under_a_time_budget(tmp_path, capsys):
    tok, model, rows = _setup(4)
    cfg = dict(per_device_train_batch_size=2, completion_field="solution", output_dir=str(tmp_path))
    SFTTrainer(model, tok, rows, SFTConfig(max_steps=10000, max_seconds=0.5, **cfg)).train(progress=True)
    err = capsys.readouterr().err
    assert "/10000" not in err  # a step total the budget never lets the run reach
    assert re.search(r"\| [\d.]+/[\d.]+ s", err) and re.search(r"sft step \d+, [\d.]+ step/s", err), err[-500:]
    SFTTrainer(model, tok, rows, SFTConfig(max_steps=2, **cfg)).train(progress=True)
    assert "2/2" in capsys.readouterr().err  # no budget: the bar counts steps


def test_time_bar_total_is_the_budget_or_the_steps_eta(tmp_path):
    log = MetricsLogger(str(tmp_path), total=4, max_seconds=100.0, file=io.StringIO())
    log.advance(1, elapsed=2.0)  # 4 steps at 2 s end at 8 s, before the 100 s budget
    assert log._bar.total == pytest.approx(8.0) and log._bar.n == pytest.approx(2.0)
    for t in (4.0, 6.0, 8.0):
        log.advance(1, elapsed=t)
    assert log._bar.n == log._bar.total == pytest.approx(8.0)  # full when the last step is done
    log.close()
    slow = MetricsLogger(str(tmp_path), total=1000, max_seconds=100.0, file=io.StringIO(), initial=10)
    slow.advance(1, elapsed=30.0)  # 990 steps at 30 s would take far longer: the budget binds
    assert slow._bar.total == 100.0 and slow._bar.n == 30.0 and slow.step == 11
    with pytest.raises(ValueError, match="elapsed is required"):
        slow.advance(1)
    slow.close()
