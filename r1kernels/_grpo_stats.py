"""The detached statistics the GRPO losses return, with TRL's GRPOTrainer's meanings:

  kl, entropy   masked means over the batch's tokens
  clip_low      ratio below 1 - epsilon_low where the advantage is negative   (grpo, bnpo, dr_grpo, dapo)
  clip_high     ratio above 1 + epsilon_high where the advantage is positive  (the same)
  clip_region   either of the two
For cispo the only clip is the cap: clip_high = clip_region = ratio above epsilon_high itself where the
advantage is positive (TRL's cispo_clip_ratio), clip_low = 0. sapo gates softly and has no clip: all 0.
The ratio is taken after the dual clip (min(w, delta)), as TRL does.

With token-level importance sampling the clip fractions are masked means over tokens; with
sequence-level (w is [B, 1]) there is one ratio per sequence and they are means over the B sequences,
as TRL logs them, unless the advantages are per token ([B, T]): then the flags are too, and the
means are over tokens.
"""

from __future__ import annotations

import torch

from r1kernels._grpo_args import advantage_columns


def _clip_flags(w, adv, epsilon_low, epsilon_high, delta, loss_type):
    """(low, high) bool tensors of w's shape."""
    if loss_type == "sapo":
        none = torch.zeros_like(w, dtype=torch.bool)
        return none, none
    if loss_type == "cispo":
        return torch.zeros_like(w, dtype=torch.bool), (w > epsilon_high) & (adv > 0)
    if delta is not None:
        w = torch.clamp(w, max=delta)
    return (w < 1 - epsilon_low) & (adv < 0), (w > 1 + epsilon_high) & (adv > 0)


def grpo_stats(logp, entropy, w, advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high, delta, loss_type,
               importance_sampling):
    """dict of float32 scalars: kl, clip_low, clip_high, clip_region, entropy. logp, entropy, mask
    [B, T]; w [B, T] (importance_sampling "token") or [B, 1] ("sequence")."""
    with torch.no_grad():
        keep = mask.bool()
        tokens = keep.sum().clamp(min=1).float()

        def token_mean(x):
            # where, not a product: a masked token's value (inf, NaN) must not reach the sum
            x = x.float().expand(keep.shape)
            return torch.where(keep, x, torch.zeros_like(x)).sum() / tokens

        def sequence_mean(x):
            return x.float().sum() / max(x.numel(), 1)

        # per-token advantages make the clip flags per token even with one weight per sequence
        per_sequence = importance_sampling == "sequence" and advantages.dim() == 1
        clip_mean = sequence_mean if per_sequence else token_mean

        low, high = _clip_flags(w.float(), advantage_columns(advantages), epsilon_low, epsilon_high, delta, loss_type)
        if ref_logprobs is not None and beta != 0.0:
            d = ref_logprobs.float() - logp.float()
            kl = token_mean(torch.exp(d) - d - 1)
        else:
            kl = torch.zeros((), dtype=torch.float32, device=logp.device)
        return {
            "kl": kl,
            "clip_low": clip_mean(low),
            "clip_high": clip_mean(high),
            "clip_region": clip_mean(low | high),
            "entropy": token_mean(entropy),
        }
