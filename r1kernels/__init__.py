"""r1kernels: fused kernels for R1-style reasoning-model training and inference.

Usable alone (it never imports r1core). Each public op lives in its own module (r1kernels/<op>.py)
and calls a `torch.library` op whose schema is written once, in r1kernels._library.SCHEMAS. CPU
tensors run the C++ kernels of r1kernels._C, CUDA tensors the CUDA C++ kernels where built, else
the Triton kernels; r1kernels/_torch holds every op's plain-PyTorch default kernel (used where no
backend kernel exists), and r1kernels.reference the tests' oracle, which production code never
imports. docs/ops.md has this table with the full schemas.

    op                      schema (torch.ops.r1kernels.)  reference               Triton (triton/)           C++ (csrc/cpu/)             CUDA (csrc/cuda/)          test (tests/kernels/)
    ----------------------  -----------------------------  ----------------------  -------------------------  --------------------------  -------------------------  ------------------------------
    group_advantages        group_advantages               group_advantages        group_advantages.py        group_advantages.cpp        group_advantages.cu        test_group_advantages.py
    token_logprobs          fused_logprobs                 token_logprobs          token_logprobs.py          token_logprobs.cpp          -                          test_token_logprobs.py
                            fused_logprobs_backward
    grpo_loss               fused_grpo_loss                grpo_loss               grpo_loss.py               grpo_loss.cpp               -                          test_grpo_loss.py
    grpo_loss_from_logits   logits_grpo_loss               grpo_loss_from_logits   grpo_loss_from_logits.py   grpo_loss_from_logits.cpp   -                          test_grpo_loss_from_logits.py
    -                       grpo_token_loss                grpo_per_token_loss     grpo_token_loss.py         grpo_token_loss.cpp         grpo_token_loss.cu         test_grpo_token_loss.py
    distill_loss            fused_distill_loss             distill_loss            distill_loss.py            distill_loss.cpp            distill_loss.cu            test_distill_loss.py
    distill_loss_from_logits logits_distill_loss           distill_loss_from_logits distill_loss_from_logits.py distill_loss_from_logits.cpp -                      test_distill_loss_from_logits.py
    reshape_and_cache       reshape_and_cache              reshape_and_cache       reshape_and_cache.py       reshape_and_cache.cpp       reshape_and_cache.cu       test_reshape_and_cache.py
    copy_blocks             copy_blocks                    copy_blocks             copy_blocks.py             copy_blocks.cpp             copy_blocks.cu             test_copy_blocks.py
    paged_attention         paged_attention                paged_attention         paged_attention.py         paged_attention.cpp         paged_attention.cu         test_paged_attention.py
    merge_attention_states  merge_attention_states         merge_attention_states  merge_attention_states.py  merge_attention_states.cpp  merge_attention_states.cu  test_merge_attention_states.py
    tree_attention          tree_attention                 tree_attention          tree_attention.py          tree_attention.cpp          tree_attention.cu          test_tree_attention.py
    skinny_linear           skinny_linear                  skinny_linear           -                          skinny_linear.cpp           -                          test_skinny_linear.py
    rmsnorm_qkv_rope        rmsnorm_qkv_rope               rmsnorm_qkv_rope        -                          rmsnorm_qkv_rope.cpp        -                          test_decoder_layer.py
    oproj_mlp               oproj_mlp                      oproj_mlp               -                          oproj_mlp.cpp               -                          test_decoder_layer.py

(grpo_token_loss has no public function: the GRPO loss from given log-probs, a building block.)
"""

from r1kernels import _library  # noqa: F401  loads the ops before anything registers on them
from r1kernels.copy_blocks import copy_blocks
from r1kernels.distill_loss import distill_loss
from r1kernels.distill_loss_from_logits import distill_loss_from_logits
from r1kernels.group_advantages import GroupAdvantages, group_advantages
from r1kernels.grpo_loss import grpo_loss
from r1kernels.grpo_loss_from_logits import grpo_loss_from_logits
from r1kernels.merge_attention_states import merge_attention_states
from r1kernels.oproj_mlp import oproj_mlp
from r1kernels.paged_attention import paged_attention
from r1kernels.reshape_and_cache import reshape_and_cache
from r1kernels.rmsnorm_qkv_rope import rmsnorm_qkv_rope
from r1kernels.skinny_linear import skinny_linear
from r1kernels.token_logprobs import token_logprobs
from r1kernels.tree_attention import tree_attention

if _library.HAS_TRITON:
    from r1kernels.triton import KERNELS as _TRITON_KERNELS

    _library.register_triton_kernels(_TRITON_KERNELS)

__all__ = ["distill_loss", "distill_loss_from_logits", "GroupAdvantages", "group_advantages", "grpo_loss", "grpo_loss_from_logits", "token_logprobs",
           "copy_blocks", "merge_attention_states", "paged_attention", "reshape_and_cache", "skinny_linear", "tree_attention",
           "rmsnorm_qkv_rope", "oproj_mlp"]
