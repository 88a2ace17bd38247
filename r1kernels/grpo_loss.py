"""The GRPO loss fused with the LM head: from the policy's last hidden states and the head's weight
to the scalar loss and its gradients, without ever holding the [tokens, vocab] logits.

Per token (TRL's GRPOTrainer, same names):
    logp = log_softmax((hidden @ weight.T + bias) / temperature)[target]
    w = exp(logp - old)                           importance_sampling="token"
      = exp(masked mean of (logp - old))          "sequence" (GSPO)
    clipped = clamp(w, 1 - epsilon_low, 1 + epsilon_high)   (DAPO clip-higher: separate bounds)
    w = min(w, delta) if delta                    (two-sided / dual clip)
    loss_t = -min(w * A, clipped * A) * tis + beta * (exp(ref - logp) - (ref - logp) - 1)
    tis = min(exp(logp - rollout), tis_cap), detached      (truncated importance sampling, r1kernels._tis;
                                                  1 without rollout_logprobs)
    cispo: -sg(min(w, epsilon_high)) * A * logp;  sapo: -(sigmoid(tau (w - 1)) * 4 / tau) * A
Aggregation by loss_type: grpo (per-sequence token mean, then mean), bnpo (sum / tokens), dr_grpo
(sum / (B * T)), dapo (sum / num_items, default the tokens in this batch).

Token-level importance sampling runs as one op whose forward also produces the gradients (three
GEMMs of the head's size in all); sequence-level needs every token's log-prob before any gradient,
so it runs the fused log-probs forward and backward (four GEMMs); so does tis_level="sequence".
"""

from __future__ import annotations

import torch

from r1kernels._grpo_args import LOSS_KIND, check_options, check_sequence_inputs, flat, token_advantages, token_scale
from r1kernels._grpo_stats import grpo_stats
from r1kernels._library import op
from r1kernels._sequence_level import sequence_level_loss
from r1kernels._tis import check_tis, tis_ratio, tis_stats
from r1kernels.token_logprobs import check_head_inputs, token_logprobs


@torch.library.register_fake("r1kernels::fused_grpo_loss")
def _(hidden, weight, bias, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, temperature,
      loss_kind, sapo_tpos, sapo_tneg, compute_grad, rollout_logp=None, tis_cap=None):
    n = hidden.shape[0]
    f = hidden.new_empty(n, dtype=torch.float32)
    if compute_grad:
        gb = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
        grads = (torch.empty_like(hidden), torch.empty_like(weight), gb)
    else:
        grads = tuple(hidden.new_empty(0) for _ in range(3))  # distinct: outputs must not alias
    return hidden.new_empty((), dtype=torch.float32), f, torch.empty_like(f), *grads


def _setup_context(ctx, inputs, output):
    bias = inputs[2]
    _, _, _, gh, gw, gb = output
    ctx.save_for_backward(gh, gw, gb)
    # the outputs other than the loss get no gradient: without this autograd would allocate zeros
    # for them, a second [V, H] buffer at the peak of backward
    ctx.set_materialize_grads(False)
    ctx.has_bias = bias is not None


def _grad_is_one(grad_loss):
    # loss.backward() on the CPU: the gradients the forward computed are the answer. Handing them on
    # as they are lets autograd's AccumulateGrad take the [V, H] tensor without a copy (the saved
    # reference is released first unless retain_graph, and then it copies); scaling would cost a
    # second [V, H] buffer at the peak.
    # (only on plain tensors: fake and functional ones, while tracing, cannot be branched on)
    eager = type(grad_loss) is torch.Tensor and not torch.compiler.is_compiling()
    return eager and grad_loss.device.type == "cpu" and bool(grad_loss == 1)


def _backward(ctx, grad_loss, *_):
    gh, gw, gb = ctx.saved_tensors
    if grad_loss is None:  # only the detached outputs (logp, entropy, grads) were used
        return (None,) * 19
    if _grad_is_one(grad_loss):
        return (gh, gw, gb if ctx.has_bias else None) + (None,) * 16
    g = grad_loss.to(gh.dtype)
    return (gh * g, gw * g.to(gw.dtype), (gb * g.to(gb.dtype)) if ctx.has_bias else None) + (None,) * 16


torch.library.register_autograd("r1kernels::fused_grpo_loss", _backward, setup_context=_setup_context)


@torch.library.register_fake("r1kernels::grpo_token_loss")
def _(logp, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg,
      rollout_logp=None, tis_cap=None):
    return logp.new_empty((), dtype=torch.float32), torch.empty_like(logp, dtype=torch.float32)


def _token_loss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.logp_dtype = inputs[0].dtype
    ctx.set_materialize_grads(False)


