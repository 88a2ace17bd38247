"""The distillation loss fused with both LM heads: from the student's and the teacher's last hidden
states to the loss and the student's gradients, without ever holding either model's [N, V] logits.

Per position, with s = log_softmax((student_hidden @ student_weight.T + student_bias) / temperature)
and t the same for the teacher, the soft loss is TRL's `generalized_jsd_loss` per token:
    beta == 0   KL(t || s)   (forward KL)
    beta == 1   KL(s || t)   (reverse KL)
    otherwise   beta KL(t || m) + (1 - beta) KL(s || m),   m = log((1 - beta) exp(s) + beta exp(t))
the hard loss the student's cross-entropy on `labels` at temperature 1, and the position's loss
`weight_hard_loss * hard + weight_soft_loss * soft` (Liger's `LigerFusedLinearJSDLoss` names).
Positions whose label is `ignore_index` are left out of the loss and of the count.

The op's forward also produces the student's gradients of the reduced loss (four GEMMs of the heads'
size in all); reduction="none" recomputes them in backward from the per-position gradient.
The teacher gets no gradient.
"""

from __future__ import annotations

import torch

from r1kernels._distill_args import check_labels, check_options, row_scale
from r1kernels._library import op
from r1kernels.grpo_loss import _grad_is_one


@torch.library.register_fake("r1kernels::fused_distill_loss")
def _(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias, labels, row_scale,
      beta, temperature, ignore_index, weight_hard, weight_soft, compute_grad):
    rows = student_hidden.new_empty(student_hidden.shape[0], dtype=torch.float32)
    if compute_grad:
        gb = torch.empty_like(student_bias) if student_bias is not None else student_hidden.new_empty(0)
        grads = (torch.empty_like(student_hidden), torch.empty_like(student_weight), gb)
    else:
        grads = tuple(student_hidden.new_empty(0) for _ in range(3))  # distinct: outputs must not alias
    return student_hidden.new_empty((), dtype=torch.float32), rows, *grads


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8], *output[2:])
    ctx.options = inputs[8:13]
    ctx.compute_grad = inputs[13]
    ctx.has_bias = inputs[2] is not None
    # the outputs other than the loss and the rows' losses get no gradient: without this autograd
    # would allocate zeros for them, a second [V, H] buffer at the peak of backward
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_rows, *_):
    sh, sw, sb, th, tw, tb, labels, scale, gh, gw, gb = ctx.saved_tensors
    grads = None
    if grad_loss is not None and ctx.compute_grad:  # the forward's gradients, scaled
        if _grad_is_one(grad_loss):
            grads = [gh, gw, gb]
        else:
            g = grad_loss.to(gh.dtype)
            grads = [gh * g, gw * g.to(gw.dtype), gb * g.to(gb.dtype) if ctx.has_bias else gb]
    # what the forward did not compute: one more pass with the weights the incoming gradients give
    # each row (reduction="none", or a loss whose forward ran without gradients)
    weights = grad_rows.float() if grad_rows is not None else None
    if grad_loss is not None and not ctx.compute_grad:
        w = scale * grad_loss.float()
        weights = w if weights is None else weights + w
    if weights is not None:
        _, _, rh, rw, rb = op("fused_distill_loss")(sh, sw, sb, th, tw, tb, labels, weights.contiguous(), *ctx.options, True)
        grads = [rh, rw, rb] if grads is None else [grads[0] + rh, grads[1] + rw, grads[2] + rb if ctx.has_bias else rb]
    if grads is None:
        return (None,) * 14
    return grads[0], grads[1], (grads[2] if ctx.has_bias else None), *(None,) * 11


torch.library.register_autograd("r1kernels::fused_distill_loss", _backward, setup_context=_setup_context)


def _check_head(name_h, hidden, name_w, weight, name_b, bias, device):
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError(f"{name_h} and {name_w} must be floating point, got {hidden.dtype} and {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{name_w} must be [V, H], got {list(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name_h}'s last dimension ({hidden.shape[-1]}) must equal {name_w}'s H ({weight.shape[1]})")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name_b} must have shape [V] = [{weight.shape[0]}], got {list(bias.shape)}")
    for name, t in ((name_h, hidden), (name_w, weight), (name_b, bias)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} is on {t.device}, expected {device} (student_hidden's device)")


def check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, student_bias, teacher_bias):
    if student_hidden.dim() not in (2, 3):
        raise ValueError(f"student_hidden must be [B, T, Hs] or [N, Hs], got {list(student_hidden.shape)}")
    if tuple(teacher_hidden.shape[:-1]) != tuple(student_hidden.shape[:-1]) or teacher_hidden.dim() != student_hidden.dim():
        raise ValueError(f"teacher_hidden must have student_hidden's leading shape {list(student_hidden.shape[:-1])} "
                         f"(then its own H), got {list(teacher_hidden.shape)}")
    device = student_hidden.device
    _check_head("student_hidden", student_hidden, "student_weight", student_weight, "student_bias", student_bias, device)
    _check_head("teacher_hidden", teacher_hidden, "teacher_weight", teacher_weight, "teacher_bias", teacher_bias, device)
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise ValueError(f"the vocabularies differ: student_weight has V={student_weight.shape[0]}, teacher_weight "
                         f"V={teacher_weight.shape[0]} (distillation compares the two models' distributions token by token)")


def distill_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    weight_hard_loss: float = 0.0,
    weight_soft_loss: float = 1.0,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The distillation loss (float32): a scalar for reduction "mean" and "sum", the positions' shape
    for "none" (0 at ignored positions). student_hidden [B, T, Hs] or [N, Hs], student_weight [V, Hs],
    teacher_hidden [..., Ht] with the same leading shape, teacher_weight [V, Ht], labels int64 of the
    leading shape. Differentiable in the student's hidden states, weight and bias."""
    check_inputs(student_hidden, student_weight, teacher_hidden, teacher_weight, student_bias, teacher_bias)
    check_options(labels, beta, temperature, ignore_index, weight_hard_loss, weight_soft_loss, reduction)
    lead = student_hidden.shape[:-1]
    V = student_weight.shape[0]
    check_labels(labels, lead, V, ignore_index, student_hidden.device)
    n = lead.numel()
    labels_flat = labels.reshape(n).contiguous() if labels is not None else None
    scale = row_scale(labels_flat, n, ignore_index, reduction, student_hidden.device)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (student_hidden, student_weight, student_bias))
    loss, rows, _, _, _ = op("fused_distill_loss")(
        student_hidden.reshape(n, -1).contiguous(), student_weight.contiguous(),
        None if student_bias is None else student_bias.contiguous(),
        teacher_hidden.detach().reshape(n, -1).contiguous(), teacher_weight.detach().contiguous(),
        None if teacher_bias is None else teacher_bias.detach().contiguous(),
        labels_flat, scale, float(beta), float(temperature), int(ignore_index), float(weight_hard_loss),
        float(weight_soft_loss), needs_grad and reduction != "none",
    )
    return rows.view(lead) if reduction == "none" else loss
