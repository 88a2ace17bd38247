"""Triton kernels for the `r1kernels::` ops, one module per op: `KERNELS` maps each op name to its
launcher, a plain function with the schema's signature on tensors of any device (the tests run
them on CPU tensors under TRITON_INTERPRET=1).

Nothing here knows about dispatch: r1kernels registers these for the CUDA key
(`r1kernels._library.register_triton_kernels`) where no CUDA C++ kernel is built.
"""

from __future__ import annotations

from r1kernels.triton import (
    copy_blocks,
    distill_loss,
    distill_loss_from_logits,
    group_advantages,
    grpo_loss,
    grpo_loss_from_logits,
    grpo_token_loss,
    merge_attention_states,
    paged_attention,
    reshape_and_cache,
    token_logprobs,
    tree_attention,
)

# schema name -> launcher
KERNELS = {
    "group_advantages": group_advantages.group_advantages,
    "fused_logprobs": token_logprobs.fused_logprobs,
    "fused_logprobs_backward": token_logprobs.fused_logprobs_backward,
    "fused_grpo_loss": grpo_loss.fused_grpo_loss,
    "logits_grpo_loss": grpo_loss_from_logits.logits_grpo_loss,
    "grpo_token_loss": grpo_token_loss.grpo_token_loss,
    "fused_distill_loss": distill_loss.fused_distill_loss,
    "logits_distill_loss": distill_loss_from_logits.logits_distill_loss,
    "reshape_and_cache": reshape_and_cache.reshape_and_cache,
    "copy_blocks": copy_blocks.copy_blocks,
    "paged_attention": paged_attention.paged_attention,
    "merge_attention_states": merge_attention_states.merge_attention_states,
    "tree_attention": tree_attention.tree_attention,
}
