"""GRPOTrainer and GRPOConfig: config validation, the step against the reference loss, old
log-probs from the engine, gradient accumulation, dynamic sampling, bad inputs, collapse warning."""

import json
import math
import os
import re

import pytest
import torch

import r1kernels.reference as ref
from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer
from r1core.trainers.grpo import policy_logprobs
from r1core.trainers.grpo_normaliser import Normaliser

# torch warns so when optimizer.step is replaced after the scheduler exists (as these tests once
# did to compare gradients): the trainer's own path must never trigger it
pytestmark = pytest.mark.filterwarnings("error:Seems like `optimizer.step\\(\\)` has been overridden:UserWarning")

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def make(tmp_path, reward_funcs=None, rows=None, seed=None, **kw):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=seed if seed is not None else int(torch.randint(0, 10**6, ())))
    rows = rows if rows is not None else generate("addition", "train", 32, seed=int(torch.randint(0, 10**6, ())))
    base = dict(num_generations=4, per_device_train_batch_size=8, max_completion_length=12, learning_rate=1e-3, max_steps=2,
                output_dir=str(tmp_path / "out"), seed=int(torch.randint(0, 10**6, ())))
    base.update(kw)
    return GRPOTrainer(model, tok, reward_funcs or [accuracy_reward], rows, GRPOConfig(**base))


def random_reward(prompts, completions, **kw):
    g = torch.Generator().manual_seed(hash(tuple(completions)) % (2**31))
    return torch.randint(0, 2, (len(completions),), generator=g).float().tolist()


def length_reward(prompts, completions, completion_ids, **kw):
    return [float(len(c)) / 12 for c in completion_ids]


@pytest.mark.parametrize("field,value", [
    ("num_generations", 1), ("temperature", 0.0), ("top_p", 1.5), ("beta", -0.1), ("epsilon", 1.0), ("delta", 0.5),
    ("loss_type", "ppo"), ("importance_sampling_level", "seq"), ("scale_rewards", "median"), ("learning_rate", 0.0),
    ("max_steps", 0), ("per_device_train_batch_size", 6), ("max_prompt_length", 0), ("reward_weights", ["a"]),
    ("max_grad_norm", -1.0), ("num_iterations", 0),
    ("max_completion_length", 0), ("top_k", -1), ("min_p", 1.0), ("epsilon_high", -0.1), ("warmup_steps", -1), ("warmup_ratio", 1.0),
    ("adam_beta1", 1.0), ("adam_beta2", -0.1), ("weight_decay", -1.0), ("lr_scheduler_type", "step"), ("max_seconds", 0.0),
    ("gradient_accumulation_steps", 0), ("logging_steps", 0), ("save_steps", 0), ("save_total_limit", 0), ("seed", 1.5),
    ("stop", [""]), ("mask_truncated_completions", "yes"), ("dynamic_sampling", 1), ("bf16", None), ("output_dir", ""),
    ("max_dynamic_sampling_rounds", 0), ("collapse_patience", 0), ("collapse_threshold", -1.0), ("temperature", math.inf),
])
def test_config_rejects_out_of_range(field, value):
    with pytest.raises(ValueError, match=f"GRPOConfig.{field}"):
        GRPOConfig(**{field: value})


def test_config_trl_defaults_and_json(tmp_path):
    cfg = GRPOConfig(epsilon=0.25)
    assert cfg.epsilon_high == 0.25 and cfg.loss_type == "dapo" and cfg.scale_rewards == "group"
    assert GRPOConfig(scale_rewards=False).scale_rewards == "none"
    assert (GRPOConfig(top_k=None, min_p=None).top_k, GRPOConfig(min_p=None).min_p) == (0, 0.0)  # TRL's "disabled"
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"num_generations": 4, "per_device_train_batch_size": 4}))
    assert GRPOConfig.from_json(str(p)).num_generations == 4
    with pytest.raises(ValueError, match="no field"):
        GRPOConfig.from_dict({"num_generation": 4})


def test_old_logprobs_from_engine_equal_trainer_forward(tmp_path):
    tr = make(tmp_path)
    batch, _ = tr.rollout()
    own = policy_logprobs(tr.model, batch, tr.config.temperature)  # [B, C]
    m = batch.completion_mask
    assert m.any()
    torch.testing.assert_close(batch.old_logprobs[m], own[m], atol=2e-4, rtol=1e-4)


