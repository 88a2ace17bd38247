"""SFTTrainer: the loss covers completion tokens only and equals the full-logits reference;
packing changes nothing per example; the model learns; bad input is named."""

import pytest
import torch

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.trainers import SFTConfig, SFTTrainer
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
    tr = SFTTrainer(model, tok, rows, SFTConfig(max_steps=50, per_device_train_batch_size=2, completion_field="solution", output_dir=str(tmp_path)))
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
    for field, value in (("learning_rate", -1.0), ("max_steps", 0), ("lr_scheduler_type", "step"), ("max_grad_norm", 0.0)):
        with pytest.raises(ValueError, match=f"SFTConfig.{field}"):
            SFTConfig(**{field: value})
