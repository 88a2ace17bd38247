"""r1kernels.rmsnorm_qkv_rope and r1kernels.oproj_mlp (the two halves of a decode step's decoder
layer) against r1kernels.reference on fresh random inputs: 1 to 16 tokens, odd hidden sizes,
grouped-query heads, biases (Qwen2) or none, the per-head q/k norms of Qwen3; and against the
modules of real transformers layers; bad input.
The two halves are one layer's and are tested together (test_matches_transformers_layer runs both).

The tests named with a `backend` run the public function on each backend present (tests/kernels/
_backends.py): the C++ kernel, the plain-PyTorch kernel of r1kernels._torch and, where the shapes are
small enough for the interpreter, the Triton kernel under TRITON_INTERPRET=1. (No Triton kernel: CUDA runs the plain-PyTorch ones.)
"""

from __future__ import annotations

import pytest
import torch
from _backends import backend_fixture

from r1kernels import oproj_mlp, reference, rmsnorm_qkv_rope
from r1kernels._library import HAS_C, has_cpp_kernel

backend = backend_fixture("rmsnorm_qkv_rope", "oproj_mlp")


def _qkv_inputs(T, H, Hq, Hkv, D, bias, qk_norm):
    f = lambda *s: torch.randn(*s)  # noqa: E731
    args = dict(h=f(T, H) * 3, norm_weight=f(H), eps=1e-6, wq=f(Hq * D, H) / H**0.5, wk=f(Hkv * D, H) / H**0.5,
                wv=f(Hkv * D, H) / H**0.5, cos=f(T, D), sin=f(T, D), head_dim=D)
    kw = dict(bq=f(Hq * D) if bias else None, bk=f(Hkv * D) if bias else None, bv=f(Hkv * D) if bias else None,
              q_norm_weight=f(D) if qk_norm else None, k_norm_weight=f(D) if qk_norm else None, qk_eps=1e-5)
    return args, kw


@pytest.mark.skipif(not HAS_C, reason="r1kernels._C is not built")
def test_cpp_kernels_are_registered():
    assert has_cpp_kernel("rmsnorm_qkv_rope") and has_cpp_kernel("oproj_mlp")


@pytest.mark.parametrize("T", [1, 3, 8, 16, 40])  # 40: BLAS inside (past 16 rows)
@pytest.mark.parametrize("H,Hq,Hkv,D", [(32, 4, 4, 8), (48, 6, 2, 8), (70, 2, 1, 34), (256, 4, 2, 64)])
@pytest.mark.parametrize("bias,qk_norm", [(False, False), (True, False), (False, True)])
def test_rmsnorm_qkv_rope_matches_reference(backend, T, H, Hq, Hkv, D, bias, qk_norm):
    args, kw = _qkv_inputs(T, H, Hq, Hkv, D, bias, qk_norm)
    got = rmsnorm_qkv_rope(**args, **kw)
    a = args
    want = reference.rmsnorm_qkv_rope(a["h"], a["norm_weight"], a["eps"], a["wq"], kw["bq"], a["wk"], kw["bk"], a["wv"], kw["bv"],
                                      kw["q_norm_weight"], kw["k_norm_weight"], kw["qk_eps"], a["cos"], a["sin"], D)
    for g, w, heads in zip(got, want, (Hq, Hkv, Hkv)):
        assert g.shape == (T, heads, D) and g.dtype == torch.float32
        torch.testing.assert_close(g, w, atol=2e-5 * H**0.5, rtol=1e-4)


@pytest.mark.parametrize("T", [1, 5, 16, 33])
@pytest.mark.parametrize("H,A,inter", [(32, 32, 64), (48, 64, 100), (256, 256, 1024)])
@pytest.mark.parametrize("bias", [False, True])
def test_oproj_mlp_matches_reference(backend, T, H, A, inter, bias):
    f = torch.randn
    h, attn = f(T, H) * 2, f(T, A)
    wo, wg, wu, wd = f(H, A) / A**0.5, f(inter, H) / H**0.5, f(inter, H) / H**0.5, f(H, inter) / inter**0.5
    bo, bg, bu, bd = (f(H), f(inter), f(inter), f(H)) if bias else (None,) * 4
    nw = f(H)
    got = oproj_mlp(h, attn, wo, nw, 1e-6, wg, wu, wd, bo=bo, b_gate=bg, b_up=bu, b_down=bd)
    want = reference.oproj_mlp(h, attn, wo, bo, nw, 1e-6, wg, bg, wu, bu, wd, bd)
    assert got.shape == (T, H)
    torch.testing.assert_close(got, want, atol=2e-5 * inter**0.5, rtol=1e-4)


def test_rows_are_independent_of_the_batch():
    # a sequence's numbers must not depend on what else is in the step (same seed, same samples)
    args, kw = _qkv_inputs(9, 64, 4, 2, 16, True, False)
    full = rmsnorm_qkv_rope(**args, **kw)
    one = rmsnorm_qkv_rope(**{**args, "h": args["h"][4:5], "cos": args["cos"][4:5], "sin": args["sin"][4:5]}, **kw)
    for a, b in zip(full, one):
        assert torch.equal(a[4:5], b)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama"])
