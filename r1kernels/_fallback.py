"""Plain-PyTorch kernels for the `r1kernels::` schemas, registered only where r1kernels._C is not
built. They follow each schema exactly (same outputs, same dtypes) but hold full logits."""

from __future__ import annotations

import torch

from r1kernels import reference

LOSS_KINDS = {0: "grpo", 1: "cispo", 2: "sapo"}


def group_advantages(rewards, group_size, scale_mode, leave_one_out, eps):
    scale = {0: "group", 1: "batch", 2: "none"}[scale_mode]
    adv, st = reference.group_advantages(rewards, group_size, scale, leave_one_out, eps)
    return adv, st.mean, st.std, st.zero_std


def _logits(hidden, weight, bias, temperature):
    z = hidden.float() @ weight.float().T
    if bias is not None:
        z = z + bias.float()
    return z / temperature


def fused_logprobs(hidden, weight, bias, targets, temperature):
    z = _logits(hidden, weight, bias, temperature)
    lse = z.logsumexp(-1)
    logp_all = z - lse.unsqueeze(-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy, lse


def fused_logprobs_backward(grad_logp, grad_entropy, hidden, weight, bias, targets, lse, entropy, temperature):
    z = _logits(hidden, weight, bias, temperature)
    logp_all = z - lse.unsqueeze(-1)
    p = logp_all.exp()
    gz = -p * grad_logp.float().unsqueeze(-1)
    gz.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.float().unsqueeze(-1))
    if grad_entropy is not None:
        gz = gz - grad_entropy.float().unsqueeze(-1) * p * (logp_all + entropy.unsqueeze(-1))
    gz = gz / temperature
    grad_hidden = (gz @ weight.float()).to(hidden.dtype)
    grad_weight = (gz.T @ hidden.float()).to(weight.dtype)
    grad_bias = gz.sum(0).to(bias.dtype) if bias is not None else hidden.new_empty(0)
    return grad_hidden, grad_weight, grad_bias


def token_loss_and_grad(logp, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg):
    """Per-token loss and its derivative in logp, in closed form: the formulas the C++, CUDA and
    Triton kernels implement. Ties in min() split the gradient in half, as torch.minimum does."""
    lp = logp.float()
    A = token_adv.float()
    w = torch.exp(lp - (lp if old_logp is None else old_logp.float()))
    if loss_kind == 1:  # cispo
        cap = torch.clamp(w, max=eps_high)
        loss, grad = -cap * A * lp, -cap * A
    elif loss_kind == 2:  # sapo
        tau = torch.where(A > 0, torch.full_like(A, sapo_tpos), torch.full_like(A, sapo_tneg))
        sig = torch.sigmoid(tau * (w - 1))
        loss, grad = -(sig * 4 / tau) * A, -4 * A * sig * (1 - sig) * w
    else:
        inside = (w >= 1 - eps_low) & (w <= 1 + eps_high)
        c = torch.clamp(w, 1 - eps_low, 1 + eps_high)
        dc = torch.where(inside, w, torch.zeros_like(w))
        if delta is not None:
            w1, dw1 = torch.clamp(w, max=delta), torch.where(w <= delta, w, torch.zeros_like(w))
        else:
            w1, dw1 = w, w
        a, b = w1 * A, c * A
        loss = -torch.minimum(a, b)
        grad = torch.where(a < b, -A * dw1, torch.where(a > b, -A * dc, -A * (dw1 + dc) / 2))
    if beta != 0.0:
        d = ref_logp.float() - lp
        loss = loss + beta * (torch.exp(d) - d - 1)
        grad = grad + beta * (1 - torch.exp(d))
    return loss, grad


def grpo_token_loss(logp, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg):
    per_token, grad = token_loss_and_grad(logp, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg)
    scale = token_scale.float()
    # masked tokens (scale 0) add nothing, even where their per-token loss is not finite
    loss = torch.where(scale != 0, per_token * scale, torch.zeros_like(scale)).sum()
    return loss, torch.where(scale != 0, grad * scale, torch.zeros_like(scale))


def logits_grpo_loss(logits, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad):
    z = logits.float() / temperature
    lse = z.logsumexp(-1)
    logp_all = z - lse.unsqueeze(-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    loss, g = grpo_token_loss(logp, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, loss_kind, sapo_tpos, sapo_tneg)
    # rows with token_scale 0 are skipped by the C++ kernels (no GEMM work): logp and entropy 0 there
    active = token_scale != 0
    logp, entropy = torch.where(active, logp, 0.0), torch.where(active, entropy, 0.0)
    if not compute_grad:
        return loss, logp, entropy, logits.new_empty(0)
    gz = -logp_all.exp() * g.unsqueeze(-1)
    gz.scatter_add_(-1, targets.unsqueeze(-1), g.unsqueeze(-1))
    return loss, logp, entropy, (gz / temperature).to(logits.dtype)


def fused_grpo_loss(hidden, weight, bias, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad):
    z = _logits(hidden, weight, bias, 1.0)
    loss, logp, entropy, gz = logits_grpo_loss(z, targets, token_scale, token_adv, old_logp, ref_logp, beta, eps_low, eps_high, delta, temperature, loss_kind, sapo_tpos, sapo_tneg, compute_grad)
    if not compute_grad:
        e = hidden.new_empty(0)
        return loss, logp, entropy, e, e, e
    grad_hidden = (gz @ weight.float()).to(hidden.dtype)
    grad_weight = (gz.T @ hidden.float()).to(weight.dtype)
    grad_bias = gz.sum(0).to(bias.dtype) if bias is not None else hidden.new_empty(0)
    return loss, logp, entropy, grad_hidden, grad_weight, grad_bias


# --- paged KV cache and tree attention: the reference itself (per-sequence Python loops) -------


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
    reference.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)


def copy_blocks(k_cache, v_cache, block_mapping):
    reference.copy_blocks(k_cache, v_cache, block_mapping)


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, causal):
    return reference.paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, causal)


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    return reference.merge_attention_states(out_a, lse_a, out_b, lse_b)


def tree_attention(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens, scale):
    return reference.tree_attention(q, k, v, parents, cu_nodes, k_cache, v_cache, block_tables, prefix_lens, scale)


def skinny_linear(x, weight, bias):
    return reference.skinny_linear(x, weight, bias)


def rmsnorm_qkv_rope(h, norm_weight, eps, wq, bq, wk, bk, wv, bv, q_norm_weight, k_norm_weight, qk_eps, cos, sin, head_dim):
    q, k, v = reference.rmsnorm_qkv_rope(h, norm_weight, eps, wq, bq, wk, bk, wv, bv, q_norm_weight, k_norm_weight, qk_eps, cos, sin, head_dim)
    return q.contiguous(), k.contiguous(), v.contiguous()


def oproj_mlp(h, attn, wo, bo, norm_weight, eps, w_gate, b_gate, w_up, b_up, w_down, b_down):
    return reference.oproj_mlp(h, attn, wo, bo, norm_weight, eps, w_gate, b_gate, w_up, b_up, w_down, b_down)
