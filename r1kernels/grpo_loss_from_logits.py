"""The GRPO loss for stacks that already hold logits [B, T, V]: the same per-token math and
aggregation as `grpo_loss` (see there), with the log-softmax, loss and gradient of the logits in one
pass over each row. Token-level importance sampling runs fused; sequence-level (GSPO) goes through
autograd on the log-softmax (r1kernels._sequence_level)."""

from __future__ import annotations

import torch

from r1kernels._grpo_args import (
    LOSS_KIND,
    check_options,
    check_sequence_inputs,
    check_targets_in_vocab,
    flat,
    token_advantages,
    token_scale,
)
from r1kernels._library import op
from r1kernels._tis import check_tis
from r1kernels.grpo_loss import _grad_is_one, _through_autograd, fused_stats


@torch.library.register_fake("r1kernels::logits_grpo_loss")
def _(logits, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, temperature, loss_kind,
      sapo_tpos, sapo_tneg, compute_grad, rollout_logp=None, tis_cap=None):
    n = logits.shape[0]
    f = logits.new_empty(n, dtype=torch.float32)
    g = torch.empty_like(logits) if compute_grad else logits.new_empty(0)
    return logits.new_empty((), dtype=torch.float32), f, torch.empty_like(f), g


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[3])
    ctx.set_materialize_grads(False)  # no zeros for the [N, V] gradient output nobody differentiates


def _backward(ctx, grad_loss, *_):
    (g,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 17
    if _grad_is_one(grad_loss):  # no second [N, V] buffer for loss.backward()
        return (g,) + (None,) * 16
    return (g * grad_loss.to(g.dtype),) + (None,) * 16


torch.library.register_autograd("r1kernels::logits_grpo_loss", _backward, setup_context=_setup_context)


def grpo_loss_from_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    delta: float | None = None,
    temperature: float = 1.0,
    loss_type: str = "grpo",
    importance_sampling: str = "token",
    num_items=None,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    rollout_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
    tis_level: str = "token",
):
    """(loss, stats) for logits [B, T, V] (position t scores targets[:, t]); advantages [B] or [B, T],
    and truncated importance sampling (rollout_logprobs, tis_cap, tis_level), as grpo_loss takes them."""
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point [B, T, V] tensor, got {logits.dtype} {list(logits.shape)}")
    B, T, V = logits.shape
    check_options(beta, epsilon_low, epsilon_high, delta, temperature, loss_type, importance_sampling, num_items)
    check_sequence_inputs(B, T, logits.device, targets, advantages, mask, old_logprobs, ref_logprobs, beta)
    check_tis(rollout_logprobs, tis_cap, tis_level, B, T, logits.device, mask)
    if not torch.compiler.is_compiling():
        check_targets_in_vocab(targets, V)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=logits.device)
    if importance_sampling == "sequence" or (rollout_logprobs is not None and tis_level == "sequence"):
        # autograd through the log-softmax: the sequence weights need every log-prob before any gradient
        logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
        logp = torch.gather(logp_all, -1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return _through_autograd(logp, entropy, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high,
                                 delta, loss_type, importance_sampling, num_items, sapo_temperature_pos, sapo_temperature_neg,
                                 rollout_logprobs, tis_cap, tis_level)

    scale = token_scale(mask, loss_type, num_items)
    token_adv = token_advantages(advantages, B, T)
    needs_grad = torch.is_grad_enabled() and logits.requires_grad
    loss, logp, entropy, _ = op("logits_grpo_loss")(
        logits.reshape(B * T, V).contiguous(), targets.reshape(-1).contiguous(), scale.reshape(-1).contiguous(),
        token_adv.reshape(-1).contiguous(), flat(old_logprobs), flat(ref_logprobs), float(beta), float(epsilon_low),
        float(epsilon_high), None if delta is None else float(delta), float(temperature), LOSS_KIND[loss_type],
        float(sapo_temperature_pos), float(sapo_temperature_neg), needs_grad, flat(rollout_logprobs),
        None if tis_cap is None else float(tis_cap),
    )
    return loss, fused_stats(logp.view(B, T), entropy.view(B, T), advantages, mask, old_logprobs, ref_logprobs, beta,
                             epsilon_low, epsilon_high, delta, loss_type, rollout_logprobs, tis_cap)