def test_step_matches_reference_loss_and_gradients(tmp_path):
    tr = make(tmp_path, reward_funcs=[random_reward, length_reward], beta=0.04, loss_type="dapo", reward_weights=[1.0, 0.5])
    batch, info = tr.rollout()
    batch.ref_logprobs = policy_logprobs(tr.ref_model, batch, tr.config.temperature)
    model = tr.model
    # the reference: full logits from the model's own forward, TRL's per-token loss
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits
    P, C = batch.prompt_len, batch.completion_ids.shape[1]
    want, _ = ref.grpo_loss_from_logits(logits[:, P - 1:P - 1 + C], batch.completion_ids, batch.advantages, batch.completion_mask,
                                        batch.old_logprobs, batch.ref_logprobs, beta=0.04, epsilon_low=0.2, epsilon_high=0.2,
                                        loss_type="dapo")
    want.backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss, stats = tr.loss_module(batch, Normaliser("dapo", num_items=batch.completion_mask.sum().float().item()))
    loss.backward()
    torch.testing.assert_close(loss, want, atol=1e-6, rtol=1e-4)
    for p, g in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-3)
    got = tr.optimize(batch)  # the same loss through the step (before its update)
    assert math.isclose(got["loss"], want.item(), rel_tol=1e-4, abs_tol=1e-6)
    assert got["kl"] >= 0 and math.isfinite(info["reward"]) and 0 <= info["zero_std_frac"] <= 1


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.bfloat16, 3e-2, 5e-2)])
def test_bf16_autocast_step_close_to_float32(tmp_path, dtype, atol, rtol):
    a = make(tmp_path, seed=5, reward_funcs=[random_reward], beta=0.04)
    b = make(tmp_path, seed=5, reward_funcs=[random_reward], beta=0.04, bf16=True)
    batch, _ = a.rollout()
    # binary random rewards can tie in every group (all advantages 0, a gradient of ~1e-11 noise)
    batch.advantages = torch.randn_like(batch.advantages)
    for tr in (a, b):
        batch.ref_logprobs = policy_logprobs(tr.ref_model, batch, 1.0, tr.config.bf16)
        tr.out = tr.accumulate_gradients(batch)
    assert b.out["loss"] == pytest.approx(a.out["loss"], abs=atol, rel=rtol)
    g32 = torch.cat([p.grad.flatten() for p in a.model.parameters()])
    g16 = torch.cat([p.grad.flatten() for p in b.model.parameters()])
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    assert g32.norm() > 1e-3 and torch.nn.functional.cosine_similarity(g32, g16, dim=0) > 0.98
    assert not torch.equal(g32, g16)  # autocast really ran in bf16


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo", "bnpo"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, loss_type):
    # dapo: one sum over the step's tokens; grpo and dr_grpo: a mean per micro-batch, averaged over
    # the accumulation steps, which is the full batch's mean when the micro-batches hold equal
    # numbers of sequences (here 4 and 4); bnpo: a token mean per micro-batch, averaged (equal to the
    # full batch only when the halves hold equal token counts, so checked against that formula)
    a = make(tmp_path, seed=3, per_device_train_batch_size=8, gradient_accumulation_steps=1, loss_type=loss_type,
             reward_funcs=[random_reward])
    b = make(tmp_path, seed=3, per_device_train_batch_size=4, gradient_accumulation_steps=2, loss_type=loss_type,
             reward_funcs=[random_reward])
    batch, _ = a.rollout()
    batch.advantages = torch.randn(batch.advantages.shape, generator=torch.Generator().manual_seed(1))  # random rewards can all tie
    if loss_type == "bnpo":  # halves of different token counts: where bnpo's accumulation differs from one big batch
        batch.completion_mask[:4, 1:] = False
        assert batch.completion_mask[:4].sum() != batch.completion_mask[4:].sum()
    grads = []
    for tr in (a, b):
        out = tr.accumulate_gradients(batch)
        grads.append([p.grad.clone() for p in tr.model.parameters()])
        tr.out = out
    assert torch.cat([g.flatten() for g in grads[0]]).norm() > 1e-4
    if loss_type == "bnpo":
        halves = []
        for half in (slice(0, 4), slice(4, 8)):
            b.model.zero_grad()
            loss, _ = b.loss_module(batch.rows(half))
            (loss / 2).backward()
            halves.append([p.grad.clone() for p in b.model.parameters()])
        want = [h0 + h1 for h0, h1 in zip(*halves)]
        for g, w in zip(grads[1], want):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
        assert not all(torch.allclose(ga, gb, rtol=1e-3, atol=1e-7) for ga, gb in zip(*grads))
        return
    assert b.out["loss"] == pytest.approx(a.out["loss"], rel=1e-4, abs=1e-6)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-4)


