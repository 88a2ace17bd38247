"""The last hidden states that predict each completion token, for GRPO's loss and log-probs: with
the rows of one prompt's group sharing that prompt, the prompt is run once per group and its keys
and values handed to every row of the group as a cache, so the G samples of a prompt cost one
prompt forward (and backward) instead of G. What comes out equals running every row whole (to
float32 rounding, tested with gradients); only the work differs: the prompt's share of a step's
tokens is (G - 1) / G cheaper, which is most of the step where prompts are long, as in R1's.

Without groups, with a model whose forward takes no cache, under gradient checkpointing (which
turns transformers' cache off in training) or where each group is one row, every row runs whole."""

from __future__ import annotations

import inspect

import torch


def completion_states(base, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                      prompt_groups: torch.Tensor | None = None, bf16: bool = False) -> torch.Tensor:
    """States [B, C, H] float32 (C = input_ids.shape[1] - prompt_len): row b's state j predicts its
    completion token j. Rows hold a prompt left-padded to prompt_len, then a right-padded
    completion; prompt_groups [B] (optional) names each row's prompt, a group's rows next to each
    other and with the same prompt. The transformer runs under bf16 autocast if asked."""
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
        shared = _shared_layout(base, prompt_groups, input_ids.shape[0])
        if shared is None:
            hidden = _whole_rows(base, input_ids, attention_mask, prompt_len)
            C = input_ids.shape[1] - prompt_len
            return hidden[:, prompt_len - 1:prompt_len - 1 + C].float()
        return _shared_prompts(base, input_ids, attention_mask, prompt_len, *shared).float()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _whole_rows(base, input_ids: torch.Tensor, mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Every row through the model. Without left padding the mask is dropped: right padding sits
    after every real token, so causal attention already keeps it out, and SDPA's maskless causal
    path is the fast one (0.16 s against 0.39 s for a batch of the tiny model here)."""
    if bool(mask[:, :prompt_len].all()):
        n = input_ids.shape[1]
        return base(input_ids=input_ids, position_ids=torch.arange(n, device=mask.device).expand(mask.shape[0], n),
                    use_cache=False).last_hidden_state
    return base(input_ids=input_ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False).last_hidden_state


def _checkpointing(base) -> bool:
    """Activation checkpointing on (transformers 5 renamed is_gradient_checkpointing)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if name in dir(type(base)):
            return bool(getattr(base, name))
    return False


def _cache_argument(base) -> str | None:
    """The name base.forward takes a KV cache under (transformers renamed past_key_values to cache), or None."""
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in ("cache", "past_key_values") if n in params), None)


def _shared_layout(base, prompt_groups: torch.Tensor | None, rows: int):
    """(first row of each group [g], each row's group position [B], the cache's argument name),
    or None where the rows are to run whole."""
    if prompt_groups is None or rows < 2:
        return None
    if base.training and _checkpointing(base):
        return None
    name = _cache_argument(base)
    if name is None:
        return None
    if prompt_groups.shape != (rows,):
        raise ValueError(f"prompt_groups must have one entry per row ({rows}), got shape {tuple(prompt_groups.shape)}")
    starts = torch.ones(rows, dtype=torch.bool, device=prompt_groups.device)
    starts[1:] = prompt_groups[1:] != prompt_groups[:-1]
    first = starts.nonzero()[:, 0]
    if first.numel() == rows:  # one row per group: nothing to share
        return None
    return first, starts.long().cumsum(0) - 1, name


def _shared_prompts(base, input_ids, mask, P: int, first, group_of, cache_arg: str) -> torch.Tensor:
    from transformers import DynamicCache

    B, L = input_ids.shape
    C = L - P
    prompt_ids, prompt_mask = input_ids[first, :P], mask[first, :P]
    padded = not bool(prompt_mask[:, 0].all())
    try:
        cache = DynamicCache(config=base.config)
    except TypeError:  # transformers releases before the config argument
        cache = DynamicCache()
    if padded:
        out = base(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=_positions(prompt_mask),
                   use_cache=True, **{cache_arg: cache})
    else:
        out = base(input_ids=prompt_ids, position_ids=torch.arange(P, device=mask.device).expand(first.numel(), P),
                   use_cache=True, **{cache_arg: cache})
    last = out.last_hidden_state[:, -1]  # [g, H]: predicts each group's first completion token
    if C == 1:
        return last[group_of][:, None]
    cache.batch_select_indices(group_of)  # each row reads its group's prompt keys and values
    # the completions but their last token, which predicts nothing
    comp = input_ids[:, P:L - 1]
    if padded:
        pos = _positions(mask)[:, P:L - 1]
        full = mask[:, :L - 1]
    else:
        pos = torch.arange(P, L - 1, device=mask.device).expand(B, C - 1)
        full = None
    rest = base(input_ids=comp, attention_mask=full, position_ids=pos, use_cache=True, **{cache_arg: cache}).last_hidden_state
    return torch.cat([last[group_of][:, None], rest], dim=1)
