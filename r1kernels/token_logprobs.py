"""Per-token log-probs (and entropy) straight from hidden states and the LM head, fused and chunked:

    logp[t] = log_softmax((hidden[t] @ weight.T + bias) / temperature)[targets[t]]
    entropy[t] = -sum_v p[t, v] log p[t, v]

The [tokens, vocab] logits never exist in full; the backward pass recomputes them chunk by chunk.
Used for old and reference log-probs, the SFT loss and entropy bonuses; differentiable in both
outputs with respect to hidden, weight and bias.
"""

from __future__ import annotations

import math

import torch

from r1kernels._grpo_args import check_targets_in_vocab
from r1kernels._library import op


@torch.library.register_fake("r1kernels::fused_logprobs")
def _(hidden, weight, bias, targets, temperature):
    n = hidden.shape[0]
    f = hidden.new_empty(n, dtype=torch.float32)
    return f, torch.empty_like(f), torch.empty_like(f)


@torch.library.register_fake("r1kernels::fused_logprobs_backward")
def _(grad_logp, grad_entropy, hidden, weight, bias, targets, lse, entropy, temperature):
    gb = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
    return torch.empty_like(hidden), torch.empty_like(weight), gb


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, targets, temperature = inputs
    logp, entropy, lse = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
    ctx.set_materialize_grads(False)  # a missing grad_entropy skips the entropy term
    ctx.temperature = temperature
    ctx.has_bias = bias is not None


def _backward(ctx, grad_logp, grad_entropy, _grad_lse):
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    if grad_logp is None:
        grad_logp = torch.zeros_like(lse)
    gh, gw, gb = op("fused_logprobs_backward")(
        grad_logp.contiguous(), None if grad_entropy is None else grad_entropy.contiguous(),
        hidden, weight, bias, targets, lse, entropy, ctx.temperature,
    )
    return gh, gw, (gb if ctx.has_bias else None), None, None


torch.library.register_autograd("r1kernels::fused_logprobs", _backward, setup_context=_setup_context)


def check_head_inputs(hidden, weight, targets, bias, temperature):
    if hidden.dim() < 1 or weight.dim() != 2:
        raise ValueError(f"weight must be [V, H] and hidden [..., H], got weight {list(weight.shape)} and hidden {list(hidden.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dimension ({hidden.shape[-1]}) must equal weight's H ({weight.shape[1]})")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets must have shape {list(hidden.shape[:-1])} (hidden without H), got {list(targets.shape)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"hidden and weight must be floating point, got {hidden.dtype} and {weight.dtype}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape [V] = [{weight.shape[0]}], got {list(bias.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    for name, t in (("weight", weight), ("targets", targets), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device}, expected {hidden.device} (hidden's device)")
    if not torch.compiler.is_compiling():
        check_targets_in_vocab(targets, weight.shape[0])


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """logp [...] float32 for hidden [..., H], weight [V, H], targets [...] int64; with
    return_entropy=True, (logp, entropy)."""
    check_head_inputs(hidden, weight, targets, bias, temperature)
    lead = hidden.shape[:-1]
    logp, entropy, _ = op("fused_logprobs")(
        hidden.reshape(-1, hidden.shape[-1]).contiguous(), weight.contiguous(),
        None if bias is None else bias.contiguous(), targets.reshape(-1).contiguous(), float(temperature),
    )
    if return_entropy:
        return logp.view(lead), entropy.view(lead)
    return logp.view(lead)
