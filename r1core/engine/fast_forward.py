"""A lean forward of the Llama family's decoder (Llama, Qwen2, Qwen3, Mistral) for the engine.

transformers' modules spend most of a small model's decode step outside the matmuls: module
calls, mask and cache plumbing, and a rotate-half built from four ops per tensor. This forward
walks the same modules and reads the same live parameters, but makes the calls itself: the same
ops in the same order (so the hidden states are bitwise those of the modules' own forward, as the
tests check), minus the module machinery. Measured on the 5M Qwen2 of bench/bench_engine.py, one
decode step of 16 sequences: 6.3 ms through the modules, 5.6 ms here (one thread, CPU time).

With `skinny=True` (the engine's default) the projections of a step of at most
`r1kernels.skinny_linear.MAX_ROWS` tokens (a decode step) go through `r1kernels.skinny_linear`
instead of BLAS: float32 CPU weights only, equal to F.linear to float32 rounding but not bitwise,
and 2x faster on this CPU at 8 rows (bench/RESULTS.md). Prefill steps keep F.linear. With
`fused=True` (default, with skinny, for the SwiGLU MLP) a decode step's layers are two C++ calls
each around attention (`r1kernels.rmsnorm_qkv_rope`, `r1kernels.oproj_mlp`), whatever its number
of sequences: equal to the ops to float32 rounding, not bitwise.

It applies only where its copy of the math is known to be exact: every decoder layer of an allowed
class, plain `nn.Linear` projections (a LoRA or quantised wrapper is not), RMSNorms of the allowed
classes, and no forward hooks anywhere (they would silently not run). `unsupported_reason` says why
a model falls back to the modules' own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from r1core.engine.attention import paged_attention_forward, paged_attention_packed
from r1kernels._library import has_cpp_kernel, op
from r1kernels.skinny_linear import MAX_ROWS

_LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "MistralDecoderLayer"}
_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "MistralRMSNorm"}


def unsupported_reason(base: nn.Module) -> str | None:
    """None when `LeanForward` computes exactly what `base`'s own forward computes, else why not."""
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(base, name):
            return f"the base model has no {name}"
    for m in base.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"a forward hook on {type(m).__name__}"
    if type(base.norm).__name__ not in _NORMS:
        return f"final norm {type(base.norm).__name__}"
    for layer in base.layers:
        if type(layer).__name__ not in _LAYERS:
            return f"decoder layer {type(layer).__name__}"
        attn, mlp = layer.self_attn, layer.mlp
        linears = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(m) is not nn.Linear for m in linears):
            return "a projection that is not a plain nn.Linear"
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        norms += [getattr(attn, n) for n in ("q_norm", "k_norm") if hasattr(attn, n)]
        if any(type(n).__name__ not in _NORMS for n in norms):
            return "a norm outside the Llama family's RMSNorm"
        if getattr(attn, "sliding_window", None):
            return "sliding-window attention"
    return None


