"""Format rewards: the R1-Zero tags, and the scratchpad of the default task."""
from __future__ import annotations

import re
from typing import Any, Sequence

from .completions import completion_text

_NO_TAG = r"(?:(?!</?think>|</?answer>).)*"  # content without nested or repeated tags
R1_ZERO_FORMAT_RE = re.compile(rf"^\s*<think>{_NO_TAG}</think>\s*<answer>{_NO_TAG}</answer>\s*$", re.S)

_STEP = r"\d+[-+*/]\d+(?:\+\d+)?=\d+"
_STEPS = rf"{_STEP}(?:,{_STEP})*"
# T<steps>[;<steps>];A<answer>: addition, multiplication (partial products; sums) and countdown
SCRATCHPAD_FORMAT_RE = re.compile(rf"^T{_STEPS}(?:;{_STEPS})?;A[0-9+\-*/()]+\s*$")


def format_reward(prompts: Sequence | None, completions: Sequence, **kwargs: Any) -> list[float]:
    """1.0 when the whole completion is `<think>...</think><answer>...</answer>` (whitespace around
    and between allowed, each tag exactly once), else 0.0."""
    return [1.0 if R1_ZERO_FORMAT_RE.match(completion_text(c)) else 0.0 for c in completions]


def scratchpad_format_reward(prompts: Sequence | None, completions: Sequence, **kwargs: Any) -> list[float]:
    """1.0 when the completion is a well-formed scratchpad (`T9+6+0=15,...;A1785`: steps of the form
    `a+b+c=d` / `a*b=c`, then the answer); the arithmetic itself is not checked here."""
    return [1.0 if SCRATCHPAD_FORMAT_RE.match(completion_text(c)) else 0.0 for c in completions]
