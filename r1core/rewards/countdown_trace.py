"""Countdown trace reward: 1.0 where the answer is right (`countdown_reward`) and the reasoning
that leads to it is too: the trace, read back as the search it writes
(`r1core.tasks.countdown_traces.replay_trace`), starts from the problem's own numbers and target,
takes only legal arithmetic steps and ends in a solved node.

An answer-only check keeps what a small model guesses: of the rationales a 1M-parameter STaR base
wrote that reached the right expression on Countdown, about four in five carried false arithmetic
on the way (`5+4=18`), and fine-tuning on them taught that. A process check is what the task
allows, since every step of the trace can be verified."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

from .completions import completion_text
from .countdown import countdown_reward

_ROOT = re.compile(r"<think>(\d+(?:,\d+)*)>(\d+)")


def trace_is_sound(text: str, numbers: Sequence[int], target: int) -> bool:
    """Whether the completion's trace replays from the problem (numbers, target) to a solved node."""
    from r1core.tasks.countdown_traces import replay_trace

    root = _ROOT.match(text)
    if root is None or int(root.group(2)) != int(target) or Counter(int(x) for x in root.group(1).split(",")) != Counter(numbers):
        return False
    try:
        steps, _ = replay_trace(text)
    except ValueError:
        return False
    return bool(steps)


def countdown_trace_reward(prompts: Sequence | None, completions: Sequence, numbers: Sequence | None = None,
                           target: Sequence | None = None, **kwargs: Any) -> list[float | None]:
    """Per completion 1.0 / 0.0 (see module docstring); None where the row has no numbers or target."""
    outcome = countdown_reward(prompts, completions, numbers=numbers, target=target)
    return [r if r != 1.0 else float(trace_is_sound(completion_text(c), nums, int(tgt)))
            for r, c, nums, tgt in zip(outcome, completions, numbers or [None] * len(outcome), target or [None] * len(outcome))]


countdown_trace_reward.required_columns = ("numbers", "target")
