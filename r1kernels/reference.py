"""Plain-PyTorch versions of every r1kernels op: the oracle the tests compare the fast paths with.

Nothing here is chunked or fused: the [tokens, vocab] logits exist in full. Keep these short and
obviously right; speed lives in `csrc/` and `r1kernels/triton/`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


class GroupStats(NamedTuple):
    mean: torch.Tensor  # [num_groups] mean of the scorable rewards (NaN rewards left out)
    std: torch.Tensor  # [num_groups] std with Bessel's correction; 0 with fewer than 2 scorable
    zero_std: torch.Tensor  # [num_groups] bool: all scorable rewards equal (or none): advantage 0


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    scale: str = "group",
    leave_one_out: bool = False,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, GroupStats]:
    r = rewards.double().view(-1, group_size)  # [Gn, G]
    valid = ~torch.isnan(r)
    rz = torch.where(valid, r, torch.zeros_like(r))
    n = valid.sum(-1, keepdim=True).double()  # [Gn, 1]
    total = rz.sum(-1, keepdim=True)
    mean = total / n.clamp(min=1)
    dev = torch.where(valid, r - mean, torch.zeros_like(r))
    std = (dev.pow(2).sum(-1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    std = torch.where(n >= 2, std, torch.zeros_like(std))
    rmax = torch.where(valid, r, torch.full_like(r, -math.inf)).amax(-1, keepdim=True)
    rmin = torch.where(valid, r, torch.full_like(r, math.inf)).amin(-1, keepdim=True)
    zero_std = (n == 0) | (rmax == rmin)

    if leave_one_out:
        baseline = (total - rz) / (n - 1).clamp(min=1)
        centred = torch.where(n >= 2, r - baseline, torch.zeros_like(r))
    else:
        centred = r - mean

    if scale == "group":
        adv = centred / (std + eps)
    elif scale == "batch":
        flat = r[valid]
        bstd = flat.std() if flat.numel() >= 2 else torch.zeros((), dtype=r.dtype)
        adv = centred / (bstd + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    adv = torch.where(valid & ~zero_std, adv, torch.zeros_like(adv))
    stats = GroupStats(mean.squeeze(-1).to(rewards.dtype), std.squeeze(-1).to(rewards.dtype), zero_std.squeeze(-1))
    return adv.reshape(-1).to(rewards.dtype), stats


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
):
    """log_softmax((hidden @ weight.T + bias) / temperature)[targets], optionally with entropy."""
    logits = hidden.float() @ weight.float().T  # [..., V]
    if bias is not None:
        logits = logits + bias.float()
    logits = logits / temperature
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def grpo_per_token_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    beta: float,
    epsilon_low: float,
    epsilon_high: float,
    delta: float | None,
    loss_type: str,
    importance_sampling: str,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    rollout_logprobs: torch.Tensor | None = None,
    tis_cap: float | None = None,
    tis_level: str = "token",
):
    """Per-token loss [B, T] and the importance weight w [B, T] (or [B, 1]) as TRL's GRPOTrainer
    computes them; with rollout_logprobs, the surrogate times TRL's truncated importance weight
    (vllm_importance_sampling_mode token_truncate / sequence_truncate, cap tis_cap)."""
    maskf = mask.to(logp.dtype)
    old = logp.detach() if old_logprobs is None else old_logprobs.to(logp.dtype)
    log_ratio = logp - old
    if importance_sampling == "token":
        log_w = log_ratio
    elif importance_sampling == "sequence":
        log_w = ((log_ratio * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"importance_sampling must be 'token' or 'sequence', got {importance_sampling!r}")
    w = torch.exp(log_w)
    adv = advantages.to(logp.dtype)
    adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv  # [B] per sequence or [B, T] per token
    if loss_type == "cispo":
        # TRL: the cap is epsilon_high itself (an absolute bound on the ratio, TRL suggests 5.0).
        per_token = -torch.clamp(w, max=epsilon_high).detach() * adv * logp
    elif loss_type == "sapo":
        tau = torch.where(adv > 0, torch.full_like(adv, sapo_temperature_pos), torch.full_like(adv, sapo_temperature_neg))
        per_token = -(torch.sigmoid(tau * (w - 1)) * 4 / tau) * adv
    else:
        clipped = torch.clamp(w, 1 - epsilon_low, 1 + epsilon_high)
        w1 = torch.clamp(w, max=delta) if delta is not None else w
        per_token = -torch.min(w1 * adv, clipped * adv)
    per_token = per_token.expand_as(logp)
    if rollout_logprobs is not None:
        per_token = per_token * tis_ratio(logp, rollout_logprobs, mask, tis_level).clamp(max=tis_cap)
    if beta != 0.0:
        d = ref_logprobs.to(logp.dtype) - logp
        per_token = per_token + beta * (torch.exp(d) - d - 1)
    return per_token, w


def tis_ratio(logp, rollout_logprobs, mask, tis_level):
    """TRL's importance_sampling_ratio before the cap: exp(logp - rollout) per token, or
    exp(sum over the sequence's unmasked tokens) [B, 1], detached."""
    diff = (logp.detach() - rollout_logprobs.to(logp.dtype)) * mask.to(logp.dtype)
    if tis_level == "sequence":
        diff = diff.sum(-1, keepdim=True)
    return torch.exp(diff)


def tis_stats(ratio, mask, tis_cap, tis_level):
    """Mean and max of the uncapped ratio and the fraction above the cap: over the unmasked tokens,
    or over all sequences at the sequence level (TRL's flat_is_ratio)."""
    flat = ratio.reshape(-1) if tis_level == "sequence" else ratio[mask.bool()]
    if flat.numel() == 0:
        zero = torch.zeros((), dtype=ratio.dtype)
        return {"tis_ratio_mean": zero, "tis_ratio_max": zero, "tis_clipped": zero}
    return {"tis_ratio_mean": flat.mean(), "tis_ratio_max": flat.max(), "tis_clipped": (flat > tis_cap).to(ratio.dtype).mean()}


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, num_items=None) -> torch.Tensor:
    """The aggregations TRL names: grpo/sapo, bnpo, dr_grpo, dapo/cispo."""
    maskf = mask.to(per_token.dtype)
    B, T = per_token.shape
    if loss_type in ("grpo", "sapo"):
        return ((per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return (per_token * maskf).sum() / maskf.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        return (per_token * maskf).sum() / (B * T)
    if loss_type in ("dapo", "cispo"):
        denom = maskf.sum() if num_items is None else torch.as_tensor(num_items, dtype=per_token.dtype)
        return (per_token * maskf).sum() / denom.clamp(min=1.0)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def grpo_stats(logp, entropy, w, advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high, delta=None,
               loss_type="grpo", importance_sampling="token"):
    """Detached statistics as TRL's GRPOTrainer logs them: mean KL and entropy over the batch's
    tokens; clip fractions (low, high, region) over tokens, or over sequences when the importance
    weight is one per sequence (importance_sampling="sequence"). The clip is the PPO region for
    grpo/bnpo/dr_grpo/dapo (on the ratio after the dual clip), the cap epsilon_high for cispo
    (high and region; low 0), none for sapo (all 0)."""
    with torch.no_grad():
        m = mask.bool()

        def over_tokens(x):
            x = x.float().expand(m.shape)
            return x[m].sum() / m.sum().clamp(min=1)

        def over_sequences(x):
            return x.float().reshape(-1).sum() / max(x.shape[0], 1)

        adv = advantages.float()
        adv = adv.unsqueeze(-1) if adv.dim() == 1 else adv
        if loss_type == "cispo":
            high = (w > epsilon_high) & (adv > 0)
            low = torch.zeros_like(high)
        elif loss_type == "sapo":
            low = high = torch.zeros(w.shape, dtype=torch.bool, device=w.device)
        else:
            coef = w if delta is None else torch.clamp(w, max=delta)
            low = (coef < 1 - epsilon_low) & (adv < 0)
            high = (coef > 1 + epsilon_high) & (adv > 0)
        # one clip flag per sequence only when both the weight and the advantage are per sequence
        clip_mean = over_sequences if importance_sampling == "sequence" and advantages.dim() == 1 else over_tokens
        if ref_logprobs is not None and beta != 0.0:
            d = ref_logprobs.float() - logp.float()
            kl = over_tokens(torch.exp(d) - d - 1)
        else:
            kl = torch.zeros((), dtype=torch.float32, device=logp.device)
        return {
            "kl": kl,
            "clip_low": clip_mean(low),
            "clip_high": clip_mean(high),
            "clip_region": clip_mean(low | high),
            "entropy": over_tokens(entropy),
        }


def grpo_loss_from_logits(
    logits,
    targets,
    advantages,
    mask=None,
    old_logprobs=None,
    ref_logprobs=None,
    beta=0.0,
    epsilon_low=0.2,
    epsilon_high=0.2,
    delta=None,
    temperature=1.0,
    loss_type="grpo",
    importance_sampling="token",
    num_items=None,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
    rollout_logprobs=None,
    tis_cap=None,
    tis_level="token",
):
    logp_all = (logits.float() / temperature).log_softmax(-1)  # [B, T, V]
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach()
    if mask is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    per_token, w = grpo_per_token_loss(
        logp, advantages, mask, old_logprobs, ref_logprobs, beta, epsilon_low, epsilon_high, delta,
        loss_type, importance_sampling, sapo_temperature_pos, sapo_temperature_neg, rollout_logprobs, tis_cap, tis_level,
    )
    loss = aggregate_loss(per_token, mask, loss_type, num_items)
    stats = grpo_stats(logp, entropy, w, advantages, mask, ref_logprobs, beta, epsilon_low, epsilon_high, delta, loss_type,
                       importance_sampling)
    if rollout_logprobs is not None:
        stats.update(tis_stats(tis_ratio(logp, rollout_logprobs, mask, tis_level), mask, tis_cap, tis_level))
    return loss, stats


def grpo_loss(
    hidden,
    weight,
    targets,
    advantages,
    mask=None,
    old_logprobs=None,
    ref_logprobs=None,
    bias=None,
    **kwargs,
):
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    return grpo_loss_from_logits(logits, targets, advantages, mask, old_logprobs, ref_logprobs, **kwargs)


def distill_loss_from_logits(student_logits, teacher_logits, labels=None, *, beta=0.5, temperature=1.0, ignore_index=-100,
                             weight_hard_loss=0.0, weight_soft_loss=1.0, reduction="mean"):
    """TRL's generalized_jsd_loss per position (+ the student's cross-entropy on labels), materialised."""
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if beta == 0:
        soft = (t.exp() * (t - s)).sum(-1)  # KL(teacher || student)
    elif beta == 1:
        soft = (s.exp() * (s - t)).sum(-1)  # KL(student || teacher)
    else:
        m = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
        soft = beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)
    per = weight_soft_loss * soft
    counted = torch.ones_like(soft, dtype=torch.bool) if labels is None else labels != ignore_index
    if weight_hard_loss != 0:
        logp = F.log_softmax(student_logits, dim=-1)
        hard = -logp.gather(-1, torch.where(counted, labels, 0).unsqueeze(-1)).squeeze(-1)
        per = per + weight_hard_loss * hard
    per = torch.where(counted, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / counted.sum().clamp(min=1)


def distill_loss(student_hidden, student_weight, teacher_hidden, teacher_weight, labels=None, *, student_bias=None,
                 teacher_bias=None, **kwargs):
    student_logits = F.linear(student_hidden, student_weight, student_bias)
    teacher_logits = F.linear(teacher_hidden, teacher_weight, teacher_bias)
    return distill_loss_from_logits(student_logits, teacher_logits, labels, **kwargs)


# --- paged KV cache and tree attention -------------------------------------------------------


def _dense_attention(q, k, v, mask, scale):
    """q [M, Hq, D], k/v [L, Hkv, D], mask [M, L] bool (True = attend) -> out [M, Hq, D] (fp32),
    lse [M, Hq] (fp32, natural log). Rows with nothing to attend get out 0 and lse -inf."""
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)  # [L, Hq, D]
    vf = v.float().repeat_interleave(group, dim=1)
    s = torch.einsum("mhd,lhd->hml", q.float(), kf) * scale  # [Hq, M, L]
    s = s.masked_fill(~mask.unsqueeze(0), -math.inf)
    lse = s.logsumexp(-1)  # [Hq, M]
    p = torch.exp(s - lse.unsqueeze(-1)).nan_to_num(0.0)  # a row of -inf gives exp(nan) -> 0
    out = torch.einsum("hml,lhd->mhd", p, vf)
    return out, lse.T.contiguous()


def gather_kv(cache, block_table, length):
    """The first `length` tokens of a sequence from a paged cache [num_blocks, block_size, H, D]."""
    bs = cache.shape[1]
    nb = (length + bs - 1) // bs
    return cache[block_table[:nb].long()].reshape(-1, *cache.shape[2:])[:length]  # [L, H, D]


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale=None, causal=True):
    """Attention of packed queries q [Nq, Hq, D] over each sequence's paged KV, on the gathered
    contiguous KV. Query j of sequence s sits at position seq_lens[s] - q_len + j. -> (out, lse)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], -math.inf, dtype=torch.float32, device=q.device)
    for s in range(block_tables.shape[0]):
        a, b = int(cu_seqlens_q[s]), int(cu_seqlens_q[s + 1])
        L = int(seq_lens[s])
        if b == a:
            continue
        k = gather_kv(k_cache, block_tables[s], L)
        v = gather_kv(v_cache, block_tables[s], L)
        pos = L - (b - a) + torch.arange(b - a, device=q.device)  # [M]
        kpos = torch.arange(L, device=q.device)
        mask = kpos.unsqueeze(0) <= pos.unsqueeze(1) if causal else torch.ones(b - a, L, dtype=torch.bool, device=q.device)
        out[a:b], lse[a:b] = _dense_attention(q[a:b], k, v, mask, scale)
    return out.to(q.dtype), lse


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """Combine two attentions over disjoint key sets: weights exp(lse) renormalised. An empty side
    has lse -inf or (vLLM's convention) +inf; both empty give out 0 and lse -inf."""
    la = lse_a.float().masked_fill(torch.isinf(lse_a), -math.inf)
    lb = lse_b.float().masked_fill(torch.isinf(lse_b), -math.inf)
    lse = torch.logaddexp(la, lb)  # -inf with -inf gives -inf
    wa = torch.exp(la - lse).nan_to_num(0.0).unsqueeze(-1)
    wb = torch.exp(lb - lse).nan_to_num(0.0).unsqueeze(-1)
    out = wa * out_a.float() + wb * out_b.float()
    return out.to(out_a.dtype), lse


def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
    """In place: token i's K/V into slot slot_mapping[i] (block * block_size + offset); -1 skips."""
    bs = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache[slots // bs, slots % bs] = key[keep].to(k_cache.dtype)
    v_cache[slots // bs, slots % bs] = value[keep].to(v_cache.dtype)


def copy_blocks(k_cache, v_cache, block_mapping):
    """In place: block dst := block src for every (src, dst) row of block_mapping [M, 2]."""
    src, dst = block_mapping[:, 0], block_mapping[:, 1]
    k_cache[dst] = k_cache[src]
    v_cache[dst] = v_cache[src]


def tree_ancestor_mask(parents):
    """[n, n] bool: mask[i, j] = node j is node i or one of its ancestors (parents within a tree)."""
    n = parents.shape[0]
    mask = torch.eye(n, dtype=torch.bool, device=parents.device)
    for i in range(n):
        p = int(parents[i])
        if p >= 0:
            mask[i] |= mask[p]
    return mask


def tree_attention(q, k, v, parents, cu_nodes=None, k_cache=None, v_cache=None, block_tables=None, prefix_lens=None, scale=None):
    """Each node attends to its tree's paged prefix, its ancestors and itself. -> (out, lse)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if cu_nodes is None:
        cu_nodes = torch.tensor([0, q.shape[0]])
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:2], -math.inf, dtype=torch.float32, device=q.device)
    for t in range(cu_nodes.shape[0] - 1):
        a, b = int(cu_nodes[t]), int(cu_nodes[t + 1])
        if b == a:
            continue
        kk, vv, mask = k[a:b], v[a:b], tree_ancestor_mask(parents[a:b])
        if k_cache is not None:
            P = int(prefix_lens[t])
            kk = torch.cat([gather_kv(k_cache, block_tables[t], P).to(k.dtype), kk])
            vv = torch.cat([gather_kv(v_cache, block_tables[t], P).to(v.dtype), vv])
            mask = torch.cat([torch.ones(b - a, P, dtype=torch.bool, device=q.device), mask], dim=1)
        out[a:b], lse[a:b] = _dense_attention(q[a:b], kk, vv, mask, scale)
    return out.to(q.dtype), lse


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x W^T + b for x [M, K], weight [N, K], bias [N]."""
    return F.linear(x, weight, bias)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rmsnorm_qkv_rope(h, norm_weight, eps, wq, bq, wk, bk, wv, bv, q_norm_weight, k_norm_weight, qk_eps, cos, sin, head_dim):
    """The input half of a Llama-family decoder layer for tokens h [T, H]: RMSNorm, the q/k/v
    projections, (Qwen3) per-head RMSNorm of q and k, the rotary embedding (cos, sin [T, D],
    rotate-half convention). Returns q [T, Hq, D], k and v [T, Hkv, D]."""
    T, D = h.shape[0], head_dim
    x = _rms_norm(h, norm_weight, eps)
    q = F.linear(x, wq, bq).view(T, -1, D)
    k = F.linear(x, wk, bk).view(T, -1, D)
    v = F.linear(x, wv, bv).view(T, -1, D)
    if q_norm_weight is not None:
        q, k = _rms_norm(q, q_norm_weight, qk_eps), _rms_norm(k, k_norm_weight, qk_eps)
    c, s = cos[:, None, :], sin[:, None, :]
    return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s, v


def oproj_mlp(h, attn, wo, bo, norm_weight, eps, w_gate, b_gate, w_up, b_up, w_down, b_down):
    """The output half of a Llama-family decoder layer: h1 = h + attn Wo^T + bo, then
    h1 + down(silu(gate(x)) * up(x)) with x = RMSNorm(h1). h [T, H], attn [T, Hq * D]."""
    h1 = h + F.linear(attn, wo, bo)
    x = _rms_norm(h1, norm_weight, eps)
    return h1 + F.linear(F.silu(F.linear(x, w_gate, b_gate)) * F.linear(x, w_up, b_up), w_down, b_down)
