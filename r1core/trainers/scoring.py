"""Scoring completions with reward functions of TRL's signature, `fn(prompts, completions,
completion_ids=..., **columns) -> list[float | None]`: what GRPO trains on and what rejection
sampling filters by, so both read a reward the same way. None (or NaN) means not scorable."""

from __future__ import annotations

import math

import torch


def func_name(f) -> str:
    return getattr(f, "__name__", None) or type(f).__name__


def score_completions(reward_funcs, prompts: list[str], texts: list[str], completion_ids: list[list[int]], columns: dict,
                      names: list[str] | None = None) -> torch.Tensor:
    """Rewards [B, F] float32 of B completions under F functions; None -> NaN (not scorable).
    columns: the dataset's other columns, one value per completion. A function that raises, returns
    the wrong count, a non-number or an infinity is a named error."""
    names = names or [func_name(f) for f in reward_funcs]
    out = torch.empty(len(texts), len(reward_funcs), dtype=torch.float32)
    for j, (f, name) in enumerate(zip(reward_funcs, names)):
        try:
            vals = f(prompts, texts, completion_ids=completion_ids, **columns)
        except Exception as e:
            raise RuntimeError(f"reward function {name!r} raised {type(e).__name__}: {e}") from e
        try:
            n = len(vals)
        except TypeError:
            n = None
        if n != len(texts):
            got = f"{n} rewards" if n is not None else repr(vals)
            raise ValueError(f"reward function {name!r} returned {got} for {len(texts)} completions: "
                             f"expected a list of {len(texts)} numbers or None")
        for i, v in enumerate(vals):
            if v is not None and not isinstance(v, (int, float)) and not (hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1):
                raise ValueError(f"reward function {name!r} returned {v!r} for completion {i}: expected a number or None")
            x = math.nan if v is None else float(v)
            if math.isinf(x):  # would turn a whole group's advantages into NaN
                raise ValueError(f"reward function {name!r} returned {x} for completion {i}: "
                                 "expected a finite number or None (NaN: not scorable)")
            out[i, j] = x
    return out


def total_reward(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over functions [B], NaN only where no function could score the sample."""
    total = torch.nansum(rewards * weights, dim=1)
    return torch.where(torch.isnan(rewards).all(1), torch.full_like(total, math.nan), total)


__all__ = ["func_name", "score_completions", "total_reward"]