def test_samples_without_advantage_are_skipped_exactly(tmp_path):
    tr = make(tmp_path, reward_funcs=[random_reward], beta=0.0, loss_type="dapo", per_device_train_batch_size=4,
              gradient_accumulation_steps=2)
    batch, _ = tr.rollout()
    batch.advantages[:4] = 0.0  # one dead group
    batch.advantages[5] = 0.0
    num_items = batch.completion_mask.sum().float().item()
    loss, _ = tr.loss_module(batch, Normaliser("dapo", num_items=num_items))  # the whole batch, nothing skipped
    loss.backward()
    want = [p.grad.clone() for p in tr.model.parameters()]
    out = tr.accumulate_gradients(batch)
    assert out["trained_samples"] == max(1, int((batch.advantages != 0).sum())) <= 3
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    for p, g in zip(tr.model.parameters(), want):
        torch.testing.assert_close(p.grad, g, atol=1e-7, rtol=1e-4)


def test_train_writes_metrics_and_moves_weights(tmp_path):
    tr = make(tmp_path, reward_funcs=[random_reward], max_steps=3, num_iterations=2, warmup_steps=1)
    before = [p.detach().clone() for p in tr.model.parameters()]
    tr.train(progress=False)
    assert tr.global_step == 4  # 2 rounds x 2 iterations >= max_steps 3
    with open(os.path.join(tr.config.output_dir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    assert [r["step"] for r in recs] == [2, 4]
    for key in ("reward", "rewards/random_reward", "accuracy", "kl", "clip_low", "clip_high", "entropy", "completion_length",
                "zero_std_frac", "tokens_per_second", "loss", "grad_norm", "lr"):
        assert key in recs[0], key
    assert any(not torch.equal(b, p) for b, p in zip(before, tr.model.parameters()))


def test_progress_bar_counts_seconds_under_a_time_budget(tmp_path, capsys):
    tr = make(tmp_path, reward_funcs=[random_reward], max_steps=10000, max_seconds=0.3)
    tr.train(progress=True)
    err = capsys.readouterr().err
    assert 1 <= tr.global_step < 10000
    assert "/10000" not in err  # a step total the budget never lets the run reach
    assert "step/s: :" not in err
    assert re.search(r"\| [\d.]+/[\d.]+ s", err) and re.search(rf"grpo step {tr.global_step}, [\d.]+ step/s", err), err[-500:]
    make(tmp_path, reward_funcs=[random_reward], max_steps=2).train(progress=True)
    assert "2/2" in capsys.readouterr().err  # no budget: the bar counts steps


def test_dynamic_sampling_keeps_groups_with_distinct_rewards(tmp_path):
    rows = generate("addition", "train", 40, seed=1)
    flat = {r["prompt"] for r in rows[::2]}  # half the prompts always score 1: their groups are dead

    def reward(prompts, completions, **kw):
        return [1.0 if p in flat else float(i % 2) for i, p in enumerate(prompts)]

    tr = make(tmp_path, reward_funcs=[reward], rows=rows, dynamic_sampling=True, max_dynamic_sampling_rounds=6, shuffle_dataset=False)
    batch, info = tr.rollout()
    assert info["dynamic_sampling_rounds"] >= 2
    assert info["dynamic_sampling_short"] == 0
    assert bool(batch.group_ok.all())
    tr0 = make(tmp_path, reward_funcs=[reward], rows=rows, shuffle_dataset=False)
    assert tr0.rollout()[1]["zero_std_frac"] == 0.5


def test_unscorable_rewards_get_zero_advantage(tmp_path):
    def half_none(prompts, completions, **kw):
        return [None if i < 4 else float(i % 2) for i in range(len(completions))]

    tr = make(tmp_path, reward_funcs=[half_none])
    batch, info = tr.rollout()
    assert torch.all(batch.advantages[:4] == 0)
    assert info["unscorable"] == 0.5


def test_bad_reward_functions_are_named(tmp_path):
    def broken(prompts, completions, **kw):
        raise KeyError("boom")

    def short(prompts, completions, **kw):
        return [1.0]

    def wrong_type(prompts, completions, **kw):
        return ["yes"] * len(completions)

    def scalar(prompts, completions, **kw):
        return 1.0

    def infinite(prompts, completions, **kw):
        return [0.0] * (len(completions) - 1) + [-math.inf]

    for f, err, pat in ((broken, RuntimeError, "'broken' raised KeyError"), (short, ValueError, "'short' returned 1 rewards for 8"),
                        (wrong_type, ValueError, "'wrong_type' returned 'yes'"),
                        (scalar, ValueError, "'scalar' returned 1.0 for 8 completions"),
                        (infinite, ValueError, "'infinite' returned -inf for completion 7: expected a finite number")):
        tr = make(tmp_path, reward_funcs=[f])
        with pytest.raises(err, match=pat):
            tr.rollout()


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="train_dataset is empty"):
        make(tmp_path, rows=[])
    with pytest.raises(ValueError, match="row 1: the prompt has 13 tokens, more than max_prompt_length=9"):
        make(tmp_path, rows=[{"prompt": "123+456="}, {"prompt": "1234+4567=00"}], max_prompt_length=9)
    with pytest.raises(ValueError, match="'prompt' column"):
        make(tmp_path, rows=[{"question": "1+1="}])
    with pytest.raises(ValueError, match="row 1 has columns \\['prompt'\\], row 0 has \\['answer', 'prompt'\\]"):
        make(tmp_path, rows=[{"prompt": "1+1=", "answer": "2"}, {"prompt": "1+2="}])
    with pytest.raises(ValueError, match="columns \\['completion_ids'\\] clash"):
        make(tmp_path, rows=[{"prompt": "1+1=", "completion_ids": [3]}])
    tok = build_tokenizer()
    tok.bos_token = None  # no bos: an empty prompt is no tokens at all
    with pytest.raises(ValueError, match="row 1: the prompt '' encodes to no tokens"):
        GRPOTrainer(build_model(tok, TINY), tok, [accuracy_reward], [{"prompt": "1+1="}, {"prompt": ""}],
                    GRPOConfig(num_generations=2, per_device_train_batch_size=2, output_dir=str(tmp_path / "out")))
    with pytest.raises(ValueError, match="reward_weights has 2 entries for 1"):
        make(tmp_path, reward_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="reward_funcs\\[0\\] is not callable"):
        make(tmp_path, reward_funcs=["accuracy"])


def test_collapse_detector_warns(tmp_path):
    tr = make(tmp_path, collapse_patience=3, collapse_threshold=0.05)

    class Log:
        lines = []

        def write(self, m):
            self.lines.append(m)

    log = Log()
    with pytest.warns(RuntimeWarning, match="learning_rate=0.001 is likely too high"):
        for r in (0.1, 0.3, 0.4, 0.01, 0.0, 0.0):
            tr._check_collapse(r, log)
    assert tr.collapsed and "COLLAPSE" in log.lines[0]
    tr2 = make(tmp_path, collapse_patience=3)
    for r in (0.0, 0.0, 0.0, 0.0, 0.0):  # never higher: no collapse, just a hard task
        tr2._check_collapse(r, log)
    assert not tr2.collapsed


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_follows_the_time_budget_when_it_runs_out_first(kind):
    from r1core.trainers.optim import build_scheduler

    spent = [0.0]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, kind, warmup_steps=2, max_steps=10_000, budget_progress=lambda: spent[0])
    lrs = []
    for i in range(12):
        spent[0] = i / 10  # the budget is gone after 10 steps, long before max_steps
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] < lrs[1] <= 1.0  # warmup first
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[5] < 0.9
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # decayed to 0 with the budget, not at step 10000
    steps_only = build_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), kind, 2, 10_000)
    for _ in range(12):
        steps_only.optimizer.step()
        steps_only.step()
    assert steps_only.get_last_lr()[0] > 0.99


