"""TRL's trainers computing their losses with r1kernels' fused kernels.

    from trl import GRPOConfig, GRPOTrainer
    from r1kernels.integrations.trl import use_r1kernels_grpo_loss

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(...), train_dataset=data)
    use_r1kernels_grpo_loss(trainer)    # one call: the loss is now r1kernels.grpo_loss
    trainer.train()

`use_r1kernels_grpo_loss(trainer)` makes a GRPOTrainer compute its loss with `r1kernels.grpo_loss`
on the model's last hidden states and LM head, so the [completions, tokens, vocab] logits never
exist, with TRL's own config: every `loss_type` TRL has (grpo, bnpo, dr_grpo, dapo, cispo, sapo,
luspo as a sum per sequence, vespo), `importance_sampling_level` token and sequence, beta and
the reference log-probs, epsilon / epsilon_high, delta, temperature, gradient accumulation.
`use_r1kernels_gkd_loss(trainer)` makes TRL's GKDTrainer compute `generalized_jsd_loss` with
`r1kernels.distill_loss` on both models' last hidden states and LM heads.

Why a call that patches one instance rather than a subclass: the patch replaces one method of one
object (`_compute_loss`, `compute_loss` for GKD), so it composes with TRL's own subclasses of
GRPOTrainer and with other patches, and a TRL release that renames anything else leaves it
working. vespo runs as cispo's kernel on per-token advantages phi * A (its gamma weights phi from
TRL's own get_gamma_weights on one no-grad fused log-prob pass); per-token advantages ([B, T]) go to
the kernel as they are. What TRL computes that the kernel does not (the entropy mask or bonus, the
off-policy mask, vLLM's importance-sampling correction, MoE auxiliary losses, multimodal inputs,
logit soft-capping or scaling) runs TRL's own loss for that step instead, with a warning that
names the reason once: nothing is dropped. The bias-corrected KL (`use_bias_correction_kl`, TRL's
default when beta != 0: the KL times the differentiable ratio) takes a second fused pass,
`r1kernels.token_logprobs`, for the KL term. The reference model's and the old policy's log-probs
(no gradient) come from `r1kernels.token_logprobs` too (`_get_per_token_logps_and_entropies`), where
TRL's own head would hold a float32 [tokens, vocab] chunk of up to 32768 tokens.
Logged metrics: kl, entropy and the clip ratios' means as TRL logs them; the per-sequence
extremes (clip_ratio/low_min, clip_ratio/high_max) need every token's ratio, which the fused loss
never holds, and are not logged.

The hidden states come from the model's backbone (`model.base_model`), called with the arguments
TRL's own fused head gives it. The tests cover one process; under DDP the backbone is called
outside the DDP wrapper (as TRL's former Liger path did), which is not tested here.

Tested with the TRL versions of the `trl` extra in pyproject.toml.
"""

from __future__ import annotations

import warnings
from types import MethodType

import torch

import r1kernels
from r1kernels._grpo_args import token_scale

# loss_type -> the kernel's aggregation (see _normaliser)
GRPO_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
    "num_images",
)


def use_r1kernels_grpo_loss(trainer):
    """Make `trainer` (TRL's GRPOTrainer or a subclass) compute its loss with r1kernels.grpo_loss.
    Returns the trainer. Calling it twice is harmless."""
    if getattr(trainer, "_r1kernels_grpo_loss", False):
        return trainer
    if not hasattr(trainer, "_compute_loss"):
        raise TypeError(f"trainer: expected TRL's GRPOTrainer (a `_compute_loss` method), got {type(trainer).__name__}")
    trainer._r1kernels_trl_compute_loss = trainer._compute_loss
    trainer._compute_loss = MethodType(_grpo_compute_loss, trainer)
    if hasattr(trainer, "_get_per_token_logps_and_entropies"):
        trainer._r1kernels_trl_logps = trainer._get_per_token_logps_and_entropies
        trainer._get_per_token_logps_and_entropies = MethodType(_no_grad_logps, trainer)
    trainer._r1kernels_grpo_loss = True
    trainer._r1kernels_warned = set()
    return trainer


def _warn_once(trainer, reason: str) -> None:
    if reason not in trainer._r1kernels_warned:
        trainer._r1kernels_warned.add(reason)
        warnings.warn(f"r1kernels.integrations.trl: {reason}; TRL's own loss runs for this step", stacklevel=3)