def _rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # the family's RMSNorm, op for op
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * x.to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class LeanForward:
    """`LeanForward(base)(input_ids, position_ids, meta)` -> last hidden state [1, T, H], as
    `base(input_ids=..., position_ids=..., r1_attn=meta).last_hidden_state`."""

    def __init__(self, base: nn.Module, skinny: bool = True, fused: bool = True):
        reason = unsupported_reason(base)
        if reason is not None:
            raise ValueError(f"LeanForward does not cover this model: {reason}")
        self.base = base
        w = base.embed_tokens.weight
        self.skinny = skinny and w.device.type == "cpu" and w.dtype == torch.float32 and has_cpp_kernel("skinny_linear")
        self._skinny_op = op("skinny_linear")
        # a decode step's layers as two C++ calls each around attention (r1kernels.rmsnorm_qkv_rope,
        # r1kernels.oproj_mlp): only for the SwiGLU MLP those kernels compute
        acts = {type(layer.mlp.act_fn).__name__ for layer in base.layers}
        self.fused = (fused and self.skinny and acts <= {"SiLUActivation", "SiLU"} and has_cpp_kernel("rmsnorm_qkv_rope")
                      and has_cpp_kernel("oproj_mlp"))
        self._qkv_op, self._mlp_op = op("rmsnorm_qkv_rope"), op("oproj_mlp")
        # each layer's tensors and constants, looked up once: a LeanForward lives for one engine call
        # (Engine builds a new one each time it enters its mode), and nn.Module attribute lookups
        # were ~10% of a 5M model's decode step (40 per layer per step)
        self._fused_args = [self._layer_fused_args(layer) for layer in base.layers[: base.config.num_hidden_layers]] if self.fused else None

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """F.linear, or the skinny kernel for a few rows (x [..., K], weight float32 on the CPU)."""
        rows = x.numel() // max(x.shape[-1], 1)
        if self.skinny and rows <= MAX_ROWS and weight.dtype == torch.float32:
            return self._skinny_op(x.reshape(rows, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])
        return F.linear(x, weight, bias)

    @staticmethod
    def _layer_fused_args(layer) -> tuple:
        attn, mlp = layer.self_attn, layer.mlp
        qn, kn = (attn.q_norm, attn.k_norm) if hasattr(attn, "q_norm") else (None, None)
        ln, pn = layer.input_layernorm, layer.post_attention_layernorm
        qkv = (ln.weight, ln.variance_epsilon, attn.q_proj.weight, attn.q_proj.bias, attn.k_proj.weight, attn.k_proj.bias,
               attn.v_proj.weight, attn.v_proj.bias, qn.weight if qn is not None else None, kn.weight if kn is not None else None,
               qn.variance_epsilon if qn is not None else 0.0)
        post = (attn.o_proj.weight, attn.o_proj.bias, pn.weight, pn.variance_epsilon, mlp.gate_proj.weight, mlp.gate_proj.bias,
                mlp.up_proj.weight, mlp.up_proj.bias, mlp.down_proj.weight, mlp.down_proj.bias)
        return qkv, post, attn.layer_idx, float(attn.scaling), attn.head_dim

    def _fused_layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, meta) -> torch.Tensor:
        """h [T, H] through every decoder layer: per layer one call before attention, the paged
        attention itself, one call after."""
        for qkv, post, layer_idx, scaling, head_dim in self._fused_args:
            q, k, v = self._qkv_op(h, *qkv, cos, sin, head_dim)
            o = paged_attention_packed(layer_idx, q, k, v, scaling, meta)
            h = self._mlp_op(h, o.view(o.shape[0], -1), *post)
        return h

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, meta) -> torch.Tensor:
        base = self.base
        h = base.embed_tokens(input_ids)  # [1, T, H]
        cos, sin = base.rotary_emb(h, position_ids)
        # the fused layers for decode steps (one token per sequence; their projections are BLAS
        # past MAX_ROWS rows): prefill keeps the ops below (bitwise BLAS). At the default run's 128
        # sequences the fused layers generate 1.3x faster than the ops (0.158 s against 0.205 s
        # for 128 x ~34 tokens, 2 threads)
        if (self.fused and input_ids.numel() == meta.seq_lens.numel()
                and meta.kv_caches[0][0].dtype == torch.float32):
            h = self._fused_layers(h[0], cos[0].float().contiguous(), sin[0].float().contiguous(), meta)
            return _rms_norm(base.norm, h)[None]
        lin = self.linear if self.skinny and input_ids.numel() <= MAX_ROWS else F.linear
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        for layer in base.layers[: base.config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            x = _rms_norm(layer.input_layernorm, h)
            shape = (*x.shape[:-1], -1, attn.head_dim)
            q = lin(x, attn.q_proj.weight, attn.q_proj.bias).view(shape)
            k = lin(x, attn.k_proj.weight, attn.k_proj.bias).view(shape)
            if hasattr(attn, "q_norm"):  # Qwen3: per-head norm before the rotation
                q, k = _rms_norm(attn.q_norm, q), _rms_norm(attn.k_norm, k)
            v = lin(x, attn.v_proj.weight, attn.v_proj.bias).view(shape).transpose(1, 2)
            q, k = _rotate(q.transpose(1, 2), cos, sin), _rotate(k.transpose(1, 2), cos, sin)
            o, _ = paged_attention_forward(attn, q, k, v, None, scaling=attn.scaling, r1_attn=meta)
            h = h + lin(o.reshape(*shape[:-2], -1), attn.o_proj.weight, attn.o_proj.bias)
            x = _rms_norm(layer.post_attention_layernorm, h)
            x = mlp.act_fn(lin(x, mlp.gate_proj.weight, mlp.gate_proj.bias)) * lin(x, mlp.up_proj.weight, mlp.up_proj.bias)
            h = h + lin(x, mlp.down_proj.weight, mlp.down_proj.bias)
        return _rms_norm(base.norm, h)