def _reference_per_token(tr, batch):
    """Per-token losses [B, C] from the model's full logits and TRL's formula (r1kernels.reference)."""
    cfg = tr.config
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = tr.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits
    P, C = batch.prompt_len, batch.completion_ids.shape[1]
    logp = (logits[:, P - 1:P - 1 + C].float() / cfg.temperature).log_softmax(-1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    per_token, _ = ref.grpo_per_token_loss(logp, batch.advantages, batch.completion_mask, batch.old_logprobs, batch.ref_logprobs,
                                           cfg.beta, cfg.epsilon, cfg.epsilon_high, cfg.delta, cfg.loss_type, cfg.importance_sampling_level)
    return per_token


def _assert_step_gradients(tr, batch, want, msg=None):
    """tr.accumulate_gradients(batch) gives the loss `want` (a hand-written reference, not yet
    backpropagated) and its gradients."""
    want.backward()
    want_grads = [p.grad.clone() for p in tr.model.parameters()]
    out = tr.accumulate_gradients(batch)
    assert out["loss"] == pytest.approx(want.item(), rel=1e-4, abs=1e-6), msg
    for p, w in zip(tr.model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, w, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("loss_type", ["grpo", "sapo", "dr_grpo", "bnpo", "dapo"])
def test_exclude_zero_std_from_normalizer_counts_only_live_groups(tmp_path, loss_type):
    kw = dict(seed=11, loss_type=loss_type, beta=0.04, per_device_train_batch_size=4, gradient_accumulation_steps=3,
              num_generations=4, reward_funcs=[random_reward])
    on = make(tmp_path, exclude_zero_std_from_normalizer=True, **kw)
    off = make(tmp_path, **kw)
    batch, _ = on.rollout()
    B, C = batch.completion_ids.shape
    assert B == 12
    # group 1 dead (all rewards equal: advantage 0, group_ok False), groups 0 and 2 alive; the KL
    # term (beta > 0) still gives the dead group's tokens a gradient
    g = torch.Generator().manual_seed(0)
    batch.advantages = torch.randn(B, generator=g)
    batch.advantages[4:8] = 0.0
    batch.group_ok = torch.tensor([True] * 4 + [False] * 4 + [True] * 4)
    batch.old_logprobs = batch.old_logprobs + 0.05 * torch.randn(B, C, generator=g)  # ratios away from 1
    batch.ref_logprobs = policy_logprobs(on.ref_model, batch, 1.0)
    m = batch.completion_mask.float()
    live = batch.group_ok.float()
    assert m[4:8].sum() > 0 and m[~batch.group_ok].sum() < m.sum()

    def hand(tr, exclude):
        ell = _reference_per_token(tr, batch) * m
        if loss_type in ("grpo", "sapo"):
            seq = ell.sum(-1) / m.sum(-1).clamp(min=1.0)
            # without the option: TRL's mean of per-sequence means in each micro-batch of 4, averaged over 3
            return seq.sum() / live.sum() if exclude else seq.view(3, 4).mean(-1).mean()
        if loss_type == "dr_grpo":
            return ell.sum() / (live.sum() * C) if exclude else ell.view(3, 4, C).sum((1, 2)).div(4 * C).mean()
        if loss_type == "bnpo":
            if exclude:
                return ell.sum() / (m * live.unsqueeze(-1)).sum()
            return (ell.view(3, 4, C).sum((1, 2)) / m.view(3, 4, C).sum((1, 2))).mean()
        return ell.sum() / ((m * live.unsqueeze(-1)).sum() if exclude else m.sum())  # dapo

    grads = {}
    for name, tr, exclude in (("on", on, True), ("off", off, False)):
        want = hand(tr, exclude)
        _assert_step_gradients(tr, batch, want, name)
        grads[name] = torch.cat([p.grad.flatten() for p in tr.model.parameters()])
    assert grads["off"].norm() > 1e-4
    # the option changes the gradient: a third of the sequences (and their tokens) leave the normaliser
    assert not torch.allclose(grads["on"], grads["off"], rtol=1e-2, atol=0.0)


def _rollout_recording(tr):
    """tr.rollout() that also returns the completions it scored (in the batch's row order)."""
    seen, generate = [], tr.generate
    tr.generate = lambda idx: seen.append(generate(idx)) or seen[-1]
    batch, info = tr.rollout()
    return batch, info, seen[-1]


def test_mask_truncated_completions_leaves_their_tokens_out(tmp_path):
    for mask in (False, True):
        tr = make(tmp_path, seed=4, mask_truncated_completions=mask, reward_funcs=[random_reward], loss_type="dapo", beta=0.04)
        for _ in range(20):  # a random model's samples: draw until some hit max_completion_length and some stop early
            batch, info, comps = _rollout_recording(tr)
            cut = torch.tensor([c.finish_reason == "length" for c in comps])
            if 0 < int(cut.sum()) < len(comps):
                break
        assert 0 < int(cut.sum()) < len(comps), "every draw was all truncated or all stopped"
        assert info["truncated_frac"] == pytest.approx(cut.float().mean().item())
        lengths = torch.tensor([len(c.token_ids) for c in comps])
        assert bool((lengths[cut] == tr.config.max_completion_length).all())
        want_len = torch.where(cut, 0, lengths) if mask else lengths
        assert torch.equal(batch.completion_mask.sum(-1), want_len)
    # the masked trainer's step: the loss over the completions that stopped, as if the others were absent
    batch.advantages = torch.randn(batch.advantages.shape)
    batch.ref_logprobs = policy_logprobs(tr.ref_model, batch, 1.0)
    full = (torch.arange(batch.completion_ids.shape[1]) < lengths.unsqueeze(-1)).float()  # every sampled token
    want = (_reference_per_token(tr, batch) * full)[~cut].sum() / full[~cut].sum()
    _assert_step_gradients(tr, batch, want)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_sequence_level_importance_sampling_through_the_trainer(tmp_path, loss_type):
    # GSPO: one ratio per sequence, exp(mean over its tokens of log(p / p_old)), clipped per sequence
    tr = make(tmp_path, seed=8, importance_sampling_level="sequence", loss_type=loss_type, beta=0.04, reward_funcs=[random_reward],
              per_device_train_batch_size=4, gradient_accumulation_steps=2)
    batch, _ = tr.rollout()
    g = torch.Generator().manual_seed(2)
    batch.advantages = torch.randn(batch.advantages.shape, generator=g)
    batch.old_logprobs = batch.old_logprobs + 0.3 * torch.randn(batch.old_logprobs.shape, generator=g)  # ratios away from 1, some clipped
    batch.ref_logprobs = policy_logprobs(tr.ref_model, batch, 1.0)
    m = batch.completion_mask.float()

    def aggregate(per_token):
        if loss_type == "dapo":
            return (per_token * m).sum() / m.sum()
        seq = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        return seq.view(2, 4).mean(-1).mean()

    want = aggregate(_reference_per_token(tr, batch))
    _assert_step_gradients(tr, batch, want)
    tr.config.importance_sampling_level = "token"  # the same batch token by token: another loss, so the option was used
    token_level = aggregate(_reference_per_token(tr, batch))
    assert abs(token_level.item() - want.item()) > 1e-3


def test_scale_rewards_group_batch_none(tmp_path):
    G = 4

    def spread(prompts, completions, **kw):  # group g holds 0, 1, 2, 3 times (g + 1): equal after group scaling only
        return [float((i % G) * (1 + i // G)) for i in range(len(completions))]

    r = torch.tensor(spread(None, [None] * 8), dtype=torch.float64).view(2, G)
    centred = r - r.mean(-1, keepdim=True)
    want = {"group": centred / (r.std(-1, keepdim=True) + 1e-4), "batch": centred / (r.flatten().std() + 1e-4), "none": centred}
    got = {}
    for mode in ("group", "batch", "none"):
        tr = make(tmp_path, reward_funcs=[spread], scale_rewards=mode)
        batch, _ = tr.rollout()
        got[mode] = batch.advantages
        torch.testing.assert_close(batch.advantages.double(), want[mode].flatten(), atol=1e-5, rtol=1e-5)
    assert torch.allclose(got["group"][:G], got["group"][G:], atol=1e-3)  # up to eps
    assert torch.allclose(2 * got["none"][:G], got["none"][G:]) and not torch.allclose(got["batch"], got["group"])
