"""Random inputs for the distillation loss tests: two heads of different widths over one vocabulary,
labels with ignored positions (a whole sequence of them in the [B, T] case)."""

from __future__ import annotations

import torch


def make_inputs(lead, Hs, Ht, V, dtype=torch.float64, bias=False, ignored="some", scale=1.0):
    """dict of student_hidden [*lead, Hs], student_weight [V, Hs], teacher_hidden [*lead, Ht],
    teacher_weight [V, Ht], labels [*lead] (ignored: "none", "some" or "sequence"), biases."""
    lead = tuple(lead)

    def rnd(*shape):
        return (torch.randn(*shape, dtype=torch.float64) * scale).to(dtype)

    inp = dict(student_hidden=rnd(*lead, Hs), student_weight=rnd(V, Hs), teacher_hidden=rnd(*lead, Ht),
               teacher_weight=rnd(V, Ht), student_bias=rnd(V) if bias else None, teacher_bias=rnd(V) if bias else None)
    labels = torch.randint(0, V, lead)
    if ignored in ("some", "sequence"):
        labels[torch.rand(lead) < 0.25] = -100
    if ignored == "sequence":
        labels[0] = -100  # every position of the first sequence (or the first position of [N])
    inp["labels"] = labels
    return inp


def student_leaves(inp):
    """Fresh leaves of the student's differentiable inputs (hidden, weight and bias where present)."""
    names = [n for n in ("student_hidden", "student_weight", "student_bias") if inp[n] is not None]
    return {n: inp[n].detach().clone().requires_grad_() for n in names}
