"""The Triton row kernels and launcher helpers the fused GRPO ops share (their launchers live in
token_logprobs.py: fused_logprobs and its backward; grpo_loss.py: fused_grpo_loss;
grpo_loss_from_logits.py: logits_grpo_loss; grpo_token_loss.py: grpo_token_loss).

The variant: token-level importance sampling, optionally weighted by the truncated importance weight
min(exp(logp - rollout), tis_cap) against the sampler's log-probs (GSPO's sequence level goes through fused_logprobs and
its backward in the Python layer), per-token loss of kind 0 (clipped surrogate with DAPO's separate
low/high bounds and optional dual clip delta), 1 (CISPO) or 2 (SAPO), plus beta * k3 KL; the
aggregation arrives folded into `token_scale`. Formulas: `r1kernels._torch.grpo_token_loss.token_loss_and_grad`.

Layout as Liger-Kernel's ops: @triton.jit kernels, then plain launchers that allocate, chunk and
pick block sizes. The launchers loop over row chunks of the head:
    z = hidden_chunk @ W^T                        torch.mm (cuBLAS)      [n, V]
    one program per row: an online logsumexp over BLOCK_V-wide vocabulary blocks (fp32) gives lse,
    entropy and the target's log-prob, then the loss and dloss/dlogp in closed form, then
    dz = token_scale * dloss/dlogp * (onehot - p) / temperature written over z in place
    grad_hidden_chunk = dz @ W;  grad_W += dz^T @ hidden_chunk;  grad_bias += sum(dz)
so the [N, V] logits never exist beyond one chunk, and forward + backward cost three GEMMs.
The launchers take CPU tensors too, so the tests run them under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 4096 fp32 lanes per vocabulary block: large enough to amortise the per-block rescale, small enough
# for the registers of 8 warps.
MAX_BLOCK_V = 4096
# Rows per chunk are chosen so one chunk's logits take at most this many bytes.
CHUNK_BYTES = 1 << 28


@triton.jit
def _token_loss_grad(lp, old, ref, rollout, A, beta, eps_low, eps_high, delta, sapo_tpos, sapo_tneg, tis_cap,
                     LOSS_KIND: tl.constexpr, HAS_DELTA: tl.constexpr, HAS_BETA: tl.constexpr, HAS_TIS: tl.constexpr):
    """Per-token loss and its derivative in logp (fp32 scalars or vectors)."""
    w = tl.exp(lp - old)
    if LOSS_KIND == 1:  # cispo: the capped ratio is a constant weight on logp
        cap = tl.minimum(w, eps_high)
        loss = -cap * A * lp
        grad = -cap * A
    elif LOSS_KIND == 2:  # sapo: a soft gate in place of the hard clip
        tau = tl.where(A > 0, sapo_tpos, sapo_tneg)
        sig = tl.sigmoid(tau * (w - 1.0))
        loss = -(sig * 4.0 / tau) * A
        grad = -4.0 * A * sig * (1.0 - sig) * w
    else:
        lo = 1.0 - eps_low
        hi = 1.0 + eps_high
        c = tl.minimum(tl.maximum(w, lo), hi)
        dc = tl.where((w >= lo) & (w <= hi), w, 0.0)
        if HAS_DELTA:
            w1 = tl.minimum(w, delta)
            dw1 = tl.where(w <= delta, w, 0.0)
        else:
            w1 = w
            dw1 = w
        a = w1 * A
        b = c * A
        loss = -tl.minimum(a, b)
        # ties split the gradient in half, as torch.minimum's backward does
        grad = tl.where(a < b, -A * dw1, tl.where(a > b, -A * dc, -A * (dw1 + dc) * 0.5))
    if HAS_TIS:  # truncated importance weight against the sampler, a constant in the gradient
        tis = tl.minimum(tl.exp(lp - rollout), tis_cap)
        loss = loss * tis
        grad = grad * tis
    if HAS_BETA:
        d = ref - lp
        loss += beta * (tl.exp(d) - d - 1.0)
        grad += beta * (1.0 - tl.exp(d))
    return loss, grad


@triton.jit
def _load_scaled(z_row, bias_ptr, cols, mask, inv_temp, HAS_BIAS: tl.constexpr):
    # masked lanes get -inf, the identity of the max and (through exp) of the sum
    x = tl.load(z_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    return x * inv_temp


@triton.jit
def _row_lse_entropy(z_row, bias_ptr, V, inv_temp, HAS_BIAS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Online logsumexp over the row's vocabulary blocks: (lse, entropy) of softmax(z / T)."""
    m = float("-inf")  # running max
    s = 0.0  # sum of exp(x - m)
    u = 0.0  # sum of exp(x - m) * x, for the entropy lse - E_p[x]
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        mask = cols < V
        x = _load_scaled(z_row, bias_ptr, cols, mask, inv_temp, HAS_BIAS)
        m_new = tl.maximum(m, tl.max(x, 0))
        # a row that is -inf so far keeps s = u = 0 instead of exp(-inf - -inf) = NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_ref)
        e = tl.exp(x - m_ref)
        s = s * alpha + tl.sum(e, 0)
        u = u * alpha + tl.sum(e * tl.where(e > 0.0, x, 0.0), 0)  # no 0 * -inf on masked lanes
        m = m_new
    lse = m + tl.log(s)
    return lse, lse - u / s


