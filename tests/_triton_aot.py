"""Compiles the GRPO, distillation and paged-cache Triton kernels ahead of time to cubin for sm_80 and sm_90a, with
no GPU present: the interpreter the CPU tests run is lenient where the compiler is not (loop-carried
types, pointer dtypes, fp64 math, constexpr branches, non-constexpr globals), so this catches what
only a GPU run would otherwise find.

Run by tests/kernels/test_triton_compiles.py in a subprocess without TRITON_INTERPRET (with it set, @triton.jit
gives interpreted functions that cannot be compiled). Prints one line per compiled specialisation.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("run without TRITON_INTERPRET: interpreted kernels cannot be compiled")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from r1kernels.triton import copy_blocks as cb  # noqa: E402
from r1kernels.triton import distill_rows as dr  # noqa: E402
from r1kernels.triton import group_advantages as ga  # noqa: E402
from r1kernels.triton import grpo_rows as gl  # noqa: E402
from r1kernels.triton import merge_attention_states as ma  # noqa: E402
from r1kernels.triton import paged_attention as pa  # noqa: E402
from r1kernels.triton import reshape_and_cache as rc  # noqa: E402
from r1kernels.triton import tree_attention as ta  # noqa: E402

ROW = dict(z_ptr="*bf16", z_stride="i64", dz_ptr="*bf16", dz_stride="i64", bias_ptr="*bf16", targets_ptr="*i64",
           scale_ptr="*fp32", adv_ptr="*fp32", old_ptr="*fp32", ref_ptr="*fp32", rollout_ptr="*fp32", logp_ptr="*fp32",
           entropy_ptr="*fp32", lse_ptr="*fp32", contrib_ptr="*fp32", V="i32", inv_temp="fp32", beta="fp32", eps_low="fp32",
           eps_high="fp32", delta="fp32", sapo_tpos="fp32", sapo_tneg="fp32", tis_cap="fp32")
ROW32 = {**ROW, "z_ptr": "*fp32", "dz_ptr": "*fp32", "bias_ptr": "*fp32"}
BACKWARD = dict(z_ptr="*bf16", z_stride="i64", bias_ptr="*bf16", targets_ptr="*i64", grad_logp_ptr="*fp32",
                grad_entropy_ptr="*fp32", lse_ptr="*fp32", entropy_ptr="*fp32", V="i32", inv_temp="fp32")
TOKEN = dict(logp_ptr="*fp32", scale_ptr="*fp32", adv_ptr="*fp32", old_ptr="*fp32", ref_ptr="*fp32", rollout_ptr="*fp32",
             contrib_ptr="*fp32", grad_ptr="*fp32", N="i32", beta="fp32", eps_low="fp32", eps_high="fp32",
             delta="fp32", sapo_tpos="fp32", sapo_tneg="fp32", tis_cap="fp32")
DISTILL = dict(zs_ptr="*fp32", zs_stride="i64", zt_ptr="*fp32", zt_stride="i64", labels_ptr="*i64", scale_ptr="*fp32",
               loss_ptr="*fp32", V="i32", inv_temp="fp32", beta="fp32", weight_hard="fp32", weight_soft="fp32",
               ignore_index="i64")


def _distill(mode, **over):
    return {**dict(MODE=mode, HAS_LABELS=True, HARD=True, HARD1=True, COMPUTE_GRAD=True, BLOCK_V=dr.MAX_BLOCK_V), **over}


def _group(dt, acc):
    a = "*fp64" if acc == tl.float64 else "*fp32"
    return dict(r_ptr=f"*{dt}", adv_ptr=f"*{dt}", mean_ptr=f"*{dt}", std_ptr=f"*{dt}", zero_ptr="*i1", count_ptr=a,
                total_ptr=a, m2_ptr=a, bstd_ptr=a, G="i32", eps="fp32")


def _loss(kind, **over):
    return {**dict(HAS_BIAS=True, HAS_OLD=True, HAS_BETA=True, HAS_DELTA=kind == 0, HAS_TIS=False, LOSS_KIND=kind,
                   COMPUTE_LOSS=True, COMPUTE_GRAD=True, BLOCK_V=gl.MAX_BLOCK_V), **over}


def _cache_write(dt):
    return dict(key_ptr=f"*{dt}", value_ptr=f"*{dt}", k_cache_ptr=f"*{dt}", v_cache_ptr=f"*{dt}", slot_ptr="*i64",
                mapping_ptr="*i64")


def _merge(dt):
    return dict(oa_ptr=f"*{dt}", la_ptr="*fp32", ob_ptr=f"*{dt}", lb_ptr="*fp32", out_ptr=f"*{dt}", lse_ptr="*fp32",
                n_rows="i32")


def _attention(dt):
    return dict(q_ptr=f"*{dt}", k_ptr=f"*{dt}", v_ptr=f"*{dt}", k_cache_ptr=f"*{dt}", v_cache_ptr=f"*{dt}", out_ptr=f"*{dt}",
                lse_ptr="*fp32", table_ptr="*i32", seq_lens_ptr="*i32", cu_ptr="*i32", row_seq_ptr="*i32",
                parents_ptr="*i32", node_tree_ptr="*i32", prefix_lens_ptr="*i32", scale="fp32", max_blocks="i32")


# Hq 8 over Hkv 2, head_dim 128, 16-slot blocks; 3 heads of 80 over 5-slot blocks (padded tiles)
GQA = dict(HQ=8, HKV=2, D=128, BLOCK_SIZE=16, GROUP=4, GROUP_P2=4, D_P2=128, BS_P2=16)
ODD = dict(HQ=3, HKV=1, D=80, BLOCK_SIZE=5, GROUP=3, GROUP_P2=4, D_P2=128, BS_P2=8)

CASES = [
    (gl._grpo_row_kernel, ROW, _loss(0), 8),
    (gl._grpo_row_kernel, ROW, _loss(1), 8),
    (gl._grpo_row_kernel, ROW32, _loss(2, HAS_TIS=True), 8),
    (gl._grpo_row_kernel, ROW32, _loss(0, HAS_BIAS=False, HAS_OLD=False, HAS_BETA=False, COMPUTE_LOSS=False,
                                       COMPUTE_GRAD=False), 8),
    (gl._logprobs_backward_row_kernel, BACKWARD, dict(HAS_BIAS=True, HAS_GRAD_ENTROPY=True, BLOCK_V=gl.MAX_BLOCK_V), 8),
    (dr._distill_row_kernel, DISTILL, _distill(0), 8),
    (dr._distill_row_kernel, DISTILL, _distill(1, HARD1=False), 8),
    (dr._distill_row_kernel, DISTILL, _distill(2, HAS_LABELS=False, HARD=False, HARD1=False), 8),
    (dr._distill_row_kernel, DISTILL, _distill(2, COMPUTE_GRAD=False), 8),
    (gl._token_loss_kernel, TOKEN, dict(HAS_OLD=True, HAS_BETA=True, HAS_DELTA=True, HAS_TIS=True, LOSS_KIND=2, BLOCK=1024), 4),
    (ga._group_advantages_kernel, _group("fp32", tl.float32),
     dict(SCALE_MODE=1, LEAVE_ONE_OUT=True, WRITE_STATS=True, WRITE_ADV=True, BLOCK_G=64, ACC=tl.float32), 4),
    (ga._group_advantages_kernel, _group("fp64", tl.float64),
     dict(SCALE_MODE=0, LEAVE_ONE_OUT=False, WRITE_STATS=True, WRITE_ADV=True, BLOCK_G=64, ACC=tl.float64), 4),
    (ga._group_advantages_kernel, _group("bf16", tl.float32),
     dict(SCALE_MODE=2, LEAVE_ONE_OUT=False, WRITE_STATS=False, WRITE_ADV=True, BLOCK_G=64, ACC=tl.float32), 4),
    # paged-cache writes: an 8 x 128 row (block 1024) and a 16-slot block of it, bf16
    (rc._reshape_and_cache_kernel, _cache_write("bf16"), dict(ROW=8 * 128, BLOCK=1024), 4),
    (cb._copy_blocks_kernel, _cache_write("bf16"), dict(BLOCK_NUMEL=16 * 8 * 128, BLOCK=2048), 4),
    (ma._merge_attention_states_kernel, _merge("bf16"), dict(D=128, D_P2=128, ROWS=16), 4),
    # one specialisation each for the attention kernels: 3 to 6 s apiece to compile on a cold cache
    (pa._paged_attention_kernel, _attention("bf16"), dict(GQA, CAUSAL=True), 4),
    (ta._tree_attention_kernel, _attention("fp16"), dict(ODD, HAS_CACHE=False), 4),
]


def main():
    for capability in (80, 90):  # 90 compiles for sm_90a
        for fn, sig, consts, warps in CASES:
            signature = {name: ("constexpr" if name in consts else sig[name]) for name in fn.arg_names}
            kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                                    target=GPUTarget("cuda", capability, 32), options={"num_warps": warps})
            assert kernel.asm.get("cubin"), f"{fn.__name__}: no cubin"
            flags = ",".join(f"{k}={v}" for k, v in consts.items() if not k.startswith("BLOCK"))
            print(f"sm_{capability} {fn.__name__} [{flags}] ok")


if __name__ == "__main__":
    main()
