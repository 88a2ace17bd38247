"""TRL's trainers with r1core's drop-ins against TRL as shipped, on a tiny model: the same losses,
gradients and first optimizer steps (to float32 rounding) for every loss type and importance
sampling level, the same distillation loss, and the same greedy completions from the engine."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

import r1kernels  # noqa: E402
from r1core.integrations import trl as r1core_trl  # noqa: E402
from r1core.integrations.trl import use_r1core_engine  # noqa: E402
from r1core.tasks.tokenizer import build_tokenizer  # noqa: E402
from r1kernels.integrations import trl as r1trl  # noqa: E402

TOK = build_tokenizer()
PROMPTS = ["1+2=", "33+4=", "5+66=", "7+8="]
# every loss_type TRL 1.x's GRPOTrainer computes (its _compute_loss branches)
TRL_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")


def tiny_model(seed=0, tie=False, hidden=32, layers=2):
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(TOK),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        pad_token_id=TOK.pad_token_id,
        eos_token_id=TOK.eos_token_id,
        bos_token_id=TOK.bos_token_id,
    )
    return Qwen2ForCausalLM(cfg)


def reward(completions, **_):
    # spread within each group, so every advantage is nonzero
    return [float(len(c) % 3) + 0.1 * c.count("1") + 0.01 * len(set(c)) for c in completions]


class Record(TrainerCallback):
    """The gradients before each optimizer step and the parameters after it."""

    def __init__(self):
        self.grads, self.params = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    def on_step_end(self, args, state, control, model=None, **kw):
        self.params.append({n: p.detach().clone() for n, p in model.named_parameters()})


def grpo_trainer(tmp_path, loss_type, level="token", beta=0.0, max_steps=2, num_iterations=2, **kw):
    # SGD, not AdamW: Adam divides by sqrt(v) + eps and turns rounding-level differences of near-zero
    # gradients into learning-rate-sized steps; with SGD a step differs by lr times the gradients'.
    # num_iterations 2: the second step reuses the rollouts, so ratios differ from 1 and clip.
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        learning_rate=0.5,
        optim="sgd",
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
        max_steps=max_steps,
        num_iterations=num_iterations,
        loss_type=loss_type,
        importance_sampling_level=level,
        beta=beta,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        **kw,
    )
    rec = Record()
    model = tiny_model(tie=loss_type == "grpo")
    if beta:  # TRL loads its reference model from the policy's folder
        model.save_pretrained(tmp_path / "model")
        model = str(tmp_path / "model")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=TOK,
        callbacks=[rec],
    )
    return trainer, rec


def close(a, b, what):
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=2e-6, msg=lambda m: f"{what} {name}: {m}")


def assert_same_run(shipped, fused, fused_rec, shipped_rec, metrics):
    for step, (ga, gb) in enumerate(zip(shipped_rec.grads, fused_rec.grads)):
        close(ga, gb, f"step {step + 1} gradient")
    for step, (pa, pb) in enumerate(zip(shipped_rec.params, fused_rec.params)):
        close(pa, pb, f"after step {step + 1}")
    logs_a = [h for h in shipped.state.log_history if "loss" in h]
    logs_b = [h for h in fused.state.log_history if "loss" in h]
    assert len(logs_a) == len(logs_b) == len(shipped_rec.params)
    for la, lb in zip(logs_a, logs_b):
        for key in ("loss", *metrics):
            assert lb[key] == pytest.approx(la[key], rel=1e-4, abs=1e-6), key


CASES = [(t, "token", 0.04) for t in TRL_LOSS_TYPES] + [(t, "sequence", 0.0) for t in TRL_LOSS_TYPES if t != "vespo"]


@pytest.mark.parametrize("loss_type,level,beta", CASES)
def test_grpo_loss_dropin_matches_trl(tmp_path, monkeypatch, loss_type, level, beta):
    calls = []
    fused_loss = r1kernels.grpo_loss
    monkeypatch.setattr(r1trl.r1kernels, "grpo_loss", lambda *a, **k: calls.append(1) or fused_loss(*a, **k))
    extra = {"delta": 1.5} if loss_type == "grpo" else {}
    shipped, rec_a = grpo_trainer(tmp_path, loss_type, level, beta, **extra)
    shipped.train()
    assert not calls
    fused, rec_b = grpo_trainer(tmp_path, loss_type, level, beta, **extra)
    r1trl.use_r1kernels_grpo_loss(fused)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused.train()
    fell_back = [w for w in caught if "r1kernels.integrations.trl" in str(w.message)]
    assert len(calls) == 2 and not fell_back, [str(w.message) for w in fell_back]
    metrics = ["entropy"] + (["kl"] if beta else []) + (["vespo/phi_seq_mean"] if loss_type == "vespo" else [])
    if loss_type not in ("sapo", "cispo", "vespo"):
        metrics += ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"]
    assert_same_run(shipped, fused, rec_b, rec_a, metrics)
    if level == "token" and loss_type not in ("sapo", "cispo", "vespo"):
        # the second step's ratios moved away from 1: the clipped branches were reached, not only ratio 1
        assert any(h.get("clip_ratio/region_mean", 0) > 0 for h in shipped.state.log_history)


def test_grpo_loss_dropin_gradient_accumulation(tmp_path):
    # two micro-batches per step: the kernel's normaliser divides as TRL's does
    kw = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, steps_per_generation=2)
    runs = []
    for patch in (False, True):
        args = GRPOConfig(
            output_dir=str(tmp_path / "out"),
            num_generations=4,
            max_completion_length=8,
            learning_rate=0.5,
            optim="sgd",
            max_grad_norm=0.0,
            max_steps=1,
            loss_type="dapo",
            use_cpu=True,
            bf16=False,
            report_to=[],
            save_strategy="no",
            seed=0,
            **kw,
        )
        rec = Record()
        trainer = GRPOTrainer(
            model=tiny_model(),
            reward_funcs=reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
            processing_class=TOK,
            callbacks=[rec],
        )
        if patch:
            r1trl.use_r1kernels_grpo_loss(trainer)
        trainer.train()
        runs.append(rec)
    close(runs[0].grads[0], runs[1].grads[0], "accumulated gradient")


def test_grpo_loss_dropin_rejects_other_trainers():
    with pytest.raises(TypeError, match="trainer: expected TRL's GRPOTrainer"):
        r1trl.use_r1kernels_grpo_loss(object())
    with pytest.raises(TypeError, match="trainer: expected TRL's GKDTrainer"):
        r1trl.use_r1kernels_gkd_loss(object())
    with pytest.raises(TypeError, match="trainer: expected TRL's GRPOTrainer"):
        use_r1core_engine(object())


def gkd_trainer(tmp_path, beta, lmbda=0.0):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    rows = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": str(eval(p[:-1]))}]}
        for p in PROMPTS
    ]
    args = GKDConfig(
        output_dir=str(tmp_path / "gkd"),
        per_device_train_batch_size=4,
        learning_rate=0.5,
        optim="sgd",
        max_grad_norm=0.0,
        max_steps=2,
        beta=beta,
        lmbda=lmbda,
        max_new_tokens=6,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        seed=0,
        logging_steps=1,
    )
    tok = build_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rec = Record()
    trainer = GKDTrainer(
        model=tiny_model(seed=1),
        teacher_model=tiny_model(seed=2, hidden=48, layers=1),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        callbacks=[rec],
    )
    return trainer, rec


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_gkd_loss_dropin_matches_trl(tmp_path, monkeypatch, beta):
    pytest.importorskip("trl.experimental.gkd")
    calls = []
    fused_loss = r1kernels.distill_loss
    monkeypatch.setattr(r1trl.r1kernels, "distill_loss", lambda *a, **k: calls.append(1) or fused_loss(*a, **k))
    shipped, rec_a = gkd_trainer(tmp_path, beta)
    shipped.train()
    fused, rec_b = gkd_trainer(tmp_path, beta)
    r1trl.use_r1kernels_gkd_loss(fused)
    fused.train()
    assert len(calls) == 2
    assert_same_run(shipped, fused, rec_b, rec_a, [])


def test_engine_dropin_gives_trl_greedy_completions(tmp_path):
    # one trainer, both generators on the one model: after each in-place update of the weights (what
    # an optimizer step does) the engine's greedy completions are TRL's own
    trainer, _ = grpo_trainer(tmp_path, "dapo", generation_kwargs={"do_sample": False})
    use_r1core_engine(trainer, num_blocks=64)
    prompt_ids = [TOK(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    seen = []
    torch.manual_seed(3)
    for _ in range(3):
        ours, _ = trainer._generate_single_turn(prompt_ids, None, {}, 1)
        theirs, _ = trainer._r1core_trl_generate(prompt_ids, None, {}, 1)
        assert ours == theirs
        seen.append(ours)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    assert seen[0] != seen[1] != seen[2]  # the updates changed what greedy decoding produces


def test_engine_and_loss_dropins_train(tmp_path, monkeypatch):
    calls = []
    generate = r1core_trl.Engine.generate
    monkeypatch.setattr(r1core_trl.Engine, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    trainer, rec = grpo_trainer(tmp_path, "dapo", beta=0.04, num_iterations=1)
    use_r1core_engine(trainer, num_blocks=64)
    r1trl.use_r1kernels_grpo_loss(trainer)
    trainer.train()
    assert len(calls) == 2 and len(rec.params) == 2
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs) and logs[0]["completions/mean_length"] > 0


def per_token_advantages(trainer):
    """Advantages [B, T] as TRL's subclasses give them: each sequence's, scaled along its tokens."""
    generate_and_score = trainer._generate_and_score_completions

    def wrapped(inputs):
        out = generate_and_score(inputs)
        out["advantages"] = out["advantages"].unsqueeze(1) * torch.linspace(0.5, 1.5, out["completion_ids"].shape[1])
        return out

    trainer._generate_and_score_completions = wrapped


@pytest.mark.parametrize("loss_type,level", [("dapo", "token"), ("grpo", "sequence")])
def test_grpo_loss_dropin_per_token_advantages(tmp_path, monkeypatch, loss_type, level):
    calls = []
    fused_loss = r1kernels.grpo_loss
    monkeypatch.setattr(r1trl.r1kernels, "grpo_loss", lambda *a, **k: calls.append(k) or fused_loss(*a, **k))
    shipped, rec_a = grpo_trainer(tmp_path, loss_type, level)
    per_token_advantages(shipped)
    shipped.train()
    fused, rec_b = grpo_trainer(tmp_path, loss_type, level)
    per_token_advantages(fused)
    r1trl.use_r1kernels_grpo_loss(fused)
    fused.train()
    assert len(calls) == 2
    assert_same_run(shipped, fused, rec_b, rec_a, ["entropy"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_grpo_loss_dropin_computes_the_no_grad_logps_with_the_kernel(tmp_path, monkeypatch, temperature):
    trainer, _ = grpo_trainer(tmp_path, "dapo", beta=0.04, temperature=temperature)
    shipped_logps = trainer._get_per_token_logps_and_entropies
    r1trl.use_r1kernels_grpo_loss(trainer)
    calls = []
    fused = r1kernels.token_logprobs
    monkeypatch.setattr(r1trl.r1kernels, "token_logprobs", lambda *a, **k: calls.append(1) or fused(*a, **k))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, len(TOK), (6, 11), generator=g)
    att = torch.ones_like(ids)
    att[0, :3] = 0  # left padding of a prompt
    att[1, -2:] = 0  # a completion that ended early: TRL's logp is 0 there
    for model in (trainer.model, trainer.ref_model):
        with torch.no_grad():
            want, _, _ = shipped_logps(model, ids, att, 5, batch_size=4)
            got, entropy, aux = trainer._get_per_token_logps_and_entropies(model, ids, att, 5, batch_size=4)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert entropy is None and aux is None and (got[1, -2:] == 0).all()
    assert len(calls) == 4  # two models, two row chunks each
    # a pass with gradients, or one that asks for entropies, stays TRL's
    got, entropy, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, att, 5, compute_entropy=True)
    assert len(calls) == 4 and entropy is not None and got.requires_grad