@triton.jit
def _grpo_row_kernel(
    z_ptr, z_stride, dz_ptr, dz_stride, bias_ptr, targets_ptr,
    scale_ptr, adv_ptr, old_ptr, ref_ptr, rollout_ptr,
    logp_ptr, entropy_ptr, lse_ptr, contrib_ptr,
    V, inv_temp, beta, eps_low, eps_high, delta, sapo_tpos, sapo_tneg, tis_cap,
    HAS_BIAS: tl.constexpr, HAS_OLD: tl.constexpr, HAS_BETA: tl.constexpr, HAS_DELTA: tl.constexpr,
    HAS_TIS: tl.constexpr, LOSS_KIND: tl.constexpr, COMPUTE_LOSS: tl.constexpr, COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """One row: lse, entropy, target log-prob; with COMPUTE_LOSS the scaled per-token loss; with
    COMPUTE_GRAD dz = token_scale * dloss/dlogp * (onehot - p) / T written to dz_ptr's row (which may
    be z's row itself: each block is read before it is overwritten)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    lse, entropy = _row_lse_entropy(z_row, bias_ptr, V, inv_temp, HAS_BIAS, BLOCK_V)
    target = tl.load(targets_ptr + row)
    zt = tl.load(z_row + target).to(tl.float32)
    if HAS_BIAS:
        zt += tl.load(bias_ptr + target).to(tl.float32)
    logp = zt * inv_temp - lse
    tl.store(logp_ptr + row, logp)
    tl.store(entropy_ptr + row, entropy)
    tl.store(lse_ptr + row, lse)
    if COMPUTE_LOSS:
        scale = tl.load(scale_ptr + row)
        A = tl.load(adv_ptr + row)
        if HAS_OLD:
            old = tl.load(old_ptr + row)
        else:
            old = logp
        if HAS_BETA:
            ref = tl.load(ref_ptr + row)
        else:
            ref = logp
        if HAS_TIS:
            rollout = tl.load(rollout_ptr + row)
        else:
            rollout = logp
        loss, g = _token_loss_grad(logp, old, ref, rollout, A, beta, eps_low, eps_high, delta, sapo_tpos, sapo_tneg, tis_cap,
                                   LOSS_KIND, HAS_DELTA, HAS_BETA, HAS_TIS)
        # masked tokens (scale 0) add nothing, even where their per-token loss is not finite
        tl.store(contrib_ptr + row, tl.where(scale != 0.0, loss * scale, 0.0))
        if COMPUTE_GRAD:
            coef = tl.where(scale != 0.0, g * scale, 0.0) * inv_temp
            dz_row = dz_ptr + row * dz_stride
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
                mask = cols < V
                p = tl.exp(_load_scaled(z_row, bias_ptr, cols, mask, inv_temp, HAS_BIAS) - lse)
                dz = coef * (tl.where(cols == target, 1.0, 0.0) - p)
                tl.store(dz_row + cols, dz.to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _logprobs_backward_row_kernel(
    z_ptr, z_stride, bias_ptr, targets_ptr, grad_logp_ptr, grad_entropy_ptr, lse_ptr, entropy_ptr,
    V, inv_temp,
    HAS_BIAS: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """dz = (g_lp * (onehot - p) - g_H * p * (log p + H)) / T, written over z's row in place."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * z_stride
    target = tl.load(targets_ptr + row)
    g_lp = tl.load(grad_logp_ptr + row).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    if HAS_GRAD_ENTROPY:
        g_h = tl.load(grad_entropy_ptr + row).to(tl.float32)
        ent = tl.load(entropy_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V).to(tl.int64)
        mask = cols < V
        logp_v = _load_scaled(z_row, bias_ptr, cols, mask, inv_temp, HAS_BIAS) - lse
        p = tl.exp(logp_v)
        dz = g_lp * (tl.where(cols == target, 1.0, 0.0) - p)
        if HAS_GRAD_ENTROPY:
            dz -= g_h * p * tl.where(p > 0.0, logp_v + ent, 0.0)
        tl.store(z_row + cols, (dz * inv_temp).to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _token_loss_kernel(
    logp_ptr, scale_ptr, adv_ptr, old_ptr, ref_ptr, rollout_ptr, contrib_ptr, grad_ptr,
    N, beta, eps_low, eps_high, delta, sapo_tpos, sapo_tneg, tis_cap,
    HAS_OLD: tl.constexpr, HAS_BETA: tl.constexpr, HAS_DELTA: tl.constexpr, HAS_TIS: tl.constexpr,
    LOSS_KIND: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    lp = tl.load(logp_ptr + offs, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + offs, mask=mask, other=0.0)  # 0: out-of-range lanes add nothing
    A = tl.load(adv_ptr + offs, mask=mask, other=0.0)
    if HAS_OLD:
        old = tl.load(old_ptr + offs, mask=mask, other=0.0)
    else:
        old = lp
    if HAS_BETA:
        ref = tl.load(ref_ptr + offs, mask=mask, other=0.0)
    else:
        ref = lp
    if HAS_TIS:
        rollout = tl.load(rollout_ptr + offs, mask=mask, other=0.0)
    else:
        rollout = lp
    loss, g = _token_loss_grad(lp, old, ref, rollout, A, beta, eps_low, eps_high, delta, sapo_tpos, sapo_tneg, tis_cap,
                               LOSS_KIND, HAS_DELTA, HAS_BETA, HAS_TIS)
    tl.store(contrib_ptr + offs, tl.where(scale != 0.0, loss * scale, 0.0), mask=mask)
    tl.store(grad_ptr + offs, tl.where(scale != 0.0, g * scale, 0.0), mask=mask)


# ---------------------------------------------------------------------------------------------
# launchers


def block_v(V: int, block_v: int | None) -> int:
    return block_v or min(triton.next_power_of_2(V), MAX_BLOCK_V)


def num_warps(block_v: int) -> int:
    return 4 if block_v <= 1024 else 8


def chunk_rows(N: int, V: int, elem_bytes: int, chunk_size: int | None) -> int:
    rows = chunk_size or max(1, CHUNK_BYTES // (V * elem_bytes))
    return max(1, min(N, rows))


def loss_options(old_logp, ref_logp, beta, delta, loss_kind, rollout_logp=None, tis_cap=None):
    if (rollout_logp is None) != (tis_cap is None):
        raise ValueError("rollout_logp and tis_cap go together (truncated importance sampling needs both)")
    if tis_cap is not None and not tis_cap > 0:
        raise ValueError(f"tis_cap must be > 0 (the cap of the importance weight), got {tis_cap!r}")
    if loss_kind not in (0, 1, 2):
        raise ValueError(f"loss_kind must be 0 (grpo), 1 (cispo) or 2 (sapo), got {loss_kind}")
    has_beta = beta != 0.0
    if has_beta and ref_logp is None:
        raise ValueError("ref_logp is required when beta != 0 (the KL term needs the reference log-probs)")
    return dict(HAS_OLD=old_logp is not None, HAS_BETA=has_beta, HAS_DELTA=delta is not None, HAS_TIS=rollout_logp is not None,
                LOSS_KIND=int(loss_kind))


def f32(t, fallback):
    return fallback if t is None else t.reshape(-1).float().contiguous()


def check_rows(logits_or_hidden, targets):
    if targets.shape != (logits_or_hidden.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 of shape [{logits_or_hidden.shape[0]}], got {targets.dtype} {list(targets.shape)}")


def accumulate_head_grads(dz, h, weight, grad_hidden_rows, grad_w, grad_b):
    torch.mm(dz, weight, out=grad_hidden_rows)  # [n, H]
    if grad_w.dtype == dz.dtype:
        grad_w.addmm_(dz.t(), h)  # [V, H]
    else:  # low-precision head: accumulate the chunks' products in fp32
        grad_w += torch.mm(dz.t(), h)
    if grad_b is not None:
        grad_b += dz.sum(0, dtype=torch.float32)


def finish_head_grads(grad_hidden, grad_w, grad_b, dtypes, bias):
    gb = grad_b.to(bias.dtype) if bias is not None else grad_hidden.new_empty(0, dtype=dtypes[0])
    return grad_hidden.to(dtypes[0]), grad_w.to(dtypes[1]), gb


def gemm_operands(hidden, weight):
    """hidden and weight in one dtype for cuBLAS: the promoted one where they differ (the gradients
    go back to each input's own dtype)."""
    dt = torch.promote_types(hidden.dtype, weight.dtype)
    return hidden.to(dt).contiguous(), weight.to(dt).contiguous()


def head_grad_buffers(hidden, weight, bias):
    acc = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
    return torch.empty_like(hidden), grad_w, grad_b
