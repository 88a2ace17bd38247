"""Kernel arguments that were accepted without complaint (issue 17, item 7): old or reference
log-probs that are no log-probabilities (+inf, > 0, NaN) on unmasked tokens, a negative RMSNorm
epsilon, a paged-attention scale <= 0."""

import math

import pytest
import torch

import r1kernels


def _grpo_args(B=2, T=3, H=8, V=40):
    return dict(hidden=torch.randn(B, T, H), weight=torch.randn(V, H), targets=torch.randint(0, V, (B, T)),
                advantages=torch.randn(B), mask=torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool),
                old_logprobs=-torch.rand(B, T) - 0.1)


@pytest.mark.parametrize("value", [math.inf, 0.5, math.nan])
@pytest.mark.parametrize("name", ["old_logprobs", "ref_logprobs"])
def test_grpo_loss_refuses_what_is_no_log_probability(name, value):
    args = _grpo_args()
    args["ref_logprobs"] = -torch.rand(2, 3)
    bad = args[name].clone()
    bad[1, 2] = value
    args[name] = bad
    kw = {"beta": 0.04} if name == "ref_logprobs" else {}
    with pytest.raises(ValueError, match=rf"{name} must hold log-probabilities \(<= 0, not NaN or \+inf\) on the unmasked tokens"):
        r1kernels.grpo_loss(**args, **kw)
    logits = torch.randn(2, 3, 40)
    other = {k: v for k, v in args.items() if k not in ("hidden", "weight")}
    with pytest.raises(ValueError, match=f"{name} must hold log-probabilities"):
        r1kernels.grpo_loss_from_logits(logits, **other, **kw)


def test_masked_tokens_and_exact_zeros_are_fine():
    args = _grpo_args()
    old = args["old_logprobs"].clone()
    old[0, 2] = math.inf  # masked out: padding may hold anything
    old[1, 0] = 0.0  # a certain token
    args["old_logprobs"] = old
    loss, _ = r1kernels.grpo_loss(**args)
    assert torch.isfinite(loss)


def _decoder_args(T=4, H=16, D=8):
    pos = torch.arange(T)[:, None] * torch.ones(D)
    return dict(h=torch.randn(T, H), norm_weight=torch.ones(H), eps=1e-6, wq=torch.randn(2 * D, H), wk=torch.randn(D, H),
                wv=torch.randn(D, H), cos=torch.cos(pos), sin=torch.sin(pos), head_dim=D)


@pytest.mark.parametrize("eps", [-1e-6, math.nan, math.inf, True, "1e-6"])
def test_rmsnorm_epsilons_are_checked(eps):
    a = _decoder_args()
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        r1kernels.rmsnorm_qkv_rope(**{**a, "eps": eps})
    with pytest.raises(ValueError, match="qk_eps must be a finite number >= 0"):
        r1kernels.rmsnorm_qkv_rope(**a, q_norm_weight=torch.ones(8), k_norm_weight=torch.ones(8), qk_eps=eps)
    T, H = 4, 16
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        r1kernels.oproj_mlp(torch.randn(T, H), torch.randn(T, H), torch.randn(H, H), torch.ones(H), eps, torch.randn(32, H),
                            torch.randn(32, H), torch.randn(H, 32))
    r1kernels.rmsnorm_qkv_rope(**{**a, "eps": 0.0})  # 0 is an epsilon of none


@pytest.mark.parametrize("scale", [-0.5, 0.0, math.nan, math.inf])
def test_paged_attention_scale_is_checked(scale):
    D, bs = 8, 4
    q = torch.randn(3, 2, D)
    k_cache, v_cache = torch.randn(4, bs, 2, D), torch.randn(4, bs, 2, D)
    table = torch.tensor([[0, 1]], dtype=torch.int32)
    seq_lens, cu = torch.tensor([6], dtype=torch.int32), torch.tensor([0, 3], dtype=torch.int32)
    with pytest.raises(ValueError, match="scale must be None .* or a finite number > 0"):
        r1kernels.paged_attention(q, k_cache, v_cache, table, seq_lens, cu, scale=scale)
    r1kernels.paged_attention(q, k_cache, v_cache, table, seq_lens, cu, scale=0.3)