def _unsupported(trainer, inputs) -> str | None:
    """Why this step cannot run through the kernel, or None."""
    if trainer.loss_type not in GRPO_LOSS_TYPES:
        return f"loss_type {trainer.loss_type!r} has no fused kernel (fused: {', '.join(GRPO_LOSS_TYPES)})"
    checks = (
        (getattr(trainer, "top_entropy_quantile", 1.0) < 1.0, "top_entropy_quantile < 1 (the entropy mask)"),
        (
            getattr(trainer, "off_policy_mask_threshold", None) is not None,
            "off_policy_mask_threshold (the off-policy mask)",
        ),
        (getattr(trainer, "_entropy_bonus_enabled", False), "the entropy bonus (entropy_coef)"),
        (getattr(trainer, "aux_loss_enabled", False), "the MoE auxiliary loss"),
        (
            getattr(trainer, "use_vllm", False) and getattr(trainer, "vllm_importance_sampling_correction", False),
            "vLLM's importance-sampling correction",
        ),
        (any(inputs.get(k) is not None for k in _MULTIMODAL_KEYS), "multimodal inputs"),
    )
    for hit, what in checks:
        if hit:
            return f"{what} is not supported by the fused loss"
    return _head_unsupported(trainer)


def _head_unsupported(trainer) -> str | None:
    """Why the model's LM head cannot be fused (a logit soft-cap or scale), or None."""
    cfg = trainer.model.config.get_text_config()
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        return "final_logit_softcapping is not supported by the fused loss"
    if any(
        getattr(cfg, k, None) not in (None, 1.0)
        for k in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    ):
        return "a logit scale in the model's config is not supported by the fused loss"
    return None


def _backbone_and_head(trainer, model):
    unwrapped = trainer.accelerator.unwrap_model(model)
    if hasattr(unwrapped, "get_base_model"):  # PEFT: the adapters sit inside the base model's modules
        unwrapped = unwrapped.get_base_model()
    head = unwrapped.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ValueError(f"model: {type(unwrapped).__name__} has no output embedding (lm_head) to fuse the loss with")
    return unwrapped.base_model, head


def _normaliser(trainer, inputs, B: int) -> tuple[str, float | None, float]:
    """(kernel loss_type, num_items, divisor) that give TRL's aggregation of the per-token losses."""
    train = trainer.model.training
    accum = trainer.current_gradient_accumulation_steps if train else 1.0
    loss_type = trainer.loss_type
    if loss_type in ("grpo", "sapo", "bnpo"):
        return loss_type, None, accum
    if loss_type == "dr_grpo":  # TRL divides by max_completion_length, not the batch's width
        return "dapo", float(B * trainer.max_completion_length), accum
    if loss_type == "luspo":  # a sum over each sequence's tokens, then the mean over sequences
        return "dapo", float(B), accum
    # dapo, cispo, vespo (cispo's kernel: -sg(weight) * A * logp): num_items_in_batch spans the
    # generation batch; TRL rescales it to one accumulation window
    if loss_type == "vespo":
        loss_type = "cispo"
    n = inputs["num_items_in_batch"].clamp(min=1.0).item() / trainer.accelerator.num_processes
    if train:
        n = n * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
    return loss_type, n, 1.0


def _no_grad_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                   compute_aux_loss=False, **model_extras):
    """TRL's no-grad log-prob passes (the reference model's, the old policy's) through
    r1kernels.token_logprobs. TRL's own fused head scores every position of up to 32768 tokens at
    once in float32 on the CPU: [B * (P + C), V] logits, 2.7 GB at Qwen's vocabulary and 16 x 256
    tokens, the peak of a step whose loss the kernel computes. A pass with gradients, entropies,
    the MoE loss, multimodal inputs or a soft-capped head stays TRL's."""
    extras = any(v is not None for v in model_extras.values())
    if torch.is_grad_enabled() or compute_entropy or compute_aux_loss or extras or _head_unsupported(self) is not None:
        return self._r1kernels_trl_logps(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                                         compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **model_extras)
    backbone, head = _backbone_and_head(self, model)
    rows = batch_size or input_ids.size(0)
    out = []
    for start in range(0, input_ids.size(0), rows):
        ids, att = input_ids[start : start + rows], attention_mask[start : start + rows]
        with self.accelerator.autocast():
            hidden = backbone(input_ids=ids, attention_mask=att, use_cache=False).last_hidden_state
        hidden = hidden[:, -logits_to_keep - 1 : -1].to(head.weight.dtype)
        logp = r1kernels.token_logprobs(hidden, head.weight, ids[:, -logits_to_keep:], bias=getattr(head, "bias", None),
                                        temperature=self.temperature)
        out.append(logp.masked_fill(att[:, -logits_to_keep:] == 0, 0.0))  # TRL's 0 at padding
    return torch.cat(out), None, None


