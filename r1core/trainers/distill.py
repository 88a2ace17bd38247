"""Distillation from a teacher into a student of the same tokenizer (either may be wider or deeper).

Per step, `per_device_train_batch_size` prompt/completion rows per process; the completions are
  - the dataset's own (offline logit distillation: the teacher scores given completions),
  - with probability `lmbda` sampled from the student by `r1core.engine` on its live weights
    (on-policy, GKD), or
  - with `seq_kd=True`, on the steps that are not on-policy, sampled from the teacher.
mode "logit": the loss is the generalised JSD (`beta`) at `temperature` between the two models'
next-token distributions on the completion tokens, `r1kernels.distill_loss` on both models' last
hidden states and LM heads, so neither model's [tokens, vocab] logits exist in full (plus the
student's cross-entropy with `weight_hard_loss`).
mode "reverse_kl_pg": the student samples every step, the teacher scores each sampled token, and
the per-token advantage log p_teacher - log p_student (detached) is trained as a policy gradient
(the per-token GRPO loss at ratio 1: its gradient is that of the sampled reverse KL).

The loss is a sum over the step's completion tokens divided by their number over all processes,
so torchrun's DDP gives the gradients of one process on the same global batch. Rows come in
seeded epochs of permutations; the samples are seeded by the run's seed and each row's position
in that stream; checkpoints add the stream position and the lmbda draws' RNG, so a resumed run
ends where an uninterrupted one ends.

    trainer = DistillTrainer(student, teacher, tok, rows, DistillConfig(lmbda=0.5, beta=0.5)); trainer.train()
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass

import torch

import r1kernels
from r1core.tasks.tokenizer import encode_prompt
from r1core.trainers import distributed as dist
from r1core.trainers.distill_config import DistillConfig
from r1core.trainers.loop import Trainer
from r1core.trainers.optim import build_optimizer, build_scheduler, lm_head_params
from r1core.trainers.sft import collate


@dataclass
class DistillBatch:
    """One process's rows, right-padded: the targets are the tokens where loss_mask is True (never
    a row's first), predicted from the position before."""

    input_ids: torch.Tensor  # [R, T]
    position_ids: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T]
    loss_mask: torch.Tensor  # [R, T] bool: completion tokens (and eos)
    sample_logprobs: torch.Tensor | None  # [R, T] the sampler's log-probs of the targets (sampled completions)

    @property
    def targets(self) -> torch.Tensor:
        return self.input_ids[:, 1:][self.loss_mask[:, 1:]]  # [N]


def _last_hidden(model, b: DistillBatch) -> torch.Tensor:
    base, _, _ = lm_head_params(model)
    return base(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask, use_cache=False).last_hidden_state


def teacher_states(teacher, b: DistillBatch) -> torch.Tensor:
    """The teacher's last hidden states [N, Ht] at the positions that predict the targets."""
    with torch.no_grad():
        return _last_hidden(teacher, b)[:, :-1][b.loss_mask[:, 1:]]