def _token_loss_backward(ctx, grad_loss, _grad_grad):
    (g,) = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 14
    return ((g * grad_loss).to(ctx.logp_dtype),) + (None,) * 13


# the per-token loss from given log-probs (the CUDA path of the loss after a separate log-prob pass)
torch.library.register_autograd("r1kernels::grpo_token_loss", _token_loss_backward, setup_context=_token_loss_setup_context)


def grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
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
    """(loss, stats) for hidden [B, T, H], weight [V, H], targets [B, T], advantages [B] (one per
    sequence, as GRPO's group advantages) or [B, T] (one per token, as on-policy distillation's).
    rollout_logprobs [B, T] (the sampler's log-probs) with tis_cap turn on truncated importance
    sampling at tis_level "token" or "sequence" (r1kernels._tis).

    `stats` holds detached scalars: kl, clip_low, clip_high, clip_region, entropy (masked means);
    with TIS also tis_ratio_mean, tis_ratio_max, tis_clipped.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got {list(hidden.shape)}")
    B, T, H = hidden.shape
    check_head_inputs(hidden, weight, targets, bias, temperature)
    check_options(beta, epsilon_low, epsilon_high, delta, temperature, loss_type, importance_sampling, num_items)
    check_sequence_inputs(B, T, hidden.device, targets, advantages, mask, old_logprobs, ref_logprobs, beta)
    check_tis(rollout_logprobs, tis_cap, tis_level, B, T, hidden.device, mask)
    if mask is None:
        mask = torch.ones(B, T, dtype=torch.bool, device=hidden.device)

    if importance_sampling == "sequence" or (rollout_logprobs is not None and tis_level == "sequence"):
        logp, entropy = token_logprobs(hidden, weight, targets, bias=bias, temperature=temperature, return_entropy=True)
        return _through_autograd(logp, entropy.detach(), advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low,
                                 epsilon_high, delta, loss_type, importance_sampling, num_items, sapo_temperature_pos,
                                 sapo_temperature_neg, rollout_logprobs, tis_cap, tis_level)

    scale = token_scale(mask, loss_type, num_items)
    token_adv = token_advantages(advantages, B, T)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))
    loss, logp, entropy, _, _, _ = op("fused_grpo_loss")(
        hidden.reshape(B * T, H).contiguous(), weight.contiguous(), None if bias is None else bias.contiguous(),
        targets.reshape(-1).contiguous(), scale.reshape(-1).contiguous(), token_adv.reshape(-1).contiguous(),
        flat(old_logprobs), flat(ref_logprobs), float(beta), float(epsilon_low), float(epsilon_high),
        None if delta is None else float(delta), float(temperature), LOSS_KIND[loss_type],
        float(sapo_temperature_pos), float(sapo_temperature_neg), needs_grad, flat(rollout_logprobs),
        None if tis_cap is None else float(tis_cap),
    )
    return loss, fused_stats(logp.view(B, T), entropy.view(B, T), advantages, mask, old_logprobs, ref_logprobs, beta,
                             epsilon_low, epsilon_high, delta, loss_type, rollout_logprobs, tis_cap)


def fused_stats(logp, entropy, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high, delta, loss_type,
                rollout_logprobs, tis_cap):
    """The stats of a token-level fused op's outputs (logp, entropy [B, T])."""
    old = logp if old_logprobs is None else old_logprobs.float()
    w = torch.exp(logp - old)
    stats = grpo_stats(logp, entropy, w, advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high, delta, loss_type,
                       "token")
    if rollout_logprobs is not None:
        stats.update(tis_stats(tis_ratio(logp, rollout_logprobs, mask, "token"), mask, tis_cap, "token"))
    return stats


def _through_autograd(logp, entropy, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high, delta,
                      loss_type, importance_sampling, num_items, sapo_temperature_pos, sapo_temperature_neg, rollout_logprobs,
                      tis_cap, tis_level):
    """(loss, stats) from differentiable log-probs [B, T]: the path of the sequence-level weights
    (GSPO's importance sampling, sequence-level TIS), which need every log-prob first."""
    ratio = tis = None
    if rollout_logprobs is not None:
        ratio = tis_ratio(logp, rollout_logprobs, mask, tis_level)
        tis = ratio.clamp(max=tis_cap)
    loss, w = sequence_level_loss(logp, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high, delta,
                                  loss_type, num_items, sapo_temperature_pos, sapo_temperature_neg, importance_sampling, tis)
    stats = grpo_stats(logp.detach(), entropy, w.detach(), advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high,
                       delta, loss_type, importance_sampling)
    if ratio is not None:
        stats.update(tis_stats(ratio, mask, tis_cap, tis_level))
    return loss, stats
