"""completion_states with shared prompts (each group's prompt run once, its KV handed to the
group's rows) equals every row run whole: states and parameter gradients, on the Llama family,
left-padded prompts, partial groups, one-token completions and micro-batches that split a group."""

import pytest
import torch

from r1core.trainers.completion_states import completion_states
from tests._engine_models import VOCAB, tiny_model


def _batch(group_sizes, prompt_lens, completion_lens, P=None, C=None, pad=0):
    """Rows of prompt (left-padded to P) + completion (right-padded to C); a group's rows share its prompt."""
    P = P or max(prompt_lens)
    C = C or max(completion_lens)
    rows, masks, groups = [], [], []
    it = iter(completion_lens)
    for g, (n, p) in enumerate(zip(group_sizes, prompt_lens)):
        prompt = torch.randint(2, VOCAB, (p,))
        for _ in range(n):
            c = next(it)
            ids = torch.full((P + C,), pad)
            m = torch.zeros(P + C, dtype=torch.long)
            ids[P - p:P] = prompt
            ids[P:P + c] = torch.randint(2, VOCAB, (c,))
            m[P - p:P + c] = 1
            rows.append(ids)
            masks.append(m)
            groups.append(g)
    return torch.stack(rows), torch.stack(masks), torch.tensor(groups), P


def _states_and_grads(model, ids, mask, P, groups, weights):
    model.zero_grad()
    h = completion_states(model.model, ids, mask, P, groups)
    (h * weights).sum().backward()
    return h.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


CASES = {
    "equal prompts": ([4, 4, 4], [6, 6, 6], [5, 7, 3, 7, 1, 7, 6, 2, 4, 7, 7, 5]),
    "left-padded prompts": ([3, 2, 4], [3, 7, 5], [4, 6, 2, 6, 6, 1, 3, 5, 6]),
    "groups of one and partial groups": ([1, 3, 2, 1], [5, 2, 5, 4], [3, 3, 1, 4, 2, 4, 4]),
    "one-token completions": ([3, 2], [4, 6], [1, 1, 1, 1, 1]),
}


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3", "mistral"])
@pytest.mark.parametrize("case", list(CASES))
def test_shared_prompts_equal_whole_rows_with_gradients(arch, case):
    torch.manual_seed(torch.randint(0, 2**31, ()).item())
    model = tiny_model(arch).train()
    ids, mask, groups, P = _batch(*CASES[case])
    C = ids.shape[1] - P
    weights = torch.randn(ids.shape[0], C, model.config.hidden_size) * mask[:, P:, None]  # padding carries no gradient
    want, want_grads = _states_and_grads(model, ids, mask, P, None, weights)
    got, got_grads = _states_and_grads(model, ids, mask, P, groups, weights)
    real = mask[:, P:].bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        # sums over many rows in another order: the tolerance scales with the tensor's largest entry
        torch.testing.assert_close(g, w, atol=1e-4 * float(w.abs().max()), rtol=1e-3)


def test_a_group_split_over_two_calls_equals_one_call():
    model = tiny_model("qwen2")
    ids, mask, groups, P = _batch([4, 4], [5, 5], [3, 4, 2, 4, 4, 1, 4, 3])
    with torch.no_grad():
        whole = completion_states(model.model, ids, mask, P, groups)
        parts = torch.cat([completion_states(model.model, ids[s], mask[s], P, groups[s]) for s in (slice(0, 3), slice(3, 8))])
    torch.testing.assert_close(parts, whole, atol=2e-5, rtol=1e-4)


def test_gradient_checkpointing_runs_rows_whole():
    # transformers turns the cache off under gradient checkpointing in training: the rows run whole
    model = tiny_model("qwen2").train()
    on, off = (("activation_checkpointing_enable", "activation_checkpointing_disable") if hasattr(model, "activation_checkpointing_enable")
               else ("gradient_checkpointing_enable", "gradient_checkpointing_disable"))
    getattr(model, on)()
    ids, mask, groups, P = _batch([3, 3], [4, 4], [2, 3, 3, 1, 3, 2])
    h = completion_states(model.model, ids, mask, P, groups)
    h.sum().backward()
    getattr(model, off)()
    with torch.no_grad():
        torch.testing.assert_close(h.detach(), completion_states(model.model, ids, mask, P, None), atol=2e-5, rtol=1e-4)


def test_prompt_groups_of_the_wrong_shape_are_refused():
    model = tiny_model("qwen2")
    ids, mask, groups, P = _batch([2, 2], [3, 3], [2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"prompt_groups must have one entry per row \(4\)"):
        completion_states(model.model, ids, mask, P, groups[:3])
