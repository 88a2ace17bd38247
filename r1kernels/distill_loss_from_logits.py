"""The distillation loss for stacks that already hold both models' logits [..., V]: the same
per-position math, options and reductions as `distill_loss` (see there), with both log-softmaxes, the
loss and the gradient of the student's logits in one pass over each row. The teacher gets no
gradient."""

from __future__ import annotations

import torch

from r1kernels._distill_args import check_labels, check_options, row_scale
from r1kernels._library import op
from r1kernels.grpo_loss import _grad_is_one


@torch.library.register_fake("r1kernels::logits_distill_loss")
def _(student_logits, teacher_logits, labels, row_scale, beta, temperature, ignore_index, weight_hard, weight_soft,
      compute_grad):
    rows = student_logits.new_empty(student_logits.shape[0], dtype=torch.float32)
    g = torch.empty_like(student_logits) if compute_grad else student_logits.new_empty(0)
    return student_logits.new_empty((), dtype=torch.float32), rows, g


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4], output[2])
    ctx.options = inputs[4:9]
    ctx.compute_grad = inputs[9]
    ctx.set_materialize_grads(False)  # no zeros for the [N, V] gradient output nobody differentiates


def _backward(ctx, grad_loss, grad_rows, _grad_grad):
    zs, zt, labels, scale, g = ctx.saved_tensors
    grad = None
    if grad_loss is not None and ctx.compute_grad:
        grad = g if _grad_is_one(grad_loss) else g * grad_loss.to(g.dtype)
    weights = grad_rows.float() if grad_rows is not None else None
    if grad_loss is not None and not ctx.compute_grad:
        w = scale * grad_loss.float()
        weights = w if weights is None else weights + w
    if weights is not None:
        _, _, r = op("logits_distill_loss")(zs, zt, labels, weights.contiguous(), *ctx.options, True)
        grad = r if grad is None else grad + r
    return (grad,) + (None,) * 9


torch.library.register_autograd("r1kernels::logits_distill_loss", _backward, setup_context=_setup_context)


def distill_loss_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    weight_hard_loss: float = 0.0,
    weight_soft_loss: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """The distillation loss (float32) from student_logits and teacher_logits of the same shape
    [B, T, V] or [N, V]; labels int64 of the leading shape. A scalar for "mean" and "sum", the
    positions' shape for "none". Differentiable in student_logits."""
    if student_logits.dim() not in (2, 3):
        raise ValueError(f"student_logits must be [B, T, V] or [N, V], got {list(student_logits.shape)}")
    if teacher_logits.dim() != student_logits.dim() or teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"teacher_logits must have student_logits' leading shape {list(student_logits.shape[:-1])}, "
                         f"got {list(teacher_logits.shape)}")
    if teacher_logits.shape[-1] != student_logits.shape[-1]:
        raise ValueError(f"the vocabularies differ: student_logits has V={student_logits.shape[-1]}, teacher_logits "
                         f"V={teacher_logits.shape[-1]}")
    if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise ValueError(f"student_logits and teacher_logits must be floating point, got {student_logits.dtype} and "
                         f"{teacher_logits.dtype}")
    if teacher_logits.device != student_logits.device:
        raise ValueError(f"teacher_logits is on {teacher_logits.device}, expected {student_logits.device} "
                         "(student_logits' device)")
    check_options(labels, beta, temperature, ignore_index, weight_hard_loss, weight_soft_loss, reduction)
    lead, V = student_logits.shape[:-1], student_logits.shape[-1]
    check_labels(labels, lead, V, ignore_index, student_logits.device)
    n = lead.numel()
    labels_flat = labels.reshape(n).contiguous() if labels is not None else None
    scale = row_scale(labels_flat, n, ignore_index, reduction, student_logits.device)
    needs_grad = torch.is_grad_enabled() and student_logits.requires_grad
    loss, rows, _ = op("logits_distill_loss")(
        student_logits.reshape(n, V).contiguous(), teacher_logits.detach().reshape(n, V).contiguous(), labels_flat, scale,
        float(beta), float(temperature), int(ignore_index), float(weight_hard_loss), float(weight_soft_loss),
        needs_grad and reduction != "none",
    )
    return rows.view(lead) if reduction == "none" else loss