class _StudentLoss(torch.nn.Module):
    """The student's loss as a module, so DDP wraps the whole forward (its gradient hooks then cover
    the LM head used outside the base model too). The teacher's side comes in as tensors."""

    def __init__(self, model, config: DistillConfig):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, b: DistillBatch, teacher_hidden, teacher_weight, teacher_bias, num_items: float):
        cfg = self.config
        base, weight, bias = lm_head_params(self.model)
        hidden = base(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask,
                      use_cache=False).last_hidden_state[:, :-1]  # [R, T-1, Hs]
        sel = b.loss_mask[:, 1:]
        if cfg.mode == "logit":
            loss = r1kernels.distill_loss(hidden[sel], weight, teacher_hidden, teacher_weight, b.targets, beta=cfg.beta,
                                          temperature=cfg.temperature, weight_hard_loss=cfg.weight_hard_loss, student_bias=bias,
                                          teacher_bias=teacher_bias, reduction="sum")
            return loss / num_items, {}
        return self._policy_gradient(hidden, weight, bias, b, teacher_hidden, teacher_weight, teacher_bias, num_items)

    def _policy_gradient(self, hidden, weight, bias, b, teacher_hidden, teacher_weight, teacher_bias, num_items):
        """Reverse KL as a policy gradient: advantage log p_teacher - log p_student per sampled token."""
        cfg = self.config
        sel = b.loss_mask[:, 1:]
        targets = b.input_ids[:, 1:]
        student_logp = b.sample_logprobs[:, 1:]  # [R, T-1]: the sampler's, equal to the policy's own forward
        with torch.no_grad():
            t_logp = r1kernels.token_logprobs(teacher_hidden, teacher_weight, targets[sel], bias=teacher_bias, temperature=cfg.temperature)
        adv = torch.zeros_like(student_logp)
        adv[sel] = t_logp - student_logp[sel]
        any_token = bool(sel.any())
        stats = {"reverse_kl": float(-adv[sel].mean()) if any_token else 0.0, "teacher_logprob": float(t_logp.mean()) if any_token else 0.0}
        # one update on fresh samples: the ratio is 1 (old log-probs None: the policy's own, detached),
        # so nothing clips and the gradient is -sum(A * grad log p) / N
        loss, _ = r1kernels.grpo_loss(hidden, weight, targets, adv, mask=sel, bias=bias, temperature=cfg.temperature,
                                      loss_type="dapo", num_items=num_items)
        return loss, stats


def tokenizer_mismatch(a, b) -> str | None:
    """Why tokenizers a and b differ (None: they agree on the vocabulary and the special tokens)."""
    if a is b:
        return None
    if len(a) != len(b):
        return f"{len(a)} tokens against {len(b)}"
    if a.get_vocab() != b.get_vocab():
        diff = sorted(set(a.get_vocab().items()) ^ set(b.get_vocab().items()))[:3]
        return f"the vocabularies differ (e.g. {diff})"
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(a, name, None) != getattr(b, name, None):
            return f"{name} {getattr(a, name, None)} against {getattr(b, name, None)}"
    return None