def _grpo_compute_loss(self, model, inputs):
    reason = _unsupported(self, inputs)
    if reason is not None:
        _warn_once(self, reason)
        return self._r1kernels_trl_compute_loss(model, inputs)
    completion_ids = inputs["completion_ids"]
    input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
    backbone, head = _backbone_and_head(self, model)
    B, C = completion_ids.shape
    with self.accelerator.autocast():
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    # the states that predict the completion tokens; under bf16 autocast the head runs in the weight's
    # dtype (float32), as TRL's cast_lm_head_to_fp32 does
    hidden = hidden[:, -C - 1 : -1].to(head.weight.dtype)
    loss_type, num_items, divisor = _normaliser(self, inputs, B)
    old = inputs.get("old_per_token_logps")
    ref = inputs["ref_per_token_logps"] if self.beta != 0.0 else None
    advantages, kernel_old, epsilon_high = inputs["advantages"], old, self.epsilon_high
    if self.loss_type == "vespo":
        # -phi * A * logp with phi detached: cispo's kernel at ratio 1 (no old log-probs, cap 1) on the
        # per-token advantages phi * A
        advantages, phi = _vespo_advantages(self, hidden, head, completion_ids, mask, old, advantages, inputs)
        kernel_old, epsilon_high = None, 1.0
    # TRL's default with beta != 0 multiplies the KL by the (differentiable) ratio: the kernel takes the
    # policy term and a second, fused log-prob pass the corrected KL term
    corrected = ref is not None and getattr(self.args, "use_bias_correction_kl", False)
    loss, stats = r1kernels.grpo_loss(
        hidden,
        head.weight,
        completion_ids,
        advantages,
        mask=mask.bool(),
        old_logprobs=kernel_old,
        ref_logprobs=None if corrected else ref,
        bias=getattr(head, "bias", None),
        beta=0.0 if corrected else self.beta,
        epsilon_low=self.epsilon_low,
        epsilon_high=epsilon_high,
        delta=self.args.delta,
        temperature=self.temperature,
        loss_type=loss_type,
        importance_sampling=self.importance_sampling_level,
        num_items=num_items,
        sapo_temperature_pos=self.args.sapo_temperature_pos,
        sapo_temperature_neg=self.args.sapo_temperature_neg,
    )
    if corrected:
        kl_loss, stats["kl"] = _bias_corrected_kl(
            self, hidden, head, completion_ids, mask, old, ref, loss_type, num_items
        )
        loss = loss + kl_loss
    if self.loss_type == "vespo":
        stats["phi_seq_mean"] = phi.mean()
    _log_grpo_metrics(self, stats, mask, B, per_token=advantages.dim() == 2)
    return loss / divisor


def _vespo_advantages(trainer, hidden, head, targets, mask, old, advantages, inputs):
    """(phi * A as [B, T] advantages, phi [B, 1]): VESPO's gamma weights from TRL's own
    get_gamma_weights, on log-probs of one no-grad fused pass."""
    with torch.no_grad():
        logp = r1kernels.token_logprobs(
            hidden, head.weight, targets, bias=getattr(head, "bias", None), temperature=trainer.temperature
        ).float()
    A = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    args = trainer.args
    phi = trainer.get_gamma_weights(
        advantages=A,
        log_ratio_per_token=logp - (logp if old is None else old.float()),
        mask=mask,
        importance_sampling_ratio=inputs.get("importance_sampling_ratio"),
        k_pos=args.vespo_k_pos,
        lambda_pos=args.vespo_lambda_pos,
        k_neg=args.vespo_k_neg,
        lambda_neg=args.vespo_lambda_neg,
    )
    return (phi * A).expand(targets.shape).contiguous(), phi


def _bias_corrected_kl(trainer, hidden, head, targets, mask, old, ref, loss_type, num_items):
    """(beta * the ratio-weighted KL aggregated as the loss is, its masked mean for the log)."""
    logp = r1kernels.token_logprobs(
        hidden, head.weight, targets, bias=getattr(head, "bias", None), temperature=trainer.temperature
    ).float()
    keep = mask.bool()
    old = logp.detach() if old is None else old.float()
    log_ratio = torch.where(keep, logp - old, torch.zeros_like(logp))
    if trainer.importance_sampling_level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp(min=1)
    d = ref.float() - logp
    kl = (torch.exp(d) - d - 1) * torch.exp(log_ratio)
    kl = torch.where(keep, kl, torch.zeros_like(kl))
    loss = trainer.beta * (kl * token_scale(keep, loss_type, num_items)).sum()
    return loss, kl.detach().sum() / keep.sum().clamp(min=1)


