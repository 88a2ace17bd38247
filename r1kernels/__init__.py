"""r1kernels: fused kernels for R1-style reasoning-model training and inference.

Usable alone (it never imports r1core). Each public op lives in its own module; the plain-PyTorch
oracle for every op is `r1kernels.reference`. CPU tensors run the C++ ops from r1kernels._C,
CUDA tensors the Triton kernels (or CUDA ops where built).
"""

from r1kernels import _library  # noqa: F401  loads the ops before anything registers on them
from r1kernels.group_advantages import GroupAdvantages, group_advantages
from r1kernels.grpo_loss import grpo_loss
from r1kernels.grpo_loss_from_logits import grpo_loss_from_logits
from r1kernels.token_logprobs import token_logprobs
from r1kernels.copy_blocks import copy_blocks
from r1kernels.merge_attention_states import merge_attention_states
from r1kernels.paged_attention import paged_attention
from r1kernels.reshape_and_cache import reshape_and_cache
from r1kernels.oproj_mlp import oproj_mlp
from r1kernels.rmsnorm_qkv_rope import rmsnorm_qkv_rope
from r1kernels.skinny_linear import skinny_linear
from r1kernels.tree_attention import tree_attention

if _library.HAS_TRITON:
    from r1kernels import triton as _triton  # noqa: F401  registers the CUDA kernels

__all__ = ["GroupAdvantages", "group_advantages", "grpo_loss", "grpo_loss_from_logits", "token_logprobs",
           "copy_blocks", "merge_attention_states", "paged_attention", "reshape_and_cache", "skinny_linear", "tree_attention",
           "rmsnorm_qkv_rope", "oproj_mlp"]
