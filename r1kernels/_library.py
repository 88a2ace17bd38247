"""The dispatch layer of r1kernels: the one place where every `r1kernels::` schema is written
(SCHEMAS) and where each op gets its kernels.

  1. r1kernels._C is loaded where built: its TORCH_LIBRARY_IMPL blocks register the C++ kernels for
     the CPU key (and the CUDA C++ kernels for the CUDA key where built with nvcc). The extension
     defines no schema, so the ops exist the same way whether or not it is built.
  2. Every schema is defined here, with the plain-PyTorch kernel of r1kernels._torch as its
     CompositeExplicitAutograd default: it runs where no backend kernel is registered.
  3. `register_triton_kernels` gives the CUDA key the Triton kernel of each op that has no CUDA C++
     kernel (r1kernels/__init__.py calls it where triton is installed).
Fake (meta) implementations for torch.compile and the autograd formulas live beside each public op.
"""

from __future__ import annotations

import importlib
import warnings

import torch

SCHEMAS = {
    "group_advantages": "group_advantages(Tensor rewards, int group_size, int scale_mode, bool leave_one_out, float eps) -> (Tensor, Tensor, Tensor, Tensor)",
    "fused_logprobs": "fused_logprobs(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, float temperature) -> (Tensor, Tensor, Tensor)",
    "fused_logprobs_backward": "fused_logprobs_backward(Tensor grad_logp, Tensor? grad_entropy, Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor lse, Tensor entropy, float temperature) -> (Tensor, Tensor, Tensor)",
    "fused_grpo_loss": "fused_grpo_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor token_scale, Tensor token_adv, Tensor? old_logp, Tensor? ref_logp, float beta, float eps_low, float eps_high, float? delta, float temperature, int loss_kind, float sapo_tpos, float sapo_tneg, bool compute_grad, Tensor? rollout_logp=None, float? tis_cap=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    "logits_grpo_loss": "logits_grpo_loss(Tensor logits, Tensor targets, Tensor token_scale, Tensor token_adv, Tensor? old_logp, Tensor? ref_logp, float beta, float eps_low, float eps_high, float? delta, float temperature, int loss_kind, float sapo_tpos, float sapo_tneg, bool compute_grad, Tensor? rollout_logp=None, float? tis_cap=None) -> (Tensor, Tensor, Tensor, Tensor)",
    "grpo_token_loss": "grpo_token_loss(Tensor logp, Tensor token_scale, Tensor token_adv, Tensor? old_logp, Tensor? ref_logp, float beta, float eps_low, float eps_high, float? delta, int loss_kind, float sapo_tpos, float sapo_tneg, Tensor? rollout_logp=None, float? tis_cap=None) -> (Tensor, Tensor)",
    "fused_distill_loss": "fused_distill_loss(Tensor student_hidden, Tensor student_weight, Tensor? student_bias, Tensor teacher_hidden, Tensor teacher_weight, Tensor? teacher_bias, Tensor? labels, Tensor row_scale, float beta, float temperature, int ignore_index, float weight_hard, float weight_soft, bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "logits_distill_loss": "logits_distill_loss(Tensor student_logits, Tensor teacher_logits, Tensor? labels, Tensor row_scale, float beta, float temperature, int ignore_index, float weight_hard, float weight_soft, bool compute_grad) -> (Tensor, Tensor, Tensor)",
    "reshape_and_cache": "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()",
    "copy_blocks": "copy_blocks(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor block_mapping) -> ()",
    "paged_attention": "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, Tensor seq_lens, Tensor cu_seqlens_q, float scale, bool causal) -> (Tensor, Tensor)",
    "merge_attention_states": "merge_attention_states(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)",
    "tree_attention": "tree_attention(Tensor q, Tensor k, Tensor v, Tensor parents, Tensor cu_nodes, Tensor? k_cache, Tensor? v_cache, Tensor? block_tables, Tensor? prefix_lens, float scale) -> (Tensor, Tensor)",
    "skinny_linear": "skinny_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
    "rmsnorm_qkv_rope": "rmsnorm_qkv_rope(Tensor h, Tensor norm_weight, float eps, Tensor wq, Tensor? bq, Tensor wk, Tensor? bk, Tensor wv, Tensor? bv, Tensor? q_norm_weight, Tensor? k_norm_weight, float qk_eps, Tensor cos, Tensor sin, int head_dim) -> (Tensor, Tensor, Tensor)",
    "oproj_mlp": "oproj_mlp(Tensor h, Tensor attn, Tensor wo, Tensor? bo, Tensor norm_weight, float eps, Tensor w_gate, Tensor? b_gate, Tensor w_up, Tensor? b_up, Tensor w_down, Tensor? b_down) -> Tensor",
}

try:
    importlib.import_module("r1kernels._C")  # registers the C++ (and CUDA) ops

    HAS_C = True
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    HAS_C = False
    warnings.warn(
        f"r1kernels._C is not built ({e}); CPU tensors fall back to the plain-PyTorch kernels. "
        "Reinstall with `pip install --no-build-isolation -e .` to build the C++ ops.",
        stacklevel=2,
    )


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


HAS_TRITON = _has_triton()

# Every schema gets the plain-PyTorch kernel as its CompositeExplicitAutograd default: the backend
# kernels (C++ for CPU, CUDA or Triton for CUDA) take precedence where they are registered, so an op
# whose fast path is not built yet still runs, and the tests say which ops lack one.
_lib = torch.library.Library("r1kernels", "DEF")
from r1kernels._torch import KERNELS as _TORCH_KERNELS  # noqa: E402

for _name, _schema in SCHEMAS.items():
    _lib.define(_schema)
    _lib.impl(_name, _TORCH_KERNELS[_name], "CompositeExplicitAutograd")

# what r1kernels._C registered, taken before Triton's CUDA kernels are added
# (the CompositeExplicitAutograd defaults above are under their own key, not CPU or CUDA)
_CPP_KERNELS = {
    key: {name for name in SCHEMAS if torch._C._dispatch_has_kernel_for_dispatch_key(f"r1kernels::{name}", key)}
    for key in ("CPU", "CUDA")
}


def op(name: str):
    return getattr(torch.ops.r1kernels, name).default


def has_cpp_kernel(name: str, device_type: str = "cpu") -> bool:
    """Whether r1kernels._C registered a kernel of op `name` for the device ("cpu" or "cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    return HAS_C and name in _CPP_KERNELS[key]


# the ops whose CUDA kernel is Triton's in this process (the rest run CUDA C++ kernels), filled by
# register_triton_kernels
TRITON_REGISTERED: list[str] = []


def register_triton_kernels(kernels: dict) -> None:
    """Registers each Triton kernel (op name -> launcher) for the CUDA key, except where r1kernels._C
    has a CUDA C++ kernel for the op: that one is kept."""
    for name, fn in kernels.items():
        if has_cpp_kernel(name, "cuda") or name in TRITON_REGISTERED:
            continue
        _lib.impl(name, fn, "CUDA")
        TRITON_REGISTERED.append(name)