def _log_grpo_metrics(trainer, stats: dict, mask: torch.Tensor, B: int, per_token: bool = False) -> None:
    """TRL's names and its global means: each local mean weighted by its count across processes."""
    mode = "train" if trainer.model.training else "eval"
    tokens = mask.sum().float()
    sequences = torch.tensor(float(B), device=tokens.device)
    # one ratio per sequence under sequence-level sampling, unless the advantages are per token
    clip_count = sequences if trainer.importance_sampling_level == "sequence" and not per_token else tokens

    def global_mean(value, count):
        totals = trainer.accelerator.reduce(torch.stack([value.float() * count, count]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    metrics = trainer._metrics[mode]
    if trainer.beta != 0.0:
        metrics["kl"].append(global_mean(stats["kl"], tokens))
    metrics["entropy"].append(global_mean(stats["entropy"], tokens))
    if trainer.loss_type == "cispo":
        metrics["cispo_clip_ratio"].append(global_mean(stats["clip_high"], clip_count))
    elif trainer.loss_type == "vespo":
        metrics["vespo/phi_seq_mean"].append(global_mean(stats["phi_seq_mean"], sequences))
    elif trainer.loss_type != "sapo":
        metrics["clip_ratio/low_mean"].append(global_mean(stats["clip_low"], clip_count))
        metrics["clip_ratio/high_mean"].append(global_mean(stats["clip_high"], clip_count))
        metrics["clip_ratio/region_mean"].append(global_mean(stats["clip_region"], clip_count))


# --- GKD ----------------------------------------------------------------------------------------


def use_r1kernels_gkd_loss(trainer):
    """Make `trainer` (TRL's GKDTrainer) compute generalized_jsd_loss with r1kernels.distill_loss on
    the student's and the teacher's last hidden states and LM heads. Returns the trainer."""
    if getattr(trainer, "_r1kernels_gkd_loss", False):
        return trainer
    if not hasattr(trainer, "teacher_model") or not hasattr(trainer, "compute_loss"):
        raise TypeError(f"trainer: expected TRL's GKDTrainer (a `teacher_model`), got {type(trainer).__name__}")
    trainer._r1kernels_trl_compute_loss = trainer.compute_loss
    trainer.compute_loss = MethodType(_gkd_compute_loss, trainer)
    trainer._r1kernels_gkd_loss = True
    trainer._r1kernels_warned = set()
    return trainer


def _gkd_compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    if return_outputs:  # the caller wants the student's logits, which the fused loss never makes
        _warn_once(self, "return_outputs=True needs the student's logits")
        return self._r1kernels_trl_compute_loss(model, inputs, return_outputs, num_items_in_batch)
    student, student_head = _backbone_and_head(self, model)
    teacher_model = self.accelerator.unwrap_model(self.teacher_model)
    teacher_head = teacher_model.get_output_embeddings()
    kwargs = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
    student_hidden = student(**kwargs).last_hidden_state[:, :-1].to(student_head.weight.dtype)
    teacher_model.eval()
    with torch.no_grad():
        teacher_hidden = teacher_model.base_model(**kwargs).last_hidden_state[:, :-1].to(teacher_head.weight.dtype)
    labels = inputs["labels"][:, 1:]
    # TRL's compute_loss calls generalized_jsd_loss at its default temperature, 1
    common = dict(
        beta=self.beta,
        temperature=1.0,
        student_bias=getattr(student_head, "bias", None),
        teacher_bias=getattr(teacher_head, "bias", None),
    )
    if num_items_in_batch is None:
        return r1kernels.distill_loss(
            student_hidden, student_head.weight, teacher_hidden, teacher_head.weight, labels, reduction="mean", **common
        )
    total = r1kernels.distill_loss(
        student_hidden, student_head.weight, teacher_hidden, teacher_head.weight, labels, reduction="sum", **common
    )
    n = num_items_in_batch.to(total.device) if isinstance(num_items_in_batch, torch.Tensor) else num_items_in_batch
    return total / n


__all__ = ["use_r1kernels_grpo_loss", "use_r1kernels_gkd_loss", "GRPO_LOSS_TYPES"]
