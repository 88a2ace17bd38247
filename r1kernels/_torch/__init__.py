"""Plain-PyTorch kernels for every `r1kernels::` op, one module per public op, each function with
its schema's signature and outputs (same shapes, same dtypes).

They are the ops' default kernels (CompositeExplicitAutograd): they run wherever no C++, CUDA or
Triton kernel is registered for the device (the CPU without r1kernels._C; skinny_linear and the
decoder-layer halves on CUDA). They are production code, not the tests' oracle
(`r1kernels.reference`), and never import it. Nothing here is chunked (they hold full logits) but
the distillation losses, whose two models' logits are chunked over rows.
"""

from __future__ import annotations

from r1kernels._torch import (
    copy_blocks,
    distill_loss,
    distill_loss_from_logits,
    group_advantages,
    grpo_loss,
    grpo_loss_from_logits,
    grpo_token_loss,
    merge_attention_states,
    oproj_mlp,
    paged_attention,
    reshape_and_cache,
    rmsnorm_qkv_rope,
    skinny_linear,
    token_logprobs,
    tree_attention,
)

# schema name -> kernel
KERNELS = {
    "group_advantages": group_advantages.group_advantages,
    "fused_logprobs": token_logprobs.fused_logprobs,
    "fused_logprobs_backward": token_logprobs.fused_logprobs_backward,
    "fused_grpo_loss": grpo_loss.fused_grpo_loss,
    "grpo_token_loss": grpo_token_loss.grpo_token_loss,
    "logits_grpo_loss": grpo_loss_from_logits.logits_grpo_loss,
    "fused_distill_loss": distill_loss.fused_distill_loss,
    "logits_distill_loss": distill_loss_from_logits.logits_distill_loss,
    "reshape_and_cache": reshape_and_cache.reshape_and_cache,
    "copy_blocks": copy_blocks.copy_blocks,
    "paged_attention": paged_attention.paged_attention,
    "merge_attention_states": merge_attention_states.merge_attention_states,
    "tree_attention": tree_attention.tree_attention,
    "skinny_linear": skinny_linear.skinny_linear,
    "rmsnorm_qkv_rope": rmsnorm_qkv_rope.rmsnorm_qkv_rope,
    "oproj_mlp": oproj_mlp.oproj_mlp,
}
