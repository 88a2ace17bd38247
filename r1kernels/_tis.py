"""Truncated importance sampling (TIS) against the sampler's log-probs, shared by the GRPO losses.

The sampler (the engine, possibly a few optimizer steps behind, or a different kernel) drew each
token with log-prob rollout_logprobs; the policy being trained gives it logp. Each token's
surrogate (not its KL term) is weighted by the detached

    token level      min(exp(logp - rollout), tis_cap)                            [B, T]
    sequence level   min(exp(sum over the sequence's tokens of (logp - rollout)), tis_cap)   [B, 1]

as TRL's GRPOTrainer does with vllm_importance_sampling_correction (modes token_truncate and
sequence_truncate, cap vllm_importance_sampling_clip_max). TRL takes the policy's log-probs from
before the optimizer step (old_per_token_logps); the ops take the ones they compute, the same
numbers when each batch is used for one step. The token level is computed inside the fused ops; the
sequence level needs every log-prob of a sequence before any weight, so it runs, like GSPO, on the
fused log-probs and autograd (r1kernels._sequence_level).
"""

from __future__ import annotations

import math

import torch

TIS_LEVELS = ("token", "sequence")


def check_tis(rollout_logprobs, tis_cap, tis_level, B, T, device, mask):
    if tis_level not in TIS_LEVELS:
        raise ValueError(f"tis_level must be one of {TIS_LEVELS}, got {tis_level!r}")
    if tis_cap is not None and not (isinstance(tis_cap, (int, float)) and math.isfinite(tis_cap) and tis_cap > 0):
        raise ValueError(f"tis_cap must be a finite number > 0 (the cap of the importance weight), got {tis_cap!r}")
    if (rollout_logprobs is None) != (tis_cap is None):
        raise ValueError("rollout_logprobs and tis_cap go together (truncated importance sampling needs both), got "
                         f"rollout_logprobs {'None' if rollout_logprobs is None else 'set'} and tis_cap {tis_cap!r}")
    if rollout_logprobs is None:
        return
    if rollout_logprobs.shape != (B, T):
        raise ValueError(f"rollout_logprobs must have shape [B, T] = {[B, T]}, got {list(rollout_logprobs.shape)}")
    if rollout_logprobs.device != device:
        raise ValueError(f"rollout_logprobs is on {rollout_logprobs.device}, expected {device}")
    if not torch.compiler.is_compiling():
        from r1kernels._grpo_args import check_logprobs

        check_logprobs(mask, rollout_logprobs=rollout_logprobs)


def tis_ratio(logp, rollout_logprobs, mask, tis_level):
    """The uncapped ratio pi_train / pi_rollout, float32 and detached: [B, T] (token) or [B, 1]
    (sequence; a masked token adds 0 to the log-ratio, whatever its rollout log-prob holds)."""
    with torch.no_grad():
        d = logp.detach().float() - rollout_logprobs.float()
        d = torch.where(mask.bool(), d, torch.zeros_like(d))
        if tis_level == "sequence":
            d = d.sum(-1, keepdim=True)
        return torch.exp(d)


def tis_stats(ratio, mask, tis_cap, tis_level):
    """tis_ratio_mean, tis_ratio_max (the uncapped ratio) and tis_clipped (the fraction above the
    cap), over the unmasked tokens (token level) or all B sequences (sequence level, ratio [B, 1]),
    as TRL logs its importance_sampling_ratio."""
    with torch.no_grad():
        r = ratio.float()
        keep = torch.ones_like(r, dtype=torch.bool) if tis_level == "sequence" else mask.bool()
        n = keep.sum().clamp(min=1).float()
        zero = torch.zeros_like(r)
        mean = torch.where(keep, r, zero).sum() / n
        mx = torch.where(keep, r, torch.full_like(r, -math.inf)).max() if r.numel() else zero.sum()
        mx = torch.where(keep.any(), mx, torch.zeros_like(mx))
        clipped = torch.where(keep, (r > tis_cap).float(), zero).sum() / n
        return {"tis_ratio_mean": mean, "tis_ratio_max": mx, "tis_clipped": clipped}
