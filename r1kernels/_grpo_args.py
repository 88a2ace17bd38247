"""Argument checks and the per-token aggregation weights shared by the GRPO loss ops.

Every aggregation TRL names is a weighted sum of per-token losses, so the kernels only ever see
`token_scale` [N] (0 on masked tokens):
  grpo, sapo     1 / (tokens in its sequence * B)     (a sequence with no token adds 0)
  bnpo           1 / (tokens in the batch)
  dr_grpo        1 / (B * T)
  dapo, cispo    1 / num_items (default: tokens in the batch)
"""

from __future__ import annotations

import math

import torch

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")
LOSS_KIND = {"grpo": 0, "bnpo": 0, "dr_grpo": 0, "dapo": 0, "cispo": 1, "sapo": 2}
IMPORTANCE_SAMPLING = ("token", "sequence")


def check_options(beta, epsilon_low, epsilon_high, delta, temperature, loss_type, importance_sampling, num_items):
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_sampling not in IMPORTANCE_SAMPLING:
        raise ValueError(f"importance_sampling must be one of {IMPORTANCE_SAMPLING}, got {importance_sampling!r}")
    for name, v in (("beta", beta), ("epsilon_low", epsilon_low), ("epsilon_high", epsilon_high)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if loss_type != "cispo" and epsilon_low >= 1:
        raise ValueError(f"epsilon_low must be < 1 (the ratio is clipped at 1 - epsilon_low), got {epsilon_low}")
    if delta is not None and not (math.isfinite(delta) and delta > 1):
        raise ValueError(f"delta must be None or a finite number > 1 (the dual-clip bound), got {delta!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if num_items is not None:
        n = float(num_items)
        if not (math.isfinite(n) and n > 0):
            raise ValueError(f"num_items must be a positive token count, got {num_items!r}")


def check_sequence_inputs(B, T, device, targets, advantages, mask, old_logprobs, ref_logprobs, beta):
    if targets.shape != (B, T):
        raise ValueError(f"targets must have shape [B, T] = {[B, T]}, got {list(targets.shape)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    if advantages.shape not in ((B,), (B, T)):
        raise ValueError(f"advantages must have shape [B] = [{B}] (one per sequence) or [B, T] = {[B, T]} (one per token), "
                         f"got {list(advantages.shape)}")
    if not advantages.is_floating_point():
        raise ValueError(f"advantages must be floating point, got {advantages.dtype}")
    # data-dependent checks are skipped while tracing (torch.compile(fullgraph=True) cannot branch on
    # values); the C++ kernels check what they read (targets) and raise the same ValueError
    tracing = torch.compiler.is_compiling()
    if not tracing and not torch.isfinite(advantages).all():
        raise ValueError("advantages must be finite (NaN or inf found)")
    if mask is not None:
        if mask.shape != (B, T):
            raise ValueError(f"mask must have shape [B, T] = {[B, T]}, got {list(mask.shape)}")
        if mask.dtype != torch.bool and not tracing and not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must be bool or hold only 0 and 1")
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
        if t is not None and t.shape != (B, T):
            raise ValueError(f"{name} must have shape [B, T] = {[B, T]}, got {list(t.shape)}")
    if beta != 0.0 and ref_logprobs is None:
        raise ValueError("ref_logprobs is required when beta != 0 (the KL term needs the reference log-probs)")
    named = (("targets", targets), ("advantages", advantages), ("mask", mask), ("old_logprobs", old_logprobs),
             ("ref_logprobs", ref_logprobs))
    for name, t in named:
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device}")
    if not tracing:
        check_logprobs(mask, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)


# float rounding may leave a log-probability a hair above 0; anything beyond this is not one
LOGPROB_SLACK = 1e-3


def check_logprobs(mask, **tensors) -> None:
    """Each tensor holds log-probabilities on the unmasked tokens: <= 0, not NaN or +inf (an
    old_logprobs of +inf made every ratio 0 and the loss silently wrong). -inf passes (a token the
    sampler could not have drawn makes the ratio inf, which the clip bounds)."""
    for name, t in tensors.items():
        if t is None:
            continue
        bad = (t > LOGPROB_SLACK) | torch.isnan(t)
        if mask is not None:
            bad &= mask.bool()
        if bool(bad.any()):
            raise ValueError(f"{name} must hold log-probabilities (<= 0, not NaN or +inf) on the unmasked tokens, "
                             f"got {float(t[bad][0])}")


def check_targets_in_vocab(targets, V):
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= V):
        raise ValueError(f"targets must lie in [0, {V}) (the vocabulary), got values in [{int(targets.min())}, {int(targets.max())}]")


def token_advantages(advantages: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """[B, T] float32: a sequence's advantage ([B]) on each of its tokens, or the per-token ones ([B, T])."""
    a = advantages.float()
    return a.unsqueeze(-1).expand(B, T) if a.dim() == 1 else a


def advantage_columns(advantages: torch.Tensor) -> torch.Tensor:
    """float32 advantages that broadcast against [B, T]: [B, 1] per sequence, [B, T] per token."""
    a = advantages.float()
    return a.unsqueeze(-1) if a.dim() == 1 else a


def token_scale(mask: torch.Tensor, loss_type: str, num_items=None) -> torch.Tensor:
    """[B, T] float32 weights whose dot product with the per-token losses is the loss."""
    maskf = mask.to(torch.float32)
    B, T = maskf.shape
    if loss_type in ("grpo", "sapo"):
        return maskf / (maskf.sum(-1, keepdim=True).clamp(min=1.0) * B)
    if loss_type == "bnpo":
        return maskf / maskf.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return maskf / float(B * T)
    denom = maskf.sum().clamp(min=1.0) if num_items is None else torch.as_tensor(float(num_items), dtype=torch.float32, device=maskf.device)
    return maskf / denom


def flat(t):
    return None if t is None else t.reshape(-1).float().contiguous()