class DistillTrainer(Trainer):
    name = "distill"
    metrics_file = "metrics.jsonl"
    progress_keys = ("loss", "on_policy")
    summed_metrics = frozenset({"tokens", "gen_tokens"})
    resume_fixed = ("per_device_train_batch_size", "seed", "mode", "lmbda", "seq_kd", "max_seq_length", "add_eos", "prompt_field",
                    "completion_field")

    def __init__(self, model, teacher_model, tokenizer, train_dataset, config: DistillConfig | None = None, *,
                 teacher_tokenizer=None, engine=None, teacher_engine=None):
        super().__init__(model, tokenizer, config or DistillConfig())
        self._check_teacher(model, teacher_model, tokenizer, teacher_tokenizer)
        self.teacher = teacher_model.eval().requires_grad_(False)
        self._read_rows(train_dataset)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        cfg = self.config
        self.engine, self.teacher_engine = engine, teacher_engine  # built when first needed
        self.optimizer = build_optimizer(model, cfg.learning_rate, weight_decay=cfg.weight_decay)
        budget = self.budget_spent if cfg.max_seconds is not None else None
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler_type, cfg.warmup_steps, cfg.max_steps, budget)
        self.loss_module = self.wrap_loss(_StudentLoss(model, cfg))  # DDP, FSDP2 (cfg.fsdp) or as it is
        self.consumed = 0  # rows taken from the stream (all ranks)
        self.rng = random.Random(cfg.seed)  # the on-policy draws (the same on every rank)

    # ---- inputs --------------------------------------------------------------------------------
    def _check_teacher(self, model, teacher, tokenizer, teacher_tokenizer) -> None:
        if not isinstance(teacher, torch.nn.Module):
            raise ValueError(f"teacher_model must be a transformers causal LM, got {type(teacher).__name__}")
        t_dev = next(teacher.parameters()).device
        if t_dev != self.device:
            raise ValueError(f"teacher_model is on {t_dev} and the student (model) on {self.device}: put both on one device "
                             f"(teacher_model.to({str(self.device)!r}))")
        (_, sw, _), (_, tw, _) = lm_head_params(model), lm_head_params(teacher)
        if sw.shape[0] != tw.shape[0]:
            raise ValueError(f"teacher_model's vocabulary has {tw.shape[0]} tokens and the student's (model) {sw.shape[0]}: "
                             f"distillation needs one tokenizer for both")
        if teacher_tokenizer is not None:
            why = tokenizer_mismatch(tokenizer, teacher_tokenizer)
            if why:
                raise ValueError(f"teacher_tokenizer differs from tokenizer ({why}): teacher and student must share one tokenizer")

    def _read_rows(self, train_dataset) -> None:
        cfg = self.config
        rows = list(train_dataset)
        if not rows:
            raise ValueError("train_dataset is empty")
        need = [cfg.prompt_field] + ([cfg.completion_field] if cfg.needs_dataset_completions else [])
        self.prompt_ids, self.completion_ids = [], []
        for i, r in enumerate(rows):
            for f in need:
                if not isinstance(r, dict) or not isinstance(r.get(f), str):
                    got = f"columns {sorted(r)}" if isinstance(r, dict) else type(r).__name__
                    raise ValueError(f"train_dataset row {i} needs a string {f!r} column ({got})")
            p = encode_prompt(self.tokenizer, r[cfg.prompt_field])
            if not p:
                raise ValueError(f"train_dataset row {i}: the prompt encodes to no tokens")
            c = None
            if cfg.needs_dataset_completions:
                c = list(self.tokenizer(r[cfg.completion_field], add_special_tokens=False)["input_ids"])
                if cfg.add_eos:
                    c.append(self.tokenizer.eos_token_id)
                if not c:
                    raise ValueError(f"train_dataset row {i}: the completion is empty and add_eos is False: nothing to distil")
                if len(p) + len(c) > cfg.max_seq_length:
                    raise ValueError(f"train_dataset row {i} has {len(p) + len(c)} tokens, more than max_seq_length={cfg.max_seq_length}")
            self.prompt_ids.append(p)
            self.completion_ids.append(c)

    # ---- data ----------------------------------------------------------------------------------
    def _row_index(self, k: int) -> int:
        """Row of the k-th position of the stream: epochs of seeded permutations."""
        n = len(self.prompt_ids)
        epoch, pos = divmod(k, n)
        if getattr(self, "_order_epoch", None) != epoch:
            self._order = list(range(n))
            random.Random(self.config.seed * 7919 + epoch).shuffle(self._order)
            self._order_epoch = epoch
        return self._order[pos]

    def next_positions(self) -> list[int]:
        """This rank's share of the next batch * world_size stream positions."""
        per = self.config.per_device_train_batch_size
        start = self.consumed + self.rank * per
        self.consumed += per * self.world_size
        return list(range(start, start + per))

    def completion_source(self) -> str:
        """Where this step's completions come from: "student" (on-policy), "teacher" (seq_kd) or "dataset"."""
        cfg = self.config
        if cfg.mode == "reverse_kl_pg":
            return "student"
        if self.rng.random() < cfg.lmbda:
            return "student"
        return "teacher" if cfg.seq_kd else "dataset"

    def _engine(self, who: str):
        if who == "student" and self.engine is None:
            self.engine = self._build_engine(self.model)
        if who == "teacher" and self.teacher_engine is None:
            self.teacher_engine = self._build_engine(self.teacher)
        return self.engine if who == "student" else self.teacher_engine

    def _build_engine(self, model):
        from r1core.engine import Engine

        # a cache for one step's sequences in whole blocks of 16, one spare each
        per_seq = -(-(max(len(p) for p in self.prompt_ids) + self.config.max_new_tokens) // 16) + 1
        return Engine(model, tokenizer=self.tokenizer, block_size=16, num_blocks=self.config.per_device_train_batch_size * per_seq + 16)

    def sample(self, who: str, positions: list[int]) -> list:
        """One completion per stream position from the student's or the teacher's live weights,
        seeded by the run's seed and the position."""
        from r1core.engine import SamplingParams

        cfg = self.config
        params = [SamplingParams(n=1, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, logprobs=True,
                                 seed=(cfg.seed * 1_000_003 + k * 8191) % (2**31)) for k in positions]
        model = self.model if who == "student" else self.teacher
        was_training = model.training
        model.eval()
        try:
            with self.full_weights() if who == "student" else contextlib.nullcontext():  # FSDP: the student whole
                outs = self._engine(who).generate([self.prompt_ids[self._row_index(k)] for k in positions], params)
        finally:
            model.train(was_training)
        return [o.outputs[0] for o in outs]

    def make_batch(self, positions: list[int], completions: list | None = None) -> DistillBatch:
        """The rows at these stream positions with the dataset's completions, or with the given
        sampled ones (CompletionOutputs, whose log-probs the policy gradient uses)."""
        examples, logps = [], []
        for j, k in enumerate(positions):
            p = self.prompt_ids[self._row_index(k)]
            c = list(completions[j].token_ids) if completions is not None else self.completion_ids[self._row_index(k)]
            examples.append((p + c, [False] * len(p) + [True] * len(c)))
            if completions is not None:
                lp = completions[j].logprobs or [0.0] * len(c)
                logps.append([0.0] * len(p) + list(lp))
        ids, pos, mask, attn = collate(examples, self.pad_id, packing=False, max_len=self.config.max_seq_length)
        sample_lp = None
        if completions is not None:
            # the log-prob of the token at column t sits at t, shifted with the targets in the loss
            sample_lp = torch.zeros(ids.shape, dtype=torch.float32)
            for r, lp in enumerate(logps):
                sample_lp[r, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
            sample_lp = sample_lp.to(self.device)
        dev = self.device
        return DistillBatch(ids.to(dev), pos.to(dev), attn.to(dev), mask.to(dev), sample_lp)

    # ---- optimisation --------------------------------------------------------------------------
    def accumulate_gradients(self, b: DistillBatch) -> dict:
        """Zeroes the gradients and backpropagates the step's loss (a sum over its completion tokens
        divided by their count over all ranks); returns the global loss and this rank's stats. No
        clipping, no update: tests compare these gradients."""
        _, tw, tb = lm_head_params(self.teacher)
        t_hidden = teacher_states(self.teacher, b)
        n_local = int(b.loss_mask[:, 1:].sum())
        num_items = max(1.0, float(dist.all_reduce_sum(torch.tensor([float(n_local)])).item()))
        loss, stats = self.backward_micro_batches([b], lambda mb: self.loss_module(mb, t_hidden, tw, tb, num_items))
        return {"loss": loss, "tokens": n_local, **stats}

    def training_step(self) -> dict:
        t0 = time.perf_counter()
        positions = self.next_positions()
        source = self.completion_source()
        info: dict = {"on_policy": float(source == "student"), "teacher_samples": float(source == "teacher")}
        comps = None
        if source != "dataset":
            g0 = time.perf_counter()
            comps = self.sample(source, positions)
            info.update(gen_seconds=time.perf_counter() - g0, gen_tokens=sum(len(c.token_ids) for c in comps),
                        completion_length=sum(len(c.token_ids) for c in comps) / len(comps))
        batch = self.make_batch(positions, comps)
        info.update(self.accumulate_gradients(batch))
        info.update(self.optimizer_step(info["loss"]))
        if self.engine is not None and hasattr(self.engine, "weights_updated"):
            self.engine.weights_updated()
        info["step_seconds"] = time.perf_counter() - t0
        return info

    # ---- checkpoints ---------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"consumed": self.consumed, "distill_rng": [version, list(internal), gauss], "num_rows": len(self.prompt_ids)}

    def restore_trainer_state(self, js: dict, path: str) -> None:
        if "distill_rng" not in js:
            raise ValueError(f"checkpoint {path!r} holds no distillation state (distill_rng): not written by DistillTrainer")
        if js["num_rows"] != len(self.prompt_ids):
            raise ValueError(f"checkpoint {path!r} was written for {js['num_rows']} training rows; this run has {len(self.prompt_ids)}")
        self.consumed = js["consumed"]
        version, internal, gauss = js["distill_rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        if self.engine is not None and hasattr(self.engine, "weights_updated"):
            self.engine.weights_updated()


__all__ = ["DistillBatch", "DistillConfig", "DistillTrainer", "teacher_states", "tokenizer_mismatch"]
