"""r1kernels::grpo_token_loss in PyTorch (the GRPO loss given log-probs), and the per-token loss in
closed form (`token_loss_and_grad`) that the C++, CUDA and Triton kernels implement too."""

from __future__ import annotations

import torch

CISPO, SAPO = 1, 2  # loss_kind; 0 is the PPO-clipped family (grpo, bnpo, dr_grpo, dapo)


def _ppo_clipped(w, A, eps_low, eps_high, delta):
    """-min(min(w, delta) A, clamp(w, 1 - eps_low, 1 + eps_high) A) and its derivative in logp
    (dw/dlogp = w). Where the two terms tie the gradient is split in half, as torch.minimum's is."""
    zero = torch.zeros_like(w)
    lo, hi = 1 - eps_low, 1 + eps_high
    clipped = w.clamp(lo, hi)
    d_clipped = torch.where((w >= lo) & (w <= hi), w, zero)
    if delta is None:
        capped, d_capped = w, w
    else:
        capped, d_capped = w.clamp(max=delta), torch.where(w <= delta, w, zero)
    a, b = capped * A, clipped * A
    loss = -torch.minimum(a, b)
    grad = -A * torch.where(a < b, d_capped, torch.where(a > b, d_clipped, (d_capped + d_clipped) / 2))
    return loss, grad


def token_loss_and_grad(logp, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg,
                        rollout_logp=None, tis_cap=None):
    """(per-token loss, d loss / d logp), float32, token-level importance weights w = exp(logp - old).
    With rollout_logp, the surrogate (not the KL) is weighted by min(exp(logp - rollout_logp), tis_cap),
    truncated importance sampling against the sampler, a constant in the gradient."""
    lp = logp.float()
    A = token_adv.float()
    w = torch.ones_like(lp) if old_logp is None else torch.exp(lp - old_logp.float())
    if loss_kind == CISPO:  # the capped weight is a constant (stop-gradient): d/dlogp of -cap A logp
        cap = w.clamp(max=eps_high)
        loss, grad = -cap * A * lp, -cap * A
    elif loss_kind == SAPO:
        tau = torch.where(A > 0, sapo_tpos, sapo_tneg).to(lp.dtype)
        gate = torch.sigmoid(tau * (w - 1))
        loss, grad = -4 * A * gate / tau, -4 * A * gate * (1 - gate) * w
    else:
        loss, grad = _ppo_clipped(w, A, eps_low, eps_high, delta)
    if rollout_logp is not None:
        tis = tis_weight(lp, rollout_logp, tis_cap)
        loss, grad = loss * tis, grad * tis
    if beta != 0.0:
        d = ref_logp.float() - lp  # k3 estimator exp(d) - d - 1
        loss = loss + beta * (d.exp() - d - 1)
        grad = grad + beta * (1 - d.exp())
    return loss, grad


def tis_weight(logp, rollout_logp, tis_cap):
    """min(exp(logp - rollout_logp), tis_cap), float32: the truncated importance weight of a token the
    sampler drew with log-prob rollout_logp (NaN stays NaN, as torch.clamp keeps it)."""
    if tis_cap is None or not tis_cap > 0:
        raise ValueError(f"tis_cap must be > 0 (the cap of the importance weight) when rollout_logp is given, got {tis_cap!r}")
    return torch.exp(logp.float() - rollout_logp.float()).clamp(max=tis_cap)


def check_tis(rollout_logp, tis_cap):
    if (rollout_logp is None) != (tis_cap is None):
        raise ValueError("rollout_logp and tis_cap go together (truncated importance sampling needs both), got "
                         f"rollout_logp {'None' if rollout_logp is None else 'set'} and tis_cap {tis_cap!r}")


def grpo_token_loss(logp, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg,
                    rollout_logp=None, tis_cap=None):
    check_tis(rollout_logp, tis_cap)
    per_token, grad = token_loss_and_grad(logp, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind,
                                          sapo_tpos, sapo_tneg, rollout_logp, tis_cap)
    scale = token_scale.float()
    active = scale != 0  # a masked token adds nothing, even where its per-token loss is not finite
    zero = torch.zeros_like(scale)
    return torch.where(active, per_token * scale, zero).sum(), torch.where(active, grad * scale, zero)
