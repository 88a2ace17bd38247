"""A length penalty reward: nothing up to a bound of completion tokens, then minus the share by
which a completion overruns it (at most -1). DeepSeek-R1's rejection-sampled data is filtered for
readability; this keeps the last RL stage from growing the reasoning past what that data held."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from .completions import completion_text


def length_penalty(max_tokens: int) -> Callable[..., list[float]]:
    """A reward function of TRL's signature: 0.0 for a completion of at most `max_tokens` tokens
    (its `completion_ids`; characters when the caller passes none), else -min(1, excess / max_tokens)."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected an int >= 1, got {max_tokens!r}")

    def length_penalty_reward(prompts: Sequence | None, completions: Sequence, completion_ids: Sequence | None = None,
                              **kwargs: Any) -> list[float]:
        sizes = [len(ids) for ids in completion_ids] if completion_ids is not None else [len(completion_text(c)) for c in completions]
        return [-min(1.0, (n - max_tokens) / max_tokens) if n > max_tokens else 0.0 for n in sizes]

    return length_penalty_reward


__all__ = ["length_penalty"]