def test_matches_transformers_layer(backend, family):
    # the same numbers as a real decoder layer's modules (attention replaced by given outputs)
    import transformers

    cfg_cls = {"qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config, "llama": transformers.LlamaConfig}[family]
    cfg = cfg_cls(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=50, max_position_embeddings=64, head_dim=16)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    layer, rot = model.model.layers[0], model.model.rotary_emb
    attn, mlp = layer.self_attn, layer.mlp
    for p in model.parameters():  # random norms and biases too, not their ones/zeros init
        torch.nn.init.normal_(p, std=0.3)
    T = 7
    h = torch.randn(1, T, 64)
    pos = torch.tensor([[3, 9, 10, 11, 20, 21, 40]])
    cos, sin = rot(h, pos)
    with torch.no_grad():
        x = layer.input_layernorm(h)
        q = attn.q_proj(x).view(1, T, -1, 16)
        k = attn.k_proj(x).view(1, T, -1, 16)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        qr, kr = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        v = attn.v_proj(x).view(1, T, -1, 16)
        qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        got = rmsnorm_qkv_rope(h[0], layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon, attn.q_proj.weight,
                               attn.k_proj.weight, attn.v_proj.weight, cos[0], sin[0], 16, bq=attn.q_proj.bias,
                               bk=attn.k_proj.bias, bv=attn.v_proj.bias, q_norm_weight=qn.weight if qn is not None else None,
                               k_norm_weight=kn.weight if kn is not None else None,
                               qk_eps=qn.variance_epsilon if qn is not None else None)
        for g, w in zip(got, (qr[0].transpose(0, 1), kr[0].transpose(0, 1), v[0])):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
        a = torch.randn(T, 64)
        h1 = h[0] + attn.o_proj(a)
        want = h1 + mlp(layer.post_attention_layernorm(h1))
        out = oproj_mlp(h[0], a, attn.o_proj.weight, layer.post_attention_layernorm.weight,
                        layer.post_attention_layernorm.variance_epsilon, mlp.gate_proj.weight, mlp.up_proj.weight,
                        mlp.down_proj.weight, bo=attn.o_proj.bias, b_gate=mlp.gate_proj.bias, b_up=mlp.up_proj.bias,
                        b_down=mlp.down_proj.bias)
        torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)


def test_bad_input():
    args, kw = _qkv_inputs(2, 32, 4, 2, 8, False, False)
    with pytest.raises(ValueError, match="head_dim must be an even"):
        rmsnorm_qkv_rope(**{**args, "head_dim": 7}, **kw)
    with pytest.raises(ValueError, match="wq must be"):
        rmsnorm_qkv_rope(**{**args, "wq": torch.randn(30, 32)}, **kw)
    with pytest.raises(ValueError, match="cos must be \\[2, 8\\]"):
        rmsnorm_qkv_rope(**{**args, "cos": torch.randn(3, 8)}, **kw)
    with pytest.raises(ValueError, match="together"):
        rmsnorm_qkv_rope(**args, **{**kw, "q_norm_weight": torch.randn(8)})
    with pytest.raises(ValueError, match="h must be float32"):
        rmsnorm_qkv_rope(**{**args, "h": args["h"].double()}, **kw)
    h, a = torch.randn(2, 32), torch.randn(3, 32)
    w = torch.randn(32, 32)
    with pytest.raises(ValueError, match="same T"):
        oproj_mlp(h, a, w, torch.randn(32), 1e-6, torch.randn(64, 32), torch.randn(64, 32), torch.randn(32, 64))
    with pytest.raises(ValueError, match="w_down must be \\[32, 64\\]"):
        oproj_mlp(h, a[:2], w, torch.randn(32), 1e-6, torch.randn(64, 32), torch.randn(64, 32), torch.randn(64, 32))


def test_opcheck():
    args, kw = _qkv_inputs(3, 32, 4, 2, 8, True, True)
    a = args
    torch.library.opcheck(torch.ops.r1kernels.rmsnorm_qkv_rope.default,
                          (a["h"], a["norm_weight"], a["eps"], a["wq"], kw["bq"], a["wk"], kw["bk"], a["wv"], kw["bv"],
                           kw["q_norm_weight"], kw["k_norm_weight"], kw["qk_eps"], a["cos"], a["sin"], 8),
                          test_utils=("test_schema", "test_faketensor"))
    f = torch.randn
    torch.library.opcheck(torch.ops.r1kernels.oproj_mlp.default,
                          (f(3, 32), f(3, 32), f(32, 32), None, f(32), 1e-6, f(48, 32), None, f(48, 32), f(48), f(32, 48), None),
                          test_utils=("test_schema", "test_faketensor"))
