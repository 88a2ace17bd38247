"""Triton kernels for CUDA tensors, registered on the `r1kernels::` ops for the CUDA dispatch key.

Importing this package registers them; it is imported by r1kernels when triton is installed. An op
that r1kernels._C already implements for CUDA (the CUDA C++ sources in csrc/cuda, built where nvcc
and a CUDA torch exist) keeps that kernel: Triton fills in only where no CUDA C++ kernel exists.
The launchers are plain functions on tensors of any device, so the tests run them on the CPU under
TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch

from r1kernels._library import has_cpp_kernel
from r1kernels.triton import copy_blocks as _copy_blocks
from r1kernels.triton import group_advantages, grpo_loss
from r1kernels.triton import merge_attention_states as _merge_attention_states
from r1kernels.triton import paged_attention as _paged_attention
from r1kernels.triton import reshape_and_cache as _reshape_and_cache
from r1kernels.triton import tree_attention as _tree_attention

KERNELS = {
    "group_advantages": group_advantages.group_advantages,
    "fused_logprobs": grpo_loss.fused_logprobs,
    "fused_logprobs_backward": grpo_loss.fused_logprobs_backward,
    "fused_grpo_loss": grpo_loss.fused_grpo_loss,
    "logits_grpo_loss": grpo_loss.logits_grpo_loss,
    "grpo_token_loss": grpo_loss.grpo_token_loss,
    "reshape_and_cache": _reshape_and_cache.reshape_and_cache,
    "copy_blocks": _copy_blocks.copy_blocks,
    "paged_attention": _paged_attention.paged_attention,
    "merge_attention_states": _merge_attention_states.merge_attention_states,
    "tree_attention": _tree_attention.tree_attention,
}

# the ops whose CUDA kernel is Triton's in this process (the rest run CUDA C++ kernels)
REGISTERED: list[str] = []
for _name, _fn in KERNELS.items():
    if has_cpp_kernel(_name, "cuda"):
        continue
    torch.library.register_kernel(f"r1kernels::{_name}", "cuda", _fn)
    REGISTERED.append(_name)
